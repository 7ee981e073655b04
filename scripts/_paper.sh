# Sourced by the per-dataset scripts: the paper's settings per dataset and a launcher that starts
# one torchrun process per GPU when NUM_GPUS > 1 (one plain process otherwise).
#
# paper_flags DATASET fills the array PAPER_FLAGS with the data, model and schedule flags the train,
# eval, defense and localization scripts of that dataset share, so their run ids meet in one folder.
# Environment: MUSIC_ROOT / AVE_ROOT / KINETICS_ROOT (data roots), NUM_GPUS (default 1),
# WEIGHTS_FRAME (default imagenet; '' trains the visual net from scratch).

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
        --arch_frame resnet18 --img_pool max --weights_frame "${WEIGHTS_FRAME-imagenet}" --arch_sound anet
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
