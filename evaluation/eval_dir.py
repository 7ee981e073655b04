"""One folder per evaluation: ``RUN/evals/<name>/``, never silently replaced, listed in ``RUN/evals/index.json``.

The name says what was evaluated: the kind (``attack``, ``corruptions``, ``defense``, ``localization``), the
attacks, the budgets by their keys (``paper`` for the paper's protocol under the paper's threat model) and the
settings that change the figures (loss, steps, grids, units, defense variants, severities ...), e.g.
``attack_pgd_paper``, ``attack_pgd+apgd_AV_l2-v1a0.5j1``, ``corruptions_all_sev135``; ``--eval_name`` names it
instead. The folder holds the outputs and ``eval.json``: the exact command, the flags that define the evaluation,
when it started and finished, and its status.

An evaluation whose folder already holds a finished one is reused when its flags are the same (nothing is run
again) and refused, naming the flags that differ, when they are not; ``--overwrite`` deletes it and runs it
again. An evaluation that was interrupted (status ``running`` and no live lock) is run again. While it runs, the
folder's ``.lock`` keeps a second process out.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from attacks.threat import THREAT_FLAGS
from evaluation.robustness.protocol import PAPER_PROTOCOL, Budget, budgets_from_args
from utils.distributed import DistInfo, all_gather_list
from utils.fileio import write_json_atomic
from utils.folders import LOCK_FILE, FolderError, folder_lock

EVALS = "evals"
INDEX = "index.json"
RECORD = "eval.json"
KINDS = ("attack", "corruptions", "defense", "localization")
MAX_NAME = 120

DATA_FLAGS = ("list_test", "audio_path", "frame_path", "max_samples", "eval_samples", "skip_bad", "seed", "categories")
ATTACK_FLAGS = ("attack_type", *THREAT_FLAGS, "epsilons", "eps_grid", "eps_grid_modality", "attack_steps", "apgd_steps",
                "apgd_targets", "attack_alpha", "attack_loss", "random_start", "restarts", "square_queries",
                "square_p_init", "eot_iter", "sanity_eps")
DEFENSE_FLAGS = ("use_banks", "weights_Dv", "weights_Da", "bank_mix", "solver", "lasso_lambda", "alpha_v", "alpha_a",
                 "coding_tol", "coding_max_iter", "coding_grad", "bank_warm_start", "defense_attacks")
LOCALIZATION_FLAGS = ("boxes", "loc_attack", "checkpoint", "ciou_mode")
KIND_FLAGS = {"attack": ATTACK_FLAGS, "corruptions": ("corruptions", "corruption_severities"),
              "defense": ATTACK_FLAGS + DEFENSE_FLAGS, "localization": ATTACK_FLAGS + LOCALIZATION_FLAGS}


def evals_dir(run_dir: Path) -> Path:
    return Path(run_dir) / EVALS


def eval_flags(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The flags whose values define an evaluation of ``kind`` (what must match for it to be reused)."""
    return {flag: getattr(args, flag) for flag in DATA_FLAGS + KIND_FLAGS[kind] if hasattr(args, flag)}


def _budget_token(budget: Budget) -> str:
    """``Budget.key`` as a file-name part: 'A+V@l2:v1,a0.5,j1' -> 'AV_l2-v1a0.5j1'."""
    name, spec = budget.key.split("@", 1)
    return f"{name.replace('+', '')}_{spec.replace(':', '-').replace(',', '')}"


def _values(values: list[float]) -> str:
    return "-".join(f"{v:g}" for v in values)


