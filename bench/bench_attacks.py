"""Attack speed: (a) PGD-k against k x (forward + input-gradient backward), the floor any PGD pays;
(b) our visual-only PGD against torchattacks' PGD on the same model, batch, eps, alpha and steps;
(c) on a trained run (the demo's concat model), the paper's protocol against the audio-visual AutoAttack
cascades at the run's reduced settings, end to end through the evaluation engine;
(d) our FAB-T against torchattacks' (AutoAttack's) FAB-T likewise;
(e) on a trained visual-only run (the demo's), our standard AutoAttack (the evaluation engine, ``autoattack``)
against torchattacks' ``AutoAttack(version='standard')`` with its settings (APGD-CE and APGD-T 10 steps,
C - 1 targets, FAB-T 10 steps, Square 5000 queries), the same clips in one batch, side by side.
On an ``AVModel`` a single-modality attack encodes the unattacked modality once per call; (b) also
times our PGD without that (the model behind a wrapper) and both attack loops on a near-free model.

Prints figures, not pass/fail; targets: (a) ratio <= 1.10, (b) ratio <= 1.0 with equal results, (c) AutoAttack
<= 1.5 x the protocol, (e) ratio <= 1.0 with the same robust accuracy.
Timings interleave the contenders and report the median (and minimum) of ``--repeats`` runs after a
warm-up. One thread by default: on a machine shared with other jobs, more threads make the figures noise.

    python bench/bench_attacks.py [--batch 16 --img 64 --audio_len 8192 --steps 10 --arch_frame smallcnn]
    python bench/bench_attacks.py --parts c e     (after bash scripts/demo.sh: the trained runs' sections only)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from types import ModuleType
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import main_attack
from attacks import PGD, FABTargeted
from attacks.threat import ThreatModel
from dataset.loaders import build_dataset, build_loader, to_device
from evaluation.robustness.engine import AttackEngine
from evaluation.robustness.protocol import PAPER_PROTOCOL, Budget
from evaluation.robustness.records import RecordKey
from models import ModelOutput, build_model
from training.engine import load_best, run_dir_of
from utils.distributed import DistInfo

# The demo's model flags (scripts/demo.sh MODEL_FLAGS) and its reduced AutoAttack (ATTACK_FLAGS).
DEMO_MODEL = ["--dataset", "synthetic", "--data_root", "data/synthetic", "--ckpt", "ckpt/demo", "--seed", "0",
              "--arch_frame", "poolcnn", "--frame_dim", "128", "--arch_sound", "mel", "--sound_dim", "128",
              "--imgSize", "112", "--audLen", "16384", "--num_epoch", "15", "--workers", "2"]
DEMO_RUN = DEMO_MODEL + ["--arch_classifier", "concat", "--batch_size_per_gpu", "50",
                         "--apgd_steps", "10", "--apgd_targets", "2", "--square_queries", "100"]
DEMO_VISUAL_RUN = DEMO_MODEL + ["--arch_classifier", "visual"]


def load_trained_run(run_flags: list[str], part: str) -> tuple[argparse.Namespace, Path, nn.Module] | None:
    """The flags, folder and best model of the trained run ``run_flags`` select, or None (said) when there is none."""
    args = main_attack.parse_args(run_flags)
    run_dir = run_dir_of(args)
    if not (run_dir / "classifier_best.pth").is_file():
        print(f"({part}) skipped: no trained run in {run_dir} (bash scripts/demo.sh trains the default one)")
        return None
    return args, run_dir, load_best(args, DistInfo())[0]


def bench_protocol(run_flags: list[str], with_standard: bool) -> None:
    """(c) On a trained run's test split, end to end, side by side: the paper's protocol (FGSM, PGD, MIM x A, V,
    A+V) against the audio-visual AutoAttack cascades (``aa-fast``: APGD-CE, APGD-T, Square; ``autoattack``: the
    standard ensemble with FAB-T; each component on the samples still standing), at the run flags' AutoAttack
    settings (``--apgd_steps`` ... in ``--protocol_run``), then the standard ones."""
    trained = load_trained_run(run_flags, "c")
    if trained is None:
        return
    args, run_dir, model = trained
    info = DistInfo()
    loader = build_loader(build_dataset(args, "test"), args, info, train=False)
    standard = argparse.Namespace(**{**vars(args), "apgd_steps": 100, "apgd_targets": 9, "square_queries": 5000})
    reduced = f"apgd_steps {args.apgd_steps}, {args.apgd_targets} targets, {args.square_queries} queries"
    contenders = [("FGSM + PGD + MIM", args, ["fgsm", "pgd", "mim"]),
                  (f"aa-fast ({reduced})", args, ["aa-fast"]),
                  (f"AA with FAB-T ({reduced})", args, ["autoattack"])]
    if with_standard:
        contenders.append(("AA standard (100 steps, 9 targets, 5000 queries)", standard, ["autoattack"]))
    baseline = None
    for name, flags, attacks in contenders:
        engine = AttackEngine(model, flags, info, list(PAPER_PROTOCOL), attacks)
        with EncoderPasses(model) as passes:
            start = time.perf_counter()
            run = engine.run(loader)
            total = time.perf_counter() - start
        keys = run.records.keys()
        robust = [f"{b.name} {100 * run.records.robust([k for k in keys if k.budget == b.key]).mean():.1f}%"
                  for b in PAPER_PROTOCOL]
        baseline = baseline or total
        print(f"(c) {name} on {run.records.num_samples} test clips of {run_dir.name}: {total:.1f} s end to end, "
              f"{total / baseline:.2f} x the paper's protocol (target AA <= 1.5 x); worst case {', '.join(robust)}")
        print("    attack seconds: " + ", ".join(
            f"{key.attack}{'/' + key.component if key.component else ''} {key.budget} {seconds:.1f}"
            for key, seconds in run.seconds.items() if isinstance(key, RecordKey)))
        print(f"    encoder passes per clip (every attack, the clean pass and the gradient probe): "
              f"{passes.summary(run.records.num_samples)}")


class EncoderPasses:
    """Counts the clips each of a model's encoders (``net_frame``, ``net_sound``) processes, in passes with autograd
    on (an attack's gradient passes, which a backward pass follows) and off (forward passes): where a cascade's time
    goes, as work rather than seconds."""

    def __init__(self, model: nn.Module) -> None:
        self.encoders = {name: getattr(model, attr) for name, attr in (("visual", "net_frame"), ("audio", "net_sound"))
                         if getattr(model, attr, None) is not None}
        self.rows = {(name, grad): 0 for name in self.encoders for grad in (True, False)}
        self.handles: list = []

    def __enter__(self) -> EncoderPasses:
        for name, encoder in self.encoders.items():
            def count(module: nn.Module, inputs: tuple, output: object, name: str = name) -> None:
                self.rows[name, torch.is_grad_enabled()] += inputs[0].shape[0]
            self.handles.append(encoder.register_forward_hook(count))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()

    def summary(self, clips: int) -> str:
        return "; ".join(f"{name} {self.rows[name, True] / clips:.1f} gradient + {self.rows[name, False] / clips:.1f} "
                         f"forward" for name in self.encoders)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--img", type=int, default=64, help="frame height and width")
    p.add_argument("--frames", type=int, default=1, help="frames per clip (T)")
    p.add_argument("--audio_len", type=int, default=8192, help="waveform samples")
    p.add_argument("--steps", type=int, default=10, help="PGD iterations k")
    p.add_argument("--eps", type=float, default=8 / 255, help="visual and audio budget (pixel units in (b))")
    p.add_argument("--arch_frame", default="smallcnn")
    p.add_argument("--arch_sound", default="anet")
    p.add_argument("--arch_classifier", default="concat")
    p.add_argument("--frame_dim", type=int, default=64, help="smallcnn width (ignored by resnet18)")
    p.add_argument("--sound_dim", type=int, default=128, help="sound net width (512 in the paper)")
    p.add_argument("--classes", type=int, default=11)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads, 0 for torch's default (1 keeps figures steady on a shared machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--protocol_run", default=" ".join(DEMO_RUN),
                   help="main_attack.py flags of a trained run for (c), the full protocol on its test split "
                        "(default: the demo's concat model)")
    p.add_argument("--aa_standard", action="store_true",
                   help="(c) also time AutoAttack's standard version (100 APGD steps, 9 targets, 5000 queries)")
    p.add_argument("--visual_run", default=" ".join(DEMO_VISUAL_RUN),
                   help="main_attack.py flags of a trained visual-only run for (e) (default: the demo's)")
    p.add_argument("--aa_clips", type=int, default=64, help="(e) test clips, attacked in one batch")
    p.add_argument("--aa_eps", type=float, default=8 / 255, help="(e) L-inf budget in pixel units")
    p.add_argument("--aa_rounds", type=int, default=2, help="(e) timed runs of each contender, alternating")
    p.add_argument("--parts", nargs="+", choices=list("abcde"), default=list("abcde"), help="sections to run")
    return p.parse_args()


class Timing(NamedTuple):
    median: float
    best: float

    def __truediv__(self, other: Timing) -> str:
        return f"ratio {self.median / other.median:.3f} (of minima {self.best / other.best:.3f})"

    def __str__(self) -> str:
        return f"{self.median * 1e3:8.1f} ms (min {self.best * 1e3:7.1f})"


def timed(contenders: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Seconds per call of each contender: one warm-up call each, then ``repeats`` interleaved rounds
    whose order alternates, so that a slow spell of the machine hits every contender alike."""
    for fn in contenders.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    order = list(contenders.items())
    for round_ in range(repeats):
        for name, fn in order if round_ % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(t), min(t)) for name, t in times.items()}


