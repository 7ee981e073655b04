"""The training loop the entry points share, imagenet-example shape: ``train_one_epoch``, ``evaluate``,
checkpoints each epoch, ``train`` top to bottom; plus building the model of the flags and the wrapper every
entry point runs its work in (flag checks, process group, one-line errors).

Precision and speed (``utils.precision`` decides them): ``--amp`` runs the model's training forward passes in
``--amp_dtype`` autocast (bfloat16 without a GradScaler where the device supports it, else float16 with one); which
passes those are, the objective decides (its inner maximisation stays in float32). Validation and evaluation always
run in float32. ``--compile`` compiles the model for the training steps only. A training step makes no host sync
of its own: losses and accuracies add up on the device and are read every ``--disp_iter`` steps and at the
epoch's end, where a non-finite loss stops the run naming the first step it came from and that batch's samples.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from dataset.index import DataError
from dataset.loaders import build_dataset, build_loader, set_epoch, to_device
from models import AVModel, build_model
from models.av_model import feature_cosine
from training.chance import ChanceWatch
from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_module,
    load_train_state,
    model_meta,
    module_meta,
    save_checkpoint,
    train_state_path,
)
from training.collapse import TrainingCollapsed, collapse_problem
from training.frame_pretrain import pretrain_frame_encoder
from training.objectives import CrossEntropy, Objective, is_self_supervised
from training.run import check_evaluation, check_identity, prepare_training, write_identity
from utils.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed, launch_world_size
from utils.fileio import write_json_atomic
from utils.folders import FolderError, folder_lock
from utils.meters import ConfusionCounter
from utils.precision import (
    Precision,
    PrecisionError,
    configure_backends,
    cpu_bf16_native,
    training_precision,
    use_channels_last,
)

FRAME_PRETRAINING = ("imagenet", "simclr")  # --weights_frame values that are not checkpoint paths


def create_model(args: argparse.Namespace, info: DistInfo, init_weights: bool = True) -> AVModel:
    """The model of the flags on the run's device; with ``init_weights`` the ``--weights_*`` initialisations
    are loaded (training), without them the caller loads a checkpoint (evaluation needs no download)."""
    torch.manual_seed(args.seed)
    weights_frame = args.weights_frame if init_weights and args.weights_frame == "imagenet" else None
    model = build_model(args.arch_frame, args.arch_sound, args.arch_classifier, args.cls_num, args.img_pool,
                        weights_frame, args.audRate, args.stft_frame, args.stft_hop, args.frame_dim, args.sound_dim,
                        frame_padding=getattr(args, "frame_padding", None), map_activation=args.map_activation,
                        temperature=getattr(args, "ssl_temperature", None),
                        momentum=getattr(args, "ssl_momentum", None),
                        audio_bn=getattr(args, "ssl_audio_bn", None))
    meta = model_meta(args)
    for module, path in (("frame", args.weights_frame), ("sound", args.weights_sound),
                         ("classifier", args.weights_classifier)):
        net = getattr(model, f"net_{module}")
        if init_weights and path and path not in FRAME_PRETRAINING and net is not None:
            load_module(net, path, module_meta(meta, module, model))
    model = model.to(info.device)
    if use_channels_last(getattr(args, "channels_last", "auto"), info.device, model):
        model = model.to(memory_format=torch.channels_last)
    return model

def build_optimizer(model: AVModel, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``--optimizer``: SGD (the paper's; momentum ``beta1``) or AdamW (betas ``beta1``, 0.999; decoupled weight
    decay), either with the per-module learning rates ``lr_frame`` / ``lr_sound`` / ``lr_classifier``."""
    groups = []
    for net, lr in ((model.net_frame, args.lr_frame), (model.net_sound, args.lr_sound),
                    (model.net_classifier, args.lr_classifier)):
        if net is not None:
            groups.append({"params": list(net.parameters()), "lr": lr})
    if getattr(args, "optimizer", "sgd") == "adamw":
        return torch.optim.AdamW(groups, betas=(args.beta1, 0.999), weight_decay=args.weight_decay)
    return torch.optim.SGD(groups, momentum=args.beta1, weight_decay=args.weight_decay)

class EpochLRFactor:
    """The learning-rate factor of an epoch: linear warm-up over ``warmup`` epochs ((e + 1) / (warmup + 1)),
    then ``step`` (x0.1 at each of ``steps``) or ``cosine`` (half a cosine from 1 over the remaining epochs).

    A plain object of numbers, so LambdaLR stores it in its state dict and a resumed run continues exactly."""

    def __init__(self, schedule: str, num_epochs: int, warmup: int, steps: list[int]) -> None:
        self.schedule, self.num_epochs, self.warmup, self.steps = schedule, num_epochs, warmup, list(steps)

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup:
            return (epoch + 1) / (self.warmup + 1)
        if self.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (epoch - self.warmup) / max(1, self.num_epochs - self.warmup)))
        return 0.1 ** sum(epoch >= step for step in self.steps)

