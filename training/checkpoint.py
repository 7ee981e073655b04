"""Per-module checkpoints (frame / sound / classifier, as the original code saved them) plus train state,
saved as one set, all or nothing.

    RUN/.checkpoints/latest-epoch000002-<id>/   one complete set: {frame,sound,classifier}_latest.pth
                                                {"state_dict", "meta", "epoch"}, and train_state_latest.pth
                                                (optimizer, scheduler, AMP scaler, epoch, history)
    RUN/.checkpoints/latest -> latest-epoch000002-<id>            the pointer: which set is current
    RUN/frame_latest.pth -> .checkpoints/latest/frame_latest.pth  stable names, relative links made once
    ... the same for 'best' (no train state); RUN/history.json: per-epoch figures for people and plots

A save writes the whole set into a fresh folder, fsyncs its files and the folder, switches the pointer with one
atomic rename of a new symlink (fsynced), then deletes the superseded set. A kill at any point leaves the
previous set or the new one current, never a mix; what a killed save leaves behind (a half-written or
superseded folder, a temporary link) is deleted by the next save, never by a load (an evaluation may read a run
while its training saves). Every stable name resolves through the one pointer, so ``RUN/frame_best.pth`` and
its siblings always read one set, and a load resolves the pointer once for all its files. Run folders of the
old layout (plain files, no pointer) load as before; their first save moves them to this layout.

Every load uses ``weights_only=True``. ``meta`` records the architecture and class count; loading a checkpoint
into a different model fails with a message naming both (an encoder is checked against its own architecture
only, so a unimodal run's encoder can initialise an audio-visual model).
"""
from __future__ import annotations

import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from utils.fileio import CheckpointError, fsync_path, non_finite_entries, replace_symlink

MODULES = ("frame", "sound", "classifier")
META_KEYS = ("arch_frame", "arch_sound", "arch_classifier", "cls_num", "frame_dim", "sound_dim")
STORE = ".checkpoints"  # inside the run folder: the set folders and one pointer per tag
LOAD_ATTEMPTS = 3  # a load that loses a race with a save (its set deleted mid-read) starts over this often
T = TypeVar("T")


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


def _set_names(tag: str) -> list[str]:
    """The file names a ``tag`` set may hold, in the set folder and as stable names in the run folder."""
    return [f"{module}_{tag}.pth" for module in MODULES] + [f"train_state_{tag}.pth"]


def _pointer(run_dir: Path, tag: str) -> Path:
    return run_dir / STORE / tag


def _current_set(run_dir: Path, tag: str) -> Path | None:
    """The folder of the current ``tag`` set; None in a run folder of the old layout (plain files)."""
    pointer = _pointer(run_dir, tag)
    if pointer.is_symlink():
        return pointer.parent / os.readlink(pointer)
    if pointer.is_dir():  # a copy of the run folder that followed the links
        return pointer
    return None


def _new_set_folder(run_dir: Path, name: str) -> Path:
    folder = run_dir / STORE / f"{name}-{uuid.uuid4().hex[:8]}"
    os.mkdir(folder)
    return folder


def _point_to(run_dir: Path, tag: str, folder: Path) -> None:
    """Make ``folder`` the current ``tag`` set: one atomic rename, made durable."""
    replace_symlink(folder.name, _pointer(run_dir, tag))
    fsync_path(folder.parent)


def _link_stable_names(run_dir: Path, tag: str, names: list[str]) -> None:
    """Make each ``RUN/<name>`` the relative link ``.checkpoints/<tag>/<name>`` (once; later saves find it)."""
    changed = False
    for name in names:
        link, target = run_dir / name, f"{STORE}/{tag}/{name}"
        if not (link.is_symlink() and os.readlink(link) == target):
            replace_symlink(target, link)
            changed = True
    if changed:
        fsync_path(run_dir)


def _remove_leftovers(run_dir: Path, tag: str) -> None:
    """Delete what killed or failed saves of ``tag`` left: set folders other than the current one, temporary
    links, and the temporary files of the old layout's saves."""
    current = _current_set(run_dir, tag)
    for entry in (run_dir / STORE).iterdir():
        if entry.name.startswith(f"{tag}-") and (current is None or entry.resolve() != current.resolve()):
            shutil.rmtree(entry)
        elif entry.name.startswith(f".{tag}."):
            entry.unlink()
    for name in _set_names(tag):
        for leftover in run_dir.glob(f".{name}.*"):
            leftover.unlink()


def _adopt_current_set(run_dir: Path, tag: str) -> None:
    """Put the current ``tag`` set of a copied or old-layout run folder under a pointer symlink, with the
    stable names reading that one set throughout.

    A copy that followed the links holds the pointer as a real folder: it is renamed to a set folder and
    pointed to (meanwhile the copied plain files beside it, the same set, serve). Old-layout plain files are
    hard-linked into a set folder, which is pointed to before ``_save_set`` turns the plain files into links
    (each link then reads what its plain file held)."""
    pointer = _pointer(run_dir, tag)
    if pointer.is_symlink():
        return
    if pointer.is_dir():
        folder = run_dir / STORE / f"{tag}-copied-{uuid.uuid4().hex[:8]}"
        os.rename(pointer, folder)
        _point_to(run_dir, tag, folder)
        return
    plain = [name for name in _set_names(tag) if (run_dir / name).is_file()]
    if not plain:
        return
    folder = _new_set_folder(run_dir, f"{tag}-old")
    for name in plain:
        try:
            os.link(run_dir / name, folder / name)
        except OSError:  # a file system without hard links
            shutil.copyfile(run_dir / name, folder / name)
        fsync_path(folder / name)
    fsync_path(folder)
    fsync_path(folder.parent)
    _point_to(run_dir, tag, folder)


