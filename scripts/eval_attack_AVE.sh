#!/usr/bin/env bash
# Evaluate the AVE models of train_attack_AVE.sh clean and under FGSM / PGD / MIM with the paper's
# budgets (A: eps_a 0.012, V: eps_v 0.012, A+V: 0.006 each), then print the paper-style table.
#   AVE_ROOT=/path/to/AVE bash scripts/eval_attack_AVE.sh [extra main_attack.py flags]
# Pass the same HEADS and extra flags as for training so the run ids match; ATTACKS overrides the
# attack types (default: fgsm pgd mim; apgd is available). See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
eval_attack AVE "$@"