def build_scheduler(optimizer: torch.optim.Optimizer, args: argparse.Namespace) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule of ``--lr_schedule`` / ``--warmup_epochs``; the paper's step schedule without warm-up
    stays a MultiStepLR (so runs and checkpoints of earlier versions resume as before)."""
    schedule, warmup = getattr(args, "lr_schedule", "step"), getattr(args, "warmup_epochs", 0)
    if schedule == "step" and warmup == 0:
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=args.lr_steps, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, EpochLRFactor(schedule, args.num_epoch, warmup,
                                                                      args.lr_steps))

def run_precision(args: argparse.Namespace, info: DistInfo) -> Precision:
    """The precision of the training forward passes of --amp / --amp_dtype on the run's device."""
    return training_precision(args.amp, getattr(args, "amp_dtype", "auto"), info.device)

def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

class NonFiniteWatch:
    """The first step of an epoch whose loss is not finite, kept on the device (no host sync per step), with
    the sample ids of the steps since the last ``check``; ``check`` (one sync) raises naming that step."""

    def __init__(self, device: torch.device) -> None:
        self.step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), dtype=torch.float64, device=device)
        self.samples: dict[int, list[str]] = {}

    def update(self, loss: torch.Tensor, step: int, samples: list[str]) -> None:
        loss = loss.detach()
        first = ~torch.isfinite(loss) & (self.step < 0)
        self.step = torch.where(first, step, self.step)
        self.value = torch.where(first, loss.double(), self.value)
        self.samples[step] = list(samples)

    def check(self, epoch: int, info: DistInfo) -> None:
        step, value = torch.stack([self.step.double(), self.value]).tolist()
        if step >= 0:
            raise FloatingPointError(f"non-finite loss {value} at epoch {epoch} step {int(step)} (rank {info.rank}); "
                                     f"batch samples: {', '.join(self.samples[int(step)])}")
        self.samples.clear()


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    epoch: int, args: argparse.Namespace, info: DistInfo, writer: SummaryWriter | None,
                    objective: Objective) -> dict[str, float]:
    """One epoch of training steps; the loss, accuracy and cos sums stay on the device until the epoch ends
    (read every --disp_iter steps for the progress bar), in float64 and in the order a host sum would take."""
    set_train_mode(model, args.freeze_bn)
    autocast = run_precision(args, info).autocast
    sums = torch.zeros(3, dtype=torch.float64, device=info.device)  # loss x n, accuracy (%) x n, cos x n
    count = cos_count = 0
    watch = NonFiniteWatch(info.device)
    bar = tqdm(loader, desc=f"epoch {epoch} train", disable=not info.is_main, leave=False, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        frames, audio, labels = to_device(batch, info.device)
        loss, out = objective(model, frames, audio, labels, autocast)
        watch.update(loss, step, batch["info"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        n = labels.numel()
        accuracy = (out.logits.detach().argmax(1) == labels).float().mean().double() * 100
        cos = feature_cosine(out)
        cos_sum = cos.mean().double() * n if cos is not None else torch.zeros_like(accuracy)
        sums += torch.stack([loss.detach().double() * n, accuracy * n, cos_sum])
        count += n
        cos_count += n if cos is not None else 0
        if step % args.disp_iter == 0:
            watch.check(epoch, info)
            loss_sum, acc_sum, last = torch.cat([sums[:2], loss.detach().double().view(1)]).tolist()
            bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{acc_sum / count:.1f}")
            if writer is not None:
                writer.add_scalar("train/loss_iter", last, epoch * len(loader) + step)
    watch.check(epoch, info)
    totals = all_reduce_sum(torch.stack([sums[0], sums[1], sums.new_tensor(count), sums[2],
                                         sums.new_tensor(cos_count)]), info).tolist()
    record = {"train_loss": totals[0] / max(totals[2], 1), "train_acc": totals[1] / max(totals[2], 1)}
    if totals[4] > 0:  # audio-visual models with embeddings of one width
        record["train_cos"] = totals[3] / totals[4]
    return record

@torch.no_grad()
def evaluate(model: nn.Module, loader, args: argparse.Namespace, info: DistInfo,
             desc: str = "eval") -> tuple[ConfusionCounter, float]:
    """Accuracy counts over the whole split (summed over ranks) and the mean cross-entropy, in float32."""
    model.eval()
    counter = ConfusionCounter(args.cls_num)
    loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
    for batch in tqdm(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True):
        frames, audio, labels = to_device(batch, info.device)
        logits = model(frames, audio).logits.float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        counter.update(logits, labels)
    counter.all_reduce(info)
    loss_sum = all_reduce_sum(loss_sum, info)
    return counter, loss_sum.item() / max(counter.total.sum().item(), 1)

# Flags whose change would make a resumed run differ from an uninterrupted one, with the value older run folders'
# args.json (written before the flag existed) imply.
RESUME_FLAGS = {"optimizer": "sgd", "lr_schedule": "step", "warmup_epochs": 0, "label_smoothing": 0.0,
                "lr_frame": None, "lr_sound": None, "lr_classifier": None, "lr_steps": None, "beta1": None,
                "weight_decay": None}

def changed_optimisation_flags(run_dir: Path, args: argparse.Namespace) -> str:
    """'--flag saved -> given' for each optimisation flag that differs from the run's args.json ('' if none)."""
    path = run_dir / "args.json"
    if not path.is_file():
        return ""
    saved = json.loads(path.read_text())
    changes = []
    for flag, old_default in RESUME_FLAGS.items():
        before, now = saved.get(flag, old_default), getattr(args, flag, None)
        if before is not None and now is not None and before != now:
            changes.append(f"--{flag} {before} -> {now}")
    return ", ".join(changes)

def run_dir_of(args: argparse.Namespace) -> Path:
    return Path(args.ckpt) / args.id

def train(args: argparse.Namespace, info: DistInfo, objective: Objective | None = None) -> None:
    """Train the model of the flags with ``objective`` (cross-entropy by default) into its run folder."""
    objective = objective or CrossEntropy()
    if isinstance(objective, CrossEntropy):
        objective.label_smoothing = getattr(args, "label_smoothing", 0.0)
    correspondence = getattr(objective, "correspondence", None)
    if correspondence is not None:
        correspondence.configure({"uniformity": getattr(args, "ssl_uniformity", 0.0),
                                  "vicreg": getattr(args, "ssl_vicreg", 0.0)},
                                 getattr(args, "ssl_warmup_epochs", 0), getattr(args, "ssl_pitch_shift", 1.0))
    run_dir = run_dir_of(args)
    prepare_training(run_dir, args, changed_optimisation_flags(run_dir, args) if args.resume else "")
    meta = model_meta(args)
    train_loader = build_loader(build_dataset(args, "train"), args, info, train=True)
    val_loader = build_loader(build_dataset(args, "val"), args, info, train=False)
    model = create_model(args, info)
    check_ssl_options(model, args)
    if getattr(args, "weights_frame", "") == "simclr" and not args.resume:
        if model.net_frame is None:
            raise ValueError(f"--weights_frame simclr: the {args.arch_classifier} head has no frame encoder")
        pretraining = pretrain_frame_encoder(model.net_frame, args, info)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_json_atomic(run_dir / "simclr_history.json", pretraining)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args)
    scaler = run_precision(args, info).scaler()
    start_epoch, best_acc, history = 0, -1.0, []
    if args.resume:
        if not train_state_path(run_dir).is_file():
            raise CheckpointError(f"--resume: {train_state_path(run_dir)} not found (no earlier run with id {args.id})")
        check_identity(run_dir, args)
        saved_epoch = load_checkpoint(run_dir, model, "latest", meta)
        state = load_train_state(run_dir)
        if state["epoch"] != saved_epoch:
            raise CheckpointError(f"{run_dir}: weights of epoch {saved_epoch} but train state "
                                  f"of epoch {state['epoch']}")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, best_acc, history = state["epoch"] + 1, state["best_acc"], json.loads(state["history"])
        if info.is_main:
            print(f"resuming {args.id} at epoch {start_epoch} (best val acc so far {best_acc:.2f})")
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "args.json", vars(args))
        write_identity(run_dir, args)
    chance = ChanceWatch(args.cls_num)
    ddp_model = model
    if info.enabled:
        ddp_model = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)
    if getattr(args, "compile", False):  # the training steps only: validation and checkpoints use ``model``
        ddp_model = torch.compile(ddp_model)
    writer = SummaryWriter(str(run_dir / "tensorboard")) if info.is_main else None

    for epoch in range(start_epoch, args.num_epoch):
        set_epoch(train_loader, epoch)
        torch.manual_seed(args.seed * 1000 + epoch)
        start = time.time()
        record = {"epoch": epoch, "lr_classifier": optimizer.param_groups[-1]["lr"]}
        if correspondence is not None:
            correspondence.epoch = epoch
        record.update(train_one_epoch(ddp_model, train_loader, optimizer, scaler, epoch, args, info, writer,
                                      objective))
        collapsed = collapse_check(model, objective, epoch, args, info, record)
        is_best = False
        if (epoch + 1) % args.eval_epoch == 0 or epoch + 1 == args.num_epoch:
            counter, val_loss = evaluate(model, val_loader, args, info, desc=f"epoch {epoch} val")
            record.update(val_loss=val_loss, val_acc=counter.accuracy)
            is_best = counter.accuracy > best_acc
            best_acc = max(best_acc, counter.accuracy)
        record["seconds"] = time.time() - start
        history.append(record)
        if info.is_main:
            log_epoch(record, writer, optimizer)  # with the lrs this epoch trained with
            warning = chance.update(record)
            if warning:
                tqdm.write(f"warning: {warning}")
        scheduler.step()
        if info.is_main:
            if is_best:
                save_checkpoint(run_dir, model, "best", meta, epoch)
            train_state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                           "scaler": scaler.state_dict(), "epoch": epoch, "best_acc": best_acc,
                           "history": json.dumps(history)}
            save_checkpoint(run_dir, model, "latest", meta, epoch, train_state)
            write_json_atomic(run_dir / "history.json", history)
        if collapsed and getattr(args, "on_collapse", "warn") == "stop":
            raise TrainingCollapsed(f"{collapsed} after epoch {epoch} (--on_collapse stop; checkpoints of this "
                                    f"epoch in {run_dir})")
    if writer is not None:
        writer.close()
        print(f"done: best val acc {best_acc:.2f}; checkpoints in {run_dir}")

