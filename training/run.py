"""A run folder's identity: its saved configuration, the data it was trained on, and who may write it.

* ``RUN/args.json`` is the run's configuration. ``--run RUN`` reads it, so an evaluation needs no training flags;
  model and data-shape flags given alongside (or, without ``--run``, the flags that select the run) must agree
  with it, or the command stops naming the flag and both values.
* ``RUN/run.json`` records the label order and a fingerprint of the index the model was trained on (the train
  and validation CSVs); an evaluation whose label order or training index differs is refused naming both.
* ``RUN/.lock`` is held by the one process that writes the run (training, a memory bank); a second one stops
  with an error naming the lock and its holder. A lock whose process is gone is taken over.
* Training into a folder that already holds a run needs ``--resume`` (same model flags, seed included) or
  ``--overwrite`` (the old checkpoints and every evaluation of the old model are deleted first).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from dataset.presets import PRESETS
from utils.fileio import write_json_atomic
from utils.folders import LOCK_FILE, FolderError

CONFIG_FILE = "args.json"
IDENTITY_FILE = "run.json"

# Flags that define the trained model or the inputs it expects: an evaluation must use the run's values.
MODEL_FLAGS = ("dataset", "arch_frame", "arch_sound", "arch_classifier", "img_pool", "map_activation", "frame_dim",
               "sound_dim", "stft_frame", "stft_hop", "cls_num", "num_frames", "stride_frames", "frameRate", "imgSize",
               "audLen", "audRate", "num_epoch", "train_mode", "lambda_cos", "train_eps", "train_attack_steps",
               "trades_beta", "frame_padding", "ssl_temperature", "ssl_momentum",
               "ssl_audio_bn")
# Flags that change the weights training produces, beyond the model flags: a resumed run must keep them. The
# precision does (--amp, --amp_dtype); how fast the same arithmetic runs does not (--cudnn_benchmark,
# --channels_last, --compile, --deterministic). A configuration saved before a flag existed is not compared on it:
# runs of earlier versions trained --amp in float16, so resume one with --amp_dtype float16 to keep its precision.
TRAINING_FLAGS = MODEL_FLAGS + ("seed", "max_samples", "freeze_bn", "amp", "amp_dtype")
# Where a run's data lives: taken from the saved configuration with --run unless the user gives a data root.
DATA_PATH_FLAGS = ("list_train", "list_val", "list_test", "audio_path", "frame_path")
OPTIMISATION_FLAGS = ("lr_frame", "lr_sound", "lr_classifier", "lr_steps", "beta1", "weight_decay", "optimizer",
                      "lr_schedule", "warmup_epochs", "label_smoothing", "eval_epoch")
# What --run takes from the saved configuration: how the model was made and where its data is (evaluation flags,
# such as the threat model, are the command's own).
SAVED_FLAGS = tuple(f for f in TRAINING_FLAGS if f != "cls_num") + OPTIMISATION_FLAGS + ("data_root",) \
    + DATA_PATH_FLAGS


# A run trained by main_attack.py saved no defense flags: it is the undefended model.
ABSENT_MEANS = {"lambda_cos": 0.0, "train_mode": "standard"}


class RunError(FolderError):
    """A run folder that cannot be used as asked (missing, or mixed up with other flags)."""


def given_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags written on the command line (the parser takes no abbreviations)."""
    options = parser._option_string_actions  # noqa: SLF001 - argparse exposes no public map of option strings
    given = set()
    for token in argv:
        if token == "--":
            break
        action = options.get(token.split("=", 1)[0]) if token.startswith("-") else None
        if action is not None:
            given.add(action.dest)
    return given


def read_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunError(f"--run {run_dir}: no such run folder")
    if not path.is_file():
        raise RunError(f"--run {run_dir}: {path.name} not found (not a run folder, or its training never started)")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise RunError(f"{path}: expected a JSON object of flags")
    return config


