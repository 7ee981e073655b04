"""GPU figures (not pass/fail), side by side in one run on the device it is given:

(a) training throughput, the table of issue 21 in one run: rows batch 32 and 128 x cudnn.benchmark off / on,
    columns fp32, fp32 + channels-last, fp16 AMP (GradScaler), fp16 + channels-last, bf16 AMP (no scaler),
    bf16 + channels-last: samples/s and the ratio to fp32 of the row. ResNet-18 (random init) on one 224 px frame
    + anet on 65535 samples + the concat head, synthetic tensors in memory. Each benchmark setting runs in a
    fresh process (the setting and cuDNN's cache of chosen algorithms cannot be undone inside one), its configs
    interleaved. Then, at the first batch size, torch.profiler tables of one training step in fp32, fp16 AMP
    and bf16 AMP (top ops by self CUDA time; self CPU time on the CPU), each encoder's forward + backward alone
    per precision, and a diagnosis: time in casts (aten::to / _to_copy / copy_), in the GradScaler
    (_amp_foreach_non_finite_check_and_unscale_, _amp_update_scale_), anet's 1-D convolutions in fp16, and
    whether cuDNN picks other convolution kernels with benchmark on;
(b) with --data_root, the data-wait fraction of a real DataLoader over a dataset on disk (the training
    split, training transforms, --workers workers): time spent waiting for the next batch / whole step time,
    the step being the training step the mains run with --amp (auto dtype, channels-last auto, benchmark on;
    fp32 on the CPU);
(c) PGD-10 on both modalities against its limit, 10 x (forward + input-gradient backward) on the same
    model and batch, as a ratio (fp32, benchmark off: what an evaluation runs).

Targets: (a) the mains' --amp (auto dtype, channels-last auto, cudnn.benchmark on) >= 1.5 x fp32 at batch 32 and
>= 2 x at batch 128; (b) data wait < 5 %; (c) ratio <= 1.10.

    python bench/bench_gpu.py [--device cuda] [--data_root data/gpu_check/root --workers 8] [--json out.json]
    python bench/bench_gpu.py --device cpu --small [--threads 1]   (a quick CPU run: the figures only show it works)

Timings: warm-up iterations first, torch.cuda.synchronize around every timed region on CUDA, contenders
interleaved (alternating order) and the median over --repeats. --small swaps ResNet-18 for smallcnn (32 px,
2048 samples, batches 2 and 4): on a CPU without bfloat16 instructions a ResNet-18 bf16 step takes seconds.
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
import subprocess
import tempfile
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
from utils.precision import AMP_DTYPES, Precision, configure_backends, resolve_amp_dtype, use_channels_last

TrainStep = Callable[[Tensor, Tensor, Tensor], Tensor]

AMP_TARGETS = (1.5, 2.0)  # at the first and the second batch size of the table (32 and 128)
DATA_WAIT_TARGET = 0.05
PGD_TARGET = 1.10
CAST_OPS = ("aten::to", "aten::_to_copy", "aten::copy_")
SCALER_OPS = ("_amp_foreach_non_finite_check_and_unscale_", "_amp_update_scale_")
SLOW_CONV = "aten::_slow_conv"  # torch's reference convolutions (e.g. bf16 on a CPU without bf16 instructions)
CONV_KERNEL_WORDS = ("conv", "cudnn", "xmma", "implicit", "winograd", "fft", "dgrad", "wgrad", "fprop", "gemm")


@dataclass(frozen=True)
class TrainConfig:
    name: str
    dtype: str | None  # autocast dtype (a key of AMP_DTYPES), None for float32
    channels_last: bool
    compile: bool = False  # torch.compile of the model (--compile)

    def precision(self, device: torch.device) -> Precision:
        return Precision(device.type, AMP_DTYPES[self.dtype] if self.dtype else None)


TRAIN_CONFIGS = (TrainConfig("fp32", None, False), TrainConfig("fp32 + CL", None, True),
                 TrainConfig("fp16 AMP", "float16", False), TrainConfig("fp16 + CL", "float16", True),
                 TrainConfig("bf16 AMP", "bfloat16", False), TrainConfig("bf16 + CL", "bfloat16", True))
PROFILED = ("fp32", "fp16 AMP", "bf16 AMP")


@dataclass(frozen=True)
class Throughput:
    samples_per_s: float
    peak_mib: float | None  # CUDA only: peak memory allocated during one step of this config alone


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


def mains_amp_config(device: torch.device, model: nn.Module) -> TrainConfig:
    """The config the mains train with under --amp and every other flag at auto."""
    dtype = "bfloat16" if resolve_amp_dtype("auto", device) == torch.bfloat16 else "float16"
    channels_last = use_channels_last("auto", device, model)
    return next(c for c in TRAIN_CONFIGS if c.dtype == dtype and c.channels_last == channels_last)


def make_train_step(model: nn.Module, precision: Precision, lr: float = 1e-3) -> TrainStep:
    """One SGD step (momentum 0.9, weight decay 1e-4) on cross-entropy, autocast and scaled as the mains do."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scaler = precision.scaler()
    model.train()

    def step(frames: Tensor, audio: Tensor, labels: Tensor) -> Tensor:
        with precision.autocast():
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


