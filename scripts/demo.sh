#!/usr/bin/env bash
# The whole study on the embedded synthetic dataset, on the CPU of a laptop:
# generate videos -> preprocess (8 fps, 11025 Hz) -> index -> dataset statistics -> train audio-only,
# visual-only, audio-visual (concat), class-trained localization (loc) and self-supervised localization (ssl)
# models -> attack audio, visual, concat (PGD and a reduced-budget audio-visual AutoAttack, per-sample
# records, gradient-masking checks; the paper's budgets), the corruption suite on them, the (eps_v, eps_a)
# map of concat -> sound-source localization of loc and ssl against the generated boxes next to the centre
# prior, clean and attacked -> defend concat (dissimilarity constraint; with DEMO_FULL=1 also the memory
# banks, attacked through the sparse coding, about 10 more minutes) next to the adversarial-training
# baseline -> summary table with 95 % intervals and findings with McNemar tests.
# Rerunning skips what is done (finished videos, finished training runs).
# DEMO_DIR (default data/) holds the data, DEMO_CKPT (default ckpt/demo) the runs; DEMO_SEED seeds all.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

DEMO_DIR="${DEMO_DIR:-data}"
DEMO_SEED="${DEMO_SEED:-0}"
SOURCE="$DEMO_DIR/synthetic_videos"     # generated videos, boxes.json, categories.txt
ROOT="$DEMO_DIR/synthetic"              # SoP layout: audio/, frames/, train/val/test.csv
export SYNTHETIC_ROOT="$ROOT"

echo "== 1/9 generating the embedded dataset into $SOURCE"
if [ ! -f "$SOURCE/boxes.json" ]; then
    "$PYTHON" scripts/make_synthetic.py --out "$SOURCE" --seed "$DEMO_SEED" --num_classes 6 --per_class 100 \
        --duration 3
else
    echo "already there (delete $SOURCE to regenerate)"
fi

echo "== 2/9 preprocessing videos into $ROOT (frames at 8 fps, audio at 11025 Hz)"
"$PYTHON" scripts/preprocess.py --videos "$SOURCE/videos" --out "$ROOT" --fps 8 --audio_rate 11025

echo "== 3/9 building the index"
mkdir -p "$ROOT"
cp "$SOURCE/categories.txt" "$ROOT/categories.txt"
"$PYTHON" scripts/create_index.py --root "$ROOT" --split 0.35 0.15 0.5 --seed "$DEMO_SEED"

echo "== 4/9 dataset statistics"
"$PYTHON" scripts/dataset_stats.py --dataset synthetic --data_root "$ROOT" --imgSize 112 --audLen 16384

# CPU-sized models (the CPU recipe of the README): a small pooling CNN on 112 px frames, a log-mel CNN on
# 1.5 s of audio, AdamW with a cosine schedule (the paper's scripts keep ResNet-18 / anet and SGD).
CKPT="${DEMO_CKPT:-ckpt/demo}"
MODEL_FLAGS=(--dataset synthetic --data_root "$ROOT" --ckpt "$CKPT" --seed "$DEMO_SEED"
    --arch_frame poolcnn --frame_dim 128 --arch_sound mel --sound_dim 128 --imgSize 112 --audLen 16384
    --num_epoch 15 --batch_size_per_gpu 16 --workers 2)
RECIPE=(--optimizer adamw --lr_frame 1e-3 --lr_sound 1e-2 --lr_classifier 1e-2 --weight_decay 0.01
    --lr_schedule cosine --warmup_epochs 1 --label_smoothing 0.1)
# The label-free localizer: EZ-VSL (ssl, temperature 0.03) with SGD at lr 0.05, the one label-free recipe that
# beat the centre prior on embedded clips in bench/bench_localization.py (README, Learnability); its training
# prints the collapse detector's figures after each epoch.
SSL_RECIPE=(--optimizer sgd --lr_frame 0.05 --lr_sound 0.05 --lr_classifier 0.05 --lr_steps 30)
HEADS=(audio visual concat loc ssl)

echo "== 5/9 training ${HEADS[*]} on the CPU (ssl: the self-supervised localizer, no labels reach its encoders)"
declare -A run_of
for head in "${HEADS[@]}"; do
    run="$("$PYTHON" main_attack.py --print_run_dir --arch_classifier "$head" "${MODEL_FLAGS[@]}")"
    resume=()
    [ -f "$run/train_state_latest.pth" ] && resume=(--resume)
    recipe=("${RECIPE[@]}")
    [ "$head" = ssl ] && recipe=("${SSL_RECIPE[@]}")
    "$PYTHON" main_attack.py --mode train --arch_classifier "$head" "${MODEL_FLAGS[@]}" "${recipe[@]}" "${resume[@]}"
    run_of[$head]="$run"
done

