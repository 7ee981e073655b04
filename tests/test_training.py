"""Tests of the training loop of main_attack.py: optimiser, schedule, checkpoints, resume, eval, DDP; the
training objectives' precision and budgets (main_defense.py); flags that evaluation rejects.

Every run trains tiny models (smallcnn / anet of width 16, 32 px frames, 2048-sample audio) on a
12-clip SoP-layout dataset written by tests/sop_fixture.py, in-process through ``main_attack.main``
(the 2-process DDP run goes through the real torchrun).
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DistributedSampler

import main_attack
import main_defense
import main_localization
from dataset.av_dataset import AVDataset
from dataset.transforms import frames_to_float
from models import build_model
from models.visual import ResNet18Frame, SmallCNNFrame
from tests.sop_fixture import make_root
from training import engine
from training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_module,
    load_train_state,
    model_meta,
    save_checkpoint,
)
from training.objectives import PGDAdversarialTraining, Trades, full_precision

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("cat_a", "cat_b", "cat_c")
PER_CLASS = 4  # 12 clips: 3 training steps of 4 per epoch
EPOCHS = 3
SEED = 7
LRS = {"frame": 0.01, "sound": 0.02, "classifier": 0.05}
MOMENTUM, WEIGHT_DECAY = 0.8, 5e-4
MODULE_FILES = [f"{m}_{t}.pth" for m in ("frame", "sound", "classifier") for t in ("latest", "best")]


def model_flags(batch: int = 4) -> list[str]:
    return ["--dataset", "synthetic", "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet",
            "--sound_dim", "16", "--imgSize", "32", "--audLen", "2048", "--batch_size_per_gpu", str(batch),
            "--workers", "0", "--lr_steps", "2", "--lr_frame", str(LRS["frame"]), "--lr_sound", str(LRS["sound"]),
            "--lr_classifier", str(LRS["classifier"]), "--beta1", str(MOMENTUM),
            "--weight_decay", str(WEIGHT_DECAY), "--seed", str(SEED), "--device", "cpu"]


def flags(root: Path, ckpt: Path, *extra: str, epochs: int = EPOCHS, batch: int = 4) -> list[str]:
    return [*model_flags(batch), "--data_root", str(root), "--ckpt", str(ckpt), "--num_epoch", str(epochs), *extra]


def train(root: Path, ckpt: Path, *extra: str, epochs: int = EPOCHS) -> Path:
    """Train in-process; returns the run folder."""
    argv = flags(root, ckpt, "--mode", "train", *extra, epochs=epochs)
    main_attack.main(argv)
    return run_dir(argv)


def run_dir(argv: list[str]) -> Path:
    args = main_attack.parse_args(argv)
    return Path(args.ckpt) / args.id


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def weights(run: Path, tag: str = "latest") -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the run's ``tag`` checkpoints, keyed '<module>.<name>'."""
    out = {}
    for module in ("frame", "sound", "classifier"):
        for name, value in load(run / f"{module}_{tag}.pth")["state_dict"].items():
            out[f"{module}.{name}"] = value
    return out


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.allclose(a[k].double(), b[k].double(), rtol=0, atol=atol)]
    worst = {k: (a[k].double() - b[k].double()).abs().max().item() for k in bad[:5]}
    assert not bad, f"{len(bad)} tensors differ (max abs diff of the first ones): {worst}"


def history(run: Path) -> list[dict]:
    """history.json without the wall-clock seconds."""
    return [{k: v for k, v in rec.items() if k != "seconds"} for rec in json.loads((run / "history.json").read_text())]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SoP fixture with a class colour added to the frames, so the model learns something."""
    root = make_root(tmp_path_factory.mktemp("sop"), classes=CLASSES, per_class=PER_CLASS, num_frames=16)
    for label, cls in enumerate(CLASSES):
        for jpg in sorted((root / "frames" / cls).rglob("*.jpg")):
            img = np.array(Image.open(jpg))
            img[..., label] = 220
            Image.fromarray(img).save(jpg, quality=95)
    return root


@pytest.fixture(scope="module")
def straight_run(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One uninterrupted 3-epoch run (lr x0.1 from epoch 2), shared by the tests that only read it."""
    return train(data_root, tmp_path_factory.mktemp("straight"))


# --------------------------------------------------------------------------------------------- outputs

