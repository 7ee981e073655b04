#!/usr/bin/env bash
# The whole study on the embedded synthetic dataset, on the CPU of a laptop:
# generate videos -> preprocess (8 fps, 11025 Hz) -> index -> dataset statistics -> train audio-only,
# visual-only, audio-visual (concat), class-trained localization (loc) and label-free localization (ssl)
# models -> attack audio, visual, concat (PGD and a reduced-budget audio-visual AutoAttack, per-sample
# records, gradient-masking checks; the paper's budgets), the corruption suite on them -> sound-source localization of loc and ssl against the generated boxes next to the centre
# prior, clean and attacked -> defend concat (dissimilarity constraint with the memory banks, attacked through
# the sparse coding) next to the adversarial-training baseline, both under PGD and AutoAttack -> summary table
# with 95 % intervals and findings with McNemar tests.
# Rerunning skips what is done (finished videos, finished training runs, finished evaluations).
# DEMO_DIR (default data/) holds the data, DEMO_CKPT (default ckpt/demo) the runs; DEMO_SEED seeds all;
# The evaluations use a class-stratified subset of the test clips (DEMO_EVAL_SAMPLES, default in
# scripts/demo_study.py); DEMO_FULL=1 evaluates every test clip and runs AutoAttack at its standard budget, the
# corruptions at all five severities, and the (eps_v, eps_a) map of concat.
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

# Steps 5-8 run in one Python process (scripts/demo_study.py, which prints the command line of each step): the
# CPU-sized models of the README's CPU recipe, PGD and the reduced-budget AutoAttack on every model (the defended
# ones too), the corruption suite, localization under attack, and the defenses with the memory banks.
CKPT="${DEMO_CKPT:-ckpt/demo}"
full=()
[ "${DEMO_FULL:-0}" = 1 ] && full=(--full)
[ -n "${DEMO_EVAL_SAMPLES:-}" ] && full+=(--eval_samples "$DEMO_EVAL_SAMPLES")
"$PYTHON" scripts/demo_study.py --root "$ROOT" --boxes "$SOURCE/boxes.json" --ckpt "$CKPT" --seed "$DEMO_SEED" \
    --evals_out "$CKPT/demo_evaluations.txt" "${full[@]}"
mapfile -t evaluations < "$CKPT/demo_evaluations.txt"

echo "== 9/9 summary (accuracy % [95 % Wilson interval], test split; adversarial examples: <run>/evals/*/visualization/)"
"$PYTHON" scripts/summarize.py "${evaluations[@]}" --markdown "$CKPT/summary.md" \
    --csv "$CKPT/summary.csv" --json "$CKPT/summary.json" --findings
echo "corruption figures: <run>/evals/corruptions_*/corruption.png; the (eps_v, eps_a) map of concat (DEMO_FULL=1):" \
    "${evaluations[2]}/eps_map.png; every evaluation of a run: <run>/evals/index.json"
