"""Memory-bank defense cost: (a) batched FISTA against the released solver, (b) the defense's added time per
test sample relative to the model's forward pass, (c) white-box gradients through the sparse coding: implicit
differentiation of the lasso against backpropagation through the unrolled iterations, (d) an attack through the
banks with the sparse coding started from zero at every step against warm-started. Prints figures, not pass/fail.

    python bench/bench_defense.py [--parts a b c d] [--dim 512 --bank_size 1024 --batch 64 --step 1e-6]
                                  [--feat_scale 0.6 --grad_iters 1000]
                                  [--arch_frame resnet18 --img 224 --audio_len 65535 --model_batch 16]

(a) The released solver (``ista_released``: an eigen-decomposition of DᵀD on every call, then plain ISTA with
the paper's fixed step, stopping on an absolute code change < 8e-4 or after 2000 iterations) runs on a
``dim × bank_size`` bank and a batch of features; its final mean lasso objective is the target, and FISTA
(step 1/L, L by power iteration once per bank, DᵀD precomputed) is timed to reach target·1.01. Two targets:
the released run to its own stopping rule (what the released code computed), and the released ISTA run to
its 2000-iteration cap without the early stop (or to ``--time_cap`` seconds); plus the lasso optimum.
Features are ReLU-like (non-negative: |gaussian| plus a random mix of a few shared non-negative directions)
and, like the paper's banks, raw rather than normalised: the paper's steps are tied to the raw feature scale
(the released code refuses step·λ_max(DᵀD) > 1), so normalising would make them meaningless. ``--feat_scale``
sets that scale; the largest eigenvalue L and step·L are printed.

(b) ``build_model`` (ResNet-18 + ANet + concat at the paper's sizes by default, random weights, eval mode) is
timed plain and wrapped in ``DefendedModel`` under ``no_grad``. Banks: ``bank_size`` synthetic ReLU-like
features rescaled to the mean norm of the model's own features on the timed batch (collecting real training
features would need ~1000 forward passes); FISTA's iteration count depends on the data, so the figure is
indicative.

(c) The features and bank of (a); the loss is a fixed random weighting of the reconstruction ``Dα`` and its
gradient goes to the features. Both variants run exactly ``--grad_iters`` FISTA iterations (tol 0), so they
code the same thing. Each variant runs in a fresh spawned process, twice. Peak memory: the process's peak
resident set size after the backward pass (``VmHWM``, reset just before the forward pass through
``/proc/self/clear_refs`` on Linux) minus the resident size at that point, i.e. everything the gradient
computation held at its high point as the OS counts it (where that is unavailable, the rise of
``getrusage``'s ``ru_maxrss``, a lower bound). "live": glibc's mmap threshold fixed at 128 KiB
(``fixed_mmap_threshold``), so freed tensors go back to the OS and the figure is the memory the computation
holds; "default heap": glibc's default allocator, whose heap fragmentation inflates the unrolled graph's
figure several times and varies from run to run (what a CPU user sees). Times come from the default run.

(d) PGD (``--attack_steps``, step eps/8, no random start, CE with implicit gradients through the coding) by the
evaluation engine (``AttackEngine``, as ``main_defense.py --mode eval --use_banks`` runs it) on a small model with
random weights (BatchNorm calibrated as in (b)) whose banks hold the features of ``--attack_bank`` random inputs,
and labels that are the defended model's clean predictions, three times: FISTA from zero at every pass (``cold``,
``--bank_warm_start off``), warm-started (``warm``, the default), and cold at a tenth of the tolerance
(``cold/10``): how far the outcomes move with the solver's tolerance alone. Per run: the attack time (the engine's,
without the verdict pass), the whole evaluation, robust accuracy, FISTA iterations per coding and per warm-started
coding (an attack step), and per sample whether the outcomes agree. The verdict pass after each attack codes from
zero in every run (``defenses.protocol.without_state``), so the runs differ only in the inputs the attack finds.

One thread by default: on a machine shared with other jobs more threads make the figures noise.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from defenses.memory_bank import DefendedModel, MemoryBank
from defenses.sparse_coding import (
    CodingStats,
    DenseCodeWarning,
    fista,
    implicit_lasso,
    ista_released,
    lasso_objective,
    lipschitz_constant,
)
from models import build_model

T = TypeVar("T")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dim", type=int, default=512, help="feature size d")
    p.add_argument("--bank_size", type=int, default=1024, help="bank columns N")
    p.add_argument("--batch", type=int, default=64, help="features coded at once in (a)")
    p.add_argument("--lam", type=float, default=0.1, help="lasso λ")
    p.add_argument("--step", type=float, default=1e-6, help="released ISTA step (paper: MUSIC audio 1e-6)")
    p.add_argument("--released_tol", type=float, default=8e-4)
    p.add_argument("--released_max_iter", type=int, default=2000)
    p.add_argument("--fista_tol", type=float, default=1e-3, help="FISTA relative code-change tolerance")
    p.add_argument("--fista_max_iter", type=int, default=2000)
    p.add_argument("--optimum_iters", type=int, default=4000, help="FISTA iterations for the reference optimum")
    p.add_argument("--feat_scale", type=float, default=0.6, help="feature scale (per-entry RMS ≈ 1.3 × scale)")
    p.add_argument("--directions", type=int, default=8, help="shared non-negative directions in the features")
    p.add_argument("--time_cap", type=float, default=120.0, help="seconds for the released run without early stop")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--arch_frame", default="resnet18")
    p.add_argument("--arch_sound", default="anet")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--audio_len", type=int, default=65535)
    p.add_argument("--model_batch", type=int, default=16)
    p.add_argument("--mix", type=float, default=0.5, help="bank mix a")
    p.add_argument("--grad_iters", type=int, default=1000, help="FISTA iterations in (c), both gradient variants")
    p.add_argument("--attack_frame", default="smallcnn", help="(d) visual encoder")
    p.add_argument("--attack_dim", type=int, default=64, help="(d) feature size of both encoders")
    p.add_argument("--attack_img", type=int, default=64, help="(d) frame size")
    p.add_argument("--attack_audio_len", type=int, default=8192, help="(d) waveform samples")
    p.add_argument("--attack_bank", type=int, default=256, help="(d) bank columns (features of as many inputs)")
    p.add_argument("--attack_samples", type=int, default=32, help="(d) test samples")
    p.add_argument("--attack_batch", type=int, default=16, help="(d) evaluation batch")
    p.add_argument("--attack_steps", type=int, default=10, help="(d) PGD steps (step eps/8, no random start)")
    p.add_argument("--attack_eps", type=float, nargs=2, default=[0.002, 0.002], metavar=("EV", "EA"),
                   help="(d) PGD budget, visual (ImageNet-normalised) and audio")
    p.add_argument("--parts", nargs="+", choices=["a", "b", "c", "d"], default=["a", "b", "c", "d"],
                   help="sections to run")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads, 0 for torch's default")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def relu_like_features(n: int, dim: int, directions: Tensor, scale: float, gen: torch.Generator) -> Tensor:
    """``[n, dim]`` non-negative features: half-normal noise plus a random non-negative mix of ``directions``."""
    weights = torch.rand(n, directions.shape[0], generator=gen)
    return scale * (0.5 * torch.randn(n, dim, generator=gen).abs() + weights @ directions / 4)


def timed(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Median seconds per call over ``repeats`` calls (after one warm-up call) and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def first_iteration(run: Callable[[int], Tensor], done: Callable[[Tensor], bool], limit: int) -> int | None:
    """Smallest ``k ≤ limit`` with ``done(run(k))``, by doubling then bisection (exact when ``done`` is
    monotone in ``k``; for FISTA's objective, which is nearly so, a close upper bound)."""
    hi = 1
    while not done(run(hi)):
        if hi >= limit:
            return None
        hi = min(2 * hi, limit)
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if done(run(mid)) else (mid, hi)
    return hi


def bank_and_features(args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """The synthetic bank ``D [dim, bank_size]`` and features ``F [batch, dim]`` of (a) and (c)."""
    gen = torch.Generator().manual_seed(args.seed)
    directions = torch.randn(args.directions, args.dim, generator=gen).abs()
    D = relu_like_features(args.bank_size, args.dim, directions, args.feat_scale, gen).T.contiguous()
    F = relu_like_features(args.batch, args.dim, directions, args.feat_scale, gen)
    return D, F


def bench_solvers(args: argparse.Namespace) -> None:
    D, F = bank_and_features(args)
    lam = args.lam

    def objective(A: Tensor) -> float:
        return float(lasso_objective(D, F, A, lam).mean())

    setup_s, (L, gram) = timed(lambda: (lipschitz_constant(D), D.T @ D), args.repeats)
    top = float(torch.linalg.eigvalsh(gram)[-1])
    print(f"(a) bank {args.dim} x {args.bank_size}, batch {args.batch}, λ {lam}, feature RMS "
          f"{float(D.pow(2).mean().sqrt()):.3f}, mean ‖f‖ {float(F.norm(dim=1).mean()):.2f}")
    print(f"    L = λ_max(DᵀD): power iteration {L:.6g}, eigvalsh {top:.6g}; released step {args.step:g}: "
          f"step·L = {args.step * top:.3f} (the release refuses > 1; ISTA is stable below 2)")
    if args.step * top > 1:
        print("    the released step is invalid at this feature scale: lower --feat_scale or --step")
        return

    def fista_k(k: int) -> Tensor:
        return fista(D, F, lam, L, max_iter=k, tol=0.0, gram=gram)

    def released(k: int, tol: float) -> Tensor:
        return ista_released(D, F, lam, args.step, tol=tol, max_iter=k)

    optimum = objective(fista_k(args.optimum_iters))
    eig_s, _ = timed(lambda: torch.linalg.eigvalsh(D.T @ D), args.repeats)

    rel_s, rel_A = timed(lambda: released(args.released_max_iter, args.released_tol), args.repeats)
    rel_iters = first_iteration(lambda k: released(k, args.released_tol), lambda A: torch.equal(A, rel_A),
                                args.released_max_iter)
    probe = 50
    probe_s, _ = timed(lambda: released(probe, 0.0), 1)
    per_iter = max(probe_s - eig_s, 1e-9) / probe
    cap_iters = min(args.released_max_iter, max(probe, int((args.time_cap - eig_s) / per_iter)))
    cap_s, cap_A = timed(lambda: released(cap_iters, 0.0), 1)
    capped = cap_iters < args.released_max_iter

    fista_s, fista_A = timed(lambda: fista(D, F, lam, L, args.fista_max_iter, args.fista_tol, gram=gram),
                             args.repeats)
    fista_iters = first_iteration(
        lambda k: fista(D, F, lam, L, k, args.fista_tol, gram=gram), lambda A: torch.equal(A, fista_A),
        args.fista_max_iter)

    print(f"    one-off per bank (FISTA): power iteration + DᵀD {setup_s * 1e3:.1f} ms; "
          f"released per call: eigvalsh(DᵀD) {eig_s * 1e3:.1f} ms")
    print(f"    lasso optimum (FISTA, {args.optimum_iters} iterations): mean objective {optimum:.4f}")
    rows = [
        (f"released, its stopping rule (tol {args.released_tol:g})", rel_s, rel_A, f"{rel_iters} it"),
        (f"released, no early stop ({cap_iters} it{', time-capped' if capped else ''})", cap_s, cap_A,
         f"{cap_iters} it"),
    ]
    print(f"    {'solver':58s} {'time':>10s} {'iters':>8s} {'objective':>10s} {'vs optimum':>10s}")
    for name, seconds, A, iters in [*rows, (f"FISTA, its stopping rule (relative tol {args.fista_tol:g})",
                                            fista_s, fista_A, f"{fista_iters} it")]:
        obj = objective(A)
        print(f"    {name:58s} {seconds * 1e3:8.1f} ms {iters:>8s} {obj:10.4f} {obj / optimum - 1:+9.1%}")
    print("    FISTA to the released objective x 1.01 (DᵀD and L precomputed once per bank):")
    for name, seconds, A, _ in rows:
        target = objective(A) * 1.01
        k = first_iteration(fista_k, lambda X, target=target: objective(X) <= target, args.optimum_iters)
        if k is None:
            print(f"      {name}: not reached in {args.optimum_iters} iterations")
            continue
        k_s, k_A = timed(lambda k=k: fista_k(k), args.repeats)
        print(f"      {name}: target {target:.4f}, FISTA {k} it {k_s * 1e3:.1f} ms (objective "
              f"{objective(k_A):.4f}) vs released {seconds * 1e3:.1f} ms: speed-up {seconds / k_s:.1f}x")


def calibrate_batchnorm(model: nn.Module, frames: Tensor, audio: Tensor) -> None:
    """Set every BatchNorm's running statistics to those of one batch, so that randomly initialised encoders
    give features of a trained-like scale (with the default statistics they are far off in both directions)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: after one batch, that batch's statistics
    model.train()
    with torch.no_grad():
        model(frames, audio)
    model.eval()


def bench_model(args: argparse.Namespace) -> None:
    model = build_model(args.arch_frame, args.arch_sound, "concat", cls_num=11)
    gen = torch.Generator().manual_seed(args.seed)
    frames = torch.rand(args.model_batch, 3, 1, args.img, args.img, generator=gen)
    audio = torch.rand(args.model_batch, 1, args.audio_len, generator=gen) * 2 - 1
    calibrate_batchnorm(model, frames, audio)
    with torch.no_grad():
        out = model(frames, audio)
    banks = {}
    for name, feat in (("visual", out.feat_v), ("audio", out.feat_a)):
        directions = torch.randn(args.directions, feat.shape[1], generator=gen).abs()
        D = relu_like_features(args.bank_size, feat.shape[1], directions, 1.0, gen)
        D = D * (feat.norm(dim=1).mean() / D.norm(dim=1).mean())
        banks[name] = D.T.contiguous()
    print(f"(b) {args.arch_frame} + {args.arch_sound} + concat, frames {args.img}x{args.img}, audio "
          f"{args.audio_len} samples, batch {args.model_batch}, banks {args.bank_size} columns, mix {args.mix}")
    print(f"    mean ‖feat_v‖ {float(out.feat_v.norm(dim=1).mean()):.2f}, ‖feat_a‖ "
          f"{float(out.feat_a.norm(dim=1).mean()):.2f}")
    # the paper's step where the release would accept it at this feature scale, else half the largest such
    steps = {m: min(args.step, 0.5 / lipschitz_constant(D)) for m, D in banks.items()}
    print("    released ISTA steps: " + ", ".join(
        f"{m} {step:.3g}" + (" (paper's)" if step == args.step else " (0.5/L: the paper's exceeds 1/L)")
        for m, step in steps.items()))
    for m, feat in (("visual", out.feat_v), ("audio", out.feat_a)):
        bank = MemoryBank(banks[m], args.lam, args.mix, tol=args.fista_tol, max_iter=args.fista_max_iter)
        codes = bank.code(feat)
        iters = first_iteration(lambda k, bank=bank, feat=feat: fista(bank.D, feat, bank.lam, bank.L, k, bank.tol,
                                                                      gram=bank.gram),
                                lambda A, codes=codes: torch.equal(A, codes), args.fista_max_iter)
        print(f"    {m}: FISTA stops after {iters} iterations, {float((codes != 0).float().sum(1).mean()):.0f} "
              f"non-zero code entries on average")
    with torch.no_grad():
        plain_s, _ = timed(lambda: model(frames, audio), args.repeats)
        print(f"    plain forward {plain_s * 1e3:.1f} ms ({plain_s * 1e3 / args.model_batch:.2f} ms/sample)")
        for name in ("FISTA", "released ISTA"):
            start = time.perf_counter()
            bank_v, bank_a = (
                MemoryBank(banks[m], args.lam, args.mix, tol=args.fista_tol, max_iter=args.fista_max_iter)
                if name == "FISTA" else
                MemoryBank(banks[m], args.lam, args.mix, solver="ista", step=steps[m], tol=args.released_tol,
                           max_iter=args.released_max_iter)
                for m in ("visual", "audio"))
            setup_s = time.perf_counter() - start
            defended = DefendedModel(model, bank_v, bank_a).eval()
            defended_s, _ = timed(lambda defended=defended: defended(frames, audio), args.repeats)
            added = defended_s - plain_s
            print(f"    {name} defended forward {defended_s * 1e3:.1f} ms: +{added * 1e3 / args.model_batch:.2f} "
                  f"ms/sample, ratio {defended_s / plain_s:.3f} (bank setup, once: {setup_s * 1e3:.0f} ms)")


MMAP_THRESHOLD_VARIABLE = "MALLOC_MMAP_THRESHOLD_"
MEMORY_METHODS = {
    "VmHWM": "peak RSS (VmHWM in /proc/self/status, reset to the current RSS through /proc/self/clear_refs just "
             "before) minus the RSS then (VmRSS)",
    "ru_maxrss": "rise of the peak RSS (getrusage ru_maxrss; a lower bound: a peak reached before can hide part)",
}


def proc_status_mib(key: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (Linux) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 2**10
    raise OSError(f"/proc/self/status has no {key}")


def start_memory_measurement() -> tuple[float, str]:
    """Reset the peak resident memory to the current one where Linux allows; the baseline and the method.

    ``VmHWM`` rather than ``ru_maxrss``: the latter also keeps the parent's peak across fork + exec (a spawned
    process inherits it) and is not reset by ``clear_refs``.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return proc_status_mib("VmRSS"), "VmHWM"
    except OSError:
        return peak_memory_mib("ru_maxrss"), "ru_maxrss"


def peak_memory_mib(method: str) -> float:
    if method == "VmHWM":
        return proc_status_mib("VmHWM")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # macOS reports bytes, Linux KiB


def gradient_run(variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One white-box gradient through the coding of (c) in this process: times, peak-memory rise, gradient."""
    if args.threads:
        torch.set_num_threads(args.threads)
    D, F = bank_and_features(args)
    L, gram = lipschitz_constant(D), D.T @ D
    weights = torch.randn(F.shape, generator=torch.Generator().manual_seed(args.seed + 1))

    def solve(f: Tensor, iters: int) -> Tensor:
        return fista(D, f, args.lam, L, iters, tol=0.0, gram=gram)

    def codes(f: Tensor, iters: int) -> Tensor:
        if variant == "implicit":
            return implicit_lasso(D, f, lambda x: solve(x, iters))
        return fista(D, f, args.lam, L, iters, tol=0.0, differentiable=True, gram=gram)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DenseCodeWarning)
        warm = F[:1].clone().requires_grad_(True)  # one sample, two iterations: first-call set-up, little memory
        torch.autograd.grad((codes(warm, 2) @ D.T * weights[:1]).sum(), warm)
        caught.clear()
        f = F.clone().requires_grad_(True)
        baseline, method = start_memory_measurement()
        start = time.perf_counter()
        A = codes(f, args.grad_iters)
        loss = (A @ D.T * weights).sum()
        forward_s = time.perf_counter() - start
        (grad,) = torch.autograd.grad(loss, f)
        backward_s = time.perf_counter() - start - forward_s
        peak = peak_memory_mib(method)
    active = (A.detach() != 0).sum(dim=1).float()
    return {"forward_s": forward_s, "backward_s": backward_s, "peak_mib": peak - baseline, "grad": grad.tolist(),
            "active_mean": float(active.mean()), "active_max": int(active.max()),
            "dense": int((active > D.shape[0]).sum()), "fallback_warned": bool(caught), "method": method}


@contextmanager
def fixed_mmap_threshold() -> Iterator[None]:
    """Processes started here use glibc's mmap for every block of 128 KiB or more (``MALLOC_MMAP_THRESHOLD_``).

    Freed tensors then go back to the OS, so the resident size follows the live tensors. glibc's default
    threshold adapts and serves such blocks from the heap instead, where the unrolled graph's thousands of
    retained blocks interleaved with freed temporaries fragment it: the same run then reads 3 to 9 times its
    live memory, varying from run to run.
    """
    previous = os.environ.get(MMAP_THRESHOLD_VARIABLE)
    os.environ[MMAP_THRESHOLD_VARIABLE] = str(128 * 1024)
    try:
        yield
    finally:
        if previous is None:
            del os.environ[MMAP_THRESHOLD_VARIABLE]
        else:
            os.environ[MMAP_THRESHOLD_VARIABLE] = previous


def _gradient_worker(variant: str, args: argparse.Namespace, queue: Any) -> None:
    queue.put(gradient_run(variant, args))  # plain Python values: no tensor shared with the exiting process


def run_in_fresh_process(variant: str, args: argparse.Namespace, fixed_threshold: bool) -> dict[str, Any]:
    """``gradient_run`` in a spawned process, with glibc's default allocator or ``fixed_mmap_threshold``."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_gradient_worker, args=(variant, args, queue))
    with fixed_mmap_threshold() if fixed_threshold else nullcontext():
        worker.start()
    result = queue.get()
    worker.join()
    if worker.exitcode != 0:
        raise RuntimeError(f"the {variant} gradient run failed (exit code {worker.exitcode})")
    return result


def bench_gradients(args: argparse.Namespace) -> None:
    print(f"(c) white-box gradient through the coding: bank {args.dim} x {args.bank_size}, batch {args.batch}, "
          f"λ {args.lam}, {args.grad_iters} FISTA iterations (tol 0), loss = weighted sum of Dα, "
          f"{torch.get_num_threads()} thread(s)")
    variants = ("implicit", "unrolled")
    default = {variant: run_in_fresh_process(variant, args, fixed_threshold=False) for variant in variants}
    live = {variant: run_in_fresh_process(variant, args, fixed_threshold=True) for variant in variants}
    print(f"    each variant in a fresh spawned process, twice: with glibc's default allocator (times, 'default "
          f"heap' memory) and with its mmap threshold fixed at 128 KiB so that freed tensors return to the OS "
          f"('live' memory). Peak memory of forward + backward: {MEMORY_METHODS[live['implicit']['method']]}")
    print(f"    {'variant':10s} {'forward':>10s} {'backward':>10s} {'total':>10s} {'peak (live)':>14s} "
          f"{'peak (default heap)':>20s}")
    seconds = {variant: r["forward_s"] + r["backward_s"] for variant, r in default.items()}
    for variant in variants:
        r = default[variant]
        print(f"    {variant:10s} {r['forward_s']:9.2f}s {r['backward_s']:9.2f}s {seconds[variant]:9.2f}s "
              f"{live[variant]['peak_mib']:10.1f} MiB {r['peak_mib']:16.1f} MiB")
    implicit, unrolled = default["implicit"], default["unrolled"]

    def ratio(results: dict[str, dict[str, Any]]) -> float:
        return results["unrolled"]["peak_mib"] / max(results["implicit"]["peak_mib"], 1e-3)

    print(f"    memory unrolled / implicit {ratio(live):.1f}x (live), {ratio(default):.1f}x (default heap); time "
          f"unrolled / implicit {seconds['unrolled'] / seconds['implicit']:.2f}x")
    print(f"    codes: {implicit['active_mean']:.0f} non-zeros on average (max {implicit['active_max']}, feature size "
          f"{args.dim}); {implicit['dense']} of {args.batch} denser than the feature size: not unique lasso "
          f"solutions, where the implicit gradient is the pseudo-inverse one"
          f"{' (DenseCodeWarning raised)' if implicit['fallback_warned'] else ''}")
    cosine = torch.nn.functional.cosine_similarity(torch.tensor(implicit["grad"]), torch.tensor(unrolled["grad"]),
                                                   dim=1)
    print(f"    per-sample cosine(implicit, unrolled gradient): mean {float(cosine.mean()):.3f}, min "
          f"{float(cosine.min()):.3f} (they agree at converged codes, tests/test_implicit_lasso.py; at codes "
          "stopped early the unrolled one is the exact gradient of what was computed)")


def attack_setup(args: argparse.Namespace) -> tuple[DefendedModel, list[dict]]:
    """(d): a small model with random weights (BatchNorm calibrated), banks of the features of ``attack_bank``
    random inputs, and test batches labelled with the defended model's clean predictions."""
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)  # the model's initial weights
    model = build_model(args.attack_frame, "anet", "concat", cls_num=11, frame_dim=args.attack_dim,
                        sound_dim=args.attack_dim)

    def random_inputs(n: int) -> tuple[Tensor, Tensor]:
        return (torch.rand(n, 3, 1, args.attack_img, args.attack_img, generator=gen),
                torch.rand(n, 1, args.attack_audio_len, generator=gen) * 2 - 1)

    bank_frames, bank_audio = random_inputs(args.attack_bank)
    calibrate_batchnorm(model, bank_frames, bank_audio)
    with torch.no_grad():
        out = model(bank_frames, bank_audio)
    defended = DefendedModel(model, MemoryBank(out.feat_v.T, args.lam, args.mix, tol=args.fista_tol,
                                               max_iter=args.fista_max_iter),
                             MemoryBank(out.feat_a.T, args.lam, args.mix, tol=args.fista_tol,
                                        max_iter=args.fista_max_iter)).eval()
    frames, audio = random_inputs(args.attack_samples)
    with torch.no_grad():
        labels = defended(frames, audio).logits.argmax(dim=1)
    n, b = args.attack_samples, args.attack_batch
    batches = [{"frames": frames[i:i + b], "audio": audio[i:i + b], "label": labels[i:i + b],
                "index": torch.arange(i, min(i + b, n)), "info": [f"s/{j}" for j in range(i, min(i + b, n))]}
               for i in range(0, n, b)]
    return defended, batches


def attack_run(defended: DefendedModel, batches: list[dict], args: argparse.Namespace, warm: bool,
               tol: float) -> dict[str, Any]:
    """PGD through the banks (implicit gradients) by the evaluation engine, with the banks' warm start on or off
    and FISTA's tolerance ``tol``."""
    from evaluation.robustness.engine import AttackEngine, Variant
    from evaluation.robustness.protocol import Budget
    from evaluation.robustness.records import RecordKey
    from utils.distributed import DistInfo

    engine_args = argparse.Namespace(
        attack_type=["pgd"], attack_steps=args.attack_steps, attack_alpha=None, attack_loss="ce", random_start=False,
        restarts=1, eot_iter=1, seed=args.seed, eps_units="normalized", norm="linf", joint_eps=None,
        audio_eps_db=None, temporal=["frame"], max_shift=None, shift_steps=9, apgd_steps=100, apgd_targets=9,
        square_queries=5000, square_p_init=0.8)
    banks = [defended.bank_v, defended.bank_a]
    for bank in banks:
        bank.warm_start, bank.tol = warm, tol
        bank.stats = CodingStats()
    budget = Budget(*args.attack_eps)
    engine = AttackEngine(defended, engine_args, DistInfo(), [budget], ["pgd"], [Variant("ce", "ce", "implicit")])
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DenseCodeWarning)  # counted below
        run = engine.run(batches)
    total_s = time.perf_counter() - start
    key = RecordKey("pgd", budget.key, "ce")
    stats = {field: sum(getattr(b.stats, field) for b in banks)
             for field in ("rows", "iterations", "warm_rows", "warm_iterations", "reused_rows", "dense_backward")}
    return {"correct": run.records.column(key), "clean": run.records.clean_correct, "attack_s": run.seconds[key],
            "total_s": total_s, **stats}


