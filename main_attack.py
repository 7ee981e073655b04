"""Train audio-only, visual-only and audio-visual event classifiers; evaluate them clean and under attack.

    python main_attack.py --mode train --dataset MUSIC --arch_classifier concat ...
    python main_attack.py --mode eval  --dataset MUSIC --arch_classifier concat ...   (same flags)

    python main_attack.py --mode eval  --run ckpt/<run id> --attack_type fgsm          (the run's own flags)

Eval writes metrics.json (clean) into the run folder and one folder per evaluation, RUN/evals/<name>/ (named after
the attacks, budgets and threat model, or --eval_name; an identical finished one is reused, a different one refused
without --overwrite; listed in RUN/evals/index.json): eval.json (the command and flags), metrics.json,
attack_results.json (accuracies with 95 % intervals, perturbation sizes, the gradient-masking checks),
per_sample.npz (per-sample records), attack_table.md, acc_vs_eps.png, cos_sim.png and visualization/index.html;
with --corruptions a second folder with corruption_results.json, corruption_table.md, corruption_per_sample.npz
and corruption.png (evaluation/corruption/evaluate.py).

Runs on CUDA when present, else on the CPU; one process per GPU under torchrun (scripts/_paper.sh launches it).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import ArgParser
from dataset.loaders import build_dataset, build_loader
from evaluation.corruption.evaluate import evaluate_corruptions
from evaluation.eval_dir import eval_folder_of, evaluation_folder
from evaluation.robustness.pipeline import evaluate_robustness
from training.engine import evaluate_clean, load_best, run_dir_of, run_entry_point, train
from utils.distributed import DistInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return (ArgParser(__doc__, Path(__file__).name).add_run_arguments(["train", "eval"]).add_data_arguments()
            .add_model_arguments().add_train_arguments().add_attack_arguments().add_corruption_arguments()
            .parse(argv))


def evaluate_run(args: argparse.Namespace, info: DistInfo) -> None:
    """--mode eval: the run's best checkpoint on the test split, clean, under attack and under --corruptions."""
    model, epoch = load_best(args, info)
    loader = build_loader(build_dataset(args, "test"), args, info, train=False)
    evaluate_clean(model, loader, args, info, epoch)
    if args.attack_type:
        with evaluation_folder(run_dir_of(args), "attack", args, info) as out_dir:
            if out_dir is not None:
                evaluate_clean(model, loader, args, info, epoch, out_dir)
                evaluate_robustness(model, loader, args, info, out_dir)
    if args.corruptions is not None:
        with evaluation_folder(run_dir_of(args), "corruptions", args, info) as out_dir:
            if out_dir is not None:
                evaluate_clean(model, loader, args, info, epoch, out_dir)
                evaluate_corruptions(model, loader, args, info, out_dir)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_eval_dir:
        print(eval_folder_of(run_dir_of(args), "attack" if args.attack_type else "corruptions", args))
        return
    run_entry_point(args, lambda args, info: train(args, info) if args.mode == "train"
                    else evaluate_run(args, info))


if __name__ == "__main__":
    main()