class FramesOnly(nn.Module):
    """The AV model as torchattacks expects an image classifier: ``[B, 3, H, W]`` in [0, 1] -> logits
    (T = 1), with the audio fixed."""

    def __init__(self, model: nn.Module, audio: Tensor | None) -> None:
        super().__init__()
        self.model = model
        self.audio = audio

    def forward(self, images: Tensor) -> Tensor:
        return self.model(images.unsqueeze(2), self.audio).logits


def pgd_pair(model: nn.Module, audio: Tensor | None, eps: float, alpha: float, steps: int,
             torchattacks: ModuleType) -> tuple[PGD, Callable[[Tensor, Tensor], Tensor]]:
    """Our visual-only PGD and torchattacks' with the same settings (pixel units, no random start)."""
    ours = PGD(model, ThreatModel.of({"visual": eps}, units="pixel"), steps=steps, alpha=alpha)
    theirs = torchattacks.PGD(FramesOnly(model, audio), eps=eps, alpha=alpha, steps=steps, random_start=False)
    return ours, theirs


class Opaque(nn.Module):
    """Hides that the model is an ``AVModel``, so the attack runs the whole model at every step."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        return self.model(frames, audio)


class ColourMean(nn.Module):
    """Logits from a linear map of the mean colour: an AV-interface model of negligible cost."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(3, classes)

    def forward(self, frames: Tensor, audio: Tensor | None) -> ModelOutput:
        return ModelOutput(self.fc(frames.mean(dim=(2, 3, 4))), None, None, None)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = build_model(args.arch_frame, args.arch_sound, args.arch_classifier, cls_num=args.classes,
                        frame_dim=None if args.arch_frame == "resnet18" else args.frame_dim,
                        sound_dim=args.sound_dim).eval()
    frames = torch.rand(args.batch, 3, args.frames, args.img, args.img)
    audio = torch.rand(args.batch, 1, args.audio_len) * 2 - 1
    labels = torch.randint(args.classes, (args.batch,))
    alpha = args.eps / 4
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, python {platform.python_version()}")
    print(f"model: {args.arch_frame} + {args.arch_sound} -> {args.arch_classifier} ({args.classes} classes); "
          f"batch {args.batch}, frames {args.frames}x{args.img}x{args.img}, audio {args.audio_len}; "
          f"steps {args.steps}, eps {args.eps:.5g}, alpha {alpha:.5g}; median of {args.repeats}")

    if "a" in args.parts:  # PGD-k on both modalities against k x (forward + CE + gradient w.r.t. both inputs)
        def floor() -> None:
            f, a = frames.clone().requires_grad_(), audio.clone().requires_grad_()
            for _ in range(args.steps):
                loss = F.cross_entropy(model(f, a).logits, labels, reduction="sum")
                torch.autograd.grad(loss, [f, a])

        joint = PGD(model, ThreatModel.of({"visual": args.eps, "audio": args.eps}, units="pixel"),
                    steps=args.steps, alpha=alpha)
        t = timed({"floor": floor, "pgd": lambda: joint(frames, audio, labels)}, args.repeats)
        print(f"(a) k x (forward + input-gradient backward): {t['floor']}")
        print(f"    PGD-{args.steps} audio+visual:                  {t['pgd']}   {t['pgd'] / t['floor']} "
              "(target <= 1.10)")

    if "c" in args.parts:
        bench_protocol(args.protocol_run.split(), args.aa_standard)

    if not set(args.parts) & set("bde"):
        return
    try:
        import torchattacks
    except ImportError:
        print("(b), (d), (e) skipped: torchattacks is not installed (pip install -r requirements-dev.txt)")
        return
    if "b" in args.parts:
        bench_pgd(model, frames, audio, labels, args, torchattacks)
    if "d" in args.parts:
        bench_fab(frames, args, torchattacks)
    if "e" in args.parts:
        bench_autoattack(args.visual_run.split(), args.aa_clips, args.aa_eps, args.aa_rounds, torchattacks)


