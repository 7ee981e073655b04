"""All-or-nothing checkpoint sets (training/checkpoint.py).

A save killed after any one of its file operations leaves the previous set or the new one, never a mix, and the
next save tidies up; a run killed inside a checkpoint save resumes to the uninterrupted result; run folders of
the old layout (plain files) load; the stable names RUN/<module>_<tag>.pth read the current set.
"""
from __future__ import annotations

import functools
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models import build_model
from tests.test_training import (  # noqa: F401  (data_root, straight_run: fixtures used here)
    assert_same_weights,
    data_root,
    flags,
    history,
    run_dir,
    straight_run,
    train,
    weights,
)
from training import checkpoint, engine
from training.checkpoint import (
    MODULES,
    STORE,
    CheckpointError,
    load_checkpoint,
    load_module,
    load_train_state,
    save_checkpoint,
    train_state_path,
)

pytestmark = pytest.mark.usefixtures("one_thread")

META = {"arch_frame": "smallcnn", "arch_sound": "anet", "arch_classifier": "concat", "cls_num": 3,
        "frame_dim": 16, "sound_dim": 16}
# every call that changes the file system in a save
FILE_OPERATIONS = [(os, "mkdir"), (os, "rename"), (os, "replace"), (os, "symlink"), (os, "link"), (os, "unlink"),
                   (os, "rmdir"), (os, "fsync"), (torch, "save")]


class Killed(BaseException):
    """Stands for SIGKILL / a power cut: nothing in the code under test catches it."""


