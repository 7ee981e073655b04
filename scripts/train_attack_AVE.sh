#!/usr/bin/env bash
# Train the paper's AVE recognition models: audio-only, visual-only and audio-visual fusion heads.
#   AVE_ROOT=/path/to/AVE bash scripts/train_attack_AVE.sh [extra main_attack.py flags]
# HEADS picks the heads (default: audio visual concat; any of: audio visual sum concat film gated
# bilinear attention late); NUM_GPUS > 1 trains with DistributedDataParallel; extra flags win.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
source "$REPO_ROOT/scripts/_paper.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

paper_flags AVE
for head in ${HEADS:-audio visual concat}; do
    launch main_attack.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" "$@"
done
