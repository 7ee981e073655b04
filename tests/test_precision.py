"""utils/precision.py and the training loop's use of it: --amp_dtype per device, the GradScaler only for float16,
cuDNN and determinism flags as documented, channels-last, a bf16 training step on the CPU, the float32 step equal
to the plain host-summed loop it replaced, no per-step host reads, --compile's wiring and the run identity."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import main_attack
import main_defense
from models import build_model
from tests.sop_fixture import make_root
from training import engine
from training.objectives import CrossEntropy
from training.run import TRAINING_FLAGS, disagreements
from utils.distributed import DistInfo
from utils.precision import (
    Precision,
    PrecisionError,
    autocast_off,
    configure_backends,
    resolve_amp_dtype,
    training_precision,
    use_channels_last,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
CLASSES = 3

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def restore_backends():
    """configure_backends sets process-wide state: put it back after the test."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[0], saved[1]
    torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
    if saved[4] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


# ------------------------------------------------------------------------------------------------ dtype


@pytest.mark.parametrize("native,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_is_bfloat16_on_gpus_that_compute_it_natively_else_float16(monkeypatch: pytest.MonkeyPatch,
                                                                        native: bool, expected: torch.dtype) -> None:
    asked = []

    def supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", supported)
    assert resolve_amp_dtype("auto", CUDA) == expected
    assert asked == [False]  # emulated bfloat16 is slower than float16: it must not count
    assert resolve_amp_dtype("float16", CUDA) == torch.float16
    assert resolve_amp_dtype("bfloat16", CUDA) == torch.bfloat16


def test_the_cpu_autocasts_to_bfloat16_and_refuses_float16_naming_the_flag() -> None:
    assert resolve_amp_dtype("auto", CPU) == torch.bfloat16
    assert resolve_amp_dtype("bfloat16", CPU) == torch.bfloat16
    with pytest.raises(PrecisionError, match="--amp_dtype float16 .*CPU.*bfloat16"):
        resolve_amp_dtype("float16", CPU)
    assert training_precision(False, "float16", CPU).dtype is None  # without --amp the dtype is not used


def test_a_grad_scaler_for_float16_only() -> None:
    assert not training_precision(True, "bfloat16", CPU).scaler().is_enabled()
    assert not training_precision(False, "auto", CPU).scaler().is_enabled()
    assert Precision("cpu", torch.float16).scaler().is_enabled()


def test_autocast_of_each_precision_and_autocast_off_inside_it() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 2)
    with Precision("cpu").autocast():
        assert (a @ b).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    with training_precision(True, "auto", CPU).autocast():
        assert (a @ b).dtype == torch.bfloat16
        with autocast_off("cpu"):
            assert (a @ b).dtype == torch.float32
    assert Precision("cpu").name == "float32" and Precision("cpu", torch.bfloat16).name == "bfloat16 autocast"


# ------------------------------------------------------------------------------------------ cuDNN, layout


def test_cudnn_benchmark_auto_is_on_for_training_and_off_for_evaluation(restore_backends) -> None:
    assert configure_backends("auto", False, training=True).cudnn_benchmark and torch.backends.cudnn.benchmark
    assert not configure_backends("auto", False, training=False).cudnn_benchmark
    assert not torch.backends.cudnn.benchmark
    assert configure_backends("on", False, training=False).cudnn_benchmark and torch.backends.cudnn.benchmark
    assert not configure_backends("off", False, training=True).cudnn_benchmark
    assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()


