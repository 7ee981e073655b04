#!/usr/bin/env bash
# GPU check: every CUDA path of the project, run unattended on one CUDA GPU in under 6 minutes (an estimate: this
# version has not run on a GPU yet), then the GPU benchmark; prints a summary of figures for the README at the end.
# It needs a CUDA GPU and says so otherwise.
#
#     bash scripts/gpu_check.sh
#
# On a synthetic dataset at the paper's sizes (ResNet-18 from random init on one 224 px frame, anet on 65535
# samples, batch 32, 8 loader workers), with --device cuda throughout:
#   1. data: make_synthetic.py (224 px, 6 s clips) -> preprocess.py (8 fps, 11025 Hz) -> create_index.py
#   2. one training epoch in float32                      (main_attack.py --mode train, concat)
#   3. one training epoch with --amp, concat and loc      (--amp_dtype auto: bfloat16 without GradScaler on GPUs
#                                                          that compute it, else float16 + GradScaler;
#                                                          cudnn.benchmark and channels-last at auto: on)
#   4. an NCCL all-reduce under torchrun                   (one process per GPU: 2 when two GPUs are visible)
#   5. one training epoch under torchrun, --amp           (DistributedDataParallel over NCCL with 2 processes)
#   6. attack evaluation: FGSM, PGD, MIM, paper budgets   (main_attack.py --mode eval --amp --max_samples 32)
#   7. defense: memory banks                              (main_defense.py --mode build_bank, --mode eval --use_banks)
#   8. sound-source localization of the loc model         (main_localization.py --boxes)
#   9. AutoAttack at its standard settings (APGD-CE, APGD-T, FAB-T, Square 5000 queries; the paper's budgets) on a
#      concat model trained long enough to be right on most clips ($AA_EPOCHS epochs, --amp, AdamW)
#  10. python bench/bench_gpu.py: the AMP table (batch 32 / 128 x cudnn.benchmark off / on x fp32, fp16, bf16,
#      each with and without channels-last) with torch.profiler tables and a diagnosis, the data-wait fraction of
#      the loader over the dataset on disk, PGD-10 against its limit
# Any failure stops the script with the step named (set -euo pipefail). Nothing here is pass/fail on the
# figures: they are printed with their targets.
#
# Environment:
#   GPU_CHECK_DIR     work folder (default data/gpu_check): the dataset (kept for reruns) and ckpt/ (redone)
#   GPU_CHECK_PYTHON  an interpreter that already has requirements.txt (e.g. an offline GPU machine);
#                     default: the .venv of scripts/_bootstrap.sh, created and filled on the first run
#   GPU_CHECK_REHEARSAL=1  for working on this script on a machine without a GPU: the same steps on the CPU
#                     (--device cpu, 64 px, 8192 samples, batch 8, no NCCL step, AutoAttack at the demo's reduced
#                     settings on a float32-trained model, bench_gpu.py --small); its figures mean nothing
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
set -E  # the ERR trap below also fires inside functions
cd "$REPO_ROOT"

REHEARSAL="${GPU_CHECK_REHEARSAL:-0}"
if [ "$REHEARSAL" != 1 ] && ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "error: scripts/gpu_check.sh needs a CUDA GPU and this machine has none (no nvidia-smi)." >&2
    echo "       Run it on a machine with an NVIDIA GPU; bash scripts/test.sh is the CPU check." >&2
    exit 1
fi
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
    PYTHON="$GPU_CHECK_PYTHON"
    export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"
else
    ensure_venv requirements.txt
fi
export PYTHONUNBUFFERED=1

WORK="${GPU_CHECK_DIR:-data/gpu_check}"
SOURCE="$WORK/videos"   # make_synthetic.py output: videos/, boxes.json, categories.txt
ROOT="$WORK/root"       # SoP layout: audio/, frames/, train/val/test.csv
CKPT="$WORK/ckpt"
if [ "$REHEARSAL" = 1 ]; then
    DEVICE=cpu IMG=64 AUDLEN=8192 BATCH=8 WORKERS=2 PER_CLASS=8 EVAL_SAMPLES=16 BANK=16 AA_EPOCHS=12
    BENCH_FLAGS=(--device cpu --small --threads 1 --workers 2)
    AA_SETTINGS=(--apgd_steps 10 --apgd_targets 2 --square_queries 100)  # the demo's reduced cascade
    AA_AMP=()  # bfloat16 is emulated on most CPUs: a ResNet-18 step takes seconds
