"""Atomic writes: a file appears under its final name complete or not at all; durable ones (fsync) and atomic
symlink switches for what must survive a power cut; the error of a saved file that cannot be used."""
from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """A checkpoint (weights, a train state, a memory bank) that is missing, unreadable or made for another
    model."""


def non_finite_entries(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` (a state dict, or any name -> value mapping) that hold
    a NaN or an infinity: a file with them must be refused where it is loaded, never used."""
    return [name for name, value in state.items()
            if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` when the block succeeds.

    ``suffix`` keeps the file extension visible to writers that infer the format from it
    (soundfile, PIL). On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's data, or a folder's entries, to the disk: a new or renamed name is durable only once
    the folder holding it is fsynced too."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_symlink(target: str, link: str | os.PathLike) -> None:
    """Make ``link`` a symlink to ``target`` in one atomic rename: a reader sees the previous entry or the
    new link, never no entry. ``link`` must not be a real folder (a rename cannot replace one)."""
    link = Path(link)
    tmp = link.parent / f".{link.name}.{uuid.uuid4().hex[:12]}.tmp"
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        os.unlink(tmp)
        raise