def attack_part(args: argparse.Namespace) -> str:
    """Attacks, budgets and the settings that change their figures."""
    if not args.attack_type:
        return "clean"
    budgets = [b for b in budgets_from_args(args) if not b.grid]
    paper = [b.key for b in PAPER_PROTOCOL]
    parts = ["+".join(args.attack_type)]
    parts.append("paper" if [b.key for b in budgets] == paper else "+".join(_budget_token(b) for b in budgets))
    if getattr(args, "eps_units", None) == "pixel" and getattr(args, "norm", "linf") == "linf":
        parts.append("px")
    if getattr(args, "eps_grid", None):
        parts.append(f"grid{_values(args.eps_grid)}" + ("" if len(args.eps_grid_modality) == 3
                                                        else "-" + "-".join(args.eps_grid_modality)))
    if getattr(args, "eps_grid2d", None):
        parts.append(f"map{_values(args.eps_grid2d)}")
    if getattr(args, "attack_loss", "ce") != "ce":
        parts.append(f"loss-{args.attack_loss}")
    if getattr(args, "attack_steps", None):
        parts.append(f"steps{args.attack_steps}")
    if getattr(args, "attack_alpha", None):
        parts.append(f"alpha{args.attack_alpha:g}")
    if getattr(args, "random_start", False):
        parts.append(f"rs{args.restarts}")
    if getattr(args, "eot_iter", 1) > 1:
        parts.append(f"eot{args.eot_iter}")
    names = {a.split("+")[-1] for a in args.attack_type}
    if names & {"apgd", "apgd-t", "autoattack", "aa"} and args.apgd_steps != 100:
        parts.append(f"apgd{args.apgd_steps}")
    if names & {"apgd-t", "autoattack", "aa"} and args.apgd_targets != 9:
        parts.append(f"targets{args.apgd_targets}")
    if names & {"square", "autoattack", "aa"} and args.square_queries != 5000:
        parts.append(f"queries{args.square_queries}")
    if getattr(args, "max_shift", None) is not None and args.shift_steps != 9:
        parts.append(f"shifts{args.shift_steps}")
    return "_".join(parts)


def default_name(kind: str, args: argparse.Namespace) -> str:
    """The folder name of an evaluation of ``kind`` with these flags (see the module docstring)."""
    if kind == "corruptions":
        names = "+".join(args.corruptions) if args.corruptions else "all"
        parts = [kind, names, "sev" + "".join(str(s) for s in args.corruption_severities)]
    elif kind == "defense":
        variants = "+".join(args.defense_attacks)
        banks = "nobanks"
        if args.use_banks:
            banks = "banks" + ("" if args.coding_grad == "implicit" else f"-{args.coding_grad}")
            banks += "-cold" if getattr(args, "bank_warm_start", "on") == "off" else ""
        parts = [kind, banks, variants, attack_part(args)]
    elif kind == "localization":
        parts = [kind]
        if args.checkpoint != "best":
            parts.append(args.checkpoint)
        parts += ["boxes-" + Path(args.boxes).stem if args.boxes else "noboxes", "+".join(args.loc_attack)]
        if args.ciou_mode != "lvs":
            parts.append(args.ciou_mode)
        parts.append(attack_part(args))
    else:
        parts = [kind, attack_part(args)]
    if getattr(args, "data_root", None) and Path(args.list_test) != Path(args.data_root) / "test.csv":
        parts.append(f"test-{Path(args.list_test).parent.name}-{Path(args.list_test).stem}")
    if getattr(args, "max_samples", None):
        parts.append(f"n{args.max_samples}")
    if getattr(args, "eval_samples", None):
        parts.append(f"e{args.eval_samples}")
    name = "_".join(parts)
    if len(name) > MAX_NAME:
        name = name[: MAX_NAME - 9] + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
    return name


def folder_name(kind: str, args: argparse.Namespace) -> str:
    """``--eval_name`` (with the kind appended when one command runs two kinds) or the derived name."""
    given = getattr(args, "eval_name", None)
    if not given:
        return default_name(kind, args)
    both = kind == "corruptions" and getattr(args, "attack_type", None)
    return f"{given}_corruptions" if both else given


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(_show(v) for v in value) or "(none)"
    return "(none)" if value is None else str(value)


def _jsonable(flags: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(flags, default=str))


def differences(saved: dict[str, Any], flags: dict[str, Any]) -> list[str]:
    now = _jsonable(flags)
    return [f"--{k} {_show(now.get(k))} (saved: {_show(saved.get(k))})" for k in sorted(set(saved) | set(now))
            if saved.get(k) != now.get(k)]