def check_ssl_options(model: nn.Module, args: argparse.Namespace) -> None:
    """Refuse the self-supervised training options for a head they do not apply to, and a warm-up that leaves no
    epoch for the head's own objective."""
    given = [f"--{flag}" for flag in ("ssl_uniformity", "ssl_vicreg", "ssl_warmup_epochs") if getattr(args, flag, 0)]
    given += ["--ssl_pitch_shift"] if getattr(args, "ssl_pitch_shift", 1.0) != 1.0 else []
    if given and not is_self_supervised(model):
        raise ValueError(f"{', '.join(given)} apply to the self-supervised heads (ssl*), not --arch_classifier "
                         f"{args.arch_classifier}")
    if getattr(args, "ssl_warmup_epochs", 0) >= args.num_epoch:
        raise ValueError(f"--ssl_warmup_epochs {args.ssl_warmup_epochs} leaves no epoch of the head's objective "
                         f"(--num_epoch {args.num_epoch})")

def collapse_check(model: nn.Module, objective: Objective, epoch: int, args: argparse.Namespace, info: DistInfo,
                   record: dict) -> str | None:
    """A self-supervised head's epoch: its collapse statistics into ``record``; from the second epoch on (the first
    starts from a random initialisation), the diagnosis when they say collapsed (printed unless --on_collapse off)."""
    correspondence = getattr(objective, "correspondence", None)
    if correspondence is None or not is_self_supervised(model):
        return None
    stats = correspondence.monitor.summary(info)
    correspondence.monitor.reset()
    record.update(stats)
    problem = collapse_problem(stats) if epoch > 0 and getattr(args, "on_collapse", "warn") != "off" else None
    if problem and info.is_main:
        tqdm.write(f"warning: epoch {epoch}: {problem}")
    return problem