else
    DEVICE=cuda IMG=224 AUDLEN=65535 BATCH=32 WORKERS=8 PER_CLASS=32 EVAL_SAMPLES=32 BANK=64 AA_EPOCHS=12
    BENCH_FLAGS=(--device cuda --workers 8 --warmup 3 --iters 3 --repeats 3)
    AA_SETTINGS=()  # AutoAttack's standard version: the defaults (APGD 100 steps, 9 targets, Square 5000 queries)
    AA_AMP=(--amp)
fi

STEP="checking the GPU"
STEP_START=$SECONDS
STEP_NAMES=()
STEP_SECONDS=()
trap 'rc=$?; echo >&2; echo "gpu_check: FAILED in step \"$STEP\" (exit status $rc, line $LINENO); see the output above" >&2' ERR

# begin NAME: close the current step (its wall time goes into the summary) and start the next.
begin() {
    STEP_NAMES+=("$STEP")
    STEP_SECONDS+=($((SECONDS - STEP_START)))
    STEP="$1"
    STEP_START=$SECONDS
    echo
    echo "== [$(date +%T)] $STEP"
}

if [ "$REHEARSAL" = 1 ]; then
    echo "REHEARSAL on the CPU (GPU_CHECK_REHEARSAL=1): checks this script's steps, not CUDA; figures mean nothing"
    NPROC=1
else
    nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "error: nvidia-smi sees a GPU but torch $("$PYTHON" -c 'import torch; print(torch.__version__)') cannot" \
             "use it (torch.cuda.is_available() is False): a CPU-only torch build or a driver too old for it" >&2
        exit 1
    fi
    GPUS="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count())')"
    NPROC=$((GPUS >= 2 ? 2 : 1))
    "$PYTHON" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN",
                  torch.backends.cudnn.version(), "| GPUs visible:", torch.cuda.device_count())'
fi

# The flags every run shares: the paper's model and data sizes, one epoch, from scratch (no download).
FLAGS=(--dataset synthetic --data_root "$ROOT" --device "$DEVICE" --seed 0
    --arch_frame resnet18 --img_pool max --arch_sound anet --weights_frame ""
    --num_frames 1 --stride_frames 8 --frameRate 8 --imgSize "$IMG" --audLen "$AUDLEN" --audRate 11025
    --num_epoch 1 --lr_steps 1 --batch_size_per_gpu "$BATCH" --workers "$WORKERS")
EVAL=(--max_samples "$EVAL_SAMPLES" --num_vis 4)

begin "1/10 synthetic data at 224 px: make_synthetic.py -> preprocess.py -> create_index.py into $WORK"
if [ ! -f "$SOURCE/boxes.json" ]; then
    "$PYTHON" scripts/make_synthetic.py --out "$SOURCE" --seed 0 --num_classes 6 --per_class "$PER_CLASS" \
        --size 224 --duration 6
else
    echo "videos already there (delete $SOURCE to regenerate)"
fi
"$PYTHON" scripts/preprocess.py --videos "$SOURCE/videos" --out "$ROOT" --fps 8 --audio_rate 11025
cp "$SOURCE/categories.txt" "$ROOT/categories.txt"
"$PYTHON" scripts/create_index.py --root "$ROOT" --split 0.6 0.2 0.2 --seed 0
rm -rf "$CKPT"  # no output of an earlier run may stand in for this one's

begin "2/10 training, float32: main_attack.py --mode train (concat, 1 epoch)"
"$PYTHON" main_attack.py --mode train --arch_classifier concat "${FLAGS[@]}" --ckpt "$CKPT/fp32"

begin "3/10 training, --amp: main_attack.py --mode train --amp (concat and loc, 1 epoch each)"
for head in concat loc; do
    "$PYTHON" main_attack.py --mode train --amp --arch_classifier "$head" "${FLAGS[@]}" --ckpt "$CKPT/amp"
done

begin "4/10 NCCL all-reduce under torchrun, $NPROC process(es)"
if [ "$REHEARSAL" = 1 ]; then
    echo "skipped in a rehearsal (no GPU, no NCCL)"
else
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" --no-python "$PYTHON" -c '
import os, torch, torch.distributed as dist
rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
dist.init_process_group("nccl")
value = torch.full((1024,), float(rank + 1), device="cuda")
dist.all_reduce(value)
expected = world * (world + 1) / 2
if not torch.all(value == expected):
    raise SystemExit(f"rank {rank}: NCCL all_reduce gave {value[0].item()}, expected {expected}")
version = ".".join(map(str, torch.cuda.nccl.version()))
print(f"rank {rank}/{world}: NCCL {version} all_reduce of {value.numel()} floats ok")
dist.destroy_process_group()'
fi

begin "5/10 training under torchrun, $NPROC process(es), --amp: main_attack.py --num_gpus $NPROC (concat, 1 epoch)"
"$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" main_attack.py --mode train --amp \
    --arch_classifier concat "${FLAGS[@]}" --num_gpus "$NPROC" --ckpt "$CKPT/ddp"

