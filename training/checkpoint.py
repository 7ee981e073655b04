"""Per-module checkpoints (frame / sound / classifier, as the original code saved them) plus train state.

    RUN_DIR/{frame,sound,classifier}_{latest,best}.pth   {"state_dict", "meta", "epoch"}
    RUN_DIR/train_state_latest.pth                       optimizer, scheduler, AMP scaler, epoch, history
    RUN_DIR/history.json                                 per-epoch figures for people and plots

The files of one save are all written to temporary names first and then renamed, so a failure or a kill
mid-write leaves the previous set whole, and every load uses ``weights_only=True``. ``meta`` records the
architecture and class count; loading a checkpoint into a different model fails with a message naming both
(an encoder is checked against its own architecture only, so a unimodal run's encoder can initialise an
audio-visual model).
"""
from __future__ import annotations

import os
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.fileio import atomic_path

MODULES = ("frame", "sound", "classifier")
META_KEYS = ("arch_frame", "arch_sound", "arch_classifier", "cls_num", "frame_dim", "sound_dim")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or made for another model."""


def module_path(run_dir: str | os.PathLike, module: str, tag: str) -> Path:
    return Path(run_dir) / f"{module}_{tag}.pth"


def train_state_path(run_dir: str | os.PathLike, tag: str = "latest") -> Path:
    return Path(run_dir) / f"train_state_{tag}.pth"


MODULE_META_KEYS = {"frame": ("arch_frame", "frame_dim"), "sound": ("arch_sound", "sound_dim"),
                    "classifier": ("arch_classifier", "cls_num")}


def model_meta(args: Any) -> dict[str, Any]:
    """The fields of ``args`` that must match between a checkpoint and the model it is loaded into."""
    return {key: getattr(args, key, None) for key in META_KEYS}


def module_meta(meta: dict[str, Any], module: str, model: nn.Module | None = None) -> dict[str, Any]:
    """The part of ``meta`` that must match to load ``module``: an encoder's own architecture and width (so
    the encoder of a unimodal run can initialise an audio-visual model); for the fusion head its name, its
    class count and the encoders of ``model`` that feed it (all of them when ``model`` is None)."""
    keys = list(MODULE_META_KEYS[module])
    if module == "classifier":
        for encoder in ("frame", "sound"):
            if model is None or getattr(_unwrap(model), f"net_{encoder}", None) is not None:
                keys += MODULE_META_KEYS[encoder]
    return {key: meta[key] for key in keys if key in meta}


def _save_all(items: list[tuple[Any, Path]]) -> None:
    """Write every ``(obj, path)`` to a temporary file first, then rename them in order: a failure or a kill
    while writing leaves every previous file in place (no mix of old and new files from one save)."""
    with ExitStack() as stack:
        # atomic_path renames on exit and ExitStack exits last-in first-out: enter in reverse order.
        tmps = [stack.enter_context(atomic_path(path, suffix=".pth")) for _, path in reversed(items)]
        for (obj, _), tmp in zip(reversed(items), tmps):
            torch.save(obj, tmp)


def _load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load ({err})") from None


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, tag: str, meta: dict[str, Any], epoch: int,
                    train_state: dict[str, Any] | None = None) -> None:
    """Write each present module under ``tag`` ('latest' / 'best') and the train state, all or nothing (the
    train state is renamed last, so a resume never sees a train state newer than the weights)."""
    model = _unwrap(model)
    items = []
    for module in MODULES:
        net = getattr(model, f"net_{module}", None)
        if net is not None:
            items.append(({"state_dict": net.state_dict(), "meta": meta, "epoch": epoch},
                          module_path(run_dir, module, tag)))
    if train_state is not None:
        state = dict(train_state)
        if "scheduler" in state:
            state["scheduler"] = _plain_scheduler_state(state["scheduler"])
        items.append((state, train_state_path(run_dir, tag)))
    _save_all(items)


def _plain_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    """MultiStepLR keeps its milestones in a Counter, which weights_only loading refuses; store a dict."""
    return {k: dict(v) if isinstance(v, Counter) else v for k, v in state.items()}


def restore_scheduler_state(state: dict[str, Any]) -> dict[str, Any]:
    return {k: Counter(v) if k == "milestones" else v for k, v in state.items()}


def _check_meta(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    diffs = [k for k in META_KEYS if k in found and k in expected and found[k] != expected[k]]
    if diffs:
        have = ", ".join(f"{k}={found[k]}" for k in diffs)
        want = ", ".join(f"{k}={expected[k]}" for k in diffs)
        raise CheckpointError(f"{path} was trained with {have}, but this run builds a model with {want}")


def load_module(net: nn.Module, path: str | os.PathLike, expected_meta: dict[str, Any] | None = None) -> int | None:
    """Load one module's weights from our checkpoint format or a bare state dict; returns its epoch."""
    path = Path(path)
    obj = _load(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        if expected_meta is not None and isinstance(obj.get("meta"), dict):
            _check_meta(path, obj["meta"], expected_meta)
        state, epoch = obj["state_dict"], obj.get("epoch")
    else:
        state, epoch = obj, None
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path} does not fit {type(net).__name__}: {' '.join(first[:3])}") from None
    return epoch


def load_checkpoint(run_dir: str | os.PathLike, model: nn.Module, tag: str,
                    expected_meta: dict[str, Any]) -> int:
    """Load every module of ``model`` saved under ``tag``; returns the epoch they were saved at."""
    model = _unwrap(model)
    epochs = set()
    for module in MODULES:
        net = getattr(model, f"net_{module}", None)
        if net is not None:
            epochs.add(load_module(net, module_path(run_dir, module, tag), module_meta(expected_meta, module, model)))
    if len(epochs) != 1:
        raise CheckpointError(f"{run_dir}: the '{tag}' module checkpoints come from different epochs {sorted(epochs)}")
    return epochs.pop()


def load_train_state(run_dir: str | os.PathLike, tag: str = "latest") -> dict[str, Any]:
    state = _load(train_state_path(run_dir, tag))
    if "scheduler" in state:
        state["scheduler"] = restore_scheduler_state(state["scheduler"])
    return state
