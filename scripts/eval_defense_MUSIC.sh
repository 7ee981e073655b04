#!/usr/bin/env bash
# Evaluate the MUSIC defense of train_defense_MUSIC.sh next to its baselines, clean and under the paper's
# attacks, each the worst case over white-box CE through the sparse coding, the released CE + cos
# objective and BPDA; then print the defense table. Rows: no defense, memory banks alone,
# dissimilarity alone, both (the paper's), adversarial training, TRADES.
#   MUSIC_ROOT=/path/to/MUSIC bash scripts/eval_defense_MUSIC.sh [extra main_defense.py flags]
# Pass the same HEAD, BASELINES and extra flags as for training. See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
eval_defense MUSIC "$@"
