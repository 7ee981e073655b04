#!/usr/bin/env bash
# Sound-source localization of the Kinetics `loc` model, clean and under FGSM / PGD / MIM with the paper's
# budgets (A: eps_a 0.012, V: eps_v 0.012, A+V: 0.006 each), attacking the label and the map itself.
# Train the model first with the same extra flags:  HEADS=loc bash scripts/train_attack_Kinetics.sh
#   KINETICS_ROOT=/path/to/Kinetics bash scripts/eval_localization_Kinetics.sh [extra main_localization.py flags]
# Kinetics has no boxes, so the change of the map under attack is reported; a dataset with boxes takes
# --boxes FILE. HEADS overrides the heads (default: loc; attention also has a map), ATTACKS the attack
# types (default: fgsm pgd mim; apgd is available). Results: <run>/evals/localization_*/. See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
eval_localization Kinetics "$@"
