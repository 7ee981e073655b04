"""Folders written by one process at a time: ``folder/.lock`` names its holder, and a second writer stops with an
error naming it."""
from __future__ import annotations

import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

LOCK_FILE = ".lock"


class FolderError(RuntimeError):
    """A run or evaluation folder that cannot be used as asked (locked, mixed up, missing)."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def folder_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold ``folder/.lock`` while writing ``folder``; a second writer stops with an error naming the lock. A lock
    left by a process that no longer runs on this host is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": shlex.join([Path(sys.executable).name] + sys.argv)}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                other = {}
            if other.get("host") == holder["host"] and isinstance(other.get("pid"), int) and not _alive(other["pid"]):
                path.unlink(missing_ok=True)  # its process is gone: a stale lock
                continue
            raise FolderError(f"{path} is held by process {other.get('pid', '?')} on {other.get('host', '?')} since "
                              f"{other.get('since', '?')} ({other.get('command', 'unknown command')}): another "
                              f"process is writing {what}; wait for it, or delete the lock if that process is gone"
                              ) from None
        with os.fdopen(fd, "w") as handle:
            json.dump(holder, handle)
        break
    else:
        raise FolderError(f"{path}: could not take the lock")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
