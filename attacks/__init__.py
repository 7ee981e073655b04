"""Multimodal attacks on ``model(frames, audio)``: FGSM, PGD, MIM, APGD, APGD-T (L∞ and L2) and Square (L∞)
on one base, with per-modality or joint L2 budgets, loudness-relative audio budgets and per-frame or shared
visual perturbations.

    attack = build_attack("pgd", model, eps={"visual": 0.006, "audio": 0.006})
    adv_frames, adv_audio = attack(frames, audio, labels)

Importing the package registers every attack in ``ATTACKS``.
"""
from attacks.apgd import APGD, apgd_checkpoints
from attacks.apgd_targeted import APGDTargeted, target_classes
from attacks.base import (
    EPS_UNITS,
    MODALITIES,
    NORMS,
    TEMPORAL,
    VALID_RANGE,
    Attack,
    BestSoFar,
    Problem,
    as_model_output,
    audio_db_radius,
    encodes_separately,
    normalized_eps_to_pixel,
)
from attacks.fgsm import FGSM
from attacks.losses import LOSSES, LossFn, get_loss, margin, targeted_difference_of_logits_ratio
from attacks.mim import MIM
from attacks.pgd import PGD
from attacks.regions import Ball, Independent, JointL2Ball, L2Ball, joint_split
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
    "Independent",
    "JointL2Ball",
    "L2Ball",
    "LOSSES",
    "LossFn",
    "MIM",
    "MODALITIES",
    "NORMS",
    "PGD",
    "Problem",
    "Square",
    "TEMPORAL",
    "VALID_RANGE",
    "apgd_checkpoints",
    "as_model_output",
    "audio_db_radius",
    "attack_options",
    "build_attack",
    "encodes_separately",
    "get_loss",
    "joint_split",
    "margin",
    "normalized_eps_to_pixel",
    "square_fraction",
    "target_classes",
    "targeted_difference_of_logits_ratio",
]
