"""utils/distributed.py and the flags the entry points check against the launch.

NCCL takes CUDA tensors only, so every reduction must hand the process group a tensor on
``DistInfo.device``. Without a GPU the collective is replaced by a fake that records what it is given,
and ``DistInfo.device`` is the ``meta`` device: any tensor left on the CPU shows.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import main_attack
from utils import distributed
from utils.distributed import DistInfo, all_reduce_sum
from utils.meters import ConfusionCounter

REPO = Path(__file__).resolve().parents[1]
ON_META = DistInfo(rank=0, world_size=2, device=torch.device("meta"))
ON_CPU = DistInfo(rank=0, world_size=2, device=torch.device("cpu"))


class _Collective(Exception):
    """Raised by the fake collective once it has seen its tensor (a meta tensor cannot be copied back)."""


class FakeGroup:
    """Stands in for an initialised 2-process group: records each all_reduce's device and either stops there
    (``stop``) or sums as two ranks holding the same values would."""

    def __init__(self, stop: bool) -> None:
        self.stop = stop
        self.devices: list[torch.device] = []

    def all_reduce(self, tensor: torch.Tensor, op=None, group=None, async_op=False) -> None:
        assert op == dist.ReduceOp.SUM
        self.devices.append(tensor.device)
        if self.stop:
            raise _Collective
        tensor.mul_(2)


@pytest.fixture
def fake_group(monkeypatch: pytest.MonkeyPatch):
    def install(stop: bool) -> FakeGroup:
        group = FakeGroup(stop)
        monkeypatch.setattr(dist, "all_reduce", group.all_reduce)
        monkeypatch.setattr(dist, "is_initialized", lambda: True)
        return group
    return install


# ------------------------------------------------------------------------------------------ reductions

@pytest.mark.parametrize("dtype", [torch.float64, torch.long])
def test_all_reduce_sum_hands_the_group_a_tensor_on_the_runs_device(fake_group, dtype: torch.dtype) -> None:
    group = fake_group(stop=True)
    totals = torch.tensor([1, 2, 3], dtype=dtype)  # what the training loop and the evaluation build: CPU
    with pytest.raises(_Collective):
        all_reduce_sum(totals, ON_META)
    assert group.devices == [torch.device("meta")]


def test_all_reduce_sum_returns_the_sum_on_the_callers_device_and_leaves_the_input(fake_group) -> None:
    group = fake_group(stop=False)
    totals = torch.tensor([1.5, 2.0], dtype=torch.float64)
    summed = all_reduce_sum(totals, ON_CPU)
    assert torch.equal(summed, torch.tensor([3.0, 4.0], dtype=torch.float64)) and summed.device == totals.device
    assert torch.equal(totals, torch.tensor([1.5, 2.0], dtype=torch.float64))
    assert group.devices == [torch.device("cpu")]


def test_all_reduce_sum_is_the_tensor_itself_in_one_process(fake_group) -> None:
    group = fake_group(stop=True)
    totals = torch.ones(3)
    assert all_reduce_sum(totals, DistInfo(device=torch.device("meta"))) is totals
    assert group.devices == []


def test_confusion_counter_reduces_on_the_runs_device_and_keeps_its_counts_on_the_cpu(fake_group) -> None:
    counter = ConfusionCounter(3)
    counter.update(torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 5.0, 0]]), torch.tensor([0, 1, 2]))
    group = fake_group(stop=True)
    with pytest.raises(_Collective):
        counter.all_reduce(ON_META)
    assert group.devices == [torch.device("meta")]

    group = fake_group(stop=False)
    counter.all_reduce(ON_CPU)
    assert counter.correct.tolist() == [2, 2, 0] and counter.total.tolist() == [2, 2, 2]
    assert counter.correct.device.type == "cpu" and counter.accuracy == pytest.approx(200 / 3)


def test_no_module_calls_a_tensor_collective_except_through_the_helpers() -> None:
    """Every caller reduces through utils/distributed.py, whose helpers move the tensor to DistInfo.device."""
    collectives = {"all_reduce", "reduce", "all_gather", "all_gather_into_tensor", "broadcast", "reduce_scatter"}
    offenders, sources = [], []
    for folder in ("training", "evaluation", "models", "attacks", "dataset", "utils", "scripts", "bench"):
        sources += sorted((REPO / folder).rglob("*.py"))
    sources += sorted(REPO.glob("main_*.py"))
    for path in sources:
        if path == REPO / "utils" / "distributed.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Attribute) and node.attr in collectives and \
                    isinstance(node.value, ast.Name) and node.value.id == "dist":
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} dist.{node.attr}")
    assert len(sources) > 20
    assert not offenders, offenders


# ---------------------------------------------------------------------------------------- process group

@pytest.fixture
def torchrun_env(monkeypatch: pytest.MonkeyPatch):
    """RANK / WORLD_SIZE / LOCAL_RANK of rank 1 of 2, and a fake init_process_group that records its call."""
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    calls: list[dict] = []
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: calls.append(kwargs))
    return calls


def test_init_distributed_on_cuda_joins_nccl_for_tensors_and_gloo_for_objects(
        torchrun_env: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    selected = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", selected.append)
    info = distributed.init_distributed("auto")
    assert info == DistInfo(rank=1, world_size=2, local_rank=1, device=torch.device("cuda", 1))
    assert selected == [1]
    assert torchrun_env == [{"backend": "cpu:gloo,cuda:nccl", "device_id": torch.device("cuda", 1)}]


def test_init_distributed_names_a_local_rank_without_its_gpu(torchrun_env: list[dict],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(RuntimeError, match=r"local rank 1 needs GPU 1 .* shows 1 GPU"):
        distributed.init_distributed("cuda")
    assert torchrun_env == []


def test_init_distributed_on_the_cpu_uses_gloo(torchrun_env: list[dict]) -> None:
    info = distributed.init_distributed("cpu")
    assert info.device == torch.device("cpu") and info.enabled
    assert torchrun_env == [{"backend": "gloo"}]


# ------------------------------------------------------------------------------------- --num_gpus check

def _argv(*extra: str) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", "/nonexistent/data", "--ckpt", "/nonexistent/ckpt",
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--num_epoch", "1", "--lr_steps", "1", "--categories", "a,b", "--device", "cpu", *extra]


def test_num_gpus_above_the_launch_stops_before_any_work_and_says_what_to_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(distributed, "init_distributed", lambda *a: pytest.fail("joined a process group"))
    with pytest.raises(SystemExit) as exc:
        main_attack.main(_argv("--mode", "train", "--num_gpus", "4"))
    message = str(exc.value)
    assert message.startswith("error: --num_gpus 4 but this process group has 1 process"), message
    assert "torchrun --nproc_per_node 4 main_attack.py" in message and "NUM_GPUS=4 bash scripts/" in message
    assert "README" in message


def test_a_torchrun_launch_of_more_processes_than_num_gpus_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as exc:
        main_attack.main(_argv("--mode", "eval"))
    assert "--num_gpus 1 but this process group has 2 processes" in str(exc.value)
    assert "--num_gpus 2" in str(exc.value)


def test_print_run_dir_needs_no_matching_launch(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    """The scripts ask for the run folder with the training flags (--num_gpus N) in a plain process."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    main_attack.main(_argv("--num_gpus", "4", "--print_run_dir"))
    assert capsys.readouterr().out.strip().startswith("/nonexistent/ckpt/synthetic-concat")