def test_deterministic_sets_cudnn_torch_and_cublas_and_refuses_benchmarking(restore_backends,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    settings = configure_backends("auto", True, training=True)
    assert settings.deterministic and not settings.cudnn_benchmark
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own setting stays
    configure_backends("off", True, training=False)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    with pytest.raises(PrecisionError, match="--deterministic and --cudnn_benchmark on"):
        configure_backends("on", True, training=True)


def test_channels_last_auto_is_for_cuda_models_with_2d_convolutions() -> None:
    av = build_model("smallcnn", "anet", "concat", cls_num=CLASSES, frame_dim=8, sound_dim=8)
    audio_only = build_model("smallcnn", "anet", "audio", cls_num=CLASSES, sound_dim=8)
    assert use_channels_last("auto", CUDA, av) and not use_channels_last("auto", CPU, av)
    assert not use_channels_last("auto", CUDA, audio_only)  # anet's convolutions are 1-D
    assert use_channels_last("on", CPU, av) and not use_channels_last("off", CUDA, av)


def test_create_model_follows_the_channels_last_flag() -> None:
    def first_conv_is_channels_last(value: str) -> bool:
        args = main_attack.parse_args(["--dataset", "MUSIC", "--arch_frame", "smallcnn", "--frame_dim", "8",
                                       "--sound_dim", "8", "--device", "cpu", "--channels_last", value])
        model = engine.create_model(args, DistInfo())
        conv = next(m for m in model.net_frame.modules() if isinstance(m, nn.Conv2d))
        return conv.weight.is_contiguous(memory_format=torch.channels_last) and conv.weight.shape[-1] > 1

    assert first_conv_is_channels_last("on") and not first_conv_is_channels_last("auto")


@pytest.mark.parametrize("argv,message", [
    (["--amp_dtype", "bfloat16"], "--amp_dtype bfloat16 sets the dtype of --amp"),
    (["--deterministic", "--cudnn_benchmark", "on"], "--deterministic and --cudnn_benchmark on"),
    (["--compile", "--mode", "eval"], "--compile compiles the model for training"),
])
def test_precision_flags_that_do_not_fit_stop_the_parser(argv: list[str], message: str,
                                                         capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--dataset", "MUSIC", *argv])
    assert message in capsys.readouterr().err


def test_precision_is_part_of_the_training_identity_and_speed_flags_are_not() -> None:
    args = argparse.Namespace(amp=True, amp_dtype="bfloat16", cudnn_benchmark="on", compile=True)
    assert disagreements({"amp": False, "amp_dtype": "auto"}, args, TRAINING_FLAGS) == [
        "--amp True (the run: False)", "--amp_dtype bfloat16 (the run: auto)"]
    assert disagreements({"amp": True}, args, TRAINING_FLAGS) == []  # a run of an earlier version: no amp_dtype
    assert not {"cudnn_benchmark", "deterministic", "channels_last", "compile"} & set(TRAINING_FLAGS)


# --------------------------------------------------------------------------------------------- training


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", "anet", "concat", cls_num=CLASSES, frame_dim=8, sound_dim=8)


def batches(steps: int, size: int = 4) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"frames": torch.rand(size, 3, 1, 32, 32, generator=generator),
             "audio": torch.rand(size, 1, 2048, generator=generator) * 2 - 1,
             "label": torch.randint(CLASSES, (size,), generator=generator),
             "info": [f"c/{step}-{i}" for i in range(size)]} for step in range(steps)]


def train_args(**changes) -> argparse.Namespace:
    return argparse.Namespace(**{"freeze_bn": False, "amp": False, "amp_dtype": "auto", "disp_iter": 100,
                                 **changes})


def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)


def run_epoch(model: nn.Module, loader: list[dict], args: argparse.Namespace) -> dict[str, float]:
    precision = engine.run_precision(args, DistInfo())
    return engine.train_one_epoch(model, loader, sgd(model), precision.scaler(), 0, args, DistInfo(), None,
                                  CrossEntropy())


def test_a_bf16_step_on_the_cpu_trains_in_bfloat16_with_a_finite_loss() -> None:
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    dtypes = []
    model.net_sound.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    record = run_epoch(model, batches(2), train_args(amp=True, amp_dtype="bfloat16"))
    assert math.isfinite(record["train_loss"]) and 0 <= record["train_acc"] <= 100
    assert set(dtypes) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in fp32
    changed = [not torch.equal(a, b) for a, b in zip(before, model.parameters())]
    assert sum(changed) > len(changed) // 2