class FaultyDisk:
    """Counts the file operations; the ``fail_at``-th one (a number, or the name of the first such call) fails.

    ``kill``: it raises Killed and so does every later operation, cleanup included, so the disk keeps the state
    of the moment of the kill. Otherwise only that operation fails, with a full disk's OSError, and the code's
    own cleanup runs. A failing torch.save leaves half a file behind."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_at: int | str | None, kill: bool) -> None:
        self.fail_at, self.kill, self.calls, self.failed_at = fail_at, kill, [], None
        for owner, name in FILE_OPERATIONS:
            monkeypatch.setattr(owner, name, self._faulty(name, getattr(owner, name)))

    def _faulty(self, name: str, real: Callable) -> Callable:
        def operation(*args, **kwargs):
            self.calls.append(name)
            due = self.fail_at in (len(self.calls), name) and self.failed_at is None
            if due or (self.kill and self.failed_at is not None):
                self.failed_at = self.failed_at or name
                if name == "save":
                    real(*args, **kwargs)
                    path = args[1]
                    os.truncate(path, os.path.getsize(path) // 2)
                raise Killed(name) if self.kill else OSError(28, f"No space left on device ({name})")
            return real(*args, **kwargs)
        return operation


def tiny_model(seed: int):
    torch.manual_seed(seed)
    return build_model("smallcnn", "anet", "concat", 3, frame_dim=16, sound_dim=16)


@functools.cache
def _scratch_model():
    return tiny_model(seed=99)


def scratch():
    """A model to load into (one, reused), every value overwritten first so that anything a load misses shows."""
    model = _scratch_model()
    with torch.no_grad():
        for value in model.state_dict().values():
            value.fill_(-7)
    return model


def weights_of(model) -> dict[str, torch.Tensor]:
    return {f"{m}.{k}": v.clone() for m in MODULES for k, v in getattr(model, f"net_{m}").state_dict().items()}


def train_state(epoch: int) -> dict:
    return {"epoch": epoch, "note": f"train state of epoch {epoch}"}


def write_old_layout(run: Path, model, tag: str, epoch: int) -> None:
    """A run folder as the earlier code wrote it: plain files, no pointer."""
    run.mkdir(parents=True, exist_ok=True)
    for module in MODULES:
        torch.save({"state_dict": getattr(model, f"net_{module}").state_dict(), "meta": META, "epoch": epoch},
                   run / f"{module}_{tag}.pth")
    torch.save(train_state(epoch), run / f"train_state_{tag}.pth")


def current_epoch(run: Path, sets: dict[int, dict[str, torch.Tensor]]) -> int | None:
    """The epoch of the set on disk (None: no set), after checking that the set is whole: load_checkpoint, the
    train state and every stable name agree on that epoch and hold its weights."""
    fresh = scratch()
    try:
        epoch = load_checkpoint(run, fresh, "latest", META)
    except CheckpointError as err:
        assert "not found" in str(err), str(err)
        assert not train_state_path(run).is_file()  # --resume says "no earlier run", not "different epochs"
        return None
    assert_same_weights(weights_of(fresh), sets[epoch])
    assert load_train_state(run) == train_state(epoch)
    assert torch.load(train_state_path(run), weights_only=True) == train_state(epoch)
    for module in MODULES:
        net = getattr(scratch(), f"net_{module}")
        assert load_module(net, run / f"{module}_latest.pth", META) == epoch
        assert_same_weights({f"{module}.{k}": v for k, v in net.state_dict().items()},
                            {k: v for k, v in sets[epoch].items() if k.startswith(f"{module}.")})
    return epoch


def assert_tidy(run: Path, tags: tuple[str, ...] = ("latest",)) -> None:
    """One pointer and one set folder per tag, no temporary file or link, stable names that are links."""
    store = sorted(p.name for p in (run / STORE).iterdir())
    assert [n for n in store if "-" not in n] == sorted(tags), store
    for tag in tags:
        assert len([n for n in store if n.startswith(f"{tag}-epoch")]) == 1, store
        assert os.readlink(run / STORE / tag) in store
    assert len(store) == 2 * len(tags), store
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [STORE]
    for tag in tags:
        for module in MODULES:
            assert os.readlink(run / f"{module}_{tag}.pth") == f"{STORE}/{tag}/{module}_{tag}.pth"


def prepare(scenario: str, run: Path, model) -> int | None:
    """The run folder before the save under test; returns the epoch of its set."""
    if scenario == "fresh":
        return None
    if scenario == "old_layout":
        write_old_layout(run, model, "latest", 0)
        (run / ".frame_latest.pth.x1y2z3.tmp.pth").write_bytes(b"what a killed old-layout save left")
        return 0
    if scenario == "copied":  # copied by a tool that follows links (shutil.copytree, cp -L, scp -r)
        original = run.parent / "original"
        save_checkpoint(original, model, "latest", META, 0, train_state(0))
        shutil.copytree(original, run)
        assert not [p for p in run.rglob("*") if p.is_symlink()]
        return 0
    save_checkpoint(run, model, "latest", META, 0, train_state(0))
    return 0


@pytest.mark.parametrize("kill", [True, False], ids=["killed", "os_error"])
@pytest.mark.parametrize("scenario", ["fresh", "pointer", "old_layout", "copied"])
def test_a_save_interrupted_after_any_file_operation_leaves_the_previous_or_the_new_set(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: str, kill: bool) -> None:
    """For k = 1, 2, ... the k-th file operation of the save of epoch 1 fails, until the save completes. After
    each: the set on disk is whole and is epoch 0's (None when there was none) or epoch 1's, epoch 1's if the
    save returned; after kills, once epoch 1 has appeared no later k shows epoch 0. The next save (epoch 2)
    then succeeds and leaves a tidy folder. (fsync is counted but not run: a test cannot see durability, and
    the real one makes this loop slow.)"""
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    models = {epoch: tiny_model(seed=epoch) for epoch in range(3)}
    sets = {epoch: weights_of(model) for epoch, model in models.items()}
    outcomes = []
    for fail_at in range(1, 200):
        run = tmp_path / f"k{fail_at}" / "run"
        previous = prepare(scenario, run, models[0])
        with monkeypatch.context() as patch:
            disk = FaultyDisk(patch, fail_at, kill)
            try:
                save_checkpoint(run, models[1], "latest", META, 1, train_state(1))
                returned = True
            except (Killed, OSError) as err:
                assert disk.failed_at, err
                returned = False
        epoch = current_epoch(run, sets)
        assert epoch == 1 if returned else epoch in (previous, 1), (fail_at, disk.calls)
        outcomes.append(epoch)
        save_checkpoint(run, models[2], "latest", META, 2, train_state(2))
        assert load_checkpoint(run, scratch(), "latest", META) == 2 and load_train_state(run) == train_state(2)
        assert_tidy(run)
        if disk.failed_at is None:
            break
    assert outcomes[-1] == 1 and outcomes[0] == previous
    if kill:
        switch = outcomes.index(1)
        assert outcomes == [previous] * switch + [1] * (len(outcomes) - switch), outcomes
    expected = {"mkdir", "save", "fsync", "symlink", "replace"}
    expected |= {"fresh": set(), "pointer": {"unlink", "rmdir"}, "old_layout": {"link", "unlink", "rmdir"},
                 "copied": {"rename", "unlink", "rmdir"}}[scenario]
    assert set(disk.calls) == expected, disk.calls
    assert len(outcomes) > 12  # every file of the set written and fsynced, then the switch


@pytest.mark.parametrize(("kill_at", "resumes_at"), [("replace", 1), ("unlink", 2)])
def test_resume_after_a_kill_inside_a_checkpoint_save_matches_the_uninterrupted_run(
        data_root: Path, straight_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
        capsys: pytest.CaptureFixture, kill_at: str, resumes_at: int) -> None:
    """The run is killed inside epoch 1's 'latest' save: at the pointer switch (os.replace; epoch 0 stays
    current) or just after it, while the superseded set is deleted (os.unlink; epoch 1 is current). --resume
    continues from that set and ends with the weights, best checkpoint and history of the uninterrupted run."""
    real_save_checkpoint = engine.save_checkpoint

    def save_checkpoint_killed(run_dir, model, tag, meta, epoch, train_state=None):
        if tag != "latest" or epoch != 1:
            return real_save_checkpoint(run_dir, model, tag, meta, epoch, train_state)
        with monkeypatch.context() as patch:
            disks.append(FaultyDisk(patch, kill_at, kill=True))
            real_save_checkpoint(run_dir, model, tag, meta, epoch, train_state)

    disks = []
    with monkeypatch.context() as patch:
        patch.setattr(engine, "save_checkpoint", save_checkpoint_killed)
        with pytest.raises(Killed):
            train(data_root, tmp_path)
    assert len(disks) == 1 and disks[0].failed_at == kill_at
    run = run_dir(flags(data_root, tmp_path))
    fresh = scratch()
    assert load_checkpoint(run, fresh, "latest", META) == resumes_at - 1
    assert load_train_state(run)["epoch"] == resumes_at - 1

    capsys.readouterr()
    train(data_root, tmp_path, "--resume")
    assert f"resuming {run.name} at epoch {resumes_at}" in capsys.readouterr().out
    assert_same_weights(weights(run), weights(straight_run))
    assert_same_weights(weights(run, "best"), weights(straight_run, "best"))
    assert history(run) == history(straight_run)
    assert_tidy(run, ("best", "latest"))


def test_an_old_layout_run_folder_loads_and_its_next_save_moves_it_to_the_pointer_layout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    old, new = tiny_model(seed=0), tiny_model(seed=1)
    write_old_layout(run, old, "latest", 4)
    (run / ".sound_latest.pth.a1b2c3.tmp.pth").write_bytes(b"what a killed old-layout save left")
    fresh = scratch()
    assert load_checkpoint(run, fresh, "latest", META) == 4
    assert_same_weights(weights_of(fresh), weights_of(old))
    assert load_train_state(run) == train_state(4) and train_state_path(run).is_file()

    save_checkpoint(run, new, "latest", META, 5, train_state(5))
    assert current_epoch(run, {5: weights_of(new)}) == 5
    assert_tidy(run)

    # an old-layout set of mixed epochs (what the earlier save could leave) is refused, naming the epochs
    mixed = tmp_path / "mixed"
    write_old_layout(mixed, old, "latest", 4)
    torch.save({"state_dict": new.net_sound.state_dict(), "meta": META, "epoch": 3}, mixed / "sound_latest.pth")
    with pytest.raises(CheckpointError, match=r"different epochs \[3, 4\]"):
        load_checkpoint(mixed, scratch(), "latest", META)


def test_stable_names_are_relative_links_made_once_that_read_the_current_set(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    save_checkpoint(run, first, "best", META, 0)
    links = {m: (os.readlink(run / f"{m}_best.pth"), os.lstat(run / f"{m}_best.pth").st_ino) for m in MODULES}
    save_checkpoint(run, second, "best", META, 1)
    for module in MODULES:
        path = run / f"{module}_best.pth"
        assert (os.readlink(path), os.lstat(path).st_ino) == links[module]  # the same link, untouched
        assert not os.path.isabs(links[module][0])
        net = getattr(scratch(), f"net_{module}")
        assert load_module(net, path, META) == 1
        assert_same_weights(net.state_dict(), getattr(second, f"net_{module}").state_dict())
    assert not train_state_path(run, "best").exists()  # a 'best' set has no train state
    assert_tidy(run, ("best",))

    moved = tmp_path / "moved"  # relative links: the folder can be moved
    os.rename(run, moved)
    fresh = scratch()
    assert load_checkpoint(moved, fresh, "best", META) == 1
    assert_same_weights(weights_of(fresh), weights_of(second))
    assert load_module(fresh.net_frame, moved / "frame_best.pth") == 1


def test_a_load_that_loses_a_race_with_a_save_reads_one_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save lands (and deletes the old set) after a load has read the first file of the old set: the load
    does not mix the sets, it starts over on the new one."""
    run = tmp_path / "run"
    first, second = tiny_model(seed=0), tiny_model(seed=1)
    save_checkpoint(run, first, "latest", META, 0, train_state(0))
    real_load, loads = torch.load, []

    def load_then_save(*args, **kwargs):
        obj = real_load(*args, **kwargs)
        loads.append(args[0])
        if len(loads) == 1:
            save_checkpoint(run, second, "latest", META, 1, train_state(1))
        return obj

    monkeypatch.setattr(torch, "load", load_then_save)
    fresh = scratch()
    assert load_checkpoint(run, fresh, "latest", META) == 1
    assert_same_weights(weights_of(fresh), weights_of(second))
    assert len(loads) == 1 + len(MODULES)  # the first attempt stopped at its second file


