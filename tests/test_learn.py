"""The CPU recipe: the poolcnn frame encoder (shapes, receptive field, gradients), AdamW and the cosine /
warm-up schedule, label smoothing, and their exact resumption."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main_attack
from models import build_model
from models.av_model import ModelOutput
from models.visual import PoolCNNFrame, SmallCNNFrame, receptive_field
from tests.sop_fixture import make_root
from training import engine
from training.checkpoint import load_train_state
from training.objectives import CrossEntropy

pytestmark = pytest.mark.usefixtures("one_thread")
MIN_RECEPTIVE_FIELD = 70  # px: the largest objects of a 112-px frame of the shapes dataset (dataset.generators.shapes)


def empirical_receptive_field(net: nn.Module, size: int = 224) -> int:
    """Width of the input region that reaches the centre unit of the feature map, measured by backprop through
    a copy whose max-pools are average pools and whose weights are positive (so no path is cut off)."""
    net = copy.deepcopy(net).eval()
    for module in list(net.modules()):
        for child_name, child in module.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(module, child_name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding))
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.abs_()
    frames = torch.ones(1, 3, 1, size, size, requires_grad=True)
    fmap = net(frames)[1]
    fmap[0, :, fmap.shape[2] // 2, fmap.shape[3] // 2].sum().backward()
    columns = frames.grad[0, :, 0].abs().sum(dim=(0, 1)).nonzero()
    return int(columns.max() - columns.min() + 1)


@pytest.mark.parametrize("cls", [SmallCNNFrame, PoolCNNFrame])
def test_receptive_field_walk_matches_the_measured_one(cls: type) -> None:
    net = cls(dim=16)
    assert receptive_field(net) == empirical_receptive_field(net)


def test_poolcnn_sees_typical_objects_and_smallcnn_does_not() -> None:
    assert receptive_field(PoolCNNFrame(dim=16)) >= MIN_RECEPTIVE_FIELD > receptive_field(SmallCNNFrame(dim=16))


@pytest.mark.parametrize("head", ["visual", "concat", "loc", "attention"])
def test_poolcnn_gives_the_same_output_pieces_as_smallcnn(head: str) -> None:
    torch.manual_seed(0)
    frames, audio = torch.rand(2, 3, 1, 64, 64), torch.rand(2, 1, 2048) * 2 - 1
    outs = {arch: build_model(arch, "anet", head, cls_num=3, frame_dim=16, sound_dim=16).eval()(frames, audio)
            for arch in ("smallcnn", "poolcnn")}
    assert isinstance(outs["poolcnn"], ModelOutput)
    for field in ("logits", "feat_v", "fmap_v", "feat_a"):
        small, pool = getattr(outs["smallcnn"], field), getattr(outs["poolcnn"], field)
        assert (small is None) == (pool is None), field
        if small is not None:
            assert small.shape == pool.shape, field


def test_poolcnn_gradients_reach_the_raw_pixels() -> None:
    torch.manual_seed(0)
    model = build_model("poolcnn", "anet", "concat", cls_num=3, frame_dim=16, sound_dim=16).eval()
    frames = torch.rand(2, 3, 1, 64, 64, requires_grad=True)
    F.cross_entropy(model(frames, torch.zeros(2, 1, 2048)).logits, torch.tensor([0, 2])).backward()
    assert torch.isfinite(frames.grad).all() and frames.grad.abs().sum() > 0


# ------------------------------------------------------------------------------ optimiser and schedule


def _args(*argv: str):
    return main_attack.parse_args(["--dataset", "synthetic", "--categories", "a", "b", "c", "--arch_frame",
                                   "smallcnn", "--frame_dim", "16", "--sound_dim", "16", "--num_epoch", "10", *argv])


def test_adamw_keeps_the_per_module_learning_rates_and_decoupled_decay() -> None:
    args = _args("--optimizer", "adamw", "--lr_frame", "0.003", "--lr_sound", "0.002", "--lr_classifier",
                       "0.001", "--weight_decay", "0.05")
    model = build_model("smallcnn", "anet", "concat", cls_num=3, frame_dim=16, sound_dim=16)
    optimizer = engine.build_optimizer(model, args)
    assert isinstance(optimizer, torch.optim.AdamW)
    assert [g["lr"] for g in optimizer.param_groups] == [0.003, 0.002, 0.001]
    assert all(g["weight_decay"] == 0.05 for g in optimizer.param_groups)
    assert isinstance(engine.build_optimizer(model, _args()), torch.optim.SGD)


def _lrs(args) -> list[float]:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = engine.build_scheduler(optimizer, args)
    lrs = []
    for _ in range(args.num_epoch):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_warmup_rises_to_the_base_rate_then_cosine_decays_towards_zero() -> None:
    lrs = _lrs(_args("--lr_schedule", "cosine", "--warmup_epochs", "3"))
    assert lrs[:4] == sorted(lrs[:4]) and lrs[0] < 0.5 and lrs[3] == 1.0
    assert all(a > b for a, b in zip(lrs[3:], lrs[4:])) and 0 < lrs[-1] < 0.05
    decay = lrs[3:]  # symmetric about the middle of the decay: 1 - f(t) == f(T - t) for a half cosine
    assert all(abs((1 - decay[i]) - (decay[len(decay) - i] if i else 0.0)) < 1e-9 for i in range(1, len(decay)))


def test_step_schedule_with_warmup_keeps_the_paper_steps() -> None:
    step = _lrs(_args("--lr_steps", "6", "8"))
    warm = _lrs(_args("--lr_steps", "6", "8", "--warmup_epochs", "2"))
    assert warm[2:] == pytest.approx(step[2:]) and warm[0] < warm[1] < step[1]
    assert step[5] / step[6] == pytest.approx(10) and step[7] / step[8] == pytest.approx(10)


def test_label_smoothing_penalises_confident_correct_logits() -> None:
    out = ModelOutput(logits=torch.tensor([[20.0, 0.0, 0.0]]), feat_v=None, feat_a=None, fmap_v=None)
    plain, smooth = CrossEntropy(), CrossEntropy()
    smooth.label_smoothing = 0.1
    labels = torch.tensor([0])
    assert plain.loss(out, labels) < 1e-6 < 1.0 < smooth.loss(out, labels)


def test_bad_optimisation_flags_are_rejected(capsys: pytest.CaptureFixture) -> None:
    for argv, message in ((["--label_smoothing", "1"], "--label_smoothing"),
                          (["--warmup_epochs", "10"], "--warmup_epochs 10 must be fewer")):
        with pytest.raises(SystemExit):
            _args(*argv)
        assert message in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ resume


RECIPE = ["--optimizer", "adamw", "--lr_schedule", "cosine", "--warmup_epochs", "1", "--label_smoothing", "0.1",
          "--lr_frame", "0.003", "--lr_sound", "0.003", "--lr_classifier", "0.003", "--weight_decay", "0.01"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_root(tmp_path_factory.mktemp("sop"), per_class=2, num_frames=4)


def _train(root: Path, ckpt: Path, *extra: str) -> Path:
    argv = ["--mode", "train", "--dataset", "custom", "--data_root", str(root), "--ckpt", str(ckpt),
            "--arch_frame", "poolcnn", "--frame_dim", "16", "--arch_sound", "mel", "--sound_dim", "16",
            "--stft_frame", "254", "--stft_hop", "64", "--imgSize", "32", "--audLen", "2048",
            "--batch_size_per_gpu", "3", "--workers", "0", "--num_epoch", "2", "--seed", "3", "--device", "cpu",
            *RECIPE, *extra]
    main_attack.main(argv)
    args = main_attack.parse_args(argv)
    return Path(args.ckpt) / args.id


def _stop_at_epoch(at: int):
    original = engine.train_one_epoch

    def train_one_epoch(model, loader, optimizer, scaler, epoch, *rest):
        if epoch == at:
            raise KeyboardInterrupt
        return original(model, loader, optimizer, scaler, epoch, *rest)

    return train_one_epoch


def _module_states(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for module in ("frame", "sound", "classifier"):
        state = torch.load(run / f"{module}_latest.pth", map_location="cpu", weights_only=True)["state_dict"]
        out.update({f"{module}.{k}": v for k, v in state.items()})
    return out


def test_adamw_cosine_warmup_run_resumes_bit_exactly(data_root: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    straight = _train(data_root, tmp_path / "straight")
    monkeypatch.setattr(engine, "train_one_epoch", _stop_at_epoch(1))
    with pytest.raises(KeyboardInterrupt):
        _train(data_root, tmp_path / "resumed")
    monkeypatch.undo()
    resumed = _train(data_root, tmp_path / "resumed", "--resume")

    saved = json.loads((resumed / "args.json").read_text())
    assert {k: saved[k] for k in ("optimizer", "lr_schedule", "warmup_epochs", "label_smoothing")} == \
        {"optimizer": "adamw", "lr_schedule": "cosine", "warmup_epochs": 1, "label_smoothing": 0.1}
    a, b = _module_states(straight), _module_states(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state_a, state_b = load_train_state(straight), load_train_state(resumed)
    assert state_a["scheduler"] == state_b["scheduler"]
    assert state_a["optimizer"]["param_groups"] == state_b["optimizer"]["param_groups"]
    for key, slots in state_a["optimizer"]["state"].items():
        assert set(slots) == {"step", "exp_avg", "exp_avg_sq"}
        assert all(torch.equal(value, state_b["optimizer"]["state"][key][name]) for name, value in slots.items())
    # the warm-up epoch trained at half the rate of the second
    lrs = [record["lr_classifier"] for record in json.loads((straight / "history.json").read_text())]
    assert lrs == pytest.approx([0.0015, 0.003])


def test_resume_with_other_optimisation_flags_fails_clearly(data_root: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    _train(data_root, tmp_path)
    with pytest.raises(SystemExit) as exc:
        _train(data_root, tmp_path, "--resume", "--label_smoothing", "0.2")
    assert "--label_smoothing 0.1 -> 0.2" in str(exc.value) + capsys.readouterr().err


def test_pgd_on_a_poolcnn_model_stays_in_its_budget_and_moves_the_loss() -> None:
    from attacks import ThreatModel, build_attack

    torch.manual_seed(0)
    model = build_model("poolcnn", "mel", "concat", cls_num=3, frame_dim=16, sound_dim=16, stft_frame=254,
                        stft_hop=64).eval()
    frames, audio = torch.rand(4, 3, 1, 64, 64), torch.rand(4, 1, 2048) * 2 - 1
    labels = model(frames, audio).logits.argmax(1)
    eps = {"visual": 8 / 255, "audio": 0.01}
    adv_frames, adv_audio = build_attack("pgd", model, ThreatModel.of(eps, units="pixel"),
                                         steps=3)(frames, audio, labels)
    assert (adv_frames - frames).abs().max() <= eps["visual"] + 1e-6 and 0 <= adv_frames.min() <= adv_frames.max() <= 1
    assert (adv_audio - audio).abs().max() <= eps["audio"] + 1e-6 and adv_audio.abs().max() <= 1
    with torch.no_grad():
        clean = F.cross_entropy(model(frames, audio).logits, labels)
        attacked = F.cross_entropy(model(adv_frames, adv_audio).logits, labels)
    assert attacked > clean
