"""The paper's audio-visual defense and its baselines: train, build memory banks, evaluate adaptively.

    python main_defense.py --mode train      --train_mode standard --lambda_cos 1 --weights_frame ... (dissimilarity)
    python main_defense.py --mode train      --train_mode adv|trades --lambda_cos 0 ...   (adversarial baselines)
    python main_defense.py --mode build_bank ...            (D_v, D_a from the run's training-set features)
    python main_defense.py --mode eval [--use_banks] ...    (clean + per-sample worst case over adaptive attacks)

Evaluations go to RUN/evals/defense_<banks|nobanks>_<variants>_<attacks and budgets>/ (or --eval_name).
The run folder is the recognition model's (``main_attack.py``) plus a suffix naming the training:
``-dissim<lambda>``, ``-adv``, ``-trades<beta>``; ``--train_mode standard --lambda_cos 0`` is the undefended
model itself, so "memory banks alone" is that run evaluated with ``--use_banks``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

from arguments import ArgParser
from dataset.loaders import build_dataset, build_loader
from dataset.presets import PRESETS
from defenses.memory_bank import (
    BankError,
    bank_adaptive_attacks,
    build_bank,
    collect_features,
    defend_with_banks,
    save_bank,
)
from evaluation.eval_dir import eval_folder_of, evaluation_folder
from evaluation.robustness.engine import Variant
from evaluation.robustness.pipeline import evaluate_robustness
from models import FUSION_HEADS, AVModel
from training.engine import evaluate_clean, load_best, run_dir_of, run_entry_point, train
from training.objectives import CrossEntropy, Objective, PGDAdversarialTraining, Trades
from utils.distributed import DistInfo

BANK_FILES = {"visual": "bank_v.pth", "audio": "bank_a.pth"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = (ArgParser(__doc__, Path(__file__).name).add_run_arguments(["train", "build_bank", "eval"])
              .add_data_arguments()
              .add_model_arguments().add_train_arguments().add_attack_arguments().add_defense_arguments())
    args = parser.parse(argv)
    if args.lambda_cos is None:
        args.lambda_cos = 1.0 if args.train_mode == "standard" else 0.0
    if getattr(FUSION_HEADS.get(args.arch_classifier), "self_supervised", False) and args.mode == "train" \
            and (args.train_mode != "standard" or args.lambda_cos):
        parser.parser.error(f"--arch_classifier {args.arch_classifier} is self-supervised: --train_mode "
                            f"{args.train_mode} / --lambda_cos {args.lambda_cos:g} would train its encoders on the "
                            f"labels (use --train_mode standard --lambda_cos 0)")
    preset = PRESETS[args.dataset]
    args.bank_mix = preset.bank_mix if args.bank_mix is None else args.bank_mix
    if not 0 <= args.bank_mix <= 1:
        parser.parser.error(f"--bank_mix must be in [0, 1], got {args.bank_mix}")
    if args.defense_attacks == ["bpda"] and not args.use_banks:
        parser.parser.error("--defense_attacks bpda needs --use_banks (without purification it is the CE attack)")
    args.alpha_v = preset.ista_steps[0] if args.alpha_v is None else args.alpha_v
    args.alpha_a = preset.ista_steps[1] if args.alpha_a is None else args.alpha_a
    if not args.run:  # a run folder given by --run is the defense run itself
        args.id += defense_suffix(args)
    return args


def defense_suffix(args: argparse.Namespace) -> str:
    """What the training adds to the recognition model's run id ('' for the undefended model)."""
    suffix = ""
    if args.lambda_cos:
        suffix += f"-dissim{args.lambda_cos:g}"
    if args.train_mode != "standard":
        budget = f"eps{args.train_eps[0]:g}_{args.train_eps[1]:g}-steps{args.train_attack_steps}"
        suffix += f"-adv-{budget}" if args.train_mode == "adv" else f"-trades{args.trades_beta:g}-{budget}"
    return suffix


def defense_label(args: argparse.Namespace) -> str:
    """The row name in summaries, e.g. 'concat+dissim+banks'."""
    parts = [args.arch_classifier]
    if args.lambda_cos:
        parts.append("dissim")
    if args.train_mode != "standard":
        parts.append(args.train_mode)
    if args.use_banks:
        parts.append("banks")
    return "+".join(parts)


