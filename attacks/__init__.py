"""Multimodal attacks on ``model(frames, audio)``: FGSM, PGD, MIM, APGD, APGD-T, FAB-T and Square (L∞ and L2) on
one base, the AutoAttack cascades composed of them, all under one ``ThreatModel`` (per-modality or joint L2 budgets,
loudness-relative audio budgets, per-frame or shared visual perturbations).

    attack = build_attack("pgd", model, eps={"visual": 0.006, "audio": 0.006})
    adv_frames, adv_audio = attack(frames, audio, labels)

Importing the package registers every attack in ``ATTACKS``.
"""
from attacks.apgd import APGD, apgd_checkpoints
from attacks.apgd_targeted import APGDTargeted, target_classes
from attacks.base import VALID_RANGE, Attack, BestSoFar, Problem, as_model_output, encodes_separately
from attacks.fab import FABTargeted, hyperplane_step
from attacks.fgsm import FGSM
from attacks.losses import LOSSES, LossFn, PerSampleLoss, get_loss, margin, targeted_difference_of_logits_ratio
from attacks.mim import MIM
from attacks.pgd import PGD
from attacks.regions import Ball, Independent, JointL2Ball, L2Ball, joint_split
from attacks.registry import (
    ALIASES,
    ATTACKS,
    CASCADES,
    AttackSpec,
    Cascade,
    Component,
    attack_names,
    attack_options,
    attack_settings,
    attack_table_markdown,
    black_box_attacks,
    build_attack,
    canonical,
    describe,
    unsupported,
)
from attacks.square import Square, square_fraction
from attacks.threat import (
    EPS_UNITS,
    MODALITIES,
    NORMS,
    TEMPORAL,
    ThreatModel,
    ThreatSettings,
    audio_db_radius,
    normalized_eps_to_pixel,
)

__all__ = [
    "ALIASES",
    "AttackSpec",
    "CASCADES",
    "Cascade",
    "Component",
    "ThreatModel",
    "ThreatSettings",
    "attack_names",
    "attack_settings",
    "attack_table_markdown",
    "black_box_attacks",
    "canonical",
    "describe",
    "unsupported",
    "APGD",
    "APGDTargeted",
    "ATTACKS",
    "Attack",
    "Ball",
    "BestSoFar",
    "EPS_UNITS",
    "FABTargeted",
    "FGSM",
    "Independent",
    "JointL2Ball",
    "L2Ball",
    "LOSSES",
    "LossFn",
    "PerSampleLoss",
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
    "hyperplane_step",
    "joint_split",
    "margin",
    "normalized_eps_to_pixel",
    "square_fraction",
    "target_classes",
    "targeted_difference_of_logits_ratio",
]
