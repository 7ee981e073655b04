"""bench/bench_gpu.py's measuring functions on the CPU at tiny sizes: the figures are finite and in range, the
data-wait fraction and the PGD ratio follow where the time really goes, and training steps really train."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from attacks import build_attack
from bench import bench_gpu
from models import build_model
from tests.sop_fixture import make_root
from utils.precision import Precision

BATCH, IMG, AUDIO_LEN, CLASSES = 2, 32, 2048, 3


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("smallcnn", "anet", "concat", cls_num=CLASSES, frame_dim=8, sound_dim=8)


def tiny_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    frames = torch.rand(BATCH, 3, 1, IMG, IMG, generator=generator)
    audio = torch.rand(BATCH, 1, AUDIO_LEN, generator=generator) * 2 - 1
    return frames, audio, torch.tensor([0, 2])


def test_training_throughput_is_finite_and_positive_and_the_steps_train() -> None:
    model = tiny_model()
    frames, audio, labels = tiny_batch()
    before = [p.detach().clone() for p in model.parameters()]
    figures = bench_gpu.measure_training(model, frames, audio, labels, bench_gpu.TRAIN_CONFIGS, warmup=1, iters=1,
                                         repeats=2)
    assert list(figures) == [c.name for c in bench_gpu.TRAIN_CONFIGS]
    for throughput in figures.values():
        assert math.isfinite(throughput.samples_per_s) and throughput.samples_per_s > 0
        assert throughput.peak_mib is None  # CPU
    # Each config trains its own copy: the model given stays as it was.
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16])
def test_train_step_updates_weights_and_lowers_the_loss_on_a_fixed_batch(dtype: torch.dtype | None) -> None:
    model = tiny_model()
    frames, audio, labels = tiny_batch()
    step = bench_gpu.make_train_step(model, Precision("cpu", dtype), lr=0.05)
    first = step(frames, audio, labels).item()
    for _ in range(8):
        last = step(frames, audio, labels).item()
    assert math.isfinite(first) and last < first


class SlowItems(Dataset):
    """Batches in the mains' format whose every item takes ``seconds`` to load."""

    def __init__(self, seconds: float, length: int = 16) -> None:
        self.seconds, self.length = seconds, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        time.sleep(self.seconds)
        return {"frames": torch.rand(3, 1, IMG, IMG), "audio": torch.rand(1, AUDIO_LEN) * 2 - 1,
                "label": torch.tensor(index % CLASSES)}


