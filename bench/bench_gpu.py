"""GPU figures (not pass/fail), side by side in one run on the device it is given:

(a) training throughput, samples/s, fp32 against AMP, with and without channels-last: ResNet-18 (random init)
    on one 224 px frame + anet on 65535 samples + the concat head, batch 32, synthetic tensors in memory;
(b) with --data_root, the data-wait fraction of a real DataLoader over a dataset on disk (the training
    split, training transforms, --workers workers): time spent waiting for the next batch / whole step time,
    the step being the training step the mains run (AMP + channels-last on CUDA, fp32 on the CPU);
(c) PGD-10 on both modalities against its limit, 10 x (forward + input-gradient backward) on the same
    model and batch, as a ratio.

Targets: (a) AMP + channels-last >= 1.5 x fp32, (b) data wait < 5 %, (c) ratio <= 1.10.

    python bench/bench_gpu.py [--device cuda] [--data_root data/gpu_check/root --workers 8] [--json out.json]
    python bench/bench_gpu.py --device cpu --small [--threads 1]   (a quick CPU run: the figures only show it works)

Timings: warm-up iterations first, torch.cuda.synchronize around every timed region on CUDA, contenders
interleaved (alternating order) and the median over --repeats. On the CPU, "AMP" autocasts to bfloat16
(the mains' --amp is float16 and CUDA only).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler

from attacks import build_attack
from dataset.loaders import to_device
from models import build_model

TrainStep = Callable[[Tensor, Tensor, Tensor], Tensor]

AMP_TARGET = 1.5
DATA_WAIT_TARGET = 0.05
PGD_TARGET = 1.10


@dataclass(frozen=True)
class TrainConfig:
    name: str
    amp: bool
    channels_last: bool


TRAIN_CONFIGS = (TrainConfig("fp32", False, False), TrainConfig("fp32 + channels-last", False, True),
                 TrainConfig("AMP", True, False), TrainConfig("AMP + channels-last", True, True))


@dataclass(frozen=True)
class Throughput:
    samples_per_s: float
    peak_mib: float | None  # CUDA only: peak memory allocated during the warm-up steps


@dataclass(frozen=True)
class DataWait:
    wait_s: float  # summed over the measured batches: inside next(loader)
    step_s: float  # summed over the measured batches: from asking for the batch to the end of its step
    batches: int

    @property
    def fraction(self) -> float:
        return self.wait_s / self.step_s


@dataclass(frozen=True)
class PGDTiming:
    pgd_s: float  # median seconds of one attack call
    limit_s: float  # median seconds of steps x (forward + input-gradient backward)
    steps: int

    @property
    def ratio(self) -> float:
        return self.pgd_s / self.limit_s


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def amp_dtype(device: torch.device) -> torch.dtype:
    """float16 on CUDA, as the mains' --amp; bfloat16 on the CPU, where float16 autocast is not what anyone runs."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def make_train_step(model: nn.Module, amp: bool, lr: float = 1e-3) -> TrainStep:
    """One SGD step (momentum 0.9, weight decay 1e-4) on cross-entropy, autocast and scaled as the mains do."""
    device = next(model.parameters()).device
    dtype = amp_dtype(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16)
    model.train()

    def step(frames: Tensor, audio: Tensor, labels: Tensor) -> Tensor:
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp):
            loss = F.cross_entropy(model(frames, audio).logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    return step


def time_interleaved(contenders: dict[str, Callable[[], object]], device: torch.device, warmup: int,
                     repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each contender: ``warmup`` calls each, then ``repeats`` rounds whose order
    alternates, so that a slow spell of the machine hits every contender alike."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def measure_training(model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                     configs: Iterable[TrainConfig], warmup: int, iters: int, repeats: int) -> dict[str, Throughput]:
    """Training samples/s of each config, each on its own copy of ``model`` (same weights at the start).

    A timed call is ``iters`` training steps on the same batch; samples/s = iters x batch / median seconds."""
    device = frames.device
    steps: dict[str, Callable[[], object]] = {}
    peaks: dict[str, float | None] = {}
    for config in configs:
        replica = copy.deepcopy(model)
        if config.channels_last:
            replica = replica.to(memory_format=torch.channels_last)
        train_step = make_train_step(replica, config.amp)
        if device.type == "cuda":  # the peak of this config alone, before the interleaved rounds mix them
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            train_step(frames, audio, labels)
            synchronize(device)
            peaks[config.name] = torch.cuda.max_memory_allocated(device) / 2**20
        else:
            peaks[config.name] = None

        def run(train_step: TrainStep = train_step) -> None:
            for _ in range(iters):
                train_step(frames, audio, labels)

        steps[config.name] = run
    times = time_interleaved(steps, device, warmup=max(1, warmup // max(iters, 1)), repeats=repeats)
    batch = frames.shape[0]
    return {name: Throughput(iters * batch / statistics.median(t), peaks[name]) for name, t in times.items()}


def bench_loader(data_root: str, img_size: int, audio_len: int, batch: int, workers: int, num_batches: int,
                 seed: int, pin_memory: bool) -> DataLoader:
    """The training split of ``data_root`` (a --dataset synthetic root) with the mains' dataset and training
    transforms, drawn with replacement so that one pass yields ``num_batches`` batches however small the
    dataset: no epoch restart (worker start-up) inside the measurement."""
    import main_attack  # the mains' flags build the dataset exactly as training does
    from dataset.loaders import build_dataset

    args = main_attack.parse_args(["--dataset", "synthetic", "--data_root", data_root, "--imgSize", str(img_size),
                                   "--audLen", str(audio_len), "--batch_size_per_gpu", str(batch),
                                   "--workers", str(workers), "--seed", str(seed)])
    dataset = build_dataset(args, "train")
    sampler = RandomSampler(dataset, replacement=True, num_samples=num_batches * batch,
                            generator=torch.Generator().manual_seed(seed))
    return DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      drop_last=True)


def measure_data_wait(loader: Iterable[dict], train_step: TrainStep, device: torch.device, warmup: int) -> DataWait:
    """Run ``train_step`` on every batch of ``loader``; of the batches after the first ``warmup`` (worker
    start-up), sum the time spent in next(loader) and the whole step time (wait + transfer + step, synchronized)."""
    iterator = iter(loader)
    wait = total = 0.0
    measured = 0
    index = 0
    while True:
        synchronize(device)
        start = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        got = time.perf_counter()
        train_step(*to_device(batch, device))
        synchronize(device)
        end = time.perf_counter()
        if index >= warmup:
            wait += got - start
            total += end - start
            measured += 1
        index += 1
    if measured == 0:
        raise ValueError(f"the loader gave {index} batches, none after the {warmup} warm-up batches")
    return DataWait(wait, total, measured)


def measure_pgd(model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                attack: Callable[[Tensor, Tensor, Tensor], object], steps: int, warmup: int,
                repeats: int) -> PGDTiming:
    """Median time of ``attack(frames, audio, labels)`` and of its limit: ``steps`` x (forward + cross-entropy +
    gradient w.r.t. both inputs), the work any ``steps``-step gradient attack pays."""
    model.eval()

    def limit() -> None:
        f = frames.detach().clone().requires_grad_(True)
        a = audio.detach().clone().requires_grad_(True)
        for _ in range(steps):
            loss = F.cross_entropy(model(f, a).logits, labels, reduction="sum")
            torch.autograd.grad(loss, [f, a])

    times = time_interleaved({"limit": limit, "attack": lambda: attack(frames, audio, labels)}, frames.device,
                             warmup, repeats)
    return PGDTiming(statistics.median(times["attack"]), statistics.median(times["limit"]), steps)


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "MISSED"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return (f"{props.name} ({device}, {props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--small", action="store_true",
                   help="small sizes for a quick run (64 px, 8192 samples, batch 4, fewer repeats)")
    p.add_argument("--img", type=int, default=None, help="frame height and width (default 224; 64 with --small)")
    p.add_argument("--audio_len", type=int, default=None, help="waveform samples (default 65535; 8192 with --small)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default 32; 4 with --small)")
    p.add_argument("--classes", type=int, default=11, help="classes (MUSIC's 11)")
    p.add_argument("--iters", type=int, default=None, help="training steps per timed call (default 10; 2 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps / calls (default 10; 2 with --small)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 7; 3 with --small)")
    p.add_argument("--pgd_eps", type=float, default=0.006,
                   help="PGD budget on each modality, normalised units (the paper's audio+visual 0.006)")
    p.add_argument("--data_root", default=None,
                   help="a --dataset synthetic root (train.csv, audio/, frames/) for the data-wait figure; "
                        "default: skipped")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers")
    p.add_argument("--data_batches", type=int, default=None,
                   help="batches in the data-wait run, after 3 warm-up ones (default 40; 6 with --small)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch intra-op threads, 0 for torch's default (1 steadies CPU figures on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (use --device cpu --small for a CPU run)")
    small = {"img": 64, "audio_len": 8192, "batch": 4, "iters": 2, "warmup": 2, "repeats": 3, "data_batches": 6}
    full = {"img": 224, "audio_len": 65535, "batch": 32, "iters": 10, "warmup": 10, "repeats": 7, "data_batches": 40}
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("img", "audio_len", "batch", "iters", "repeats", "data_batches"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model("resnet18", "anet", "concat", cls_num=args.classes, weights_frame=None).to(device)
    frames = torch.rand(args.batch, 3, 1, args.img, args.img, device=device)
    audio = torch.rand(args.batch, 1, args.audio_len, device=device) * 2 - 1
    labels = torch.randint(args.classes, (args.batch,), device=device)
    amp_name = "float16" if device.type == "cuda" else "bfloat16"
    print(f"device: {device_description(device)}")
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"settings: resnet18 (random init) on 1 frame at {args.img} px + anet on {args.audio_len} samples -> concat "
          f"({args.classes} classes); batch {args.batch}; AMP = autocast {amp_name}; {args.warmup} warm-up steps, "
          f"median of {args.repeats} timed calls of {args.iters} steps")
    report: dict = {"device": device_description(device), "torch": torch.__version__, "settings": vars(args)}

    # (a) training throughput
    throughput = measure_training(model, frames, audio, labels, TRAIN_CONFIGS, args.warmup, args.iters, args.repeats)
    base = throughput["fp32"].samples_per_s
    print("(a) training throughput (samples/s):")
    for name, t in throughput.items():
        peak = f"   peak {t.peak_mib:7.0f} MiB" if t.peak_mib is not None else ""
        print(f"    {name:<22} {t.samples_per_s:9.1f}   {t.samples_per_s / base:5.2f} x fp32{peak}")
    speedup = throughput["AMP + channels-last"].samples_per_s / base
    print(f"    AMP + channels-last / fp32: {speedup:.2f} x   target >= {AMP_TARGET} x: "
          f"{verdict(speedup, AMP_TARGET, True)}")
    report["training"] = {name: asdict(t) for name, t in throughput.items()}
    report["amp_speedup"] = speedup

    # (b) data-wait fraction of a real loader
    if args.data_root is None:
        print("(b) data wait: skipped (no --data_root)")
        report["data_wait"] = None
    else:
        loader = bench_loader(args.data_root, args.img, args.audio_len, args.batch, args.workers,
                              args.data_batches + 3, args.seed, pin_memory=device.type == "cuda")
        cuda = device.type == "cuda"
        replica = copy.deepcopy(model)
        if cuda:
            replica = replica.to(memory_format=torch.channels_last)
        step_name = "AMP + channels-last" if cuda else "fp32"
        wait = measure_data_wait(loader, make_train_step(replica, amp=cuda), device, warmup=3)
        print(f"(b) data wait: {100 * wait.fraction:.1f} % of the step time ({1e3 * wait.wait_s / wait.batches:.1f} ms "
              f"waiting of {1e3 * wait.step_s / wait.batches:.1f} ms per step, {wait.batches} batches; DataLoader over "
              f"{args.data_root} train split, {args.workers} workers, {step_name} step)   "
              f"target < {100 * DATA_WAIT_TARGET:.0f} %: {verdict(wait.fraction, DATA_WAIT_TARGET, False)}")
        report["data_wait"] = {**asdict(wait), "fraction": wait.fraction, "workers": args.workers,
                               "step": step_name}

    # (c) PGD-10 against its limit, fp32 as every attack runs; channels-last on CUDA as the mains' model
    attacked = copy.deepcopy(model).eval()
    if device.type == "cuda":
        attacked = attacked.to(memory_format=torch.channels_last)
    pgd = build_attack("pgd", attacked, eps={"visual": args.pgd_eps, "audio": args.pgd_eps}, steps=10)
    timing = measure_pgd(attacked, frames, audio, labels, pgd, steps=10, warmup=max(1, args.warmup // 5),
                         repeats=args.repeats)
    print(f"(c) PGD-10 audio+visual (eps {args.pgd_eps:g} each): {1e3 * timing.pgd_s:.1f} ms; limit 10 x (forward + "
          f"input-gradient backward): {1e3 * timing.limit_s:.1f} ms; ratio {timing.ratio:.3f}   "
          f"target <= {PGD_TARGET}: {verdict(timing.ratio, PGD_TARGET, False)}")
    report["pgd"] = {**asdict(timing), "ratio": timing.ratio}

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