def bench_attack(args: argparse.Namespace) -> None:
    defended, batches = attack_setup(args)
    eps_v, eps_a = args.attack_eps
    print(f"(d) PGD-{args.attack_steps} through the banks (CE, implicit gradients; eps V {eps_v:g} normalised, A "
          f"{eps_a:g}; step eps/8, no random start) by the evaluation engine: {args.attack_frame} + anet + concat, "
          f"{args.attack_dim}-d features, random weights, {args.attack_img} px, {args.attack_audio_len} audio "
          f"samples; banks of {args.attack_bank} features of random inputs; {args.attack_samples} samples "
          f"(labels: the defended model's clean predictions), batch {args.attack_batch}; FISTA tol "
          f"{args.fista_tol:g}, at most {args.fista_max_iter} iterations; {torch.get_num_threads()} thread(s)")
    tol = args.fista_tol
    configs = {"cold": (False, tol), "warm": (True, tol), "cold/10": (False, tol / 10)}
    runs = {name: attack_run(defended, batches, args, *config) for name, config in configs.items()}
    for bank in (defended.bank_v, defended.bank_a):
        bank.warm_start, bank.tol = True, tol
    print(f"    {'run':7s} {'attack':>9s} {'evaluation':>11s} {'clean acc':>10s} {'robust acc':>11s} "
          f"{'codings':>8s} {'FISTA it':>9s} {'warm':>6s} {'FISTA it':>9s} {'reused':>7s} {'dense bwd':>10s}")
    print(f"    {'':7s} {'':>9s} {'':>11s} {'':>10s} {'':>11s} {'':>8s} {'/ coding':>9s} {'':>6s} {'/ warm':>9s}")
    for name, r in runs.items():
        n = len(r["correct"])
        print(f"    {name:7s} {r['attack_s']:8.2f}s {r['total_s']:10.2f}s {100 * sum(r['clean']) / n:9.1f}% "
              f"{100 * float((r['correct'] == 1).sum()) / n:10.1f}% {r['rows']:8d} "
              f"{r['iterations'] / max(r['rows'], 1):9.1f} {r['warm_rows']:6d} "
              f"{r['warm_iterations'] / max(r['warm_rows'], 1):9.1f} {r['reused_rows']:7d} "
              f"{r['dense_backward']:10d}")
    print("    cold: FISTA from zero at every pass (--bank_warm_start off); warm: the default; cold/10: cold at a "
          f"tenth of the tolerance ({tol / 10:g}), the solver-tolerance reference. codings: every feature coded in the "
          "evaluation (clean pass, the checks' passes, attack steps, the verdict pass after the attack, which codes "
          "from zero in every run); warm: started from the sample's code of the previous attack step; reused: the "
          "feature had just been coded (the first step, from the clean input; the unattacked modality)")
    cold, warm = runs["cold"], runs["warm"]
    step_cold = cold["iterations"] / max(cold["rows"], 1)
    step_warm = warm["warm_iterations"] / max(warm["warm_rows"], 1)
    print(f"    warm vs cold: attack time {warm['attack_s']:.2f}s vs {cold['attack_s']:.2f}s "
          f"({cold['attack_s'] / warm['attack_s']:.1f}x faster); FISTA iterations per attack step and sample "
          f"{step_cold:.1f} -> {step_warm:.1f}")
    n = len(cold["correct"])
    for a, b in (("warm", "cold"), ("cold/10", "cold"), ("warm", "cold/10")):
        agree = int((runs[a]["correct"] == runs[b]["correct"]).sum())
        print(f"    per-sample outcome (robust or fooled), {a} vs {b}: agrees on {agree} of {n} samples")


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s), float32, CPU")
    if "a" in args.parts:
        bench_solvers(args)
    if "b" in args.parts:
        bench_model(args)
    if "c" in args.parts:
        bench_gradients(args)
    if "d" in args.parts:
        bench_attack(args)


if __name__ == "__main__":
    main()
