"""Data pipeline throughput: loader samples/s per worker count, the loader before and after its speed-ups side by
side at real frame sizes, the JPEG decoders side by side, and preprocessing videos/s (figures, not pass/fail).

    python bench/bench_data.py [--root data/synthetic] [--videos data/synthetic_videos/videos] [--workers 0 2]
                               [--img_size 224] [--aud_len 65535] [--batch_size 32] [--batches 10] [--repeats 3]

Datasets: the embedded data at ``--root`` (112 px frames, when it exists) and generated SoP roots with
frames of 455 x 256 (what ``preprocess.py --frame_size 256`` stores for a 16:9 video), 640 x 360 and
1280 x 720: textured JPEGs (quality 95, as preprocessing writes them) with 65535-sample audio windows.
Paths, each timed in training mode (random centre frame, crop, flip, volume; one frame per clip, as the paper
trains) on the same samples:

    full  the loader before reduced decoding and uint8 batches: every frame decoded in full, resized whole,
          cropped, float32 in the worker (the baseline of the 1280 x 720 target)
    old   the loader before window resampling (commit d39fa1f): reduced JPEG decoding where the frame is >= 2x
          the resize target, the whole frame resized then cropped, the wav opened twice and read as [n, 1]
    new   the loader now: only the crop window resampled, the audio window read through one open file
    gpu   (with CUDA) workers read JPEG bytes; to_device decodes, resizes and crops on the GPU (synchronized)

Each figure is the median of ``--repeats`` runs, the paths taking turns within each repeat, so that a change in
the machine's load reaches all of them. The float conversion of uint8 batches happens in to_device on the
training device and is not timed here. When the new loader misses 400 samples/s on 256-px frames, a profile of
its per-sample work follows (cProfile: time per stage and the functions that take it).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import cProfile
import io
import math
import os
import platform
import pstats
import shutil
import statistics
import tempfile
import time
import warnings

import numpy as np
import soundfile as sf
import torch
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader, RandomSampler

from dataset.av_dataset import AVDataset
from dataset.device_decode import collate_batch
from dataset.geometry import crop_geometry, resize_target, resized_size
from dataset.index import DataError
from dataset.loaders import to_device
from dataset.media import decode_frame
from dataset.preprocess import find_videos, preprocess_tree
from dataset.presets import read_categories_file
from dataset.transforms import frames_tensor
from dataset.wav_header import wav_truncation

GENERATED_SIZES = ((455, 256), (640, 360), (1280, 720))
CLASSES = ("a", "b")
CLIPS_PER_CLASS = 4
CLIP_FRAMES = 64  # 8 s at 8 fps: the 65535-sample window fits around most centre frames
PICTURES = 6  # distinct pictures per size; the frames of every clip are links to them
WARMUP_BATCHES = 2


TARGET_RATE = 400  # samples/s on 256-px frames with 2 workers (issue 21)
TARGET_FRAMES = "455x256"
PROFILE_SAMPLES = 256


def previous_window(img: Image.Image, full_size: tuple[int, int], geometry, reduced_box) -> np.ndarray:
    """The crop window as the old loader cut it: a full decode resized whole, then cropped."""
    target = resized_size(full_size, geometry.shorter)
    left, top, size = geometry.left, geometry.top, geometry.size
    if reduced_box is None:
        resized = img if img.size == target else img.resize(target, Image.BICUBIC)
        window = resized.crop((left, top, left + size, top + size))
    else:
        sx, sy = reduced_box[2] / target[0], reduced_box[3] / target[1]
        window = img.resize((size, size), Image.BICUBIC,
                            box=(left * sx, top * sy, (left + size) * sx, (top + size) * sy))
    if geometry.flip:
        window = window.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(window, dtype=np.uint8)


def previous_audio_window(path: str, center_time: float, length: int, rate: int) -> np.ndarray:
    """The audio window as the old loader read it (at the file's own rate, as every wav here has it): sf.info,
    then sf.read of the window as [n, 1], averaged over channels."""
    info = sf.info(path)
    truncation = wav_truncation(path)
    if truncation is not None:
        raise DataError(f"audio {path}: {truncation}")
    if info.samplerate != rate:
        raise ValueError(f"{path}: {info.samplerate} Hz; the old path is timed at the loader's rate, {rate} Hz")
    start = round(center_time * rate) - length // 2
    if 0 <= start and start + length <= info.frames:
        data = sf.read(path, start=start, frames=length, dtype="float32", always_2d=True)[0]
    else:
        whole = sf.read(path, dtype="float32", always_2d=True)[0]
        data = whole[np.arange(start, start + length) % whole.shape[0]]
    mono = data.mean(axis=1)
    if not np.all(np.isfinite(mono)):
        raise DataError(f"audio {path}: contains NaN or infinite samples")
    return mono.astype(np.float32)


class PreviousDataset(AVDataset):
    """The loader before window resampling (commit d39fa1f)."""

    reduced_decoding = True

    def _decode_clip(self, paths, row, rng):
        shorter = resize_target(self.img_size, self.train) if self.reduced_decoding else None
        windows, geometry = [], None
        for path in paths:
            self._check_exists(path, row)
            img, full_size, reduced_box = decode_frame(path, shorter)
            img = img.convert("RGB")  # a copy, as it made one
            if geometry is None:
                geometry = crop_geometry(full_size, self.img_size, self.train, rng)
            windows.append(previous_window(img, full_size, geometry, reduced_box))
        return frames_tensor(windows)

    def _read_audio(self, path, center_time):
        return previous_audio_window(path, center_time, self.aud_len, self.aud_rate)


class FullDecodeDataset(PreviousDataset):
    """The loader before reduced decoding and uint8 batches: every frame decoded in full, float32 frames
    converted in the worker."""

    reduced_decoding = False

    def __getitem__(self, index):
        item = super().__getitem__(index)
        item["frames"] = torch.from_numpy(item["frames"].numpy().astype(np.float32) / np.float32(255))
        return item


PATHS = {"full": FullDecodeDataset, "old": PreviousDataset, "new": AVDataset}


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


def cpu_seconds() -> float:
    """CPU time of this process and of its ended children (loader workers, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def samples_per_second(dataset: AVDataset, args: argparse.Namespace, workers: int,
                       device: torch.device | None = None) -> tuple[float, float]:
    """(samples/s, CPU ms per sample of this process and its workers together). Batches drawn with replacement
    (no epoch restart inside the measurement); the first ones (worker start) are not timed for the rate. The CPU
    time covers the loader's whole life, workers included once they have ended: what a sample costs the machine,
    whatever else it runs, the workers' batching and transfer included. With ``device``, each batch also goes
    through to_device there."""
    total = (WARMUP_BATCHES + args.batches) * args.batch_size
    sampler = RandomSampler(dataset, replacement=True, num_samples=total, generator=torch.Generator().manual_seed(0))
    cpu_start = cpu_seconds()
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=workers,
                        collate_fn=collate_batch, pin_memory=device is not None,
                        prefetch_factor=4 if workers > 0 else None)
    seen, start = 0, 0.0
    for step, batch in enumerate(loader):
        if device is not None:
            to_device(batch, device)
            torch.cuda.synchronize(device)
        if step == WARMUP_BATCHES - 1:
            start = time.perf_counter()
        elif step >= WARMUP_BATCHES:
            seen += args.batch_size
    rate = seen / (time.perf_counter() - start)
    del batch, loader  # the iterator has joined its workers
    return rate, (cpu_seconds() - cpu_start) / total * 1000


def bench_loaders(args: argparse.Namespace, roots: list[tuple[str, Path]]) -> dict[tuple[str, int, str], tuple]:
    """{(frames, workers, path): (samples/s, CPU ms per sample)}, medians over the repeats; prints the table."""
    cuda = torch.device("cuda") if torch.cuda.is_available() else None
    paths = list(PATHS) + (["gpu"] if cuda is not None else [])
    print(f"{'frames':<22}{'workers':>8}" + "".join(f"{p + ' samples/s':>17}" for p in paths)
          + f"{'new/old':>9}{'new/full':>10}   CPU ms per sample (workers included)")
    results = {}
    for name, root in roots:
        for workers in args.workers:
            runs: dict[str, list[tuple[float, float]]] = {path: [] for path in paths}
            for _ in range(args.repeats):
                for path in paths:
                    dataset = make_dataset(PATHS.get(path, AVDataset), root, args, defer_decode=path == "gpu")
                    runs[path].append(samples_per_second(dataset, args, workers, cuda if path == "gpu" else None))
            for path in paths:
                results[name, workers, path] = (statistics.median(r[0] for r in runs[path]),
                                                statistics.median(r[1] for r in runs[path]))
            rate = {path: results[name, workers, path][0] for path in paths}
            line = f"{name:<22}{workers:>8}" + "".join(f"{rate[p]:>17.0f}" for p in paths)
            line += f"{rate['new'] / rate['old']:>8.2f}x{rate['new'] / rate['full']:>9.2f}x"
            line += "   " + ", ".join(f"{p} {results[name, workers, p][1]:.2f}" for p in paths)
            print(line, flush=True)
    return results


def decoder_times(root: Path, repeats: int = 5) -> dict[str, tuple[float, int]]:
    """{decoder: (least CPU ms per frame over the repeats, largest difference from Pillow's pixels)} on the root's
    pictures, each decoder from the same bytes in memory to an RGB image the resize takes (a PIL image: a tensor
    decoder's output is handed over as one). TorchCodec and torchvision's deprecated decoder are timed when
    installed."""
    data = [path.read_bytes() for path in sorted((root / "pictures").glob("*.jpg"))]

    def pillow(raw: bytes) -> Image.Image:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()
            return img

    decoders = {"Pillow (libjpeg-turbo)": pillow}
    try:
        from torchcodec.decoders import decode_jpeg as torchcodec_decode

        def torchcodec(raw: bytes) -> Image.Image:
            return Image.fromarray(torchcodec_decode(raw).permute(1, 2, 0).numpy())

        decoders["TorchCodec"] = torchcodec
    except ImportError:
        print("decoders: TorchCodec is not installed (pip install torchcodec to time it)")
    try:
        from torchvision.io import decode_jpeg as torchvision_decode

        def torchvision(raw: bytes) -> Image.Image:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                tensor = torchvision_decode(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode="RGB")
            return Image.fromarray(tensor.permute(1, 2, 0).numpy())

        decoders["torchvision.io (deprecated)"] = torchvision
    except ImportError:
        pass
    reference = [np.asarray(pillow(raw), dtype=np.int16) for raw in data]
    worst = {name: max(int(np.abs(np.asarray(decode(raw), dtype=np.int16) - ref).max())
                       for raw, ref in zip(data, reference)) for name, decode in decoders.items()}
    best = dict.fromkeys(decoders, math.inf)
    for _ in range(repeats):  # the decoders take turns, so a change in the machine's load reaches all of them
        for name, decode in decoders.items():
            start = time.process_time()
            for _ in range(20):
                for raw in data:
                    decode(raw)
            best[name] = min(best[name], (time.process_time() - start) / (20 * len(data)) * 1000)
    return {name: (best[name], worst[name]) for name in decoders}


STAGES = {  # project functions whose cumulative time makes each stage of a sample
    "JPEG decode (Pillow)": ("media.py", "decode_frame"),
    "window resampling (Pillow bicubic)": ("transforms.py", "cut_window"),
    "audio window read": ("av_dataset.py", "_read_audio"),
    "audio volume and clip": ("transforms.py", "transform_audio"),
    "frames to a tensor": ("transforms.py", "frames_tensor"),
    "collate (batch of 32)": ("device_decode.py", "collate_batch"),
}


def profile_new_path(root: Path, args: argparse.Namespace) -> None:
    """cProfile of the new loader's work for PROFILE_SAMPLES samples in this process: ms per sample by stage, then
    the functions that take the most time of their own."""
    dataset = make_dataset(AVDataset, root, args)
    indices = [int(i) for i in np.random.default_rng(0).integers(0, len(dataset), PROFILE_SAMPLES)]
    dataset[indices[0]]  # page cache, imports
    profiler = cProfile.Profile(time.process_time)  # CPU time: what other processes take is not counted
    profiler.enable()
    items = [dataset[i] for i in indices]
    for start in range(0, len(items), args.batch_size):
        collate_batch(items[start:start + args.batch_size])
    profiler.disable()
    stats = pstats.Stats(profiler)
    cumulative = {(Path(file).name, func): entry[3] for (file, _, func), entry in stats.stats.items()}
    total = stats.total_tt
    print(f"profile of the new path, {root.name} frames, {PROFILE_SAMPLES} samples in one process, CPU time "
          f"(cProfile adds its own overhead): {total / PROFILE_SAMPLES * 1000:.2f} ms per sample")
    staged = 0.0
    for stage, key in STAGES.items():
        seconds = cumulative.get(key, 0.0)
        staged += seconds
        print(f"  {stage:<38}{seconds / PROFILE_SAMPLES * 1000:>7.2f} ms  {seconds / total:>5.0%}")
    print(f"  {'the rest (item assembly, checks, rng)':<38}{(total - staged) / PROFILE_SAMPLES * 1000:>7.2f} ms  "
          f"{(total - staged) / total:>5.0%}")
    print("  functions by own time:")
    for (file, line, func), entry in sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:10]:
        where = func if file == "~" else f"{Path(file).name}:{line}({func})"
        print(f"    {entry[2] / PROFILE_SAMPLES * 1000:>6.3f} ms  {where}")


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


