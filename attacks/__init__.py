"""Multimodal L∞ attacks on ``AVModel(frames, audio)``: FGSM, PGD, MIM and APGD on one base.

    attack = build_attack("pgd", model, eps={"visual": 0.006, "audio": 0.006})
    adv_frames, adv_audio = attack(frames, audio, labels)

Importing the package registers every attack in ``ATTACKS``.
"""
from attacks.apgd import APGD, apgd_checkpoints
from attacks.base import EPS_UNITS, MODALITIES, VALID_RANGE, Attack, Ball, Problem, normalized_eps_to_pixel
from attacks.fgsm import FGSM
from attacks.losses import LOSSES, LossFn, get_loss
from attacks.mim import MIM
from attacks.pgd import PGD
from attacks.registry import ATTACKS, build_attack

__all__ = [
    "APGD",
    "ATTACKS",
    "Attack",
    "Ball",
    "EPS_UNITS",
    "FGSM",
    "LOSSES",
    "LossFn",
    "MIM",
    "MODALITIES",
    "PGD",
    "Problem",
    "VALID_RANGE",
    "apgd_checkpoints",
    "build_attack",
    "get_loss",
    "normalized_eps_to_pixel",
]
