#!/usr/bin/env bash
# Train the paper's Kinetics defense and its baselines from the trained audio-visual model of
# train_attack_Kinetics.sh (run that first): the dissimilarity constraint (CE + mean cos(feat_v, feat_a)),
# PGD adversarial training and TRADES on both modalities, then the memory banks D_v, D_a.
#   KINETICS_ROOT=/path/to/Kinetics-Sounds bash scripts/train_defense_Kinetics.sh [extra main_defense.py flags]
# HEAD picks the fusion head (default concat); BASELINES (default "adv trades"). See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
train_defense Kinetics "$@"
