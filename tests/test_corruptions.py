"""The natural-corruption suite (evaluation.corruption) and its evaluation (main_attack.py --corruptions)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import main_attack
from dataset.generators.synthetic import SynthConfig, class_names
from evaluation.corruption.corruptions import (
    AUDIO,
    CORRUPTIONS,
    GROUPS,
    MISSING_NAMES,
    PAIR_NAMES,
    SUITE,
    VISUAL,
    ModalityStats,
    corrupt,
    missing_modality,
    resolve_names,
    room_impulse_response,
)
from evaluation.corruption.evaluate import build_conditions
from evaluation.eval_dir import eval_folder_of, find_evaluations
from evaluation.robustness.records import RecordKey, load_records, perturbation_sizes
from tests.sop_fixture import write_rendered_clip

REPO = Path(__file__).resolve().parents[1]
RATE = 11025
IDS = ["cls/a", "cls/b", "cls/c", "cls/d"]
RANDOM_DRAWS = ("gaussian_noise", "occlusion", "white_noise", "dropout", "reverb")
STATS = ModalityStats(frame_mean=(0.2, 0.5, 0.7), frame_std=(0.1, 0.2, 0.05), audio_mean=0.01, audio_std=0.3, clips=9)


def smooth_frames(seed: int = 0, batch: int = 4) -> torch.Tensor:
    """Natural-looking frames: random 8x8 colour fields upsampled to 48x48 (2 frames per clip)."""
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(batch * 2, 3, 8, 8, generator=gen)
    big = F.interpolate(small, size=(48, 48), mode="bilinear", align_corners=False)
    return big.view(batch, 2, 3, 48, 48).transpose(1, 2).contiguous()


def broadband_audio(seed: int = 0, batch: int = 4, length: int = 8192) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (0.3 * torch.randn(batch, 1, length, generator=gen)).clamp(-1, 1)


def inputs_for(name: str, seed: int = 0) -> torch.Tensor:
    return smooth_frames(seed) if CORRUPTIONS[name].modality == VISUAL else broadband_audio(seed)


def strength(name: str, clean: torch.Tensor, corrupted: torch.Tensor) -> torch.Tensor:
    """Per-sample PSNR (visual) or SNR (audio) in dB."""
    if CORRUPTIONS[name].modality == VISUAL:
        return perturbation_sizes(clean, corrupted, None, None)["psnr_v"]
    return perturbation_sizes(None, None, clean, corrupted)["snr_a"]


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_severity_zero_is_the_identity_and_strength_grows_with_severity(name, one_thread):
    x = inputs_for(name)
    assert corrupt(name, x, 0, seed=1, sample_ids=IDS, sample_rate=RATE) is x
    mean_db = [float(strength(name, x, corrupt(name, x, s, 1, IDS, RATE)).mean()) for s in (1, 2, 3, 4, 5)]
    assert all(math.isfinite(v) for v in mean_db), mean_db  # every severity changes the input
    assert all(a > b for a, b in zip(mean_db, mean_db[1:])), f"{name}: PSNR / SNR over severities 1..5 {mean_db}"


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_shape_dtype_device_and_range_are_kept(name, one_thread):
    if CORRUPTIONS[name].modality == VISUAL:
        x = torch.cat([smooth_frames(batch=2), torch.zeros(1, 3, 2, 48, 48), torch.ones(1, 3, 2, 48, 48)])
        low, high = 0.0, 1.0
    else:
        loud = torch.sign(torch.randn(1, 1, 3001, generator=torch.Generator().manual_seed(2)))  # full scale
        x = torch.cat([broadband_audio(batch=2, length=3001), loud, torch.zeros(1, 1, 3001)])
        low, high = -1.0, 1.0
    for dtype in (torch.float32, torch.float64):
        for severity in (1, 5):
            out = corrupt(name, x.to(dtype), severity, 0, IDS, RATE)
            assert out.shape == x.shape and out.dtype == dtype and out.device == x.device
            assert out.min() >= low and out.max() <= high and torch.isfinite(out).all()


def test_aac_keeps_the_length_and_stays_aligned(one_thread):
    t = torch.arange(5000, dtype=torch.float64) / RATE
    tone = (0.5 * torch.sin(2 * math.pi * 440 * t)).float().view(1, 1, -1)
    out = corrupt("aac", tone, 1, 0, ["x"], RATE)
    assert out.shape == tone.shape
    # dropping the encoder's priming samples aligns the output: a 1024-sample offset would give ~0 dB
    assert float(strength("aac", tone, out)) > 15
    with pytest.raises(ValueError, match="not an AAC rate"):
        corrupt("aac", tone, 1, 0, ["x"], 11000)


def test_lowpass_keeps_low_and_removes_high_frequencies():
    t = torch.arange(8192, dtype=torch.float64) / RATE
    low, high = torch.sin(2 * math.pi * 100 * t), torch.sin(2 * math.pi * 3000 * t)
    out = corrupt("lowpass", (0.4 * (low + high)).view(1, 1, -1), 3, 0, ["x"], RATE).view(-1)  # cut-off 1 kHz
    assert torch.dot(out, low) / torch.dot(0.4 * low, low) == pytest.approx(1.0, abs=0.01)
    # 4th-order Butterworth gain at three times the cut-off: 1 / sqrt(1 + 3^8) = 1/81
    assert torch.dot(out, high) / torch.dot(0.4 * high, high) == pytest.approx(1 / math.sqrt(1 + 3 ** 8), rel=0.1)


def test_occlusion_and_dropout_remove_the_documented_share():
    frames = torch.full((1, 3, 4, 40, 50), 0.5)
    out = corrupt("occlusion", frames, 3, 0, ["x"], RATE)  # side 0.4 x 40 = 16 pixels, the same on every frame
    black = (out == 0).all(dim=1)  # [1, T, H, W]
    assert int(black[0, 0].sum()) == 16 * 16 and all(torch.equal(black[0, 0], black[0, t]) for t in range(4))
    audio = torch.full((1, 1, 1000), 0.25)
    silent = corrupt("dropout", audio, 4, 0, ["x"], RATE) == 0  # 0.3 of the window, one segment
    start = int(silent.view(-1).nonzero()[0])
    assert int(silent.sum()) == 300 and bool(silent.view(-1)[start:start + 300].all())


def test_room_impulse_response_has_its_direct_to_reverberant_ratio_and_decay():
    rate, rt60 = 8000, 0.5
    response = room_impulse_response(rt60, 3.0, rate, 10 ** 6, torch.Generator().manual_seed(0))
    assert response[0] == 1 and len(response) == rt60 * rate
    tail = response[1:].pow(2)
    assert 10 * math.log10(1 / float(tail.sum())) == pytest.approx(3.0, abs=1e-6)
    early, middle = tail[:400].mean(), tail[1800:2200].mean()  # around 0.025 s and 0.25 s = RT60 / 2
    assert 10 * math.log10(float(middle / early)) == pytest.approx(-60 * 0.225 / rt60, abs=2.0)


@pytest.mark.parametrize("name", RANDOM_DRAWS)
def test_seeded_per_sample_independent_of_the_batch(name, one_thread):
    x = inputs_for(name)
    batch = corrupt(name, x, 3, 7, IDS, RATE)
    assert torch.equal(batch, corrupt(name, x, 3, 7, IDS, RATE))
    for i in (0, 3):  # alone, and in a batch of other samples in another order
        assert torch.equal(batch[i:i + 1], corrupt(name, x[i:i + 1], 3, 7, IDS[i:i + 1], RATE))
    mixed = corrupt(name, x[[3, 1]], 3, 7, [IDS[3], IDS[1]], RATE)
    assert torch.equal(mixed[0], batch[3]) and torch.equal(mixed[1], batch[1])
    assert not torch.equal(batch, corrupt(name, x, 3, 8, IDS, RATE))  # another seed, other draws
    assert not torch.equal(batch[0], corrupt(name, x[1:2].expand_as(x[:1]), 3, 7, IDS[1:2], RATE)[0])


def test_missing_modality_inputs_are_as_documented():
    frames, audio = smooth_frames(), broadband_audio()
    assert torch.equal(missing_modality(frames, VISUAL, "zeros", 0, IDS), torch.zeros_like(frames))
    assert torch.equal(missing_modality(audio, AUDIO, "zeros", 0, IDS), torch.zeros_like(audio))
    mean_frames = missing_modality(frames, VISUAL, "mean", 0, IDS, STATS)
    for c in range(3):
        assert torch.all(mean_frames[:, c] == torch.tensor(STATS.frame_mean[c]))
    assert torch.all(missing_modality(audio, AUDIO, "mean", 0, IDS, STATS) == torch.tensor(STATS.audio_mean))
    noise_frames = missing_modality(frames, VISUAL, "noise", 0, IDS, STATS)
    noise_audio = missing_modality(audio, AUDIO, "noise", 0, IDS, STATS)
    assert noise_frames.shape == frames.shape and noise_audio.shape == audio.shape
    assert noise_frames.min() >= 0 and noise_frames.max() <= 1 and noise_audio.abs().max() <= 1
    for c in range(3):  # the training statistics (clipping barely moves these)
        assert float(noise_frames[:, c].mean()) == pytest.approx(STATS.frame_mean[c], abs=0.01)
        assert float(noise_frames[:, c].std()) == pytest.approx(STATS.frame_std[c], rel=0.1)
    assert float(noise_audio.std()) == pytest.approx(STATS.audio_std, rel=0.05)
    assert torch.equal(noise_audio[2:3], missing_modality(audio[2:3], AUDIO, "noise", 0, IDS[2:3], STATS))
    with pytest.raises(ValueError, match="training split's statistics"):
        missing_modality(frames, VISUAL, "mean", 0, IDS)


def test_names_groups_and_pairs():
    assert resolve_names([]) == list(SUITE) and len(SUITE) == 13 + 5 + 6
    assert resolve_names(["missing", "jpeg"]) == ["jpeg", *MISSING_NAMES]
    assert resolve_names(["both"]) == list(PAIR_NAMES) and "jpeg+aac" in PAIR_NAMES
    assert set(GROUPS["visual"]) | set(GROUPS["audio"]) == set(CORRUPTIONS)
    with pytest.raises(ValueError, match="unknown corruption 'fog'"):
        resolve_names(["fog"])
    frames, audio = smooth_frames(), broadband_audio()
    (pair,) = build_conditions(["jpeg+aac"], [4], 5, RATE, None)
    pair_frames, pair_audio = pair.apply(frames, audio, IDS)
    assert torch.equal(pair_frames, corrupt("jpeg", frames, 4, 5, IDS, RATE))
    assert torch.equal(pair_audio, corrupt("aac", audio, 4, 5, IDS, RATE))
    cache: dict = {}  # a batch's single corruptions, reused by its pairs
    (jpeg_alone,) = build_conditions(["jpeg"], [4], 5, RATE, None)
    alone_frames = jpeg_alone.apply(frames, audio, IDS, cache)[0]
    cached_frames, cached_audio = pair.apply(frames, audio, IDS, cache)
    assert cached_frames is alone_frames and torch.equal(cached_audio, pair_audio)
    (visual_only,) = build_conditions(["occlusion"], [2], 5, RATE, None)
    assert visual_only.apply(frames, audio, IDS)[1] is audio  # the other modality untouched


def test_corruption_flags_are_validated(capsys):
    args = main_attack.parse_args(["--dataset", "MUSIC", "--corruptions"])
    assert args.corruptions == [] and args.corruption_severities == [1, 2, 3, 4, 5]
    assert main_attack.parse_args(["--dataset", "MUSIC"]).corruptions is None
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--dataset", "MUSIC", "--corruptions", "jpeg", "fog"])
    assert "--corruptions" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--dataset", "MUSIC", "--corruption_severities", "6"])
    assert "--corruption_severities" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- end to end

NUM_CLASSES, TRAIN_PER_CLASS, TEST_PER_CLASS, SEED = 3, 2, 2, 3


def write_root(root: Path) -> Path:
    """Rendered synthetic clips (shapes and tones) in the SoP layout: 6 training and 6 test clips."""
    names = class_names(NUM_CLASSES)
    config = SynthConfig(num_classes=NUM_CLASSES, per_class=TRAIN_PER_CLASS + TEST_PER_CLASS, seed=SEED, size=32,
                         duration=1.0, fps=8, audio_rate=RATE)
    rows: dict[str, list[str]] = {"train": [], "test": []}
    for c, name in enumerate(names):
        for v in range(TRAIN_PER_CLASS + TEST_PER_CLASS):
            row, _, _ = write_rendered_clip(root, config, SEED, c, v, name)
            rows["train" if v < TRAIN_PER_CLASS else "test"].append(row)
    for split, listed in (("train", "train"), ("val", "train"), ("test", "test")):
        (root / f"{split}.csv").write_text("\n".join(rows[listed]) + "\n")
    (root / "categories.txt").write_text("\n".join(names) + "\n")
    return root


def flags(root: Path, ckpt: Path) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", "concat",
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--imgSize", "32", "--audLen", "2048", "--batch_size_per_gpu", "4", "--workers", "0",
            "--num_epoch", "2", "--lr_steps", "5", "--seed", str(SEED), "--device", "cpu"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root, ckpt = write_root(tmp_path_factory.mktemp("data")), tmp_path_factory.mktemp("ckpt")
    main_attack.main(["--mode", "train"] + flags(root, ckpt))
    return root, ckpt


def test_eval_with_corruptions_writes_results_table_figure_and_records(trained, one_thread):
    root, ckpt = trained
    argv = ["--mode", "eval", "--attack_type", "none", "--corruptions"] + flags(root, ckpt)
    main_attack.main(argv)
    run = ckpt / main_attack.parse_args(flags(root, ckpt)).id
    out = eval_folder_of(run, "corruptions", main_attack.parse_args(argv))
    assert out.name == "corruptions_all_sev12345"
    assert find_evaluations(run) == [out]  # --attack_type none: the corruptions alone
    results = json.loads((out / "corruption_results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert results["num_samples"] == metrics["num_samples"] == NUM_CLASSES * TEST_PER_CLASS
    assert results["clean"]["acc"] == pytest.approx(metrics["test_acc"])
    assert [e["name"] for e in results["corruptions"]] == [*GROUPS["visual"], *GROUPS["audio"], *PAIR_NAMES]
    assert [m["name"] for m in results["missing"]] == list(MISSING_NAMES)
    assert set(results["groups"]) == {"visual", "audio", "both"}
    for key in ("mean_corruption_acc", "mean_corruption_ci", "relative_robustness", "train_stats", "seconds"):
        assert results[key] is not None
    stats = results["train_stats"]
    assert stats["clips"] == NUM_CLASSES * TRAIN_PER_CLASS
    assert all(0 < m < 1 and 0 < s < 0.5 for m, s in zip(stats["frame_mean"], stats["frame_std"]))  # [0, 1] pixels
    assert 0 < stats["audio_std"] < 1
    for entry in results["corruptions"]:
        assert [r["severity"] for r in entry["severities"]] == [1, 2, 3, 4, 5]
        for row in entry["severities"]:
            low, high = row["ci"]
            assert row["n"] == 6 and low <= row["acc"] <= high
            assert row["robust_correct"] <= min(row["correct"], results["clean"]["correct"])  # clean-correct too
            assert ("psnr_v_mean" in row) == (entry["group"] != "audio")
            assert ("snr_a_mean" in row) == (entry["group"] != "visual")
    noise = next(e for e in results["corruptions"] if e["name"] == "gaussian_noise+white_noise")
    assert [r["snr_a_mean"] for r in noise["severities"]] == pytest.approx([30, 20, 10, 5, 0], abs=1.5)
    psnr = [r["psnr_v_mean"] for r in noise["severities"]]
    assert all(a > b for a, b in zip(psnr, psnr[1:]))
    zeros = next(m for m in results["missing"] if m["name"] == "missing_audio_zeros")
    assert zeros["snr_a_mean"] == pytest.approx(0.0, abs=1e-4)  # all of the signal removed: SNR 0 dB
    table = (out / "corruption_table.md").read_text()
    assert "| jpeg+aac | both |" in table and "Measured strength" in table and "| audio | mean |" in table
    assert (out / "corruption.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = load_records(out / "corruption_per_sample.npz")
    assert len(records.keys()) == 18 * 5 + 6 and records.num_samples == 6
    jpeg5 = records.column(RecordKey("jpeg", "5", "natural"))
    assert int((jpeg5 == 1).sum()) == results["corruptions"][2]["severities"][4]["correct"]
    assert np.isin(jpeg5, (0, 1)).all()


def test_two_ranks_give_the_records_of_one_process(trained, tmp_path):
    root, ckpt = trained
    out = ckpt / main_attack.parse_args(flags(root, ckpt)).id
    subset = ["--attack_type", "none", "--corruptions", "gaussian_noise+white_noise", "reverb", "missing_visual_noise",
              "--corruption_severities", "2", "5", "--batch_size_per_gpu", "2"]
    twin = tmp_path / "ddp"
    twin.mkdir()
    shutil.copytree(out, twin / out.name)
    main_attack.main(["--mode", "eval"] + flags(root, ckpt) + subset)
    evaluation = eval_folder_of(out, "corruptions", main_attack.parse_args(flags(root, ckpt) + subset))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "main_attack.py"), "--mode", "eval", *flags(root, twin), *subset, "--num_gpus", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = load_records(evaluation / "corruption_per_sample.npz")
    ddp = load_records(twin / out.name / "evals" / evaluation.name / "corruption_per_sample.npz")
    assert ddp.ids == single.ids and ddp.keys() == single.keys() and len(single.keys()) == 2 * 2 + 1
    for key in single.keys():
        for field in single.columns[key]:
            np.testing.assert_allclose(ddp.column(key, field), single.column(key, field), rtol=1e-4, atol=1e-5)
