"""The audio-visual misalignment attack: shifted windows read from the wav (exact, never wrapped, invalid when
they do not fit), and the shift attack's per-sample worst case through the evaluation pipeline."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from dataset.av_dataset import AVDataset
from dataset.layout import frame_time
from dataset.media import load_audio_window
from dataset.misalignment import ShiftedAudio, shifted_windows
from evaluation.robustness.pipeline import evaluate_robustness
from evaluation.robustness.records import RecordKey, load_records
from models.av_model import ModelOutput
from tests.sop_fixture import RAMP_SLOPE, RAMP_START, make_root, ramp_time, write_clip, write_index
from utils.distributed import DistInfo

CLASSES = ["cat_a", "cat_b", "cat_c"]
AUD_LEN = 2048
AUD_RATE = 11025


def test_shifted_windows_are_the_wav_samples_shifted_by_the_asked_amount_and_never_wrap(tmp_path: Path) -> None:
    rate, length = 1000, 200
    ramp = (np.arange(3000) / 10000).astype(np.float32)  # sample i holds i / 10000: its own index
    path = tmp_path / "ramp.wav"
    sf.write(path, ramp, rate, subtype="FLOAT")
    shifts = [-1.5, -0.4, 0.0, 0.5, 1.4, 1.45]
    windows, valid = shifted_windows(str(path), 1.5, shifts, length, rate)
    # window k starts at round((1.5 + s) * rate) - length // 2: -100 (before the clip), 1000, 1400, 1900, 2800
    # (ends exactly at the clip's end), 2850 (runs 50 samples past it)
    assert valid.tolist() == [False, True, True, True, True, False]
    for k, start in ((1, 1000), (2, 1400), (3, 1900), (4, 2800)):
        np.testing.assert_array_equal(windows[k], ramp[start:start + length])
    assert np.isnan(windows[0]).all() and np.isnan(windows[5]).all()  # not wrapped around, not zero-filled
    # shift 0 is the loader's own window, sample for sample
    np.testing.assert_array_equal(windows[2], load_audio_window(str(path), 1.5, length, rate))


def test_shifted_windows_of_a_wav_at_another_rate_are_resampled_and_shifted(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    t = np.arange(2 * 8000) / 8000
    sf.write(path, (0.1 * t).astype(np.float32), 8000, subtype="FLOAT")  # a ramp in time at 8 kHz
    windows, valid = shifted_windows(str(path), 1.0, [-0.25, 0.5], 400, AUD_RATE)
    assert valid.all()
    centre = 10 * windows[:, 150:250].mean(axis=1)  # the ramp's time at the middle of each window
    np.testing.assert_allclose(centre, [0.75, 1.5], atol=2e-3)


def sop_dataset(tmp_path: Path) -> AVDataset:
    """Six 3-second clips (8 fps, ramp audio) and one 5-second clip of class cat_b."""
    root = make_root(tmp_path, CLASSES, per_class=2, num_frames=24)
    rows = (root / "test.csv").read_text().splitlines() + [write_clip(root, "cat_b", "long", 40)]
    write_index(root, "test.csv", rows)
    return AVDataset(str(root / "test.csv"), str(root / "audio"), str(root / "frames"), CLASSES, num_frames=1,
                     img_size=16, aud_len=AUD_LEN, aud_rate=AUD_RATE)


def test_shifted_audio_dataset_adds_windows_shifted_against_the_frames_and_marks_those_off_the_clip(tmp_path):
    dataset = sop_dataset(tmp_path)
    shifts = [-1.5, -1.0, 0.0, 1.0, 1.5]
    item = ShiftedAudio(dataset, shifts)[0]
    assert item["audio_shifts"].shape == (5, 1, AUD_LEN) and item["shift_seconds"].tolist() == shifts
    # a 3 s clip centred on frame 12 (1.4375 s): ±1.5 s puts the window's centre 0.06 s before the start / after
    # the end; ±1 s fits
    assert item["shift_valid"].tolist() == [False, True, True, True, False]
    centre = frame_time(dataset.center_frame(dataset.rows[0], None), 8)
    for k in (1, 2, 3):
        times = ramp_time(item["audio_shifts"][k, 0].numpy().astype(np.float64))
        assert times[AUD_LEN // 2] == pytest.approx(centre + shifts[k], abs=1 / AUD_RATE + 1e-4)
    torch.testing.assert_close(item["audio_shifts"][2], item["audio"])  # shift 0: the loader's window
    long_item = ShiftedAudio(dataset, shifts)[len(dataset) - 1]
    assert long_item["shift_valid"].all()  # 5 s clip: every shift fits
    with pytest.raises(ValueError, match="evaluation dataset"):
        ShiftedAudio(AVDataset(str(tmp_path / "test.csv"), str(tmp_path / "audio"), str(tmp_path / "frames"),
                               CLASSES, img_size=16, aud_len=AUD_LEN, train=True), shifts)


class AudioClock(nn.Module):
    """Reads the time off the ramp audio: class c when the window's mean time is nearest ``CENTRES[c]``, so a
    clip of class cat_a centred on 1.4375 s (and the long cat_b one, on 2.4375 s) is classified right and a
    shift of the audio changes the prediction."""

    uses_visual, uses_audio = False, True
    CENTRES = torch.tensor([1.4375, 2.4375, 10.0])

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0), requires_grad=False)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        seconds = (audio.mean(dim=(1, 2)) - RAMP_START) / RAMP_SLOPE
        return ModelOutput(-self.scale * (seconds[:, None] - self.CENTRES).pow(2), None, None, None)


def make_args(**overrides) -> SimpleNamespace:
    args = dict(id="clock", arch_classifier="audio", categories=CLASSES, cls_num=3, attack_type=["shift", "shift+pgd"],
                epsilons=[(0.0, 0.002)], eps_grid=None, eps_grid_modality=["audio"], attack_steps=5, apgd_steps=10,
                apgd_targets=2, attack_alpha=None, attack_loss="ce", eps_units="pixel", random_start=False,
                restarts=1, eot_iter=1, square_queries=50, square_p_init=0.8, seed=0, num_vis=0, sanity_eps=0.0,
                audRate=AUD_RATE, norm="linf", joint_eps=None, audio_eps_db=None, temporal=["frame"],
                eps_grid2d=None, max_shift=1.5, shift_steps=7, batch_size_per_gpu=4, workers=0,
                decode_device="cpu")
    args.update(overrides)
    return SimpleNamespace(**args)


def test_shift_attack_takes_the_worst_valid_shift_per_sample_and_reports_the_clips_lacking_shifts(tmp_path, capsys):
    dataset = sop_dataset(tmp_path / "data")
    loader = DataLoader(dataset, batch_size=4)  # the pipeline adds the shifted windows itself
    results = evaluate_robustness(AudioClock(), loader, make_args(), DistInfo(), tmp_path / "run")
    records = load_records(tmp_path / "run" / "per_sample.npz")
    clean = np.asarray(records.clean_correct, dtype=bool)
    assert clean.sum() == 3  # the two cat_a clips and the long cat_b one
    shift_key = RecordKey("shift", "A@v0,a0,shift1.5s", "default")
    shifted = records.column(shift_key) == 1
    assert not np.any(shifted & ~clean)  # per sample no better than the unshifted input ...
    assert shifted.sum() == 0  # ... and here every clean-correct clip is fooled by some valid shift
    chosen = records.column(shift_key, "shift_s")
    grid = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert set(chosen.tolist()) <= set(grid) and np.all(chosen[clean] != 0)
    short = np.array([not sid.endswith("/long") for sid in records.ids])
    assert np.all(np.abs(chosen[short]) < 1.5)  # ±1.5 s does not fit a 3 s clip: never taken
    followed = records.column(RecordKey("shift+pgd", "A@v0,a0.002,shift1.5s", "default")) == 1
    assert not np.any(followed & ~shifted)  # the follow-up never undoes the shift's success
    assert results["misalignment"]["clips_lacking_a_shift"] == 6
    assert results["misalignment"]["clips_lacking_every_shift"] == 0
    entry = next(e for e in results["attacks"] if e["attack"] == "shift")
    assert entry["adv_acc"] == 0.0 and sum(entry["shift_counts"].values()) == 7 and entry["max_shift"] == 1.5
    assert "6 of 7 clips lack some shift" in capsys.readouterr().out
    saved = json.loads((tmp_path / "run" / "attack_results.json").read_text())
    assert saved["misalignment"]["shifts"] == grid


def test_shift_attack_without_shifted_windows_names_the_flag(tmp_path: Path) -> None:
    batch = {"frames": torch.zeros(2, 3, 1, 4, 4, dtype=torch.uint8), "audio": torch.zeros(2, 1, 8),
             "label": torch.zeros(2, dtype=torch.long), "index": torch.arange(2), "info": ["a/0", "a/1"]}
    with pytest.raises(ValueError, match="--max_shift"):
        evaluate_robustness(AudioClock(), [batch], make_args(), DistInfo(), tmp_path)
