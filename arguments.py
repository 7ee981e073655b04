"""Command-line flags for every entry point, grouped, with the original code's names kept.

Values are validated once here, so a bad value or an unknown flag ends in a one-line argparse error
naming the flag. ``--dataset`` presets (dataset/presets.py) fill what the user did not give.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from dataset.presets import CATEGORIES_FILE, PRESETS, read_categories_file


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _category_list(text: str) -> list[str]:
    return [name for name in text.replace(",", " ").split() if name]


class ArgParser:
    """Builds the parser of one entry point from flag groups; ``parse`` validates and fills presets."""

    def __init__(self, description: str) -> None:
        self.parser = argparse.ArgumentParser(
            description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
            allow_abbrev=False)

    def add_data_arguments(self) -> ArgParser:
        g = self.parser.add_argument_group("data")
        g.add_argument("--dataset", choices=sorted(PRESETS), default="MUSIC",
                       help="preset: categories, cls_num, data root and index paths (explicit flags win)")
        g.add_argument("--data_root", default=None,
                       help="dataset root holding audio/, frames/ and the index CSVs; default: "
                            "$MUSIC_ROOT / $AVE_ROOT / $KINETICS_ROOT / $SYNTHETIC_ROOT, else data/<dataset>")
        g.add_argument("--list_train", default=None, help="train index CSV (default <root>/train.csv)")
        g.add_argument("--list_val", default=None, help="validation index CSV (default <root>/val.csv)")
        g.add_argument("--list_test", default=None, help="test index CSV (default <root>/test.csv)")
        g.add_argument("--audio_path", default=None, help="folder the CSV's wav paths are relative to")
        g.add_argument("--frame_path", default=None, help="folder the CSV's frame paths are relative to")
        g.add_argument("--categories", type=_category_list, nargs="+", default=None,
                       help="class names in label order, comma or space separated (default: preset)")
        g.add_argument("--cls_num", type=_positive_int, default=None,
                       help="number of classes (default: number of categories)")
        g.add_argument("--num_frames", type=_positive_int, default=1, help="frames per clip")
        g.add_argument("--stride_frames", type=_positive_int, default=8, help="frames between picked frames")
        g.add_argument("--frameRate", type=_positive_float, default=8, help="fps of the extracted frames")
        g.add_argument("--imgSize", type=_positive_int, default=224, help="frame crop size")
        g.add_argument("--audLen", type=_positive_int, default=65535, help="audio window in samples")
        g.add_argument("--audRate", type=_positive_int, default=11025, help="audio sample rate")
        g.add_argument("--skip_bad", action="store_true",
                       help="check every index row's files at start-up; drop and list the bad ones")
        g.add_argument("--max_samples", type=_positive_int, default=None,
                       help="use only the first N rows of each index (quick runs)")
        g.add_argument("--batch_size_per_gpu", type=_positive_int, default=32,
                       help="batch size per process (per GPU; the whole batch on CPU)")
        g.add_argument("--workers", type=_non_negative_int, default=4, help="data loader workers per process")
        g.add_argument("--seed", type=int, default=1234, help="seed for data order, augmentation and init")
        return self

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        args = self.parser.parse_args(argv)
        if hasattr(args, "dataset"):
            apply_dataset_preset(args, self.parser)
        return args


def apply_dataset_preset(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill data paths, categories and cls_num from ``--dataset`` where the user gave no flag."""
    preset = PRESETS[args.dataset]
    root = Path(args.data_root) if args.data_root else preset.default_root()
    args.data_root = str(root)
    for flag, name in (("list_train", "train.csv"), ("list_val", "val.csv"), ("list_test", "test.csv")):
        if getattr(args, flag) is None:
            setattr(args, flag, str(root / name))
    if args.audio_path is None:
        args.audio_path = str(root / "audio")
    if args.frame_path is None:
        args.frame_path = str(root / "frames")
    if args.categories is not None:
        args.categories = [name for group in args.categories for name in group]
    else:
        if preset.categories:
            args.categories = list(preset.categories)
        else:
            try:
                args.categories = read_categories_file(root / CATEGORIES_FILE)
            except (FileNotFoundError, ValueError) as err:
                parser.error(f"--dataset {args.dataset}: {err}")
    if len(set(args.categories)) != len(args.categories):
        parser.error("--categories: duplicate class names")
    if args.cls_num is None:
        args.cls_num = len(args.categories)
    elif args.cls_num != len(args.categories):
        parser.error(f"--cls_num {args.cls_num} does not match the {len(args.categories)} --categories")