def bench_pgd(model: nn.Module, frames: Tensor, audio: Tensor, labels: Tensor, args: argparse.Namespace,
              torchattacks: ModuleType) -> None:
    """(b) visual-only PGD, ours against torchattacks'."""
    if args.frames != 1:
        print("(b) skipped: torchattacks attacks images, so it needs --frames 1")
        return
    alpha = args.eps / 4
    ours, theirs = pgd_pair(model, audio, args.eps, alpha, args.steps, torchattacks)
    opaque = PGD(Opaque(model), ThreatModel.of({"visual": args.eps}, units="pixel"), steps=args.steps, alpha=alpha)
    t = timed({"ours": lambda: ours(frames, audio, labels), "torchattacks": lambda: theirs(frames[:, :, 0], labels),
               "opaque": lambda: opaque(frames, audio, labels)}, args.repeats)
    adv_ours = ours(frames, audio, labels)[0][:, :, 0]
    adv_theirs = theirs(frames[:, :, 0], labels)
    with torch.no_grad():
        preds = [model(x.unsqueeze(2), audio).logits.argmax(1) for x in (frames[:, :, 0], adv_ours, adv_theirs)]
    acc = [(p == labels).float().mean().item() for p in preds]
    diff = (adv_ours - adv_theirs).abs().max().item()
    print(f"(b) torchattacks PGD visual-only: {t['torchattacks']}")
    print(f"    our PGD visual-only:          {t['ours']}   {t['ours'] / t['torchattacks']} (target <= 1.0)")
    print(f"    ours, audio encoder per step: {t['opaque']}   {t['opaque'] / t['torchattacks']} "
          "(the model behind a wrapper, so the fixed audio features are not reused)")
    print(f"    accuracy clean {acc[0]:.4f}, ours {acc[1]:.4f}, torchattacks {acc[2]:.4f}; "
          f"adversarial images max |diff| {diff:.2e} (bit-identical: {torch.equal(adv_ours, adv_theirs)}); "
          f"predictions equal: {torch.equal(preds[1], preds[2])}")

    # The same on a model that costs next to nothing, so the attack loops' own work is what is timed.
    ours, theirs = pgd_pair(ColourMean(args.classes), None, args.eps, alpha, args.steps, torchattacks)
    t = timed({"ours": lambda: ours(frames, None, labels), "torchattacks": lambda: theirs(frames[:, :, 0], labels)},
              args.repeats * 5)
    print(f"    loop overhead alone (near-free model): torchattacks {t['torchattacks']}, ours {t['ours']}   "
          f"{t['ours'] / t['torchattacks']}")


