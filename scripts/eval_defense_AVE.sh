#!/usr/bin/env bash
# Evaluate the AVE defense of train_defense_AVE.sh next to its baselines, clean and under the paper's
# attacks, each reported as the worst case over white-box CE through the sparse coding, the released
# CE + cos objective and BPDA; then print the defense table.
# Rows: no defense, memory banks alone, dissimilarity alone, both (the paper's), adversarial training, TRADES.
#   AVE_ROOT=/path/to/AVE bash scripts/eval_defense_AVE.sh [extra flags for main_defense.py]
# Pass the same HEAD, BASELINES and extra flags as for training. ATTACKS: default fgsm pgd mim.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
source "$REPO_ROOT/scripts/_paper.sh"
ensure_venv requirements.txt
cd "$REPO_ROOT"

paper_flags AVE
head="${HEAD:-concat}"
outputs=()
evaluate() {  # evaluate FLAGS...: one defense configuration
    launch main_defense.py --mode eval --arch_classifier "$head" "${PAPER_FLAGS[@]}" \
        --attack_type ${ATTACKS:-fgsm pgd mim} "$@" "${EXTRA[@]}"
    local run
    run="$("$PYTHON" main_defense.py --print_run_dir --arch_classifier "$head" "${PAPER_FLAGS[@]}" "$@" "${EXTRA[@]}")"
    if [[ " $* " == *" --use_banks "* ]]; then outputs+=("$run/defense_banks"); else outputs+=("$run/defense_no_banks"); fi
}
EXTRA=("$@")
evaluate --train_mode standard --lambda_cos 0
evaluate --train_mode standard --lambda_cos 0 --use_banks
evaluate --train_mode standard --lambda_cos 1
evaluate --train_mode standard --lambda_cos 1 --use_banks
for baseline in ${BASELINES:-adv trades}; do
    evaluate --train_mode "$baseline" --lambda_cos 0
done
"$PYTHON" scripts/summarize.py "${outputs[@]}" --markdown "$(dirname "${outputs[0]}")/../defense_summary_AVE.md"