def report_target(args: argparse.Namespace, name: str, root: Path, results: dict, load_start: float) -> None:
    """The 256-px target: the decoders side by side, new against old, whether 400/s is met, else a profile."""
    workers, cores = max(args.workers), os.cpu_count()
    print(f"JPEG decoders on the {TARGET_FRAMES} frames, CPU ms per frame (to an image the resize takes), "
          "largest difference from Pillow's pixels:")
    decoders = decoder_times(root)
    pillow = decoders["Pillow (libjpeg-turbo)"][0]
    for decoder, (ms, worst) in decoders.items():
        print(f"  {decoder:<30}{ms:>7.3f} ms  {ms / pillow:>5.2f}x Pillow's time  {worst} levels")

    rate = {path: results[name, workers, path][0] for path in PATHS}
    met = rate["new"] >= TARGET_RATE
    print(f"target: {TARGET_FRAMES} with {workers} workers, new {rate['new']:.0f} samples/s against old "
          f"{rate['old']:.0f} ({rate['new'] / rate['old']:.2f}x): {TARGET_RATE}/s "
          f"{'met' if met else 'NOT met'}")
    old_ms, new_ms = results[name, workers, "old"][1], results[name, workers, "new"][1]
    print(f"  CPU per sample with {workers} workers, all processes: old {old_ms:.2f} ms, new {new_ms:.2f} ms "
          f"({old_ms / new_ms:.2f}x less): {cores} idle cores would give about {cores * 1000 / new_ms:.0f} samples/s")
    print(f"  load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} now, on {cores} cores "
          "(a load above the loader's own processes: other jobs shared the cores)")
    if not met:
        if 0 in args.workers and workers > 0:
            alone = results[name, 0, "new"][1]
            print(f"  {workers} workers add {new_ms - alone:.2f} ms of CPU per sample to the {alone:.2f} ms of loading "
                  "in one process: each worker collates its batch into fresh shared memory (page faults on ~0.4 MB "
                  "per sample) and the main process receives it")
        profile_new_path(root, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="data/synthetic", help="the embedded data, preprocessed (train.csv)")
    parser.add_argument("--videos", default="data/synthetic_videos/videos", help="videos for the preprocessing run")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--aud_len", type=int, default=65535)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=10, help="timed batches per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--sizes", nargs="+", default=[f"{w}x{h}" for w, h in GENERATED_SIZES],
                        choices=[f"{w}x{h}" for w, h in GENERATED_SIZES], help="generated frame sizes to time")
    parser.add_argument("--num_videos", type=int, default=40)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a loader worker (DataLoader sets it there), also for the 0-worker runs
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU (gpu path not timed)"
    cores, load_start = os.cpu_count(), os.getloadavg()[0]
    print(f"machine: {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}, {gpu}; "
          f"load average {load_start:.1f}")
    print(f"train transforms, 1 frame at {args.img_size} px + {args.aud_len} audio samples per sample, batch "
          f"{args.batch_size}, {args.batches} timed batches, median of {args.repeats} runs")
    workers = max(args.workers)
    with tempfile.TemporaryDirectory() as tmp:
        roots = []
        if (Path(args.root) / "train.csv").is_file():
            roots.append(("embedded (112x112)", Path(args.root)))
        else:
            print(f"embedded data: no train.csv under {args.root} (scripts/demo.sh makes it; or pass --root)")
        for width, height in GENERATED_SIZES:
            if f"{width}x{height}" not in args.sizes:
                continue
            root = Path(tmp) / f"{width}x{height}"
            kilobytes = generate_root(root, width, height)
            roots.append((f"{width}x{height} ({kilobytes:.0f} kB)", root))
        results = bench_loaders(args, roots)
        for large in [n for n, _ in roots if n.startswith("1280x720")]:
            print(f"target: 1280x720 with {workers} workers, new/full "
                  f"{results[large, workers, 'new'][0] / results[large, workers, 'full'][0]:.2f}x (>= 2x)")
        for name, root in roots:
            if name.startswith(TARGET_FRAMES):
                report_target(args, name, root, results, load_start)
    if Path(args.videos).is_dir() and find_videos(args.videos):
        print(f"preprocessing: {bench_preprocess(args):.1f} videos/s ({args.num_videos} videos, {workers} workers, "
              "8 fps + 11025 Hz)")
    else:
        print(f"preprocessing: no videos under {args.videos} (scripts/demo.sh makes them; or pass --videos)")


if __name__ == "__main__":
    main()
