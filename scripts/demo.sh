#!/usr/bin/env bash
# The whole study on the embedded synthetic dataset, on the CPU of a laptop:
# generate videos -> preprocess (8 fps, 11025 Hz) -> index -> dataset statistics.
# DEMO_DIR (default data/) says where the data go; DEMO_SEED the generator's seed.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

DEMO_DIR="${DEMO_DIR:-data}"
DEMO_SEED="${DEMO_SEED:-0}"
SOURCE="$DEMO_DIR/synthetic_videos"     # generated videos, boxes.json, categories.txt
ROOT="$DEMO_DIR/synthetic"              # SoP layout: audio/, frames/, train/val/test.csv
export SYNTHETIC_ROOT="$ROOT"

echo "== 1/4 generating the embedded dataset into $SOURCE"
if [ ! -f "$SOURCE/boxes.json" ]; then
    "$PYTHON" scripts/make_synthetic.py --out "$SOURCE" --seed "$DEMO_SEED"
else
    echo "already there (delete $SOURCE to regenerate)"
fi

echo "== 2/4 preprocessing videos into $ROOT (frames at 8 fps, audio at 11025 Hz)"
"$PYTHON" scripts/preprocess.py --videos "$SOURCE/videos" --out "$ROOT" --fps 8 --audio_rate 11025

echo "== 3/4 building the index"
mkdir -p "$ROOT"
cp "$SOURCE/categories.txt" "$ROOT/categories.txt"
"$PYTHON" scripts/create_index.py --root "$ROOT" --split 0.6 0.2 0.2 --seed "$DEMO_SEED"

echo "== 4/4 dataset statistics"
"$PYTHON" scripts/dataset_stats.py --dataset synthetic --data_root "$ROOT" --imgSize 112 --audLen 16384