begin "6/10 attack evaluation: main_attack.py --mode eval --amp, FGSM PGD MIM, $EVAL_SAMPLES test samples"
"$PYTHON" main_attack.py --mode eval --amp --arch_classifier concat "${FLAGS[@]}" --ckpt "$CKPT/amp" \
    --attack_type fgsm pgd mim "${EVAL[@]}"

begin "7/10 defense with memory banks: main_defense.py --mode build_bank, then --mode eval --use_banks (PGD)"
DEFENSE=(--arch_classifier concat "${FLAGS[@]}" --ckpt "$CKPT/amp" --train_mode standard --lambda_cos 0)
"$PYTHON" main_defense.py --mode build_bank "${DEFENSE[@]}" --bank_size "$BANK"
"$PYTHON" main_defense.py --mode eval --amp "${DEFENSE[@]}" --use_banks --coding_max_iter 100 \
    --attack_type pgd "${EVAL[@]}"

begin "8/10 sound-source localization: main_localization.py --arch_classifier loc --boxes (PGD)"
"$PYTHON" main_localization.py --arch_classifier loc "${FLAGS[@]}" --ckpt "$CKPT/amp" --boxes "$SOURCE/boxes.json" \
    --attack_type pgd "${EVAL[@]}"

begin "9/10 AutoAttack: concat trained $AA_EPOCHS epochs (${AA_AMP[*]:-float32}, AdamW), then main_attack.py --attack_type autoattack"
AA_TRAIN=(--arch_classifier concat "${FLAGS[@]}" --ckpt "$CKPT/aa" --num_epoch "$AA_EPOCHS" --lr_steps "$AA_EPOCHS"
    --optimizer adamw --lr_frame 1e-3 --lr_sound 1e-3 --lr_classifier 1e-3 --weight_decay 0.01
    --eval_epoch "$AA_EPOCHS" "${AA_AMP[@]}")
AA_EVAL=(--attack_type autoattack "${AA_SETTINGS[@]}" "${EVAL[@]}")
"$PYTHON" main_attack.py --mode train "${AA_TRAIN[@]}"
"$PYTHON" main_attack.py --mode eval "${AA_TRAIN[@]}" "${AA_EVAL[@]}"

begin "10/10 bench/bench_gpu.py"
"$PYTHON" bench/bench_gpu.py "${BENCH_FLAGS[@]}" --data_root "$ROOT" --json "$WORK/bench_gpu.json"

begin "summary"
run_dir() {  # run_dir CKPT HEAD [main_defense.py flags]: the run folder those flags select
    local ckpt=$1 head=$2
    shift 2
    "$PYTHON" main_attack.py --print_run_dir --arch_classifier "$head" "${FLAGS[@]}" --ckpt "$ckpt" "$@"
}
FP32_RUN="$(run_dir "$CKPT/fp32" concat)"
AMP_RUN="$(run_dir "$CKPT/amp" concat)"
LOC_RUN="$(run_dir "$CKPT/amp" loc)"
DDP_RUN="$(run_dir "$CKPT/ddp" concat)"
AA_DIR="$("$PYTHON" main_attack.py --print_eval_dir "${AA_TRAIN[@]}" "${AA_EVAL[@]}")"
"$PYTHON" - "$WORK/bench_gpu.json" "$FP32_RUN" "$AMP_RUN" "$LOC_RUN" "$DDP_RUN" "$AA_DIR" "$REHEARSAL" "$NPROC" \
    "${STEP_NAMES[@]}" -- "${STEP_SECONDS[@]}" <<'PY'
import json
import sys
from pathlib import Path

import torch

bench_path, fp32, amp, loc, ddp, aa_dir, rehearsal, nproc, *rest = sys.argv[1:]
split = rest.index("--")
steps = list(zip(rest[:split], map(int, rest[split + 1:])))
bench = json.loads(Path(bench_path).read_text())

print(("REHEARSAL ON THE CPU: these figures say nothing about a GPU\n" if rehearsal == "1" else "")
      + f"GPU check on {bench['device']}; torch {bench['torch']}")
print("\n| step | wall time (s) |\n|---|---|")
for name, seconds in steps:
    print(f"| {name} | {seconds} |")
total = sum(s for _, s in steps)
print(f"| total | {total} ({total / 60:.1f} min{'; over the 6 min aim' if total > 360 else ''}) |")

