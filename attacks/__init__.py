"""Multimodal L∞ attacks on ``AVModel(frames, audio)``: FGSM, PGD, MIM, APGD, APGD-T and Square on one base.

    attack = build_attack("pgd", model, eps={"visual": 0.006, "audio": 0.006})
    adv_frames, adv_audio = attack(frames, audio, labels)

Importing the package registers every attack in ``ATTACKS``.
"""
from attacks.apgd import APGD, apgd_checkpoints
from attacks.apgd_targeted import APGDTargeted, target_classes
from attacks.base import (
    EPS_UNITS,
    MODALITIES,
    VALID_RANGE,
    Attack,
    Ball,
    BestSoFar,
    Problem,
    encodes_separately,
    normalized_eps_to_pixel,
)
from attacks.fgsm import FGSM
from attacks.losses import LOSSES, LossFn, get_loss, margin, targeted_difference_of_logits_ratio
from attacks.mim import MIM
from attacks.pgd import PGD
from attacks.registry import ATTACKS, attack_options, build_attack
from attacks.square import Square, square_fraction

__all__ = [
    "APGD",
    "APGDTargeted",
    "ATTACKS",
    "Attack",
    "Ball",
    "BestSoFar",
    "EPS_UNITS",
    "FGSM",
    "LOSSES",
    "LossFn",
    "MIM",
    "MODALITIES",
    "PGD",
    "Problem",
    "Square",
    "VALID_RANGE",
    "apgd_checkpoints",
    "attack_options",
    "build_attack",
    "encodes_separately",
    "get_loss",
    "margin",
    "normalized_eps_to_pixel",
    "square_fraction",
    "target_classes",
    "targeted_difference_of_logits_ratio",
]
