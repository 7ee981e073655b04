"""Data pipeline throughput: loader samples/s and preprocessing videos/s (figures, not pass/fail).

    python bench/bench_data.py [--root data/synthetic] [--videos data/synthetic_videos/videos]
                               [--workers 2] [--img_size 224] [--aud_len 65535] [--batches 20]

The loader is timed in training mode (random centre frame, crop, flip, volume) with one frame per
clip, as the paper trains; preprocessing runs on a copy of up to ``--num_videos`` videos into a
temporary folder.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import platform
import shutil
import tempfile
import time

import torch
from torch.utils.data import DataLoader

from dataset.av_dataset import AVDataset
from dataset.preprocess import find_videos, preprocess_tree
from dataset.presets import read_categories_file


def bench_loader(args: argparse.Namespace) -> float:
    root = Path(args.root)
    ds = AVDataset(str(root / "train.csv"), str(root / "audio"), str(root / "frames"),
                   read_categories_file(root / "categories.txt"), num_frames=1, stride_frames=8, frame_rate=8,
                   img_size=args.img_size, aud_len=args.aud_len, aud_rate=11025, train=True)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0, generator=torch.Generator().manual_seed(0))
    seen, start = 0, None
    for epoch in range(10_000):
        for step, batch in enumerate(loader):
            if epoch == 0 and step == 2:  # warm-up: worker start and first batches
                start, seen = time.perf_counter(), 0
            seen += batch["frames"].shape[0]
            if start is not None and seen >= args.batches * args.batch_size:
                return seen / (time.perf_counter() - start)
    raise RuntimeError("unreachable")


def bench_preprocess(args: argparse.Namespace) -> float:
    videos = find_videos(args.videos)[: args.num_videos]
    with tempfile.TemporaryDirectory() as tmp:
        for cls, _, path in videos:
            (Path(tmp) / "in" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(tmp) / "in" / cls / Path(path).name)
        start = time.perf_counter()
        results = preprocess_tree(Path(tmp) / "in", Path(tmp) / "out", 8, 11025, args.workers, 95)
        elapsed = time.perf_counter() - start
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} videos failed, e.g. {failed[0].name}: {failed[0].message}")
    return len(videos) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="preprocessed dataset with train.csv")
    parser.add_argument("--videos", default="data/synthetic_videos/videos", help="videos for the preprocessing run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--aud_len", type=int, default=65535)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches")
    parser.add_argument("--num_videos", type=int, default=40)
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    rate = bench_loader(args)
    print(f"loader: {rate:.0f} samples/s (train transforms, 1 frame at {args.img_size} px + {args.aud_len} samples, "
          f"{args.workers} workers, batch {args.batch_size}) - target >= 200")
    print(f"preprocessing: {bench_preprocess(args):.1f} videos/s ({args.num_videos} videos, {args.workers} workers, "
          "8 fps + 11025 Hz)")


if __name__ == "__main__":
    main()
