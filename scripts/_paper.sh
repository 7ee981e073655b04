# Sourced by the per-dataset scripts: bootstraps the environment, holds the paper's settings per
# dataset, and the workflows those scripts run (train / evaluate recognition models, the defense).
#
# Environment: MUSIC_ROOT / AVE_ROOT / KINETICS_ROOT (data roots, default data/<dataset>), NUM_GPUS
# (default 1; > 1 starts one torchrun process per GPU), WEIGHTS_FRAME (default imagenet; '' trains the
# visual net from scratch), HEADS, HEAD, ATTACKS, BASELINES (see each workflow). Extra arguments of a
# script are passed to the Python entry point and win over the settings here.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

# paper_flags DATASET: fill PAPER_FLAGS with the data, model and schedule flags that the train, eval,
# defense and localization scripts of DATASET share, so their run ids meet in one folder.
paper_flags() {
    local dataset=$1
    local epochs steps root
    case "$dataset" in
        MUSIC)    epochs=100; steps="30 60 90"; root="${MUSIC_ROOT:-data/MUSIC}" ;;
        AVE)      epochs=30;  steps="10 20";    root="${AVE_ROOT:-data/AVE}" ;;
        Kinetics) epochs=30;  steps="10 20";    root="${KINETICS_ROOT:-data/Kinetics}" ;;
        *) echo "paper_flags: unknown dataset $dataset" >&2; return 1 ;;
    esac
    # shellcheck disable=SC2206
    PAPER_FLAGS=(--dataset "$dataset" --data_root "$root"
        --arch_frame resnet18 --img_pool max --arch_sound anet
        --num_frames 1 --stride_frames 8 --frameRate 8 --imgSize 224 --audLen 65535 --audRate 11025
        --num_epoch "$epochs" --lr_steps $steps --lr_frame 1e-4 --lr_sound 1e-3 --lr_classifier 1e-3
        --batch_size_per_gpu 32 --workers 8 --num_gpus "${NUM_GPUS:-1}")
}

# launch SCRIPT ARGS...: run a Python entry point on NUM_GPUS GPUs.
launch() {
    local gpus="${NUM_GPUS:-1}"
    if [ "$gpus" -gt 1 ]; then
        "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$gpus" "$@"
    else
        "$PYTHON" "$@"
    fi
}

# train_attack DATASET ARGS...: train the recognition models of HEADS (default: audio visual concat).
train_attack() {
    local dataset=$1 head
    shift
    paper_flags "$dataset"
    for head in ${HEADS:-audio visual concat}; do
        launch main_attack.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --weights_frame "${WEIGHTS_FRAME-imagenet}" "$@"
    done
}

# eval_attack DATASET ARGS...: clean and ATTACKS (default: fgsm pgd mim) under the paper's protocol for
# each of HEADS, then the paper-style table (also written to <ckpt>/summary_DATASET.md).
eval_attack() {
    local dataset=$1 head
    shift
    paper_flags "$dataset"
    local runs=()
    for head in ${HEADS:-audio visual concat}; do
        # shellcheck disable=SC2086
        launch main_attack.py --mode eval --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --attack_type ${ATTACKS:-fgsm pgd mim} "$@"
        # shellcheck disable=SC2086
        runs+=("$("$PYTHON" main_attack.py --print_eval_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --attack_type ${ATTACKS:-fgsm pgd mim} "$@")")
    done
    "$PYTHON" scripts/summarize.py "${runs[@]}" \
        --markdown "$(dirname "$(dirname "$(dirname "${runs[-1]}")")")/summary_$dataset.md" --findings
}

# train_defense DATASET ARGS...: from the trained HEAD model (default concat): the dissimilarity
# constraint, the BASELINES (default: adv trades), then the memory banks of the undefended and the
# dissimilarity-trained models.
# eval_corruption DATASET [extra flags]: the test split of each of HEADS (default audio visual concat) under
# the corruption suite; CORRUPTIONS picks names or groups (default: the whole suite).
eval_corruption() {
    local dataset=$1 head
    shift
    paper_flags "$dataset"
    for head in ${HEADS:-audio visual concat}; do
        # shellcheck disable=SC2086
        launch main_attack.py --mode eval --arch_classifier "$head" "${PAPER_FLAGS[@]}" --attack_type none \
            --corruptions ${CORRUPTIONS:-} "$@"
    done
}

train_defense() {
    local dataset=$1 head="${HEAD:-concat}" base baseline lambda_cos
    shift
    paper_flags "$dataset"
    base="$("$PYTHON" main_defense.py --print_run_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" "$@" \
        --train_mode standard --lambda_cos 0)"
    local init=(--weights_frame "$base/frame_best.pth" --weights_sound "$base/sound_best.pth"
                --weights_classifier "$base/classifier_best.pth")
    launch main_defense.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" "${init[@]}" \
        --train_mode standard --lambda_cos 1 "$@"
    for baseline in ${BASELINES:-adv trades}; do
        launch main_defense.py --mode train --arch_classifier "$head" "${PAPER_FLAGS[@]}" "${init[@]}" \
            --train_mode "$baseline" --lambda_cos 0 "$@"
    done
    for lambda_cos in 0 1; do
        "$PYTHON" main_defense.py --mode build_bank --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --lambda_cos "$lambda_cos" "$@" --num_gpus 1
    done
}

# eval_defense DATASET ARGS...: no defense, memory banks alone, dissimilarity alone, both (the
# paper's) and the BASELINES, each the worst case over the adaptive attacks; then the defense table
# (also written to <ckpt>/defense_summary_DATASET.md).
eval_defense() {
    local dataset=$1 head="${HEAD:-concat}" baseline config run
    shift
    paper_flags "$dataset"
    local configs=("--train_mode standard --lambda_cos 0" "--train_mode standard --lambda_cos 0 --use_banks"
                   "--train_mode standard --lambda_cos 1" "--train_mode standard --lambda_cos 1 --use_banks")
    for baseline in ${BASELINES:-adv trades}; do
        configs+=("--train_mode $baseline --lambda_cos 0")
    done
    local outputs=()
    for config in "${configs[@]}"; do
        # shellcheck disable=SC2206
        local flags=($config)
        # shellcheck disable=SC2086
        launch main_defense.py --mode eval --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --attack_type ${ATTACKS:-fgsm pgd mim} "${flags[@]}" "$@"
        # shellcheck disable=SC2086
        outputs+=("$("$PYTHON" main_defense.py --print_eval_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --attack_type ${ATTACKS:-fgsm pgd mim} "${flags[@]}" "$@")")
    done
    "$PYTHON" scripts/summarize.py "${outputs[@]}" \
        --markdown "$(dirname "$(dirname "$(dirname "${outputs[0]}")")")/defense_summary_$dataset.md" --findings
}

# eval_localization DATASET ARGS...: the localization maps of HEADS (default: loc; attention also has a
# map), clean and under ATTACKS (default: fgsm pgd mim), attacking the label and the map itself.
# Results in <run>/evals/localization_*/ (listed in <run>/evals/index.json).
eval_localization() {
    local dataset=$1 head
    shift
    paper_flags "$dataset"
    for head in ${HEADS:-loc}; do
        # shellcheck disable=SC2086
        launch main_localization.py --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
            --attack_type ${ATTACKS:-fgsm pgd mim} "$@"
    done
}
