#!/usr/bin/env bash
# Natural robustness of the MUSIC models of train_attack_MUSIC.sh: the test split under the corruption suite
# (7 visual and 6 audio corruptions at severities 1-5, 5 co-occurring audio-visual pairs, missing modalities).
#   MUSIC_ROOT=/path/to/MUSIC bash scripts/eval_corruption_MUSIC.sh [extra main_attack.py flags]
# Pass the same HEADS and extra flags as for training so the run ids match. CORRUPTIONS picks names or groups
# (default: the whole suite; e.g. CORRUPTIONS="both missing"), --corruption_severities the severities. Results
# in each run folder, RUN/evals/corruptions_*/: corruption_results.json, corruption_table.md, corruption.png. See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
eval_corruption MUSIC "$@"