print("\n| training run (1 epoch) | epoch s | train loss | train acc | val acc | GradScaler |\n|---|---|---|---|---|---|")
for label, run in (("float32", fp32), ("--amp", amp), (f"torchrun x{nproc}, --amp", ddp), ("loc, --amp", loc)):
    record = json.loads((Path(run) / "history.json").read_text())[-1]
    state = torch.load(Path(run) / "train_state_latest.pth", map_location="cpu", weights_only=True)
    scale = state.get("scaler", {}).get("scale")
    scaler = "not used" if scale is None else f"scale {float(scale):g}"
    print(f"| {label} | {record['seconds']:.1f} | {record['train_loss']:.4f} | {record['train_acc']:.2f} | "
          f"{record.get('val_acc', float('nan')):.2f} | {scaler} |")

training = bench["training"]
settings = bench["settings"]
names = list(training["rows"][0]["samples_per_s"])
print(f"\nbench/bench_gpu.py, training samples/s (ratio to fp32), {settings['frame_arch']} at {settings['img']} px + "
      f"anet on {settings['audio_len']} samples + concat, CL = channels-last:\n")
print("| batch, cudnn.benchmark | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 1) + "|")
for row in training["rows"]:
    cells = [f"{row['samples_per_s'][n]:.0f} /s ({row['ratio'][n]:.2f} x)" for n in names]
    print(f"| {row['batch']}, {row['cudnn_benchmark']} | " + " | ".join(cells) + " |")
print("\ndiagnosis:\n" + "\n".join(f"- {line}" for line in training["diagnosis"]))
print("\n| figure | value | target |\n|---|---|---|")
for batch, t in training["targets"].items():
    print(f"| the mains' --amp ({t['config']}, cudnn.benchmark on) at batch {batch} | {t['ratio']:.2f} x fp32 | "
          f">= {t['target']} x |")
wait = bench["data_wait"]
print(f"| data wait, {wait['workers']} workers, {wait['step']} step | {100 * wait['fraction']:.1f} % "
      f"({1e3 * wait['wait_s'] / wait['batches']:.1f} of {1e3 * wait['step_s'] / wait['batches']:.1f} ms per step) "
      "| < 5 % |")
pgd = bench["pgd"]
print(f"| PGD-10 / 10 x (forward + input-gradient backward) | {pgd['ratio']:.3f} "
      f"({1e3 * pgd['pgd_s']:.0f} vs {1e3 * pgd['limit_s']:.0f} ms) | <= 1.10 |")

results = json.loads((Path(aa_dir) / "attack_results.json").read_text())
clean = results["clean"]
settings = (f"APGD {results['apgd_steps']} steps, {results['apgd_targets']} targets, Square {results['square_queries']} "
            "queries")
print(f"\nAutoAttack ({settings}) on the concat model of step 9, {clean['n']} test clips, clean accuracy "
      f"{clean['acc']:.1f} %" + ("" if clean["acc"] >= 50 else " (WARNING: below 50 %: most clips are wrong already, "
                                 "so the attack has little to do and its time says little)"))
print("\n| budget | robust accuracy | seconds | per component (accuracy after it, seconds) |\n|---|---|---|---|")
for entry in results["attacks"]:
    parts = ", ".join(f"{c['component']} {c['acc']:.1f} % {c['seconds']:.1f} s" for c in entry.get("components", []))
    print(f"| {entry['label']} | {entry['adv_acc']:.1f} % | {entry['seconds']:.1f} | {parts} |")
print(f"| all budgets | | {sum(e['seconds'] for e in results['attacks']):.1f} | |")
PY
ATTACK_EVAL="$("$PYTHON" main_attack.py --print_eval_dir --arch_classifier concat "${FLAGS[@]}" --ckpt "$CKPT/amp" \
    --attack_type fgsm pgd mim "${EVAL[@]}")"
DEFENSE_EVAL="$("$PYTHON" main_defense.py --print_eval_dir "${DEFENSE[@]}" --use_banks --coding_max_iter 100 \
    --attack_type pgd "${EVAL[@]}")"
LOC_EVAL="$("$PYTHON" main_localization.py --print_eval_dir --arch_classifier loc "${FLAGS[@]}" --ckpt "$CKPT/amp" \
    --boxes "$SOURCE/boxes.json" --attack_type pgd "${EVAL[@]}")"
for table in "$ATTACK_EVAL/attack_table.md" "$DEFENSE_EVAL/attack_table.md" "$LOC_EVAL/loc_table.md"; do
    echo
    echo "$table (up to $EVAL_SAMPLES test samples, models trained for one epoch: the numbers only show the path ran)"
    cat "$table"
done
echo
echo "$AA_DIR/attack_table.md (AutoAttack on the model of step 9, up to $EVAL_SAMPLES test samples)"
cat "$AA_DIR/attack_table.md"
trap - ERR
echo
echo "gpu_check: all steps passed"