def test_the_files_and_folders_of_a_set_are_fsynced_before_the_pointer_switch_and_the_switch_after(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The order that makes a set survive a power cut: every file written then fsynced, its folder and the
    store fsynced, the stable links (first save) made and the run folder fsynced, then the pointer switch,
    then the store fsynced again."""
    run, events = tmp_path / "run", []
    real_fsync_path, real_replace, real_save = checkpoint.fsync_path, os.replace, torch.save

    def fsync_path(path):
        events.append(("fsync", Path(path)))
        real_fsync_path(path)

    def replace(src, dst):
        events.append(("replace", Path(dst)))
        real_replace(src, dst)

    def save(obj, f):
        events.append(("save", Path(f)))
        real_save(obj, f)

    monkeypatch.setattr(checkpoint, "fsync_path", fsync_path)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(torch, "save", save)
    store, pointer = run / STORE, run / STORE / "latest"
    for epoch in (0, 1):  # the first save also makes the stable links
        events.clear()
        save_checkpoint(run, tiny_model(epoch), "latest", META, epoch, train_state(epoch))
        switch = events.index(("replace", pointer))
        before, after = events[:switch], events[switch + 1:]
        folder = store / os.readlink(pointer)
        saved = [path for op, path in events if op == "save"]
        assert sorted(p.name for p in saved) == sorted(f"{m}_latest.pth" for m in [*MODULES, "train_state"])
        for path in saved:
            assert path.parent == folder
            assert events.index(("save", path)) < events.index(("fsync", path)) < switch
        assert ("fsync", folder) in before and ("fsync", store) in before and ("fsync", store) in after
        links = [i for i, (op, path) in enumerate(before) if op == "replace" and path.parent == run]
        assert len(links) == (len(saved) if epoch == 0 else 0)
        if links:
            assert ("fsync", run) in before[links[-1]:]
