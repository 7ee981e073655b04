"""Print a dataset's statistics: samples per class and split, clip lengths, and one loaded batch.

Warns (on stderr) about classes missing from a split or imbalanced (largest class more than twice the
smallest), and about clips whose audio is shorter than the --audLen window (the loader repeats it).

    python scripts/dataset_stats.py --dataset MUSIC [--data_root ROOT] [--skip_bad]
    python scripts/dataset_stats.py --run ckpt/<run id>        (the data and shapes a run was trained on)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from arguments import ArgParser
from dataset.av_dataset import AVDataset
from dataset.index import DataError, IndexRow
from dataset.loaders import to_device
from dataset.stats import class_counts, imbalance_warning, short_audio_warning


def audio_seconds(row: IndexRow, audio_path: str) -> float:
    wav = os.path.join(audio_path, row.audio_rel.lstrip("/"))
    try:
        return sf.info(wav).duration
    except Exception as err:  # soundfile raises several types for missing and corrupt files
        raise DataError(f"{row.where}: audio {wav}: cannot open ({err})") from None


def report(args: argparse.Namespace) -> None:
    splits = {"train": args.list_train, "val": args.list_val, "test": args.list_test}
    datasets = {
        split: AVDataset(csv_path, args.audio_path, args.frame_path, args.categories,
                         num_frames=args.num_frames, stride_frames=args.stride_frames, frame_rate=args.frameRate,
                         img_size=args.imgSize, aud_len=args.audLen, aud_rate=args.audRate,
                         train=split == "train", seed=args.seed, skip_bad=args.skip_bad)
        for split, csv_path in splits.items()
    }

    print(f"dataset {args.dataset} at {args.data_root}: {args.cls_num} classes")
    counts = {s: class_counts(datasets[s].rows, len(args.categories)) for s in splits}
    width = max(len(c) for c in args.categories)
    print(f"{'class':<{width}} " + " ".join(f"{s:>6}" for s in splits))
    for label, name in enumerate(args.categories):
        print(f"{name:<{width}} " + " ".join(f"{counts[s][label]:>6}" for s in splits))
    print(f"{'total':<{width}} " + " ".join(f"{len(datasets[s]):>6}" for s in splits))
    warnings = [imbalance_warning(s, counts[s], args.categories) for s in splits]

    rows = [r for d in datasets.values() for r in d.rows]
    frames = np.array([r.num_frames for r in rows])
    seconds = np.array([audio_seconds(r, args.audio_path) for r in rows])
    print(f"frames per clip: min {frames.min()}, mean {frames.mean():.1f}, max {frames.max()} "
          f"({args.frameRate:g} fps -> {frames.mean() / args.frameRate:.1f} s)")
    print(f"audio per clip: min {seconds.min():.2f} s, mean {seconds.mean():.2f} s, max {seconds.max():.2f} s")
    warnings.append(short_audio_warning(rows, seconds.tolist(), args.audLen, args.audRate))
    for warning in filter(None, warnings):
        print(f"warning: {warning}", file=sys.stderr)

    loader = DataLoader(datasets["train"], batch_size=min(8, len(datasets["train"])), shuffle=True,
                        generator=torch.Generator().manual_seed(args.seed))
    batch = next(iter(loader))
    f, a, _ = to_device(batch, torch.device("cpu"))
    print(f"one train batch: frames {tuple(f.shape)} in [{f.min():.2f}, {f.max():.2f}], "
          f"audio {tuple(a.shape)} in [{a.min():.2f}, {a.max():.2f}], labels {batch['label'].tolist()}")


def main() -> None:
    builder = ArgParser(__doc__, Path(__file__).name).add_data_arguments()
    builder.parser.add_argument("--run", default=None, metavar="RUN_DIR",
                                help="take the data flags from this run folder's saved configuration (args.json)")
    args = builder.parse()
    try:
        report(args)
    except DataError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
