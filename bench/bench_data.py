"""Data pipeline throughput: loader samples/s per worker count, old and new frame paths side by side, at real
frame sizes, and preprocessing videos/s (figures, not pass/fail).

    python bench/bench_data.py [--root data/synthetic] [--videos data/synthetic_videos/videos] [--workers 0 1 2]
                               [--img_size 224] [--aud_len 65535] [--batch_size 32] [--batches 10]

Datasets: the embedded data at ``--root`` (112 px frames, when it exists) and generated SoP roots with
frames of 455 x 256 (what ``preprocess.py --frame_size 256`` stores for a 16:9 video), 640 x 360 and
1280 x 720: textured JPEGs (quality 95, as preprocessing writes them) with 65535-sample audio windows.
Paths, each timed in training mode (random centre frame, crop, flip, volume; one frame per clip, as the paper
trains) on the same samples:

    old   full PIL decode, resize, crop, float32 in the worker (the loader before reduced decoding)
    cpu   the loader now: reduced JPEG decoding where the frame is >= 2x the resize target, uint8 batches
    gpu   (with CUDA) workers read JPEG bytes; to_device decodes, resizes and crops on the GPU (synchronized)

The cpu path's float conversion happens in to_device on the training device and is not timed here.
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

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, RandomSampler

from dataset.av_dataset import AVDataset
from dataset.device_decode import collate_batch
from dataset.geometry import crop_geometry
from dataset.loaders import to_device
from dataset.media import decode_frame
from dataset.preprocess import find_videos, preprocess_tree
from dataset.presets import read_categories_file
from dataset.transforms import cut_window, frames_tensor

GENERATED_SIZES = ((455, 256), (640, 360), (1280, 720))
CLASSES = ("a", "b")
CLIPS_PER_CLASS = 4
CLIP_FRAMES = 64  # 8 s at 8 fps: the 65535-sample window fits around most centre frames
PICTURES = 6  # distinct pictures per size; the frames of every clip are links to them
WARMUP_BATCHES = 2


class FullDecodeDataset(AVDataset):
    """The loader before reduced decoding and uint8 batches: every frame decoded in full, float32 frames
    converted in the worker."""

    def _decode_clip(self, paths, row, rng):
        windows, geometry = [], None
        for path in paths:
            self._check_exists(path, row)
            img, full_size, _ = decode_frame(path)
            if geometry is None:
                geometry = crop_geometry(full_size, self.img_size, self.train, rng)
            windows.append(cut_window(img, full_size, geometry))
        return frames_tensor(windows)

    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["frames"] = torch.from_numpy(item["frames"].numpy().astype(np.float32) / np.float32(255))
        return item


def textured_picture(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """Something like a video frame for the JPEG coder: a smooth colour field, hard-edged shapes, mild noise."""
    field = rng.integers(0, 256, (height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8)
    img = Image.fromarray(field).resize((width, height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(20, width // 3)), y0 + int(rng.integers(20, height // 3))
        draw.ellipse((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    pixels = np.asarray(img, dtype=np.float32) + rng.normal(0, 1, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def generate_root(root: Path, width: int, height: int) -> float:
    """A SoP root of ``width`` x ``height`` frames; returns the mean JPEG size in kB."""
    rng = np.random.default_rng(width)
    pictures = []
    for i in range(PICTURES):
        path = root / "pictures" / f"{i}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        textured_picture(rng, width, height).save(path, quality=95)
        pictures.append(path)
    rows = []
    for cls in CLASSES:
        (root / "audio" / cls).mkdir(parents=True, exist_ok=True)
        for v in range(CLIPS_PER_CLASS):
            frame_dir = root / "frames" / cls / f"v{v}.mp4"
            frame_dir.mkdir(parents=True)
            for k in range(1, CLIP_FRAMES + 1):
                os.link(pictures[(k + v) % PICTURES], frame_dir / f"{k:06d}.jpg")
            wave = 0.3 * rng.standard_normal(CLIP_FRAMES * 11025 // 8).astype(np.float32)
            sf.write(root / "audio" / cls / f"v{v}.wav", wave, 11025, subtype="PCM_16")
            rows.append(f"/{cls}/v{v}.wav,/{cls}/v{v}.mp4,{CLIP_FRAMES}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "categories.txt").write_text("\n".join(CLASSES) + "\n")
    return float(np.mean([p.stat().st_size for p in pictures])) / 1000


def make_dataset(cls: type, root: Path, args: argparse.Namespace, defer_decode: bool = False) -> AVDataset:
    return cls(str(root / "train.csv"), str(root / "audio"), str(root / "frames"),
               read_categories_file(root / "categories.txt"), num_frames=1, stride_frames=8, frame_rate=8,
               img_size=args.img_size, aud_len=args.aud_len, aud_rate=11025, train=True, defer_decode=defer_decode)


def samples_per_second(dataset: AVDataset, args: argparse.Namespace, workers: int,
                       device: torch.device | None = None) -> tuple[float, float]:
    """(samples/s, CPU ms per sample of this process). Batches drawn with replacement (no epoch restart inside
    the measurement); the first ones (worker start) are not timed. With ``device``, each batch also goes
    through to_device there. With 0 workers this process does all the work, so its CPU time per sample is the
    cost of a sample whatever else the machine runs."""
    total = (WARMUP_BATCHES + args.batches) * args.batch_size
    sampler = RandomSampler(dataset, replacement=True, num_samples=total, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_batch, pin_memory=device is not None,
                        prefetch_factor=4 if workers > 0 else None)
    seen, start, cpu_start = 0, 0.0, 0.0
    for step, batch in enumerate(loader):
        if device is not None:
            to_device(batch, device)
            torch.cuda.synchronize(device)
        if step == WARMUP_BATCHES - 1:
            start, cpu_start = time.perf_counter(), time.process_time()
        elif step >= WARMUP_BATCHES:
            seen += args.batch_size
    return seen / (time.perf_counter() - start), (time.process_time() - cpu_start) / seen * 1000


def bench_loaders(args: argparse.Namespace, roots: list[tuple[str, Path]]) -> dict[tuple[str, int, str], float]:
    cuda = torch.device("cuda") if torch.cuda.is_available() else None
    paths = ["old", "cpu"] + (["gpu"] if cuda is not None else [])
    print(f"{'frames':<22}{'workers':>8}" + "".join(f"{p + ' samples/s':>16}" for p in paths) + f"{'cpu/old':>9}"
          "   (0 workers: CPU ms per sample)")
    rates = {}
    for name, root in roots:
        for workers in args.workers:
            cpu_ms = {}
            for path in paths:
                dataset = make_dataset(FullDecodeDataset if path == "old" else AVDataset, root, args, path == "gpu")
                rates[name, workers, path], cpu_ms[path] = samples_per_second(dataset, args, workers,
                                                                              cuda if path == "gpu" else None)
            line = f"{name:<22}{workers:>8}" + "".join(f"{rates[name, workers, p]:>16.0f}" for p in paths)
            line += f"{rates[name, workers, 'cpu'] / rates[name, workers, 'old']:>8.2f}x"
            if workers == 0:
                line += "   " + ", ".join(f"{p} {cpu_ms[p]:.1f} ms" for p in paths)
            print(line, flush=True)
    return rates


def bench_preprocess(args: argparse.Namespace) -> float:
    videos = find_videos(args.videos)[: args.num_videos]
    with tempfile.TemporaryDirectory() as tmp:
        for cls, _, path in videos:
            (Path(tmp) / "in" / cls).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(tmp) / "in" / cls / Path(path).name)
        start = time.perf_counter()
        results = preprocess_tree(Path(tmp) / "in", Path(tmp) / "out", 8, 11025, max(args.workers), 95)
        elapsed = time.perf_counter() - start
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise RuntimeError(f"{len(failed)} videos failed, e.g. {failed[0].name}: {failed[0].message}")
    return len(videos) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="the embedded data, preprocessed (train.csv)")
    parser.add_argument("--videos", default="data/synthetic_videos/videos", help="videos for the preprocessing run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="loader worker counts to time")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--aud_len", type=int, default=65535)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--num_videos", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker (DataLoader sets it there), also for the 0-worker runs
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU (gpu path not timed)"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{gpu}")
    print(f"train transforms, 1 frame at {args.img_size} px + {args.aud_len} audio samples per sample, batch "
          f"{args.batch_size}, {args.batches} timed batches")
    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        if (Path(args.root) / "train.csv").is_file():
            roots.append(("embedded (112x112)", Path(args.root)))
        else:
            print(f"embedded data: no train.csv under {args.root} (scripts/demo.sh makes it; or pass --root)")
        for width, height in GENERATED_SIZES:
            root = Path(tmp) / f"{width}x{height}"
            kilobytes = generate_root(root, width, height)
            roots.append((f"{width}x{height} ({kilobytes:.0f} kB)", root))
        rates = bench_loaders(args, roots)
    workers = max(args.workers)
    old, new = rates[roots[-1][0], workers, "old"], rates[roots[-1][0], workers, "cpu"]
    print(f"targets with {workers} workers: 1280x720 cpu/old {new / old:.2f}x (>= 2x); "
          f"455x256 cpu {rates[roots[-3][0], workers, 'cpu']:.0f} samples/s (>= 400)")
    if Path(args.videos).is_dir() and find_videos(args.videos):
        print(f"preprocessing: {bench_preprocess(args):.1f} videos/s ({args.num_videos} videos, {workers} workers, "
              "8 fps + 11025 Hz)")
    else:
        print(f"preprocessing: no videos under {args.videos} (scripts/demo.sh makes them; or pass --videos)")


if __name__ == "__main__":
    main()