def _show(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def disagreements(saved: dict[str, Any], args: argparse.Namespace, flags: tuple[str, ...]) -> list[str]:
    """'--flag given (the run: saved)' for each of ``flags`` whose value differs from the saved configuration
    (flags an older configuration lacks are not compared)."""
    out = []
    for flag in flags:
        if flag in saved and hasattr(args, flag) and not _same(getattr(args, flag), saved[flag]):
            out.append(f"--{flag} {_show(getattr(args, flag))} (the run: {_show(saved[flag])})")
    return out


def apply_saved_config(args: argparse.Namespace, given: set[str], parser: argparse.ArgumentParser) -> None:
    """``--run RUN``: every flag not given on the command line takes the run's saved value; a model or data-shape
    flag given with another value stops the command naming both. ``--ckpt`` and ``--id`` become the run's."""
    run_dir = Path(args.run)
    try:
        saved = read_config(run_dir)
    except RunError as err:
        parser.error(str(err))
    saved = {**ABSENT_MEANS, **saved}
    conflicts = [d for d in disagreements(saved, args, MODEL_FLAGS) if d.split()[0][2:] in given]
    if conflicts:
        parser.error(f"--run {run_dir} was trained with other flags: {'; '.join(conflicts)}; drop them to use "
                     f"the run's, or train another run")
    saved_paths = "data_root" not in given  # a data root given here brings its own index and media paths
    for key in SAVED_FLAGS:
        if key in given or key not in saved or not hasattr(args, key):
            continue
        if key in DATA_PATH_FLAGS and not saved_paths:
            continue
        setattr(args, key, saved[key])
    # a fixed preset keeps the run's own class list; a file-based one (synthetic, custom) reads categories.txt
    # again, and the evaluation compares it with the run's label order
    preset = PRESETS.get(getattr(args, "dataset", ""))
    if "categories" not in given and "categories" in saved and preset is not None and preset.categories:
        args.categories = [list(saved["categories"])]  # parsed --categories come as groups


def settle_run_folder(args: argparse.Namespace) -> None:
    """With ``--run``, the run folder is the one given, whatever id the flags would build."""
    if getattr(args, "run", None):
        run_dir = Path(args.run)
        args.ckpt, args.id = str(run_dir.parent), run_dir.name


# ------------------------------------------------------------------------------------------- data identity


def file_digest(path: str | os.PathLike) -> str | None:
    """SHA-256 of a file's bytes (hex), None when it does not exist."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except FileNotFoundError:
        return None


def data_identity(args: argparse.Namespace) -> dict[str, Any]:
    """The label order and the digests of the index files the run reads; ``fingerprint`` covers what training
    saw (label order, train and validation index)."""
    index = {split: {"path": str(getattr(args, f"list_{split}")), "sha256": file_digest(getattr(args, f"list_{split}"))}
             for split in ("train", "val", "test")}
    blob = json.dumps([list(args.categories), index["train"]["sha256"], index["val"]["sha256"]])
    return {"categories": list(args.categories), "index": index,
            "fingerprint": hashlib.sha256(blob.encode()).hexdigest()[:16]}


def write_identity(run_dir: Path, args: argparse.Namespace) -> None:
    write_json_atomic(run_dir / IDENTITY_FILE, data_identity(args))


def check_identity(run_dir: Path, args: argparse.Namespace) -> list[str]:
    """Stops when the label order or the training index differ from what the run was trained on; returns notes
    (what could not be checked) for the caller to print."""
    path = run_dir / IDENTITY_FILE
    if not path.is_file():
        saved = read_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else {}
        if saved.get("categories") and list(saved["categories"]) != list(args.categories):
            raise RunError(_label_order_message(run_dir / CONFIG_FILE, saved["categories"], args.categories))
        return [f"note: {run_dir} has no {IDENTITY_FILE} (trained by an older version): its training index is not "
                "checked"]
    saved = json.loads(path.read_text())
    if list(saved["categories"]) != list(args.categories):
        raise RunError(_label_order_message(path, saved["categories"], args.categories))
    notes = []
    for split in ("train", "val", "test"):
        then, now_path = saved["index"][split], getattr(args, f"list_{split}")
        if split == "test" and str(now_path) != then["path"]:
            continue  # another test list on purpose (e.g. a localization benchmark)
        now = file_digest(now_path)
        if now is None:
            notes.append(f"note: {now_path} not found: the run's {split} index ({then['sha256'][:12]}) is not checked")
        elif now != then["sha256"]:
            raise RunError(f"{now_path} changed since {run_dir.name} was trained (sha256 {then['sha256'][:12]} then, "
                           f"{now[:12]} now): the index was rebuilt, so the test clips may not be the ones held out "
                           "from training; restore the run's index or train again")
    return notes


def _label_order_message(path: Path, saved: list[str], now: list[str]) -> str:
    if sorted(saved) == sorted(now):
        what = "another label order"
    else:
        missing, extra = sorted(set(saved) - set(now)), sorted(set(now) - set(saved))
        what = "other classes" + (f" (missing {', '.join(missing)}" if missing else " (") \
            + (f"; new {', '.join(extra)})" if extra else ")")
    return (f"the run was trained with the label order {', '.join(saved)} ({path}); the data now gives {what}: "
            f"{', '.join(now)}; restore categories.txt (or pass --categories in the run's order)")


# ------------------------------------------------------------------------------------------------ training


def existing_run_epoch(run_dir: Path) -> int | None:
    """The last epoch saved in ``run_dir`` (None when it holds no training state)."""
    history = run_dir / "history.json"
    if not (run_dir / "train_state_latest.pth").exists() and not (run_dir / ".checkpoints" / "latest").exists():
        return None
    try:
        return int(json.loads(history.read_text())[-1]["epoch"])
    except (OSError, ValueError, IndexError, KeyError, TypeError):
        return -1


# What an earlier training and its evaluations leave in a run folder (deleted by --overwrite).
RUN_OUTPUTS = ("evals", ".checkpoints", "tensorboard", "localization", "defense_banks", "defense_no_banks",
               "visualization")
RUN_FILES_SUFFIXES = (".pth", ".json", ".npz", ".md", ".png")


def clear_run(run_dir: Path) -> None:
    """Delete a run's checkpoints, history and every evaluation, keeping the folder (and its lock)."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink() and entry.name in RUN_OUTPUTS:
            shutil.rmtree(entry, ignore_errors=True)  # every process of a launch clears; one of them wins
        elif entry.name.endswith(RUN_FILES_SUFFIXES) or entry.is_symlink():
            entry.unlink(missing_ok=True)


def prepare_training(run_dir: Path, args: argparse.Namespace, changed_optimisation: str) -> None:
    """Refuse to train over an existing run without --resume / --overwrite, or to resume with other model flags;
    with --overwrite delete the old run's files first."""
    epoch = existing_run_epoch(run_dir)
    if epoch is None or getattr(args, "mode", "train") != "train":
        return
    overwrite = getattr(args, "overwrite", False)
    if args.resume and overwrite:
        raise RunError("--resume and --overwrite contradict each other: continue the run or start it again")
    if overwrite:
        print(f"--overwrite: deleting the run in {run_dir} (epoch {epoch}: checkpoints, history, evaluations)")
        clear_run(run_dir)
        return
    done = f"trained to epoch {epoch + 1}" if epoch >= 0 else "holding a run"
    if not args.resume:
        raise RunError(f"{run_dir} already holds a run ({done}); pass --resume to continue it, --overwrite to "
                       "delete it and train again, or --id to train into another folder")
    saved = read_config(run_dir) if (run_dir / CONFIG_FILE).is_file() else {}
    changed = disagreements(saved, args, TRAINING_FLAGS)
    if changed_optimisation:
        changed.append(changed_optimisation)
    if changed:
        raise RunError(f"--resume: {run_dir} was trained with other flags: {'; '.join(changed)}; resume with the "
                       "run's own flags (or --overwrite to train it again)")


def check_evaluation(run_dir: Path, args: argparse.Namespace) -> list[str]:
    """Before an evaluation: the flags that select the model agree with the run's configuration, and the label
    order and training index with its identity. Returns notes to print."""
    if not (run_dir / CONFIG_FILE).is_file():
        return []
    conflicts = disagreements(read_config(run_dir), args, MODEL_FLAGS)
    if conflicts:
        raise RunError(f"{run_dir} was trained with other flags: {'; '.join(conflicts)}; evaluate with the run's "
                       f"flags (--run {run_dir} reads them)")
    return check_identity(run_dir, args)
