#!/usr/bin/env bash
# Evaluate the MUSIC models of train_attack_MUSIC.sh clean and under FGSM / PGD / MIM with the paper's
# budgets (A: eps_a 0.012, V: eps_v 0.012, A+V: 0.006 each), then print the paper-style table.
#   MUSIC_ROOT=/path/to/MUSIC bash scripts/eval_attack_MUSIC.sh [extra main_attack.py flags]
# Pass the same HEADS and extra flags as for training so the run ids match. ATTACKS overrides the
# attack types (default: fgsm pgd mim; apgd is available).
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
source "$REPO_ROOT/scripts/_paper.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

paper_flags MUSIC
runs=()
for head in ${HEADS:-audio visual concat}; do
    launch main_attack.py --mode eval --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
        --attack_type ${ATTACKS:-fgsm pgd mim} "$@"
    runs+=("$("$PYTHON" main_attack.py --print_run_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" "$@")")
done
"$PYTHON" scripts/summarize.py "${runs[@]}" --markdown "${runs[-1]}/../summary_MUSIC.md"