def _decide(folder: Path, kind: str, flags: dict[str, Any], overwrite: bool) -> str:
    """'new', 'redo' or 'reuse' for ``folder``; raises FolderError for a different finished evaluation."""
    record = _read(folder / RECORD)
    if record is None:
        return "redo" if folder.exists() else "new"
    if (folder / LOCK_FILE).exists() and not overwrite:
        return "redo"  # the lock decides: held -> a clear error; stale -> taken over
    if record.get("status") != "complete":
        return "redo"
    if overwrite:
        return "redo"
    diff = differences(record.get("flags", {}), flags)
    if not diff:
        return "reuse"
    shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
    raise FolderError(f"{folder} already holds another {record.get('kind', kind)} evaluation ({shown}); pass "
                   f"--eval_name NAME to keep both, or --overwrite to replace it")


@contextmanager
def evaluation_folder(run_dir: Path, kind: str, args: argparse.Namespace, info: DistInfo) -> Iterator[Path | None]:
    """The folder of this evaluation, or None when an identical finished one is reused (nothing to run).

    On the main process: holds the folder's lock, writes ``eval.json`` (status ``running``, then ``complete``
    with the files written) and refreshes ``RUN/evals/index.json``. Every process gets the same answer."""
    if kind not in KINDS:
        raise ValueError(f"unknown evaluation kind {kind!r}")
    folder = evals_dir(run_dir) / folder_name(kind, args)
    flags = eval_flags(kind, args)
    decision: list = []
    if info.is_main:
        try:
            decision = [_decide(folder, kind, flags, getattr(args, "overwrite", False))]
        except FolderError as err:
            decision = [f"error: {err}"]
    decision = all_gather_list(decision, info)[0]
    if decision.startswith("error: "):
        raise FolderError(decision[len("error: "):])
    if decision == "reuse":
        if info.is_main:
            print(f"{kind}: reusing {folder} (finished with the same flags; --overwrite to run it again)")
        yield None
        return
    with ExitStack() as stack:
        if info.is_main:
            stack.enter_context(folder_lock(folder, f"the evaluation {folder}"))
            if decision == "redo":
                _clear(folder)
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            settings = {k: v for k, v in vars(args).items() if k != "command"}
            record = {"name": folder.name, "kind": kind, "run": Path(run_dir).name, "status": "running",
                      "command": getattr(args, "command", shlex.join(["python"] + sys.argv)),
                      "flags": _jsonable(flags), "all_flags": _jsonable(settings), "started": started}
            write_json_atomic(folder / RECORD, record)
            print(f"{kind}: writing {folder}")
        yield folder
        if info.is_main:
            record.update(status="complete", finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                          files=sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                                       if p.is_file() and p.name not in (RECORD, LOCK_FILE)))
            write_json_atomic(folder / RECORD, record)
    if info.is_main:
        write_index(run_dir)


def _clear(folder: Path) -> None:
    for entry in folder.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def list_evaluations(run_dir: Path) -> list[dict]:
    """Every evaluation folder's ``eval.json`` of a run (with ``path``), oldest first."""
    entries = []
    root = evals_dir(run_dir)
    if not root.is_dir():
        return entries
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        record = _read(folder / RECORD)
        if record is not None:
            entries.append({**record, "path": str(folder)})
    return sorted(entries, key=lambda r: (r.get("started", ""), r["name"]))


def write_index(run_dir: Path) -> Path:
    """``RUN/evals/index.json``: name, kind, status, times, command and files of every evaluation."""
    keys = ("name", "kind", "status", "started", "finished", "command", "files")
    index = {"run": Path(run_dir).name,
             "evaluations": [{k: r[k] for k in keys if k in r} for r in list_evaluations(run_dir)]}
    path = evals_dir(run_dir) / INDEX
    write_json_atomic(path, index)
    return path


def find_evaluations(run_dir: Path, kind: str | None = None, complete: bool = True) -> list[Path]:
    """The folders of a run's evaluations (of ``kind``), oldest first."""
    return [Path(r["path"]) for r in list_evaluations(run_dir)
            if (kind is None or r["kind"] == kind) and (not complete or r.get("status") == "complete")]


def eval_folder_of(run_dir: Path, kind: str, args: argparse.Namespace) -> Path:
    """Where an evaluation of ``kind`` with these flags writes (or wrote) its outputs."""
    return evals_dir(run_dir) / folder_name(kind, args)
