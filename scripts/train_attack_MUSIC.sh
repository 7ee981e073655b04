#!/usr/bin/env bash
# Train the paper's MUSIC recognition models: audio-only, visual-only and audio-visual fusion heads.
#   MUSIC_ROOT=/path/to/MUSIC bash scripts/train_attack_MUSIC.sh [extra main_attack.py flags]
# HEADS picks the heads (default: audio visual concat; any of: audio visual sum concat film gated
# bilinear attention late loc); NUM_GPUS > 1 trains with DistributedDataParallel. See scripts/_paper.sh.
source "$(dirname "${BASH_SOURCE[0]}")/_paper.sh"
train_attack MUSIC "$@"