# PGD (the paper's attack; the dataset scripts also run FGSM and MIM); with DEMO_FULL=1 also AutoAttack at a
# reduced budget (AutoAttack's standard version is the default: --apgd_steps 100 --apgd_targets 9
# --square_queries 5000; the cascade attacks every sample still standing with each component, about 10 minutes
# on the visual model here). The sanity check's short large-budget PGD. Evaluation batches of 50.
ATTACKS=(pgd)
[ "${DEMO_FULL:-0}" = 1 ] && ATTACKS=(pgd autoattack)
ATTACK_FLAGS=(--attack_type "${ATTACKS[@]}" --apgd_steps 10 --apgd_targets 2 --square_queries 100
    --sanity_eps 0.3 --num_vis 8 --batch_size_per_gpu 50)
# The corruption suite at severities 1, 3 and 5 (DEMO_FULL=1: all five).
SEVERITIES=(1 3 5)
[ "${DEMO_FULL:-0}" = 1 ] && SEVERITIES=(1 2 3 4 5)

echo "== 6/9 attacking audio, visual, concat (${ATTACKS[*]}; A eps_a=0.012, V eps_v=0.012, A+V 0.006 each),"
echo "        the corruption suite, and the (eps_v, eps_a) map of concat under PGD"
# Each evaluation gets its own folder, <run>/evals/<name> (listed in <run>/evals/index.json); a rerun reuses the
# finished ones.
attack_evals=()
for head in audio visual concat; do
    map=()
    [ "$head" = concat ] && map=(--eps_grid2d 0.012 0.024)
    EVAL_FLAGS=(--arch_classifier "$head" "${MODEL_FLAGS[@]}" "${ATTACK_FLAGS[@]}" --corruptions
        --corruption_severities "${SEVERITIES[@]}" "${map[@]}")
    "$PYTHON" main_attack.py --mode eval "${EVAL_FLAGS[@]}" | grep -v "^  "
    attack_evals+=("$("$PYTHON" main_attack.py --print_eval_dir "${EVAL_FLAGS[@]}")")
    corruption_eval="$("$PYTHON" main_attack.py --print_eval_dir "${EVAL_FLAGS[@]}" --attack_type none)"
    echo "-- corruptions of $head (accuracy % [95 % interval]; severity 0 = clean):"
    sed -n '3,/^Measured strength/p' "$corruption_eval/corruption_table.md" | sed '$d'
done

echo "== 7/9 sound-source localization of loc (class-trained) and ssl (label-free): maps against the"
echo "        boxes next to the centre prior and a random map, clean and under the class / map / correspondence attacks"
# ssl: its last epoch ("best" follows the linear probe's accuracy, which can peak before the map does).
# Budgets A and A+V (V at 0.012 normalised is below 1/255 and hardly moves the maps).
for head in loc ssl; do
    checkpoint=best
    [ "$head" = ssl ] && checkpoint=latest
    "$PYTHON" main_localization.py --arch_classifier "$head" "${MODEL_FLAGS[@]}" --boxes "$SOURCE/boxes.json" \
        --attack_type pgd --loc_attack class map corr --checkpoint "$checkpoint" --num_vis 8 --batch_size_per_gpu 50 \
        --epsilons 0,0.012 0.006,0.006
done

echo "== 8/9 defending concat: dissimilarity constraint (+ memory banks with DEMO_FULL=1), PGD adversarial training"
base="${run_of[concat]}"
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
    variants=(ce+cos)  # BPDA differs from the white-box attack only through the banks' coding
    if [ "${flags[1]}" = standard ] && [ "${DEMO_FULL:-0}" = 1 ]; then
        "$PYTHON" main_defense.py --mode build_bank "${DEFENSE_FLAGS[@]}" "${flags[@]}"
        banks=(--use_banks)
        variants=(ce+cos bpda)
    fi
    # The banks' forward pass runs FISTA to convergence (up to 2000 iterations) at every attack step (about
    # 9 minutes here, hence DEMO_FULL=1 only). The defended models are attacked under the A and A+V budgets
    # (V at 0.012 normalised is below 1/255) with the adaptive CE + cos (and BPDA through the banks).
    EVAL_FLAGS=("${DEFENSE_FLAGS[@]}" "${flags[@]}" "${banks[@]}" "${ATTACK_FLAGS[@]}" --epsilons 0,0.012 0.006,0.006
        --defense_attacks "${variants[@]}")
    "$PYTHON" main_defense.py --mode eval "${EVAL_FLAGS[@]}" | grep -v "^  "
    defended+=("$("$PYTHON" main_defense.py --print_eval_dir "${EVAL_FLAGS[@]}")")
done

echo "== 9/9 summary (accuracy % [95 % Wilson interval], test split; adversarial examples: <run>/evals/*/visualization/)"
"$PYTHON" scripts/summarize.py "${attack_evals[@]}" "${defended[@]}" --markdown "$CKPT/summary.md" \
    --csv "$CKPT/summary.csv" --json "$CKPT/summary.json" --findings
echo "the (eps_v, eps_a) map of concat: ${attack_evals[2]}/eps_map.png; corruption figures:" \
    "<run>/evals/corruptions_*/corruption.png; every evaluation of a run: <run>/evals/index.json"
