"""Train audio-only, visual-only and audio-visual event classifiers; evaluate them clean and under attack.

    python main_attack.py --mode train --dataset MUSIC --arch_classifier concat ...
    python main_attack.py --mode eval  --dataset MUSIC --arch_classifier concat ...   (same flags)

Eval writes into the run folder: metrics.json (clean), attack_results.json, attack_table.md,
acc_vs_eps.png, cos_sim.png and visualization/index.html.

Runs on CUDA when present, else on the CPU; one process per GPU under torchrun (scripts/_launch.sh).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import ArgParser
from dataset.loaders import build_dataset, build_loader
from evaluation.engine import evaluate_attacks, write_outputs
from evaluation.protocol import budgets_from_args
from evaluation.report import attack_table_markdown
from models import AVModel
from training.engine import evaluate_clean, load_best, run_dir_of, run_entry_point, train
from utils.distributed import DistInfo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return (ArgParser(__doc__).add_run_arguments(["train", "eval"]).add_data_arguments()
            .add_model_arguments().add_train_arguments().add_attack_arguments().parse(argv))


def evaluate_robustness(model: AVModel, loader, args: argparse.Namespace, info: DistInfo) -> dict:
    """Every --attack_type under the paper's protocol (or --epsilons) and the --eps_grid sweep."""
    budgets = budgets_from_args(args)
    results, vis = evaluate_attacks(model, loader, args, info, budgets, args.attack_type, args.num_vis)
    if info.is_main:
        run_dir = run_dir_of(args)
        written = write_outputs(run_dir, results, vis, args)
        print(attack_table_markdown(results))
        print("wrote " + ", ".join(str(p) for p in written))
    return results


def evaluate_run(args: argparse.Namespace, info: DistInfo) -> None:
    """--mode eval: the run's best checkpoint on the test split, clean and under attack."""
    model, epoch = load_best(args, info)
    loader = build_loader(build_dataset(args, "test"), args, info, train=False)
    evaluate_clean(model, loader, args, info, epoch)
    if args.attack_type:
        evaluate_robustness(model, loader, args, info)


def main(argv: list[str] | None = None) -> None:
    run_entry_point(parse_args(argv), lambda args, info: train(args, info) if args.mode == "train"
                    else evaluate_run(args, info))


if __name__ == "__main__":
    main()