def test_train_writes_per_module_checkpoints_history_args_and_tensorboard(data_root: Path, straight_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for name in [*MODULE_FILES, "train_state_latest.pth", "history.json", "args.json"]:
        assert (straight_run / name).is_file(), name
    assert not [p.name for p in straight_run.iterdir() if ".tmp" in p.name]

    args = json.loads((straight_run / "args.json").read_text())
    assert args["id"] == straight_run.name and args["num_epoch"] == EPOCHS and args["lr_steps"] == [2]
    assert args["seed"] == SEED and args["lr_sound"] == LRS["sound"]

    hist = history(straight_run)
    assert [r["epoch"] for r in hist] == list(range(EPOCHS))
    for rec in hist:  # --eval_epoch 1: validated every epoch
        assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr_classifier"} <= rec.keys()

    meta = model_meta(main_attack.parse_args(flags(data_root, Path("unused"))))
    for module in ("frame", "sound", "classifier"):
        latest = load(straight_run / f"{module}_latest.pth")
        assert latest["epoch"] == EPOCHS - 1 and latest["meta"] == meta
    # 'best' holds the first epoch with the highest validation accuracy, and its weights
    accs = [r["val_acc"] for r in hist]
    best_epoch = accs.index(max(accs))
    assert {load(straight_run / f"{m}_best.pth")["epoch"] for m in ("frame", "sound", "classifier")} == {best_epoch}
    assert load_train_state(straight_run)["best_acc"] == max(accs)
    if best_epoch == EPOCHS - 1:
        assert_same_weights(weights(straight_run, "best"), weights(straight_run, "latest"))
    else:
        with pytest.raises(AssertionError):
            assert_same_weights(weights(straight_run, "best"), weights(straight_run, "latest"))

    # training moved every module away from its seeded initialisation
    init = build_model("smallcnn", "anet", "concat", len(CLASSES), frame_dim=16, sound_dim=16)
    trained = weights(straight_run)
    for module in ("frame", "sound", "classifier"):
        net = getattr(init, f"net_{module}")
        moved = [not torch.equal(p, trained[f"{module}.{n}"]) for n, p in net.named_parameters()]
        assert all(moved), module

    events = EventAccumulator(str(straight_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train_loss", "loss/val_loss", "accuracy/train_acc", "accuracy/val_acc", "train/loss_iter",
            "lr/group0", "lr/group1", "lr/group2"} <= tags
    assert [e.step for e in events.Scalars("loss/train_loss")] == list(range(EPOCHS))
    np.testing.assert_allclose([e.value for e in events.Scalars("loss/train_loss")],
                               [r["train_loss"] for r in hist], rtol=1e-6)
    np.testing.assert_allclose([e.value for e in events.Scalars("accuracy/val_acc")], accs, rtol=1e-6)
    # the learning rates each epoch trained with (x0.1 from epoch 2), like history's lr_classifier
    for group, module in enumerate(("frame", "sound", "classifier")):
        logged = events.Scalars(f"lr/group{group}")
        assert [e.step for e in logged] == list(range(EPOCHS))
        np.testing.assert_allclose([e.value for e in logged], [LRS[module]] * 2 + [LRS[module] * 0.1], rtol=1e-6)


def test_sgd_per_module_lrs_momentum_weight_decay_and_lr_steps(straight_run: Path) -> None:
    state = load_train_state(straight_run)
    groups = state["optimizer"]["param_groups"]
    model = build_model("smallcnn", "anet", "concat", len(CLASSES), frame_dim=16, sound_dim=16)
    assert len(groups) == 3
    for group, module in zip(groups, ("frame", "sound", "classifier")):
        # the group holds exactly that module's parameters
        assert len(group["params"]) == len(list(getattr(model, f"net_{module}").parameters())), module
        assert group["initial_lr"] == pytest.approx(LRS[module])
        assert group["lr"] == pytest.approx(LRS[module] * 0.1), module  # after the step at epoch 2
        assert group["momentum"] == MOMENTUM and group["weight_decay"] == WEIGHT_DECAY
    # every parameter has a momentum buffer (SGD with momentum)
    assert len(state["optimizer"]["state"]) == sum(len(g["params"]) for g in groups)
    assert all("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    assert state["scheduler"]["last_epoch"] == EPOCHS and dict(state["scheduler"]["milestones"]) == {2: 1}
    assert state["epoch"] == EPOCHS - 1
    # the lr each epoch trained with: x0.1 from epoch 2 on
    lrs = [r["lr_classifier"] for r in history(straight_run)]
    np.testing.assert_allclose(lrs, [LRS["classifier"], LRS["classifier"], LRS["classifier"] * 0.1], rtol=1e-9)


def test_build_optimizer_groups_hold_each_modules_own_parameters(data_root: Path) -> None:
    args = main_attack.parse_args(flags(data_root, Path("unused")))
    model = build_model("smallcnn", "anet", "concat", 3, frame_dim=16, sound_dim=16)
    optimizer = engine.build_optimizer(model, args)
    assert isinstance(optimizer, torch.optim.SGD)
    for group, module in zip(optimizer.param_groups, ("frame", "sound", "classifier")):
        assert [id(p) for p in group["params"]] == [id(p) for p in getattr(model, f"net_{module}").parameters()]
        assert group["lr"] == LRS[module]
    # a unimodal model: only the modules it has
    audio_only = build_model("smallcnn", "anet", "audio", 3, sound_dim=16)
    lrs = [g["lr"] for g in engine.build_optimizer(audio_only, args).param_groups]
    assert lrs == [LRS["sound"], LRS["classifier"]]


def test_eval_epoch_validates_every_nth_epoch_and_the_last(data_root: Path, tmp_path: Path) -> None:
    run = train(data_root, tmp_path, "--eval_epoch", "2")
    validated = [r["epoch"] for r in history(run) if "val_acc" in r]
    assert validated == [1, 2]
    assert load(run / "frame_best.pth")["epoch"] in (1, 2)


# ---------------------------------------------------------------------------- determinism and resume

def test_same_seed_gives_identical_weights(data_root: Path, straight_run: Path, tmp_path: Path) -> None:
    again = train(data_root, tmp_path)
    assert_same_weights(weights(again), weights(straight_run))
    assert_same_weights(weights(again, "best"), weights(straight_run, "best"))
    assert history(again) == history(straight_run)


def test_create_model_is_seeded_by_the_seed_flag(data_root: Path) -> None:
    """The counterpart of the determinism test: another seed gives other weights, and the comparison sees it."""
    def init(seed: int) -> dict[str, torch.Tensor]:
        argv = flags(data_root, Path("unused"))
        argv[argv.index("--seed") + 1] = str(seed)
        torch.manual_seed(seed + 100)  # whatever the global state, the flag decides
        return engine.create_model(main_attack.parse_args(argv), engine.DistInfo()).state_dict()

    assert_same_weights(init(SEED), init(SEED))
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_weights(init(SEED), init(SEED + 1), atol=1e-6)


class _Interrupt:
    """Wraps train_one_epoch: at epoch ``at`` the loader yields ``steps`` batches, then Ctrl-C."""

    def __init__(self, at: int, steps: int) -> None:
        self.at, self.steps = at, steps
        self.original = engine.train_one_epoch

    def __call__(self, model, loader, optimizer, scaler, epoch, *rest):
        if epoch == self.at:
            loader = _InterruptingLoader(loader, self.steps)
        return self.original(model, loader, optimizer, scaler, epoch, *rest)


class _InterruptingLoader:
    def __init__(self, loader, steps: int) -> None:
        self.loader, self.steps = loader, steps

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for step, batch in enumerate(self.loader):
            if step == self.steps:
                raise KeyboardInterrupt
            yield batch


def test_resume_after_interruption_matches_uninterrupted_run(data_root: Path, straight_run: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture) -> None:
    # killed one optimiser step into epoch 1: the in-memory weights moved past the saved ones
    monkeypatch.setattr(engine, "train_one_epoch", _Interrupt(at=1, steps=1))
    with pytest.raises(KeyboardInterrupt):
        train(data_root, tmp_path)
    monkeypatch.undo()
    run = run_dir(flags(data_root, tmp_path))
    assert load(run / "frame_latest.pth")["epoch"] == 0 and load_train_state(run)["epoch"] == 0
    assert len(history(run)) == 1

    capsys.readouterr()
    train(data_root, tmp_path, "--resume")
    assert f"resuming {run.name} at epoch 1" in capsys.readouterr().out
    assert_same_weights(weights(run), weights(straight_run))
    assert_same_weights(weights(run, "best"), weights(straight_run, "best"))
    assert history(run) == history(straight_run)
    resumed, straight = load_train_state(run), load_train_state(straight_run)
    for key in straight["optimizer"]["state"]:
        assert torch.equal(resumed["optimizer"]["state"][key]["momentum_buffer"],
                           straight["optimizer"]["state"][key]["momentum_buffer"])
    assert resumed["scheduler"] == straight["scheduler"]
    assert resumed["optimizer"]["param_groups"] == straight["optimizer"]["param_groups"]


def test_resume_without_an_earlier_run_fails_clearly(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        train(data_root, tmp_path, "--resume")
    assert "train_state_latest.pth" in str(exc.value) and "not found" in str(exc.value)


# ------------------------------------------------------------------------------------------ checkpoints

def _tiny_model(head: str = "concat", cls_num: int = 3, **kwargs):
    return build_model("smallcnn", "anet", head, cls_num, frame_dim=16, sound_dim=16, **kwargs)


def _meta(head: str = "concat", cls_num: int = 3) -> dict:
    return {"arch_frame": "smallcnn", "arch_sound": "anet", "arch_classifier": head, "cls_num": cls_num,
            "frame_dim": 16, "sound_dim": 16}


def _states(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("fail_at", [1, 2, 4])
def test_a_failed_save_leaves_the_previous_checkpoint_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            fail_at: int) -> None:
    """torch.save dies half-way through the ``fail_at``-th file of the second save (frame, sound,
    classifier, train state): every file of the first save still loads, consistently, and no temp file is left."""
    torch.manual_seed(0)
    model = _tiny_model()
    before = _states(model)
    save_checkpoint(tmp_path, model, "latest", _meta(), 0, {"epoch": 0, "note": "first"})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_save = torch.save
    calls = []

    def dying_save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == fail_at:
            real_save(obj, f, *args, **kwargs)
            size = os.path.getsize(f)
            with open(f, "r+b") as handle:
                handle.truncate(size // 2)
            raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, model, "latest", _meta(), 1, {"epoch": 1, "note": "second"})
    monkeypatch.undo()
    assert len(calls) == fail_at

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".checkpoints", "frame_latest.pth", "sound_latest.pth", "classifier_latest.pth", "train_state_latest.pth"])
    assert len(list((tmp_path / ".checkpoints").iterdir())) == 2  # the pointer and epoch 0's set, nothing half-written
    fresh = _tiny_model()
    assert load_checkpoint(tmp_path, fresh, "latest", _meta()) == 0
    assert_same_weights(_states(fresh), before)
    assert load_train_state(tmp_path)["note"] == "first"


def test_a_run_whose_checkpoint_write_failed_resumes_to_the_uninterrupted_result(
        data_root: Path, straight_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The disk fills while epoch 1's train state is written: the run stops, 'latest' is still epoch 0
    (weights and train state alike) and --resume ends where the uninterrupted run did."""
    real_save = torch.save
    train_states = []

    def dying_save(obj, f, *args, **kwargs):
        if Path(f).name == "train_state_latest.pth":
            train_states.append(f)
            if len(train_states) == 2:
                real_save(obj, f, *args, **kwargs)
                with open(f, "r+b") as handle:
                    handle.truncate(100)
                raise OSError("No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space"):
        train(data_root, tmp_path)
    monkeypatch.undo()
    run = run_dir(flags(data_root, tmp_path))
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert {load(run / f"{m}_latest.pth")["epoch"] for m in ("frame", "sound", "classifier")} == {0}
    assert load_train_state(run)["epoch"] == 0

    train(data_root, tmp_path, "--resume")
    assert_same_weights(weights(run), weights(straight_run))
    assert history(run) == history(straight_run)


def test_save_writes_a_fresh_set_folder_and_links_the_stable_names_into_it(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    written = []
    real_save = torch.save

    def spy(obj, f, *args, **kwargs):
        written.append(Path(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", spy)
    save_checkpoint(tmp_path, _tiny_model(), "best", _meta(), 3)
    assert len(written) == 3
    folder = tmp_path / ".checkpoints" / os.readlink(tmp_path / ".checkpoints" / "best")
    assert all(p.parent == folder and p.is_file() for p in written)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".checkpoints", "classifier_best.pth", "frame_best.pth",
                                                         "sound_best.pth"]
    for path in written:
        assert (tmp_path / path.name).is_symlink() and (tmp_path / path.name).resolve() == path.resolve()


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            yield node


def test_every_torch_load_in_the_source_tree_uses_weights_only() -> None:
    offenders, found = [], 0
    sources = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("__pycache__", "build", "node_modules")]
        sources += [Path(folder) / f for f in files if f.endswith(".py")]
    for path in sorted(sources):
        rel = path.relative_to(REPO)
        for call in _torch_load_calls(ast.parse(path.read_text(), str(rel))):
            found += 1
            ok = any(kw.arg == "weights_only" and isinstance(kw.value, ast.Constant) and kw.value.value is True
                     for kw in call.keywords)
            if not ok:
                offenders.append(f"{rel}:{call.lineno}")
    assert found >= 2  # training/checkpoint.py and models/visual.py at least: the scan does see them
    assert not offenders, f"torch.load without weights_only=True: {offenders}"
    # the scan itself flags a call without it
    assert len(list(_torch_load_calls(ast.parse("torch.load(p)")))) == 1


@pytest.mark.parametrize(("head", "cls_num", "expected_text"), [
    ("sum", 3, ("arch_classifier=concat", "arch_classifier=sum")),
    ("concat", 5, ("cls_num=3", "cls_num=5")),
])
def test_loading_a_checkpoint_of_another_head_or_class_count_names_both(
        tmp_path: Path, head: str, cls_num: int, expected_text: tuple[str, str]) -> None:
    save_checkpoint(tmp_path, _tiny_model(), "best", _meta(), 0)
    other = _tiny_model(head, cls_num)
    with pytest.raises(CheckpointError) as exc:
        load_checkpoint(tmp_path, other, "best", _meta(head, cls_num))
    message = str(exc.value)
    assert all(text in message for text in expected_text), message
    assert "classifier_best.pth" in message
    with pytest.raises(CheckpointError) as exc:
        load_module(other.net_classifier, tmp_path / "classifier_best.pth", _meta(head, cls_num))
    assert all(text in str(exc.value) for text in expected_text), str(exc.value)


def test_loading_an_encoder_of_another_architecture_names_both(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _tiny_model(), "best", _meta(), 0)
    wide = build_model("smallcnn", "anet", "concat", 3, frame_dim=16, sound_dim=32)
    meta = dict(_meta(), sound_dim=32)
    with pytest.raises(CheckpointError, match=r"sound_best\.pth.*sound_dim=16.*sound_dim=32"):
        load_checkpoint(tmp_path, wide, "best", meta)
    # a bare state dict (no meta) of the wrong shape still fails as a CheckpointError naming the file
    torch.save(wide.net_sound.state_dict(), tmp_path / "bare.pth")
    with pytest.raises(CheckpointError, match=r"bare\.pth does not fit ANet.*size mismatch"):
        load_module(_tiny_model().net_sound, tmp_path / "bare.pth")


def test_a_checkpoint_with_a_nan_weight_is_refused_naming_the_file_and_the_tensor(tmp_path: Path) -> None:
    model = _tiny_model()
    with torch.no_grad():
        model.net_classifier.fc.weight[0, 0] = float("nan")
    torch.save(model.net_classifier.state_dict(), tmp_path / "classifier_nan.pth")
    with pytest.raises(CheckpointError, match=r"classifier_nan\.pth: non-finite values .* in fc\.weight"):
        load_module(_tiny_model().net_classifier, tmp_path / "classifier_nan.pth")


def test_weights_classifier_of_another_class_count_stops_main_with_a_clear_message(
        data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_checkpoint(tmp_path / "five", _tiny_model(cls_num=5), "best", _meta(cls_num=5), 4)
    path = tmp_path / "five" / "classifier_best.pth"
    with pytest.raises(SystemExit) as exc:
        train(data_root, tmp_path / "runs", "--weights_classifier", str(path), epochs=1)
    message = str(exc.value)
    assert message.startswith("error: ") and str(path) in message
    assert "cls_num=5" in message and "cls_num=3" in message, message
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.pth"))


def test_weights_of_matching_modules_initialise_the_model(data_root: Path, straight_run: Path, tmp_path: Path) -> None:
    """--weights_frame / --weights_sound / --weights_classifier load into create_model's model; an encoder
    from a unimodal run (another head) fits the encoder of an audio-visual model."""
    argv = flags(data_root, tmp_path, "--weights_frame", str(straight_run / "frame_best.pth"),
                 "--weights_sound", str(straight_run / "sound_best.pth"),
                 "--weights_classifier", str(straight_run / "classifier_best.pth"))
    model = engine.create_model(main_attack.parse_args(argv), engine.DistInfo())
    assert_same_weights({f"{m}.{k}": v for m in ("frame", "sound", "classifier")
                         for k, v in getattr(model, f"net_{m}").state_dict().items()}, weights(straight_run, "best"))

    visual_only = tmp_path / "visual_only"
    torch.manual_seed(3)
    unimodal = build_model("smallcnn", "anet", "visual", 3, frame_dim=16)
    save_checkpoint(visual_only, unimodal, "best", _meta("visual"), 0)
    argv = flags(data_root, tmp_path, "--weights_frame", str(visual_only / "frame_best.pth"))
    model = engine.create_model(main_attack.parse_args(argv), engine.DistInfo())
    assert_same_weights(model.net_frame.state_dict(), unimodal.net_frame.state_dict())
    # a frame checkpoint given as the sound weights does not fit
    argv = flags(data_root, tmp_path, "--weights_sound", str(straight_run / "frame_best.pth"))
    with pytest.raises(CheckpointError, match="frame_best.pth does not fit ANet"):
        engine.create_model(main_attack.parse_args(argv), engine.DistInfo())


# ----------------------------------------------------------------------------------- non-finite loss

def test_a_non_finite_loss_stops_the_run_naming_the_step_and_the_samples(
        data_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poisoned = "cat_b/v2"
    original = AVDataset.__getitem__

    def getitem(self, index):
        item = original(self, index)
        if self.train and item["info"] == poisoned:
            item["audio"] = torch.full_like(item["audio"], float("nan"))
        return item

    monkeypatch.setattr(AVDataset, "__getitem__", getitem)
    argv = flags(data_root, tmp_path, "--mode", "train")
    args = main_attack.parse_args(argv)
    # the batches of epoch 0, as the training loader draws them
    dataset = engine.build_dataset(args, "train")
    sampler = DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=True, seed=SEED)
    sampler.set_epoch(0)
    order = list(sampler)
    batches = [order[i:i + 4] for i in range(0, len(order), 4)]
    step = next(i for i, b in enumerate(batches) if poisoned in [dataset.rows[j].info for j in b])
    ids = [dataset.rows[j].info for j in batches[step]]

    with pytest.raises(FloatingPointError) as exc:
        main_attack.main(argv)
    message = str(exc.value)
    assert re.search(rf"\bepoch 0 step {step}\b", message), message
    assert all(i in message for i in ids), message
    others = [r.info for r in dataset.rows if r.info not in ids]
    assert not any(re.search(rf"{re.escape(o)}\b", message) for o in others), message
    assert not list(tmp_path.rglob("*.pth"))  # stopped before any checkpoint of epoch 0


# ------------------------------------------------------------------------------------------ evaluation

def test_eval_loads_best_and_writes_metrics_matching_a_recount(data_root: Path, straight_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    # a copy of the run whose 'latest' files are gone: eval must read 'best'
    ckpt = tmp_path / "ckpt"
    shutil.copytree(straight_run, ckpt / straight_run.name)
    run = ckpt / straight_run.name
    for path in run.glob("*_latest.pth"):
        path.unlink()
    capsys.readouterr()
    main_attack.main(flags(data_root, ckpt, "--mode", "eval", "--attack_type", "none"))
    out = capsys.readouterr().out

    metrics = json.loads((run / "metrics.json").read_text())
    assert {"run", "epoch", "test_loss", "test_acc", "num_samples", "per_class_acc"} <= metrics.keys()
    assert metrics["run"] == run.name and metrics["epoch"] == load(run / "frame_best.pth")["epoch"]
    assert list(metrics["per_class_acc"]) == list(CLASSES)

    # recount by hand: the best weights, the test split in eval mode, one sample at a time
    model = build_model("smallcnn", "anet", "concat", 3, frame_dim=16, sound_dim=16).eval()
    for module in ("frame", "sound", "classifier"):
        getattr(model, f"net_{module}").load_state_dict(load(run / f"{module}_best.pth")["state_dict"])
    args = main_attack.parse_args(flags(data_root, ckpt, "--mode", "eval"))
    dataset = engine.build_dataset(args, "test")
    correct, total, loss = np.zeros(3), np.zeros(3), 0.0
    with torch.no_grad():
        for i in range(len(dataset)):
            item = dataset[i]
            logits = model(frames_to_float(item["frames"])[None], item["audio"][None]).logits
            label = int(item["label"])
            loss += F.cross_entropy(logits, item["label"][None]).item()
            total[label] += 1
            correct[label] += int(logits.argmax(1).item() == label)
    assert metrics["num_samples"] == len(dataset) == 3 * PER_CLASS
    assert metrics["test_acc"] == pytest.approx(100 * correct.sum() / total.sum())
    assert list(metrics["per_class_acc"].values()) == pytest.approx(list(100 * correct / total))
    assert metrics["test_loss"] == pytest.approx(loss / len(dataset), rel=1e-4)
    assert f"clean test accuracy {metrics['test_acc']:.2f}%" in out
    for cls, acc in metrics["per_class_acc"].items():
        assert re.search(rf"{cls}\s+{acc:6.2f}", out), out


def test_eval_of_a_missing_run_fails_clearly(data_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main_attack.main(flags(data_root, tmp_path, "--mode", "eval", "--attack_type", "none"))
    assert "frame_best.pth" in str(exc.value) and "not found" in str(exc.value)


# -------------------------------------------------------------------------------------------- DDP (CPU)

def test_ddp_two_processes_match_one_process_on_the_same_global_batch(data_root: Path, tmp_path: Path) -> None:
    """torchrun with 2 gloo ranks x batch 2 trains the same weights as 1 process x batch 4 (BN frozen:
    per-rank BatchNorm statistics differ by design on the CPU)."""
    epochs = 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    ddp_argv = [*model_flags(batch=2), "--data_root", str(data_root), "--ckpt", str(tmp_path / "ddp"),
                "--num_epoch", str(epochs), "--freeze_bn", "--mode", "train", "--num_gpus", "2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main_attack.py"), *ddp_argv]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]

    single = train(data_root, tmp_path / "single", "--freeze_bn", epochs=epochs)
    ddp = run_dir(ddp_argv)
    assert ddp.name == single.name
    assert_same_weights(weights(ddp), weights(single), atol=1e-6)  # observed: < 1e-8
    h_ddp, h_single = history(ddp), history(single)
    assert [r["val_acc"] for r in h_ddp] == [r["val_acc"] for r in h_single]
    np.testing.assert_allclose([r["train_loss"] for r in h_ddp], [r["train_loss"] for r in h_single], rtol=1e-5)
    np.testing.assert_allclose([r["train_acc"] for r in h_ddp], [r["train_acc"] for r in h_single], rtol=1e-9)
    # frozen BN: the running statistics never moved from their initial values
    for run in (ddp, single):
        stats = weights(run)
        means = [v for k, v in stats.items() if k.endswith("running_mean")]
        variances = [v for k, v in stats.items() if k.endswith("running_var")]
        assert means and all(torch.equal(m, torch.zeros_like(m)) for m in means)
        assert all(torch.equal(v, torch.ones_like(v)) for v in variances)


# ------------------------------------------------------------------------- evaluation takes no --weights_*

@pytest.mark.parametrize(("entry_point", "extra"), [
    (main_attack, ["--mode", "eval"]),
    (main_defense, ["--mode", "eval"]),
    (main_defense, ["--mode", "build_bank"]),
    (main_localization, ["--arch_classifier", "loc"]),  # its only mode: eval
], ids=["attack-eval", "defense-eval", "defense-build_bank", "localization"])
def test_evaluation_modes_reject_initial_weights_naming_the_best_checkpoint(
        data_root: Path, tmp_path: Path, entry_point, extra: list[str]) -> None:
    argv = flags(data_root, tmp_path, *extra, "--weights_sound", str(tmp_path / "no_such.pth"))
    with pytest.raises(SystemExit) as exc:
        entry_point.main(argv)
    message = str(exc.value)
    mode = extra[1] if extra[0] == "--mode" else "eval"
    assert message.startswith(f"error: --weights_sound {tmp_path / 'no_such.pth'}: --mode {mode} loads the run's "
                              "best checkpoint"), message
    run = Path(entry_point.parse_args(argv).ckpt) / entry_point.parse_args(argv).id
    assert str(run) in message and "--mode train only" in message
    assert not list(tmp_path.iterdir())  # stopped before any work


# -------------------------------------------------------------------------------- objectives: precision

class Recorder(torch.nn.Module):
    """Wraps a model as DDP does (``.module``, which the objectives attack): records the inputs of every
    training forward pass and whether autocast was on in it."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.calls: list[tuple[torch.Tensor, torch.Tensor, bool]] = []

    def forward(self, frames: torch.Tensor, audio: torch.Tensor):
        self.calls.append((frames.detach().clone(), audio.detach().clone(), torch.is_autocast_enabled("cpu")))
        return self.module(frames, audio)


def _tiny_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    frames = torch.rand(4, 3, 1, 32, 32, generator=generator)
    audio = torch.rand(4, 1, 2048, generator=generator) * 1.6 - 0.8
    return frames, audio, torch.tensor([0, 1, 2, 0])


def _run_objective(objective, autocast=full_precision, freeze_bn: bool = False):
    """One call of ``objective`` on a freshly seeded tiny model in train mode; returns (recorder, loss, model)."""
    torch.manual_seed(0)
    model = _tiny_model()
    engine.set_train_mode(model, freeze_bn)
    recorder = Recorder(model)
    loss, _ = objective(recorder, *_tiny_batch(), autocast)
    return recorder, loss, model


OBJECTIVES = {
    "adv": lambda eps: PGDAdversarialTraining(eps, steps=3, eps_units="pixel"),
    "trades": lambda eps: Trades(eps, steps=3, eps_units="pixel", beta=6.0),
}


@pytest.mark.parametrize("mode", OBJECTIVES)
def test_amp_covers_the_training_forward_and_leaves_the_inner_attack_in_fp32(mode: str) -> None:
    """With a bf16 autocast for the training forward (what --amp does in fp16 on CUDA) the adversarial examples
    are those of the float32 run: the inner maximisation runs outside autocast."""
    objective = OBJECTIVES[mode]({"visual": 0.05, "audio": 0.05})
    fp32, fp32_loss, _ = _run_objective(objective)
    bf16, bf16_loss, _ = _run_objective(objective, lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert [on for *_, on in fp32.calls] == [False] * len(fp32.calls)
    assert [on for *_, on in bf16.calls] == [True] * len(bf16.calls)  # the training forward is autocast
    assert len(fp32.calls) == len(bf16.calls) == (1 if mode == "adv" else 2)
    for (frames32, audio32, _), (frames16, audio16, _) in zip(fp32.calls, bf16.calls):
        assert torch.equal(frames16, frames32) and torch.equal(audio16, audio32)
    clean_frames, clean_audio, _ = _tiny_batch()
    adv_frames, adv_audio, _ = fp32.calls[-1]
    assert not torch.equal(adv_frames, clean_frames) and not torch.equal(adv_audio, clean_audio)
    assert torch.isfinite(bf16_loss) and bf16_loss.dtype == torch.float32
    assert bf16_loss.item() != fp32_loss.item()  # the bf16 forward did run in bf16


def test_trades_keeps_batchnorm_frozen_by_freeze_bn() -> None:
    """TRADES' clean target is computed in eval mode; afterwards each module is back in its own mode."""
    recorder, _, model = _run_objective(OBJECTIVES["trades"]({"visual": 0.05, "audio": 0.05}), freeze_bn=True)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert all(torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    assert model.net_classifier.training and len(recorder.calls) == 2


# ------------------------------------------------------------------- objectives: one attacked modality

@pytest.mark.parametrize("mode", OBJECTIVES)
@pytest.mark.parametrize("attacked", ["visual", "audio"])
def test_one_modality_budget_perturbs_only_that_modality(mode: str, attacked: str) -> None:
    eps = 0.05
    budgets = {"visual": 0.0, "audio": 0.0, attacked: eps}
    recorder, loss, _ = _run_objective(OBJECTIVES[mode](budgets))
    clean = dict(zip(("visual", "audio"), _tiny_batch()[:2]))
    adv = dict(zip(("visual", "audio"), recorder.calls[-1][:2]))
    other = "audio" if attacked == "visual" else "visual"
    assert torch.equal(adv[other], clean[other])
    assert not torch.equal(adv[attacked], clean[attacked])
    assert (adv[attacked] - clean[attacked]).abs().max().item() <= eps + 1e-6
    assert torch.isfinite(loss)


@pytest.mark.parametrize("mode", ["adv", "trades"])
@pytest.mark.parametrize("train_eps", [("0.012", "0"), ("0", "0.012")], ids=["visual-only", "audio-only"])
def test_main_defense_trains_with_a_budget_on_one_modality(data_root: Path, tmp_path: Path, mode: str,
                                                           train_eps: tuple[str, str]) -> None:
    argv = ["--mode", "train", "--train_mode", mode, "--train_eps", *train_eps, "--train_attack_steps", "1",
            *flags(data_root, tmp_path, epochs=1)]
    main_defense.main(argv)
    args = main_defense.parse_args(argv)
    hist = history(Path(args.ckpt) / args.id)
    assert len(hist) == 1 and np.isfinite(hist[0]["train_loss"]) and np.isfinite(hist[0]["val_loss"])


# ------------------------------------------------------------------------------------- channels-last input

@pytest.mark.parametrize("encoder", [lambda: SmallCNNFrame(dim=16), ResNet18Frame], ids=["smallcnn", "resnet18"])
def test_frame_encoder_gives_channels_last_convolutions_a_channels_last_input(encoder) -> None:
    torch.manual_seed(0)
    net = encoder().eval()
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first_conv.register_forward_pre_hook(
        lambda _m, inputs: seen.append(inputs[0].is_contiguous(memory_format=torch.channels_last)))
    frames = torch.rand(2, 3, 2, 32, 32)
    with torch.no_grad():
        feat, fmap = net(frames)
        net.to(memory_format=torch.channels_last)
        feat_cl, fmap_cl = net(frames)
    assert seen == [False, True]
    torch.testing.assert_close(feat_cl, feat, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fmap_cl, fmap, rtol=1e-4, atol=1e-5)