def robust_count(model: nn.Module, frames: Tensor, labels: Tensor) -> int:
    with torch.no_grad():
        return int((model(frames, None).logits.argmax(1) == labels).sum())


def bench_autoattack(run_flags: list[str], clips: int, eps: float, rounds: int, torchattacks: ModuleType) -> None:
    """(e) Our standard AutoAttack, as a user runs it (the evaluation engine: clean pass, gradient probe, records),
    against torchattacks' standard AutoAttack, on ``clips`` test clips of a trained visual-only run in one batch,
    at torchattacks' settings; ``rounds`` timed runs each, in alternating order, averaged (the runs take minutes)."""
    trained = load_trained_run(run_flags, "e")
    if trained is None:
        return
    args, run_dir, model = trained
    info = DistInfo()
    if model.uses_audio or args.num_frames != 1:
        print("(e) skipped: torchattacks attacks images, so (e) needs a visual-only run of one frame per clip")
        return
    args.max_samples, args.batch_size_per_gpu, args.workers = clips, clips, 0  # a class-stratified subset, one batch
    batch = next(iter(build_loader(build_dataset(args, "test"), args, info, train=False)))
    frames, _, labels = to_device(batch, info.device)
    classes = args.cls_num
    settings = argparse.Namespace(**{**vars(args), "apgd_steps": 10, "apgd_targets": classes - 1,
                                     "square_queries": 5000, "seed": 0, "eps_units": "pixel"})
    budget = Budget(eps, 0.0, units="pixel")
    engine = AttackEngine(model, settings, info, [budget], ["autoattack"])
    theirs = torchattacks.AutoAttack(FramesOnly(model, None), norm="Linf", eps=eps, version="standard",
                                     n_classes=classes, seed=0)
    images = frames[:, :, 0]

    def ours() -> int:
        records = engine.run([batch]).records
        return int(records.robust(records.keys()).sum())

    contenders: dict[str, Callable[[], int]] = {
        "ours": ours, "torchattacks": lambda: robust_count(model, theirs(images, labels).unsqueeze(2), labels)}
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    robust: dict[str, int] = {}
    for round_ in range(rounds):  # ABBA...: a slow spell of the machine hits both alike
        for name, run in list(contenders.items())[::1 if round_ % 2 == 0 else -1]:
            start = time.perf_counter()
            robust[name] = run()
            seconds[name].append(time.perf_counter() - start)
    results = {name: (statistics.mean(seconds[name]), robust[name]) for name in contenders}
    clean = robust_count(model, frames, labels)
    print(f"(e) standard AutoAttack on {labels.numel()} test clips of {run_dir.name} in one batch, L-inf eps "
          f"{eps:.5g} (pixels), APGD 10 steps, {classes - 1} targets, Square 5000 queries; clean {clean} correct")
    print(f"    torchattacks AutoAttack: {results['torchattacks'][0]:.1f} s (mean of {rounds}), robust "
          f"{results['torchattacks'][1]}")
    print(f"    ours (evaluation engine): {results['ours'][0]:.1f} s (mean of {rounds}), robust {results['ours'][1]}"
          "   ratio "
          f"{results['ours'][0] / results['torchattacks'][0]:.3f} (target <= 1.0, same robust accuracy)")