def build_objective(args: argparse.Namespace) -> Objective:
    eps = {"visual": args.train_eps[0], "audio": args.train_eps[1]}
    if args.train_mode == "adv":
        return PGDAdversarialTraining(eps, args.train_attack_steps, args.eps_units, args.lambda_cos)
    if args.train_mode == "trades":
        return Trades(eps, args.train_attack_steps, args.eps_units, args.trades_beta, args.lambda_cos)
    return CrossEntropy(args.lambda_cos)


def build_banks(args: argparse.Namespace, info: DistInfo) -> None:
    """D_v and D_a from the run's best model on the training split (evaluation transforms)."""
    model, epoch = load_best(args, info)
    dataset = build_dataset(args, "train", train_transforms=False)
    loader = build_loader(dataset, args, DistInfo(device=info.device), train=False)
    features = dict(zip(("visual", "audio"), collect_features(model, loader, info.device)))
    for modality, feats in features.items():
        if feats is None:
            continue
        bank = build_bank(feats.cpu(), args.bank_size, args.bank_method, args.seed)
        path = run_dir_of(args) / BANK_FILES[modality]
        save_bank(path, bank, {"feature_dim": bank.shape[0], "size": bank.shape[1], "method": args.bank_method,
                               "seed": args.seed, "run": args.id, "epoch": epoch})
        print(f"{modality} bank: {bank.shape[1]} columns of {bank.shape[0]}-d features "
              f"from {feats.shape[0]} training samples -> {path}")


def defended_model(args: argparse.Namespace, info: DistInfo) -> tuple[AVModel, int]:
    """The run's best model, wrapped with its memory banks when --use_banks."""
    model, epoch = load_best(args, info)
    if not args.use_banks:
        return model, epoch
    paths = {"visual": args.weights_Dv or run_dir_of(args) / BANK_FILES["visual"],
             "audio": args.weights_Da or run_dir_of(args) / BANK_FILES["audio"]}
    try:
        defended = defend_with_banks(model, paths, lam=args.lasso_lambda, mix=args.bank_mix, solver=args.solver,
                                     steps={"visual": args.alpha_v, "audio": args.alpha_a}, tol=args.coding_tol,
                                     max_iter=args.coding_max_iter, warm_start=args.bank_warm_start == "on",
                                     device=info.device)
    except BankError as err:
        if "ISTA step" in str(err):
            raise BankError(f"{err} (lower --alpha_v / --alpha_a or use --solver fista)") from None
        raise
    return defended, epoch


def attack_variants(args: argparse.Namespace) -> list[Variant]:
    """The white-box variants whose per-sample worst case is reported (``defenses.memory_bank``): CE and the
    released adaptive CE + cos through the sparse coding (``--coding_grad``), and BPDA."""
    return [Variant(a.name, a.loss, a.purification)
            for a in bank_adaptive_attacks(args.defense_attacks, args.coding_grad, args.use_banks)]


def evaluate_defense(args: argparse.Namespace, info: DistInfo) -> dict | None:
    """Clean and attacked, into RUN/evals/defense_<banks|nobanks>_...; None when an identical one is reused."""
    model, epoch = defended_model(args, info)
    loader = build_loader(build_dataset(args, "test"), args, info, train=False)
    with evaluation_folder(run_dir_of(args), "defense", args, info) as out_dir:
        if out_dir is None:
            return None
        metrics = evaluate_clean(model, loader, args, info, epoch, out_dir)
        if not args.attack_type:
            return metrics
        label = defense_label(args)
        return evaluate_robustness(model, loader, args, info, out_dir, attack_variants(args), label,
                                   title=f"{label}: per-sample worst case over {', '.join(args.defense_attacks)}")


def run_mode(args: argparse.Namespace, info: DistInfo) -> None:
    if args.mode == "train":
        train(args, info, build_objective(args))
    elif args.mode == "build_bank":
        with torch.no_grad():
            build_banks(args, info)
    else:
        evaluate_defense(args, info)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.print_eval_dir:
        print(eval_folder_of(run_dir_of(args), "defense", args))
        return
    run_entry_point(args, run_mode)


if __name__ == "__main__":
    main()
