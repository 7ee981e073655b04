#!/usr/bin/env bash
# Train the paper's Kinetics defense and its baselines from the trained audio-visual model of
# train_attack_Kinetics.sh (run that first): the dissimilarity constraint (CE + mean cos(feat_v, feat_a)),
# PGD adversarial training and TRADES on both modalities, then the memory banks D_v, D_a of the
# undefended and the dissimilarity-trained models.
#   KINETICS_ROOT=/path/to/Kinetics bash scripts/train_defense_Kinetics.sh [extra flags for main_defense.py]
# HEAD picks the fusion head (default concat); BASELINES (default "adv trades") the baselines to train.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
source "$REPO_ROOT/scripts/_paper.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

paper_flags Kinetics
head="${HEAD:-concat}"
base="$("$PYTHON" main_defense.py --print_run_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" "$@" \
    --train_mode standard --lambda_cos 0)"
init=(--weights_frame "$base/frame_best.pth" --weights_sound "$base/sound_best.pth"
      --weights_classifier "$base/classifier_best.pth")

launch main_defense.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" "${init[@]}" \
    --train_mode standard --lambda_cos 1 "$@"
for baseline in ${BASELINES:-adv trades}; do
    launch main_defense.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" "${init[@]}" \
        --train_mode "$baseline" --lambda_cos 0 "$@"
done
for lambda_cos in 0 1; do
    "$PYTHON" main_defense.py --mode build_bank --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
        --lambda_cos "$lambda_cos" "$@"
done