def log_epoch(record: dict, writer: SummaryWriter | None, optimizer: torch.optim.Optimizer) -> None:
    text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
    tqdm.write(text)
    if writer is None:
        return
    epoch = record["epoch"]
    for key in ("train_loss", "val_loss"):
        if key in record:
            writer.add_scalar(f"loss/{key}", record[key], epoch)
    for key in ("train_acc", "val_acc"):
        if key in record:
            writer.add_scalar(f"accuracy/{key}", record[key], epoch)
    if "train_cos" in record:
        writer.add_scalar("similarity/train_cos_va", record["train_cos"], epoch)
    for i, group in enumerate(optimizer.param_groups):
        writer.add_scalar(f"lr/group{i}", group["lr"], epoch)

def evaluate_clean(model: AVModel, loader, args: argparse.Namespace, info: DistInfo, epoch: int,
                   out_dir: Path | None = None) -> dict:
    """Clean test accuracy, overall and per class, printed and written to ``out_dir``/metrics.json
    (default: the run folder)."""
    counter, loss = evaluate(model, loader, args, info, desc="test")
    metrics = {"run": args.id, "epoch": epoch, "test_loss": loss, "test_acc": counter.accuracy,
               "num_samples": int(counter.total.sum()),
               "per_class_acc": dict(zip(args.categories, counter.per_class()))}
    if info.is_main:
        print(f"{args.id} (best epoch {epoch}): clean test accuracy {counter.accuracy:.2f}% "
              f"on {metrics['num_samples']} samples")
        width = max(len(c) for c in args.categories)
        for name, acc in metrics["per_class_acc"].items():
            print(f"  {name:<{width}} {'n/a' if acc is None else f'{acc:6.2f}'}")
        write_json_atomic((out_dir or run_dir_of(args)) / "metrics.json", metrics)
    return metrics

