"""Train audio-only, visual-only and audio-visual event classifiers; evaluate them clean and under attack.

    python main_attack.py --mode train --dataset MUSIC --arch_classifier concat ...
    python main_attack.py --mode eval  --dataset MUSIC --arch_classifier concat ...   (same flags)

Eval writes into the run folder: metrics.json (clean), attack_results.json (accuracies with 95 % intervals,
perturbation sizes, the gradient-masking checks), per_sample.npz (per-sample records), attack_table.md,
acc_vs_eps.png, cos_sim.png and visualization/index.html; with --corruptions also corruption_results.json,
corruption_table.md, corruption_per_sample.npz and corruption.png (evaluation/corruption/evaluate.py).

Runs on CUDA when present, else on the CPU; one process per GPU under torchrun (scripts/_launch.sh).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import ArgParser
from dataset.loaders import build_dataset, build_loader
from evaluation.corruption.evaluate import evaluate_corruptions
from evaluation.robustness.pipeline import evaluate_robustness
from training.engine import evaluate_clean, load_best, run_dir_of, run_entry_point, train
from utils.distributed import DistInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return (ArgParser(__doc__).add_run_arguments(["train", "eval"]).add_data_arguments()
            .add_model_arguments().add_train_arguments().add_attack_arguments().add_corruption_arguments()
            .parse(argv))


def evaluate_run(args: argparse.Namespace, info: DistInfo) -> None:
    """--mode eval: the run's best checkpoint on the test split, clean, under attack and under --corruptions."""
    model, epoch = load_best(args, info)
    loader = build_loader(build_dataset(args, "test"), args, info, train=False)
    evaluate_clean(model, loader, args, info, epoch)
    if args.attack_type:
        evaluate_robustness(model, loader, args, info, run_dir_of(args))
    if args.corruptions is not None:
        evaluate_corruptions(model, loader, args, info, run_dir_of(args))


def main(argv: list[str] | None = None) -> None:
    run_entry_point(parse_args(argv), lambda args, info: train(args, info) if args.mode == "train"
                    else evaluate_run(args, info))


if __name__ == "__main__":
    main()
