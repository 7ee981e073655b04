#!/usr/bin/env bash
# The whole study on the embedded synthetic dataset, on the CPU of a laptop:
# generate videos -> preprocess (8 fps, 11025 Hz) -> index -> dataset statistics -> train audio-only,
# visual-only, audio-visual (concat) and localization (loc) models -> attack them (PGD and a reduced-budget
# audio-visual AutoAttack, per-sample records, gradient-masking checks; the paper's budgets)
# -> sound-source localization of loc against the generated boxes, clean and attacked -> defend the concat
# model (dissimilarity constraint + memory banks, attacked through the sparse coding at its full iteration
# budget) and train the adversarial-training baseline -> summary table with 95 % intervals and findings
# with McNemar tests. Rerunning skips what is done (finished videos, finished training runs).
# DEMO_DIR (default data/) holds the data, DEMO_CKPT (default ckpt/demo) the runs; DEMO_SEED seeds all.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

DEMO_DIR="${DEMO_DIR:-data}"
DEMO_SEED="${DEMO_SEED:-0}"
SOURCE="$DEMO_DIR/synthetic_videos"     # generated videos, boxes.json, categories.txt
ROOT="$DEMO_DIR/synthetic"              # SoP layout: audio/, frames/, train/val/test.csv
export SYNTHETIC_ROOT="$ROOT"

echo "== 1/8 generating the embedded dataset into $SOURCE"
if [ ! -f "$SOURCE/boxes.json" ]; then
    "$PYTHON" scripts/make_synthetic.py --out "$SOURCE" --seed "$DEMO_SEED" --num_classes 6 --per_class 100 \
        --duration 3
else
    echo "already there (delete $SOURCE to regenerate)"
fi

echo "== 2/8 preprocessing videos into $ROOT (frames at 8 fps, audio at 11025 Hz)"
"$PYTHON" scripts/preprocess.py --videos "$SOURCE/videos" --out "$ROOT" --fps 8 --audio_rate 11025

echo "== 3/8 building the index"
mkdir -p "$ROOT"
cp "$SOURCE/categories.txt" "$ROOT/categories.txt"
"$PYTHON" scripts/create_index.py --root "$ROOT" --split 0.35 0.15 0.5 --seed "$DEMO_SEED"

echo "== 4/8 dataset statistics"
"$PYTHON" scripts/dataset_stats.py --dataset synthetic --data_root "$ROOT" --imgSize 112 --audLen 16384

# CPU-sized models: a small CNN on 112 px frames, a narrow anet on 1.5 s of audio.
CKPT="${DEMO_CKPT:-ckpt/demo}"
MODEL_FLAGS=(--dataset synthetic --data_root "$ROOT" --ckpt "$CKPT" --seed "$DEMO_SEED"
    --arch_frame smallcnn --frame_dim 128 --arch_sound anet --sound_dim 128 --imgSize 112 --audLen 16384
    --num_epoch 15 --lr_steps 11 --batch_size_per_gpu 16 --workers 2)
HEADS=(audio visual concat loc)

echo "== 5/8 training ${HEADS[*]} on the CPU"
runs=()
for head in "${HEADS[@]}"; do
    run="$("$PYTHON" main_attack.py --print_run_dir --arch_classifier "$head" "${MODEL_FLAGS[@]}")"
    resume=()
    [ -f "$run/train_state_latest.pth" ] && resume=(--resume)
    "$PYTHON" main_attack.py --mode train --arch_classifier "$head" "${MODEL_FLAGS[@]}" \
        --lr_frame 0.01 --lr_sound 0.01 --lr_classifier 0.01 "${resume[@]}"
    runs+=("$run")
done

# PGD (the paper's attack; the dataset scripts also run FGSM and MIM) and AutoAttack at a reduced budget
# that fits the demo (AutoAttack's standard version is the default: --apgd_steps 100 --apgd_targets 9
# --square_queries 5000); the sanity check's short large-budget PGD. Evaluation batches of 50.
ATTACK_FLAGS=(--attack_type pgd autoattack --apgd_steps 10 --apgd_targets 2 --square_queries 100
    --sanity_eps 0.3 --num_vis 8 --batch_size_per_gpu 50)

echo "== 6/8 attacking them: PGD and AA; A eps_a=0.012, V eps_v=0.012, A+V 0.006 each"
for head in "${HEADS[@]}"; do
    "$PYTHON" main_attack.py --mode eval --arch_classifier "$head" "${MODEL_FLAGS[@]}" "${ATTACK_FLAGS[@]}" \
        | grep -v "^  "
done

echo "== 7/8 sound-source localization of loc: its map against the boxes, clean and under attack"
"$PYTHON" main_localization.py --arch_classifier loc "${MODEL_FLAGS[@]}" --boxes "$SOURCE/boxes.json" \
    --attack_type pgd --num_vis 8

echo "== 8/8 defending concat: dissimilarity constraint + memory banks (the paper's), PGD adversarial training"
base="${runs[2]}"
DEFENSE_FLAGS=(--arch_classifier concat "${MODEL_FLAGS[@]}" --num_epoch 5 --lr_steps 4
    --lr_frame 0.001 --lr_sound 0.001 --lr_classifier 0.001 --train_attack_steps 3)
INIT=(--weights_frame "$base/frame_best.pth" --weights_sound "$base/sound_best.pth"
    --weights_classifier "$base/classifier_best.pth")
defended=()
for mode in "--train_mode standard --lambda_cos 1" "--train_mode adv --lambda_cos 0"; do
    # shellcheck disable=SC2206
    flags=($mode)
    run="$("$PYTHON" main_defense.py --print_run_dir "${DEFENSE_FLAGS[@]}" "${flags[@]}")"
    resume=()
    [ -f "$run/train_state_latest.pth" ] && resume=(--resume)
    "$PYTHON" main_defense.py --mode train "${DEFENSE_FLAGS[@]}" "${INIT[@]}" "${flags[@]}" "${resume[@]}"
    banks=()
    if [ "${flags[1]}" = standard ]; then
        "$PYTHON" main_defense.py --mode build_bank "${DEFENSE_FLAGS[@]}" "${flags[@]}"
        banks=(--use_banks)
    fi
    # The banks' forward pass runs FISTA to convergence (up to 2000 iterations) at every attack step, so the
    # defended models are attacked under the A and A+V budgets only (V at 0.012 normalised is below 1/255 and
    # moves no model here) and with the adaptive variants CE + cos and BPDA (--defense_attacks).
    "$PYTHON" main_defense.py --mode eval "${DEFENSE_FLAGS[@]}" "${flags[@]}" "${banks[@]}" "${ATTACK_FLAGS[@]}" \
        --epsilons 0,0.012 0.006,0.006 --defense_attacks ce+cos bpda | grep -v "^  "
    if [ ${#banks[@]} -gt 0 ]; then defended+=("$run/defense_banks"); else defended+=("$run/defense_no_banks"); fi
done

echo "== summary (accuracy % [95 % Wilson interval], test split; adversarial examples: <run>/visualization/)"
"$PYTHON" scripts/summarize.py "${runs[@]}" "${defended[@]}" --markdown "$CKPT/summary.md" \
    --csv "$CKPT/summary.csv" --findings