def _save_set(run_dir: Path, tag: str, epoch: int, files: dict[str, Any]) -> None:
    """Write ``{name: obj}`` as the new ``tag`` set, all or nothing (see the module docstring)."""
    store = run_dir / STORE
    if not store.is_dir():
        store.mkdir(parents=True)
        fsync_path(run_dir)
    _remove_leftovers(run_dir, tag)
    _adopt_current_set(run_dir, tag)
    folder = _new_set_folder(run_dir, f"{tag}-epoch{epoch:06d}")
    try:
        for name, obj in files.items():
            torch.save(obj, folder / name)
            fsync_path(folder / name)
        fsync_path(folder)
        fsync_path(store)
        # every stable name of the tag, the new set's and any left by earlier sets, reads through the pointer
        _link_stable_names(run_dir, tag, [name for name in _set_names(tag)
                                          if name in files or os.path.lexists(run_dir / name)])
        _point_to(run_dir, tag, folder)
    except BaseException:
        if _current_set(run_dir, tag) != folder:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    _remove_leftovers(run_dir, tag)


def _load(path: Path, source: Path | None = None) -> Any:
    """torch.load ``source`` (``path`` itself by default); errors name ``path``, the name users know."""
    source = path if source is None else source
    if not source.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot load ({err})") from None


def _read_current_set(run_dir: Path, tag: str, read: Callable[[Callable[[Path], Any]], T],
                      attempts: int = LOAD_ATTEMPTS) -> T:
    """``read(load)``, where ``load(stable_path)`` loads that file from the current ``tag`` set, resolved once
    so that every file comes from one set. If a save switched the set meanwhile (and deleted the one being
    read), ``read`` starts over on the new set."""
    folder = _current_set(run_dir, tag)

    def load(path: Path) -> Any:
        return _load(path, path if folder is None else folder / path.name)

    try:
        return read(load)
    except CheckpointError:
        if attempts == 1 or _current_set(run_dir, tag) == folder:
            raise
    return _read_current_set(run_dir, tag, read, attempts - 1)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def save_checkpoint(run_dir: str | os.PathLike, model: nn.Module, tag: str, meta: dict[str, Any], epoch: int,
                    train_state: dict[str, Any] | None = None) -> None:
    """Save each present module under ``tag`` ('latest' / 'best') and the train state as one set that
    replaces the previous ``tag`` set all or nothing, even if the process is killed mid-save."""
    model = _unwrap(model)
    files = {}
    for module in MODULES:
        net = getattr(model, f"net_{module}", None)
        if net is not None:
            files[module_path(run_dir, module, tag).name] = {"state_dict": net.state_dict(), "meta": meta,
                                                             "epoch": epoch}
    if train_state is not None:
        state = dict(train_state)
        if "scheduler" in state:
            state["scheduler"] = _plain_scheduler_state(state["scheduler"])
        files[train_state_path(run_dir, tag).name] = state
    _save_set(Path(run_dir), tag, epoch, files)


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


def _load_into(net: nn.Module, obj: Any, path: Path, expected_meta: dict[str, Any] | None) -> int | None:
    """Load ``obj`` (our checkpoint format or a bare state dict), read from ``path``, into ``net``."""
    if isinstance(obj, dict) and "state_dict" in obj:
        if expected_meta is not None and isinstance(obj.get("meta"), dict):
            _check_meta(path, obj["meta"], expected_meta)
        state, epoch = obj["state_dict"], obj.get("epoch")
    else:
        state, epoch = obj, None
    bad = non_finite_entries(state) if isinstance(state, dict) else []
    if bad:
        raise CheckpointError(f"{path}: non-finite values (NaN or inf) in {', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}; the checkpoint is refused")
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path} does not fit {type(net).__name__}: {' '.join(first[:3])}") from None
    return epoch


def load_module(net: nn.Module, path: str | os.PathLike, expected_meta: dict[str, Any] | None = None) -> int | None:
    """Load one module's weights from our checkpoint format or a bare state dict; returns its epoch."""
    path = Path(path)
    return _load_into(net, _load(path), path, expected_meta)


def load_checkpoint(run_dir: str | os.PathLike, model: nn.Module, tag: str,
                    expected_meta: dict[str, Any]) -> int:
    """Load every module of ``model`` from the current ``tag`` set; returns the epoch it was saved at."""
    model = _unwrap(model)

    def read(load: Callable[[Path], Any]) -> set[int | None]:
        epochs = set()
        for module in MODULES:
            net = getattr(model, f"net_{module}", None)
            if net is not None:
                path = module_path(run_dir, module, tag)
                epochs.add(_load_into(net, load(path), path, module_meta(expected_meta, module, model)))
        return epochs

    epochs = _read_current_set(Path(run_dir), tag, read)
    if len(epochs) != 1:
        raise CheckpointError(f"{run_dir}: the '{tag}' module checkpoints come from different epochs {sorted(epochs)}")
    return epochs.pop()


def load_train_state(run_dir: str | os.PathLike, tag: str = "latest") -> dict[str, Any]:
    """The train state of the current ``tag`` set."""
    state = _read_current_set(Path(run_dir), tag, lambda load: load(train_state_path(run_dir, tag)))
    if "scheduler" in state:
        state["scheduler"] = restore_scheduler_state(state["scheduler"])
    return state