def sleeping_step(seconds: float) -> bench_gpu.TrainStep:
    def step(frames: torch.Tensor, audio: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        time.sleep(seconds)
        return torch.zeros(())

    return step


def test_data_wait_fraction_follows_where_the_time_goes() -> None:
    cpu = torch.device("cpu")
    slow_data = bench_gpu.measure_data_wait(DataLoader(SlowItems(0.02), batch_size=BATCH), sleeping_step(0.002),
                                            cpu, warmup=1)
    slow_step = bench_gpu.measure_data_wait(DataLoader(SlowItems(0.0), batch_size=BATCH), sleeping_step(0.04),
                                            cpu, warmup=1)
    assert slow_data.batches == slow_step.batches == 16 // BATCH - 1
    for wait in (slow_data, slow_step):
        assert 0 <= wait.fraction <= 1 and wait.step_s > 0
    assert slow_data.fraction > 0.7  # 40 ms loading vs 2 ms stepping per batch
    assert slow_step.fraction < 0.3  # next to nothing loading vs 40 ms stepping
    assert slow_data.wait_s >= 0.9 * slow_data.batches * BATCH * 0.02


def test_data_wait_over_a_dataset_on_disk(tmp_path: Path) -> None:
    root = make_root(tmp_path / "root", per_class=2, size=(40, 48))
    loader = bench_gpu.bench_loader(str(root), IMG, AUDIO_LEN, BATCH, workers=0, num_batches=4, seed=0,
                                    pin_memory=False)
    wait = bench_gpu.measure_data_wait(loader, bench_gpu.make_train_step(tiny_model(), Precision("cpu")),
                                       torch.device("cpu"), warmup=1)
    assert wait.batches == 3
    assert 0 < wait.fraction < 1 and math.isfinite(wait.step_s)


def test_data_wait_needs_batches_after_the_warm_up() -> None:
    with pytest.raises(ValueError, match="none after the 8 warm-up"):
        bench_gpu.measure_data_wait(DataLoader(SlowItems(0.0, length=4), batch_size=BATCH), sleeping_step(0.0),
                                    torch.device("cpu"), warmup=8)


def test_pgd_ratio_comes_from_the_measured_times() -> None:
    model = tiny_model().eval()
    frames, audio, labels = tiny_batch()
    eps = {"visual": 0.006, "audio": 0.006}
    same = bench_gpu.measure_pgd(model, frames, audio, labels, build_attack("pgd", model, eps=eps, steps=2),
                                 steps=2, warmup=1, repeats=5)
    assert math.isfinite(same.ratio) and same.pgd_s > 0 and same.limit_s > 0
    assert same.ratio == pytest.approx(same.pgd_s / same.limit_s)
    assert 0.5 < same.ratio < 2.0  # PGD-2 does the work of its limit, plus a little
    # Three times the steps against the same 2-step limit: the ratio has to see the extra work.
    triple = bench_gpu.measure_pgd(model, frames, audio, labels, build_attack("pgd", model, eps=eps, steps=6),
                                   steps=2, warmup=1, repeats=5)
    assert triple.ratio > 1.8


def test_verdicts_and_cpu_only_arguments() -> None:
    assert bench_gpu.verdict(1.6, bench_gpu.AMP_TARGETS[0], higher_is_better=True) == "met"
    assert bench_gpu.verdict(1.9, bench_gpu.AMP_TARGETS[1], higher_is_better=True) == "MISSED"
    assert bench_gpu.verdict(0.06, bench_gpu.DATA_WAIT_TARGET, higher_is_better=False) == "MISSED"
    assert bench_gpu.verdict(1.05, bench_gpu.PGD_TARGET, higher_is_better=False) == "met"
    args = bench_gpu.parse_args(["--device", "cpu", "--small", "--batches", "3", "5"])
    assert (args.img, args.audio_len, args.batches, args.frame_arch) == (32, 2048, [3, 5], "smallcnn")
    assert bench_gpu.parse_args(["--device", "cpu"]).batches == [32, 128]
    with pytest.raises(SystemExit):
        bench_gpu.parse_args(["--device", "cpu", "--iters", "0"])


def test_the_small_cpu_run_prints_the_amp_table_profiles_and_diagnosis(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    """The whole script at --small on the CPU (its two cudnn.benchmark processes included): the table has a row per
    batch and benchmark setting and a finite positive figure per config, the ratios are those figures over the
    row's fp32, and the profiles, diagnosis and targets come with it."""
    out = tmp_path / "bench.json"
    report = bench_gpu.main(["--device", "cpu", "--small", "--threads", "1", "--repeats", "1", "--json", str(out)])
    text = capsys.readouterr().out
    names = [c.name for c in bench_gpu.TRAIN_CONFIGS]
    rows = report["training"]["rows"]
    assert [(r["batch"], r["cudnn_benchmark"]) for r in rows] == [(2, "off"), (2, "on"), (4, "off"), (4, "on")]
    for row in rows:
        assert list(row["samples_per_s"]) == names
        for name in names:
            value, ratio = row["samples_per_s"][name], row["ratio"][name]
            assert math.isfinite(value) and value > 0 and math.isfinite(ratio) and ratio > 0
            assert ratio == pytest.approx(value / row["samples_per_s"]["fp32"])
        assert f"| {row['batch']}, {row['cudnn_benchmark']} | " in text
    assert "| batch, cudnn.benchmark | " + " | ".join(names) + " |" in text
    for name in bench_gpu.PROFILED:
        assert f"torch.profiler, {name}, batch 2" in text
        profile = report["training"]["profiles"]["on"][name]
        assert 0 <= profile["casts_us"] <= profile["total_us"] and profile["total_us"] > 0
    assert report["training"]["profiles"]["on"]["bf16 AMP"]["scaler_us"] == 0
    assert report["training"]["profiles"]["on"]["fp16 AMP"]["scaler_us"] > 0  # float16 runs a GradScaler
    assert any(line.startswith("casts (aten::to") for line in report["training"]["diagnosis"])
    assert [t["target"] for t in report["training"]["targets"].values()] == list(bench_gpu.AMP_TARGETS)
    assert report["training"]["mains_amp"] == "bf16 AMP"  # the CPU: bfloat16, no channels-last
    assert json.loads(out.read_text())["training"]["rows"] == rows
    assert math.isfinite(report["pgd"]["ratio"]) and report["pgd"]["ratio"] > 0


def test_compile_adds_the_mains_amp_config_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.compile takes minutes here: a stand-in records what the bench hands it."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or module)
    model = tiny_model()
    plain = bench_gpu.table_configs(bench_gpu.parse_args(["--device", "cpu", "--small"]), torch.device("cpu"), model)
    assert plain == bench_gpu.TRAIN_CONFIGS
    configs = bench_gpu.table_configs(bench_gpu.parse_args(["--device", "cpu", "--small", "--compile"]),
                                      torch.device("cpu"), model)
    assert configs[:-1] == bench_gpu.TRAIN_CONFIGS
    assert configs[-1] == bench_gpu.TrainConfig("bf16 AMP + compile", "bfloat16", False, compile=True)
    figures = bench_gpu.measure_training(model, *tiny_batch(), configs[-1:], warmup=1, iters=1, repeats=1)
    assert len(compiled) == 1 and compiled[0] is not model  # a copy of the model, compiled
    assert math.isfinite(figures["bf16 AMP + compile"].samples_per_s)