def bench_fab(frames: Tensor, args: argparse.Namespace, torchattacks: ModuleType) -> None:
    """(d) FAB-T on a visual-only model of the same frame network, ours against torchattacks' multi-targeted FAB
    (AutoAttack's FAB-T): the same steps, every other class as a target, L-inf eps; labels are the model's own
    predictions, so that every sample is attacked. A third of ``--repeats`` rounds (at least 3): FAB-T costs
    targets x 2 passes a step."""
    model = build_model(args.arch_frame, args.arch_sound, "visual", cls_num=args.classes,
                        frame_dim=None if args.arch_frame == "resnet18" else args.frame_dim,
                        sound_dim=args.sound_dim).eval()
    with torch.no_grad():
        labels = model(frames, None).logits.argmax(1)
    ours = FABTargeted(model, ThreatModel.of({"visual": args.eps}, units="pixel"), steps=args.steps,
                       n_target_classes=args.classes - 1)
    theirs = torchattacks.FAB(FramesOnly(model, None), norm="Linf", eps=args.eps, steps=args.steps, n_restarts=1,
                              multi_targeted=True, n_classes=args.classes)
    t = timed({"ours": lambda: ours(frames, None, labels), "torchattacks": lambda: theirs(frames[:, :, 0], labels)},
              max(3, args.repeats // 3))
    with torch.no_grad():
        robust = [(model(x, None).logits.argmax(1) == labels).sum().item()
                  for x in (ours(frames, None, labels)[0], theirs(frames[:, :, 0], labels).unsqueeze(2))]
    print(f"(d) torchattacks FAB-T visual-only ({args.classes - 1} targets, {args.steps} steps): {t['torchattacks']}")
    print(f"    our FAB-T visual-only:        {t['ours']}   {t['ours'] / t['torchattacks']}; "
          f"robust {robust[0]} (ours) vs {robust[1]} (torchattacks) of {labels.numel()}")


if __name__ == "__main__":
    main()