def replica_of(model: nn.Module, config: TrainConfig) -> nn.Module:
    replica = copy.deepcopy(model)
    if config.channels_last:
        replica = replica.to(memory_format=torch.channels_last)
    return torch.compile(replica) if config.compile else replica


def table_configs(args: argparse.Namespace, device: torch.device, model: nn.Module) -> tuple[TrainConfig, ...]:
    """The table's columns: the six configs, and with --compile the mains' --amp config compiled."""
    if not args.compile:
        return TRAIN_CONFIGS
    mains = mains_amp_config(device, model)
    return (*TRAIN_CONFIGS, TrainConfig(f"{mains.name} + compile", mains.dtype, mains.channels_last, compile=True))


def measure_training(model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor,
                     configs: Iterable[TrainConfig], warmup: int, iters: int, repeats: int) -> dict[str, Throughput]:
    """Training samples/s of each config, each on its own copy of ``model`` (same weights at the start).

    A timed call is ``iters`` training steps on the same batch; samples/s = iters x batch / median seconds."""
    device = frames.device
    steps: dict[str, Callable[[], object]] = {}
    peaks: dict[str, float | None] = {}
    for config in configs:
        train_step = make_train_step(replica_of(model, config), config.precision(device))
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


def self_time(event, cuda: bool) -> float:
    """An op's own time in microseconds: on the GPU (its kernels) with CUDA, else on the CPU."""
    return event.self_device_time_total if cuda else event.self_cpu_time_total


def profile_step(model: nn.Module, config: TrainConfig, frames: Tensor, audio: Tensor, labels: Tensor,
                 steps: int = 2, warmup: int = 2) -> dict:
    """torch.profiler over ``steps`` training steps of ``config`` (after ``warmup`` steps): its table of the top
    ops by self time, the total self time and the time of casts, of the GradScaler and of the reference
    convolutions torch falls back to where no fast kernel takes the dtype, and (CUDA) the convolution kernels
    cuDNN ran, by time."""
    device = frames.device
    cuda = device.type == "cuda"
    train_step = make_train_step(replica_of(model, config), config.precision(device))
    for _ in range(warmup):
        train_step(frames, audio, labels)
    synchronize(device)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            train_step(frames, audio, labels)
        synchronize(device)
    averages = prof.key_averages()
    ops = [e for e in averages if e.device_type != torch.autograd.DeviceType.CUDA]
    kernels = [e for e in averages if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(self_time(e, cuda) for e in ops)
    conv = sorted(((e.self_device_time_total, e.key) for e in kernels
                   if any(word in e.key.lower() for word in CONV_KERNEL_WORDS)), reverse=True)
    return {"table": averages.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                    row_limit=12, max_name_column_width=60),
            "total_us": total,
            "casts_us": sum(self_time(e, cuda) for e in ops if e.key in CAST_OPS),
            "scaler_us": sum(self_time(e, cuda) for e in ops if any(op in e.key for op in SCALER_OPS)),
            "slow_conv_us": sum(self_time(e, cuda) for e in ops if e.key.startswith(SLOW_CONV)),
            "conv_kernels": [name for _, name in conv[:8]], "steps": steps}