INIT_WEIGHT_FLAGS = ("weights_frame", "weights_sound", "weights_classifier")

def num_gpus_problem(args: argparse.Namespace, script: str) -> str | None:
    """What is wrong when --num_gpus differs from the processes this launch started (None when they agree)."""
    processes = launch_world_size()
    if args.num_gpus == processes:
        return None
    return (f"--num_gpus {args.num_gpus} but this process group has {processes} process"
            f"{'es' if processes > 1 else ''} (WORLD_SIZE={processes}): launch with "
            f"`torchrun --nproc_per_node {args.num_gpus} {script} ...` or NUM_GPUS={args.num_gpus} bash "
            f"scripts/<workflow>_<dataset>.sh, or pass --num_gpus {processes}; see README, Training")

def init_weights_problem(args: argparse.Namespace) -> str | None:
    """--weights_* initialise training only: outside --mode train they would be silently ignored."""
    given = [f"--{flag} {getattr(args, flag)}" for flag in INIT_WEIGHT_FLAGS if getattr(args, flag, "")]
    if args.mode == "train" or not given:
        return None
    return (f"{', '.join(given)}: --mode {args.mode} loads the run's best checkpoint "
            f"({run_dir_of(args)}/<frame|sound|classifier>_best.pth), not initial weights; the --weights_* flags "
            f"initialise --mode train only, so drop them")

def configure_run_backends(args: argparse.Namespace, info: DistInfo) -> None:
    """cuDNN modes of the run (``utils.precision.configure_backends``); for training also checks that the device
    runs --amp_dtype and says which precision the training forward passes take."""
    training = args.mode == "train"
    backends = configure_backends(getattr(args, "cudnn_benchmark", "auto"), getattr(args, "deterministic", False),
                                  training)
    if training and args.amp:
        precision = run_precision(args, info)
        if info.is_main:
            scaler = "with a GradScaler" if precision.scaler().is_enabled() else "no GradScaler"
            print(f"--amp: training forward passes in {precision.name} ({scaler}); cudnn.benchmark "
                  f"{'on' if backends.cudnn_benchmark else 'off'}")
            if info.device.type == "cpu" and not cpu_bf16_native():
                print("note: this CPU has no bfloat16 instructions (AVX512-BF16 / AMX): bfloat16 is emulated and "
                      "trains slower than float32 here (bench/bench_gpu.py --device cpu --small measures it)")

def run_entry_point(args: argparse.Namespace, action: Callable[[argparse.Namespace, DistInfo], object]) -> None:
    """What every entry point does around its work: --print_run_dir, checks of flags that would otherwise be
    silently wrong, joining the process group, one-line errors for bad data and checkpoints, and leaving the
    group."""
    if args.print_run_dir:
        print(run_dir_of(args))
        return
    for problem in (num_gpus_problem(args, Path(inspect.getfile(action)).name), init_weights_problem(args)):
        if problem:
            sys.exit(f"error: {problem}")
    info = init_distributed(args.device)
    try:
        configure_run_backends(args, info)
        writes_run = args.mode in ("train", "build_bank") and info.is_main
        with folder_lock(run_dir_of(args), f"the run {run_dir_of(args)}") if writes_run else contextlib.nullcontext():
            if args.mode != "train":
                for note in check_evaluation(run_dir_of(args), args):
                    if info.is_main:
                        print(note)
            action(args, info)
    except (DataError, CheckpointError, FolderError, TrainingCollapsed, PrecisionError) as err:
        sys.exit(f"error: {err}")
    finally:
        cleanup(info)


def load_best(args: argparse.Namespace, info: DistInfo) -> tuple[AVModel, int]:
    """The model of the flags with its run's best checkpoint; returns it and the checkpoint's epoch."""
    model = create_model(args, info, init_weights=False)
    epoch = load_checkpoint(run_dir_of(args), model, "best", model_meta(args))
    return model, epoch