def test_the_float32_epoch_equals_the_host_summed_loop_it_replaced() -> None:
    """The same steps written as before (loss.item() and the accuracy summed on the host each step): identical
    weights and identical epoch figures; the bf16 epoch differs from both."""
    loader = batches(3)
    model = tiny_model()
    record = run_epoch(model, loader, train_args())

    reference = tiny_model()
    reference.train()
    optimizer = sgd(reference)
    loss_sum = acc_sum = cos_sum = 0.0
    count = 0
    for batch in loader:
        out = reference(batch["frames"], batch["audio"])
        loss = F.cross_entropy(out.logits.float(), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = batch["label"].numel()
        loss_sum += loss.item() * n
        acc_sum += (out.logits.argmax(1) == batch["label"]).float().mean().item() * 100 * n
        cos_sum += F.cosine_similarity(out.feat_v.detach(), out.feat_a.detach(), dim=1).mean().item() * n
        count += n
    assert record == {"train_loss": loss_sum / count, "train_acc": acc_sum / count, "train_cos": cos_sum / count}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values()))

    bf16 = tiny_model()
    run_epoch(bf16, loader, train_args(amp=True))
    assert not all(torch.equal(a, b) for a, b in zip(bf16.state_dict().values(), model.state_dict().values()))


def test_host_reads_do_not_grow_with_the_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    for method in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, method)

        def counted(self, *a, _original=original, **k):
            reads.append(1)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, method, counted)
    counts = []
    for steps in (2, 6):
        reads.clear()
        run_epoch(tiny_model(), batches(steps), train_args())
        counts.append(len(reads))
    monkeypatch.undo()
    assert counts[0] == counts[1] <= 4, counts  # the step-0 progress line and the epoch's end


def test_a_non_finite_loss_is_reported_at_the_check_naming_its_first_step_and_samples() -> None:
    watch = engine.NonFiniteWatch(CPU)
    watch.update(torch.tensor(1.0), 0, ["a/0", "a/1"])
    watch.check(epoch=2, info=DistInfo())  # all finite so far
    for step, value in ((1, 0.5), (2, float("nan")), (3, float("inf"))):
        watch.update(torch.tensor(value), step, [f"b/{step}"])
    with pytest.raises(FloatingPointError, match=r"non-finite loss nan at epoch 2 step 2 .*batch samples: b/2$"):
        watch.check(epoch=2, info=DistInfo())


def test_compile_wraps_the_model_for_the_training_steps_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile itself takes minutes on this CPU: the wiring is checked with a stand-in that counts the
    forward passes it is given."""

    class Compiled(nn.Module):
        def __init__(self, module: nn.Module) -> None:
            super().__init__()
            self._orig_mod = module
            self.calls = 0

        def forward(self, *args):
            self.calls += 1
            return self._orig_mod(*args)

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(Compiled(module)) or compiled[-1])
    root = make_root(tmp_path / "root", classes=("a", "b", "c"), per_class=4)
    argv = ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(tmp_path / "ckpt"), "--mode", "train",
            "--arch_frame", "smallcnn", "--frame_dim", "8", "--sound_dim", "8", "--imgSize", "32", "--audLen", "2048",
            "--batch_size_per_gpu", "4", "--workers", "0", "--num_epoch", "1", "--lr_steps", "1", "--device", "cpu",
            "--compile", "--train_mode", "adv", "--train_attack_steps", "1"]
    main_defense.main(argv)
    steps = len(engine.build_dataset(main_defense.parse_args(argv), "train")) // 4
    assert len(compiled) == 1
    assert compiled[0].calls == steps  # one per training step: validation and the inner PGD run uncompiled