def measure_encoders(model: nn.Module, frames: Tensor, audio: Tensor, warmup: int,
                     repeats: int) -> dict[str, dict[str, float]]:
    """Milliseconds of each encoder alone, forward + backward of the sum of its output, per precision (fp32,
    fp16 AMP, bf16 AMP), interleaved: where a precision gains or loses, 2-D (frames) against 1-D (audio)."""
    device = frames.device
    out: dict[str, dict[str, float]] = {}
    precisions = {c.name: c.precision(device) for c in TRAIN_CONFIGS if not c.channels_last}
    for label, net, x in (("frame encoder (2-D conv)", model.net_frame, frames),
                          ("audio encoder (1-D conv)", model.net_sound, audio)):
        encoder = copy.deepcopy(net).train()

        def run(precision: Precision, encoder: nn.Module = encoder, x: Tensor = x) -> None:
            with precision.autocast():
                result = encoder(x)
            first = result[0] if isinstance(result, tuple) else result
            first.float().sum().backward()

        times = time_interleaved({name: (lambda p=p: run(p)) for name, p in precisions.items()}, device, warmup,
                                 repeats)
        out[label] = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return out


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
                   help="a quick run: smallcnn and anet of width 64 instead of ResNet-18 and anet-512, 32 px, "
                        "2048 samples, batches 2 and 4, fewer repeats")
    p.add_argument("--img", type=int, default=None, help="frame height and width (default 224; 32 with --small)")
    p.add_argument("--audio_len", type=int, default=None, help="waveform samples (default 65535; 2048 with --small)")
    p.add_argument("--batches", type=int, nargs=2, default=None, metavar=("B1", "B2"),
                   help="the table's two batch sizes (default 32 128; 2 4 with --small); the profile, (b) and (c) "
                        "use the first")
    p.add_argument("--classes", type=int, default=11, help="classes (MUSIC's 11)")
    p.add_argument("--iters", type=int, default=None, help="training steps per timed call (default 5; 1 with --small)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps / calls (default 10; 1 with --small)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls, median reported (default 5; 2 with --small)")
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
    p.add_argument("--compile", action="store_true",
                   help="(a) gains a column: the mains' --amp config under torch.compile (its compilation, about two "
                        "minutes for a tiny model on a 2-core CPU, falls in the warm-up, outside the figure)")
    p.add_argument("--measure_benchmark", choices=["off", "on"], default=None, help=argparse.SUPPRESS)  # (a)'s worker
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available (use --device cpu --small for a CPU run)")
    small = {"img": 32, "audio_len": 2048, "batches": [2, 4], "iters": 1, "warmup": 1, "repeats": 2,
             "data_batches": 6}
    full = {"img": 224, "audio_len": 65535, "batches": [32, 128], "iters": 5, "warmup": 10, "repeats": 5,
            "data_batches": 40}
    for key, value in (small if args.small else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("img", "audio_len", "iters", "repeats", "data_batches"):
        if getattr(args, key) < 1:
            p.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    if min(args.batches) < 1:
        p.error(f"--batches must be >= 1, got {args.batches}")
    args.frame_arch = "smallcnn" if args.small else "resnet18"
    return args


def bench_model(args: argparse.Namespace, device: torch.device) -> nn.Module:
    """ResNet-18 + anet (512-d) + concat; with --small smallcnn + anet, both 64-d."""
    torch.manual_seed(args.seed)
    dims = {"frame_dim": 64, "sound_dim": 64} if args.small else {}
    return build_model(args.frame_arch, "anet", "concat", cls_num=args.classes, weights_frame=None, **dims).to(device)


def bench_batch(args: argparse.Namespace, batch: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(args.seed + batch)
    frames = torch.rand(batch, 3, 1, args.img, args.img, generator=generator)
    audio = torch.rand(batch, 1, args.audio_len, generator=generator) * 2 - 1
    labels = torch.randint(args.classes, (batch,), generator=generator)
    return frames.to(device), audio.to(device), labels.to(device)


def measure_setting(args: argparse.Namespace) -> dict:
    """(a) under one cudnn.benchmark setting (--measure_benchmark), in this process: the table's rows, the
    profiles and the encoder timings at the first batch size."""
    device = torch.device(args.device)
    configure_backends(args.measure_benchmark, False, training=True)
    model = bench_model(args, device)
    rows = {}
    for batch in args.batches:
        frames, audio, labels = bench_batch(args, batch, device)
        figures = measure_training(model, frames, audio, labels, table_configs(args, device, model), args.warmup,
                                   args.iters, args.repeats)
        rows[str(batch)] = {name: asdict(t) for name, t in figures.items()}
        del frames, audio, labels
        if device.type == "cuda":
            torch.cuda.empty_cache()
    frames, audio, labels = bench_batch(args, args.batches[0], device)
    configs = {c.name: c for c in TRAIN_CONFIGS}
    steps = 1 if args.small else 2
    profiles = {name: profile_step(model, configs[name], frames, audio, labels, steps, steps) for name in PROFILED}
    encoders = measure_encoders(model, frames, audio, warmup=max(1, args.warmup // 5), repeats=args.repeats)
    return {"cudnn_benchmark": torch.backends.cudnn.benchmark, "rows": rows, "profiles": profiles,
            "encoders": encoders}


def measure_setting_in_subprocess(argv: list[str], benchmark: str) -> dict:
    """``measure_setting`` in a fresh Python process (this script with --measure_benchmark), so each setting
    starts from an empty cuDNN algorithm cache."""
    forwarded = [a for a in argv if not a.startswith("--json=")]  # the user's --json is this process's
    if "--json" in forwarded:
        at = forwarded.index("--json")
        forwarded = forwarded[:at] + forwarded[at + 2:]
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "setting.json"
        command = [sys.executable, str(Path(__file__).resolve()), *forwarded, "--measure_benchmark", benchmark,
                   "--json", str(out)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"the cudnn.benchmark {benchmark} measurement failed (exit status {done.returncode}):\n"
                               f"{done.stderr[-3000:]}")
        return json.loads(out.read_text())


def ratio_text(value: float, base: float) -> str:
    return f"{value:.0f} /s ({value / base:.2f} x)" if value >= 10 else f"{value:.2f} /s ({value / base:.2f} x)"


def table_rows(settings: dict[str, dict], batches: list[int]) -> list[dict]:
    """The table as records: batch, cudnn_benchmark, samples/s and ratio to the row's fp32 per config."""
    rows = []
    for batch in batches:
        for benchmark in ("off", "on"):
            figures = settings[benchmark]["rows"][str(batch)]
            base = figures["fp32"]["samples_per_s"]
            rows.append({"batch": batch, "cudnn_benchmark": benchmark,
                         "samples_per_s": {name: f["samples_per_s"] for name, f in figures.items()},
                         "ratio": {name: f["samples_per_s"] / base for name, f in figures.items()},
                         "peak_mib": {name: f["peak_mib"] for name, f in figures.items()}})
    return rows


def print_table(rows: list[dict]) -> None:
    names = list(rows[0]["samples_per_s"])
    print("| batch, cudnn.benchmark | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for row in rows:
        base = row["samples_per_s"]["fp32"]
        cells = [ratio_text(row["samples_per_s"][n], base) for n in names]
        print(f"| {row['batch']}, {row['cudnn_benchmark']} | " + " | ".join(cells) + " |")


def share(part: float, total: float) -> str:
    return f"{100 * part / total:.1f} %" if total > 0 else "n/a"


def diagnosis(settings: dict[str, dict], rows: list[dict], mains: TrainConfig, cuda: bool) -> list[str]:
    """Where the mixed-precision step gains or loses, from the profiles and timings of the run."""
    profiles = settings["on"]["profiles"]
    where = "CUDA" if cuda else "CPU"
    lines = ["casts (aten::to / _to_copy / copy_), share of the step's self " + where + " time: " + ", ".join(
        f"{n} {share(profiles[n]['casts_us'], profiles[n]['total_us'])}" for n in PROFILED)]
    lines.append(f"GradScaler (unscale + inf check, scale update): fp16 AMP "
                 f"{share(profiles['fp16 AMP']['scaler_us'], profiles['fp16 AMP']['total_us'])} of its step; "
                 f"bf16 AMP {share(profiles['bf16 AMP']['scaler_us'], profiles['bf16 AMP']['total_us'])} (no scaler)")
    for label, times in settings["on"]["encoders"].items():
        lines.append(f"{label}, forward + backward alone: " + ", ".join(
            f"{n} {ms:.2f} ms ({ms / times['fp32']:.2f} x fp32)" for n, ms in times.items()))
    if cuda:
        for name in PROFILED:
            off = settings["off"]["profiles"][name]["conv_kernels"]
            on = settings["on"]["profiles"][name]["conv_kernels"]
            changed = len(set(on) - set(off))
            lines.append(f"cuDNN convolution kernels, {name}: {changed} of the top {len(on)} with benchmark on are not "
                         f"among those without" + (f" (top with it on: {on[0][:70]})" if on else ""))
    else:
        lines.append("cuDNN algorithm choice: no cuDNN on the CPU (cudnn.benchmark changes nothing there)")
    first = {r["cudnn_benchmark"]: r for r in rows if r["batch"] == rows[0]["batch"]}
    lines.append(f"cudnn.benchmark on / off at batch {rows[0]['batch']}: " + ", ".join(
        f"{n} {first['on']['samples_per_s'][n] / first['off']['samples_per_s'][n]:.2f} x"
        for n in first["on"]["samples_per_s"]))
    lines += [overheads(settings, first["on"], name, rows[0]["batch"]) for name in PROFILED[1:]]
    return lines


def overheads(settings: dict[str, dict], row: dict, name: str, batch: int) -> str:
    """The overheads of the AMP config ``name`` against fp32 as shares of its step, largest first."""
    profiles, encoders = settings["on"]["profiles"], settings["on"]["encoders"]
    fp32, amp = profiles["fp32"], profiles[name]
    step_ms = 1e3 * batch / row["samples_per_s"][name]
    def part(profile: dict, key: str) -> float:
        return profile[key] / max(profile["total_us"], 1e-9)

    causes = {"extra casts": part(amp, "casts_us") - part(fp32, "casts_us"), "GradScaler": part(amp, "scaler_us"),
              "reference convolutions (aten::_slow_conv*)": part(amp, "slow_conv_us") - part(fp32, "slow_conv_us")}
    for label, times in encoders.items():
        causes[f"{label.split(' (')[0]} slower than fp32"] = (times[name] - times["fp32"]) / step_ms
    ranked = sorted(causes.items(), key=lambda item: item[1], reverse=True)
    return (f"{name} at batch {batch} ({row['ratio'][name]:.2f} x fp32): overheads by share of its step: "
            + ", ".join(f"{cause} {100 * value:+.1f} %" for cause, value in ranked))


def report_amp_targets(rows: list[dict], mains: TrainConfig) -> dict[str, dict]:
    targets = {}
    for batch, target in zip([rows[0]["batch"], rows[-1]["batch"]], AMP_TARGETS):
        row = next(r for r in rows if r["batch"] == batch and r["cudnn_benchmark"] == "on")
        value = row["ratio"][mains.name]
        targets[str(batch)] = {"config": mains.name, "ratio": value, "target": target,
                               "verdict": verdict(value, target, True)}
        print(f"    the mains' --amp ({mains.name}, cudnn.benchmark on) at batch {batch}: {value:.2f} x fp32   "
              f"target >= {target} x: {verdict(value, target, True)}")
    return targets


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measure_benchmark is not None:
        figures = measure_setting(args)
        Path(args.json).write_text(json.dumps(figures) + "\n")
        return figures
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    model = bench_model(args, device)
    mains = mains_amp_config(device, model)
    print(f"device: {device_description(device)}")
    print(f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"settings: {args.frame_arch} (random init) on 1 frame at {args.img} px + anet on {args.audio_len} samples "
          f"-> concat ({args.classes} classes); batches {args.batches[0]} and {args.batches[1]}; {args.warmup} warm-up "
          f"steps, median of {args.repeats} timed calls of {args.iters} steps; CL = channels-last")
    report: dict = {"device": device_description(device), "torch": torch.__version__, "settings": vars(args)}

    # (a) training throughput: one fresh process per cudnn.benchmark setting
    settings = {benchmark: measure_setting_in_subprocess(argv, benchmark) for benchmark in ("off", "on")}
    rows = table_rows(settings, args.batches)
    print("(a) training throughput, samples/s (ratio to the row's fp32); each cudnn.benchmark setting measured in "
          "its own process:")
    print_table(rows)
    where = "self CUDA" if cuda else "self CPU"
    for name in PROFILED:
        profile = settings["on"]["profiles"][name]
        print(f"\n    torch.profiler, {name}, batch {args.batches[0]}, cudnn.benchmark on, {profile['steps']} steps, "
              f"top ops by {where} time:")
        print(profile["table"])
    print("    diagnosis:")
    lines = diagnosis(settings, rows, mains, cuda)
    for line in lines:
        print(f"    - {line}")
    targets = report_amp_targets(rows, mains)
    report["training"] = {"rows": rows, "mains_amp": mains.name, "targets": targets, "diagnosis": lines,
                          "encoders": settings["on"]["encoders"],
                          "profiles": {b: {n: {k: v for k, v in p.items() if k != "table"}
                                           for n, p in settings[b]["profiles"].items()} for b in settings}}

    # (b) data-wait fraction of a real loader, with the step the mains train with
    configure_backends("auto", False, training=True)
    if args.data_root is None:
        print("(b) data wait: skipped (no --data_root)")
        report["data_wait"] = None
    else:
        batch = args.batches[0]
        loader = bench_loader(args.data_root, args.img, args.audio_len, batch, args.workers,
                              args.data_batches + 3, args.seed, pin_memory=cuda)
        config = mains if cuda else TRAIN_CONFIGS[0]
        wait = measure_data_wait(loader, make_train_step(replica_of(model, config), config.precision(device)),
                                 device, warmup=3)
        print(f"(b) data wait: {100 * wait.fraction:.1f} % of the step time ({1e3 * wait.wait_s / wait.batches:.1f} ms "
              f"waiting of {1e3 * wait.step_s / wait.batches:.1f} ms per step, {wait.batches} batches of {batch}; "
              f"DataLoader over {args.data_root} train split, {args.workers} workers, {config.name} step)   "
              f"target < {100 * DATA_WAIT_TARGET:.0f} %: {verdict(wait.fraction, DATA_WAIT_TARGET, False)}")
        report["data_wait"] = {**asdict(wait), "fraction": wait.fraction, "workers": args.workers,
                               "step": config.name}

    # (c) PGD-10 against its limit, fp32 as every attack runs, cuDNN as an evaluation sets it
    configure_backends("auto", False, training=False)
    frames, audio, labels = bench_batch(args, args.batches[0], device)
    attacked = copy.deepcopy(model).eval()
    if use_channels_last("auto", device, attacked):
        attacked = attacked.to(memory_format=torch.channels_last)
    pgd = build_attack("pgd", attacked, eps={"visual": args.pgd_eps, "audio": args.pgd_eps}, steps=10)
    timing = measure_pgd(attacked, frames, audio, labels, pgd, steps=10, warmup=max(1, args.warmup // 5),
                         repeats=args.repeats)
    print(f"(c) PGD-10 audio+visual (eps {args.pgd_eps:g} each), batch {args.batches[0]}: {1e3 * timing.pgd_s:.1f} ms; "
          f"limit 10 x (forward + input-gradient backward): {1e3 * timing.limit_s:.1f} ms; ratio {timing.ratio:.3f}   "
          f"target <= {PGD_TARGET}: {verdict(timing.ratio, PGD_TARGET, False)}")
    report["pgd"] = {**asdict(timing), "ratio": timing.ratio}

    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return report


if __name__ == "__main__":
    main()
