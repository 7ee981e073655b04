"""The threat models on the evaluation side: budgets and keys of the L2, joint, dB and shared threat models, the
engine's per-sample L2 norms and joint split, and the (ε_v, ε_a) map."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import main_attack
from evaluation.robustness.engine import AttackEngine
from evaluation.robustness.pipeline import evaluate_robustness
from evaluation.robustness.protocol import Budget, attack_plan, budgets_from_args
from evaluation.robustness.records import RecordKey, load_records
from models.av_model import ModelOutput
from utils.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
LENGTH = 64
FRAMES = (3, 2, 4, 4)  # C, T, H, W


def make_args(**overrides) -> SimpleNamespace:
    args = dict(id="toy", arch_classifier="toy", categories=[f"c{i}" for i in range(NUM_CLASSES)],
                cls_num=NUM_CLASSES, attack_type=["pgd"], epsilons=[(0.0, 0.3)], eps_grid=None,
                eps_grid_modality=["audio"], attack_steps=10, apgd_steps=20, apgd_targets=2, attack_alpha=None,
                attack_loss="ce", eps_units="pixel", random_start=False, restarts=1, eot_iter=1, square_queries=50,
                square_p_init=0.8, seed=0, num_vis=0, sanity_eps=0.0, audRate=11025, norm="linf", joint_eps=None,
                audio_eps_db=None, temporal=["frame"], eps_grid2d=None, max_shift=None, shift_steps=9)
    args.update(overrides)
    return SimpleNamespace(**args)


class TwoInputLinear(nn.Module):
    """Logits linear in the frames and the waveform (a fixed seed): both modalities matter."""

    uses_visual, uses_audio = True, True

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.visual = nn.Parameter(torch.randn(int(np.prod(FRAMES)), NUM_CLASSES, generator=gen) * 0.3,
                                   requires_grad=False)
        self.audio = nn.Parameter(torch.randn(LENGTH, NUM_CLASSES, generator=gen), requires_grad=False)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        return ModelOutput(frames.flatten(1) @ self.visual + audio.flatten(1) @ self.audio, None, None, None)


def toy_loader(model: nn.Module, n: int = 12, batch: int = 6) -> list[dict]:
    """Batches (uint8 frames, as the loader gives them) labelled with the model's clean predictions (every
    sample clean-correct)."""
    gen = torch.Generator().manual_seed(1)
    frames = torch.randint(0, 256, (n, *FRAMES), generator=gen, dtype=torch.uint8)
    audio = (torch.rand(n, 1, LENGTH, generator=gen) * 2 - 1) * 0.2
    with torch.no_grad():
        labels = model(frames.float() / 255, audio).logits.argmax(dim=1)
    return [{"frames": frames[i:i + batch], "audio": audio[i:i + batch], "label": labels[i:i + batch],
             "index": torch.arange(i, i + batch), "info": [f"c/{j}" for j in range(i, i + batch)]}
            for i in range(0, n, batch)]


def keys_of(argv: list[str]) -> list[str]:
    return [b.key for b in budgets_from_args(main_attack.parse_args(["--dataset", "MUSIC"] + argv))]


def test_default_keys_are_unchanged_and_every_other_threat_model_is_named_in_the_key() -> None:
    assert keys_of([]) == ["A@v0,a0.012", "V@v0.012,a0", "A+V@v0.006,a0.006"]
    args = main_attack.parse_args(["--dataset", "MUSIC", "--norm", "l2"])
    assert args.eps_units == "pixel"
    assert main_attack.parse_args(["--dataset", "MUSIC"]).eps_units == "normalized"
    # joint: only the A+V budget gets the joint ball; its pair are the units
    l2 = keys_of(["--norm", "l2", "--epsilons", "1.5,0", "0,0.3", "1.5,0.3", "--joint_eps", "1"])
    assert l2 == ["V@l2:v1.5,a0", "A@l2:v0,a0.3", "A+V@l2:v1.5,a0.3,j1"]
    # dB replaces the audio radius of every budget that attacks audio
    assert keys_of(["--audio_eps_db", "-30"]) == ["A@v0,a-30dB", "V@v0.012,a0", "A+V@v0.006,a-30dB"]
    # shared: every budget attacking the frames once per temporal mode
    assert keys_of(["--num_frames", "3", "--temporal", "frame", "shared"]) == [
        "A@v0,a0.012", "V@v0.012,a0", "V@v0.012,a0,shared", "A+V@v0.006,a0.006", "A+V@v0.006,a0.006,shared"]
    joint = Budget(1.5, 0.3, norm="l2", joint_eps=1.0)
    assert joint.name == "A+V" and "joint ball J=1" in joint.label and "L2" in joint.threat
    assert Budget(0.0, 0.0, audio_eps_db=-30).label == "A (εa=-30 dB)"
    assert Budget(0.012, 0.0).label == "V (εv=0.012)" and Budget(0.012, 0.0).threat == ""


@pytest.mark.parametrize("argv, message", [
    (["--norm", "l2", "--eps_units", "normalized"], "--eps_units normalized"),
    (["--joint_eps", "1"], "--joint_eps needs --norm l2"),
    (["--norm", "l2", "--joint_eps", "1", "--epsilons", "1,0"], "--joint_eps applies to A+V"),
    (["--audio_eps_db", "6"], "--audio_eps_db must be < 0"),
    (["--temporal", "shared"], "--temporal shared needs --num_frames > 1"),
    (["--attack_type", "shift"], "needs --max_shift"),
    (["--max_shift", "0.5"], "--max_shift needs a misalignment attack"),
    (["--eps_grid2d", "0.01", "--attack_type", "shift", "pgd", "--max_shift", "1"], "--eps_grid2d needs a first"),
    (["--eps_grid2d", "0.01", "--audio_eps_db", "-20"], "--eps_grid2d cannot be combined"),
    (["--norm", "l2", "--joint_eps", "1", "--epsilons", "1,1", "--attack_type", "aa"], "Square has no joint-ball"),
])
def test_threat_model_flags_that_do_not_fit_are_parse_errors_naming_the_flag(argv, message, capsys) -> None:
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--dataset", "MUSIC"] + argv)
    assert message in capsys.readouterr().err


def test_attack_plan_runs_shift_once_shifts_the_budgets_of_shift_attacks_and_the_map_under_the_first_attack():
    protocol = Budget(0.0, 0.1)
    point = Budget(0.1, 0.2, grid=True, eps_map=True)
    plan = attack_plan(["shift+pgd", "shift", "fgsm"], [protocol, point], 0.5)
    assert [(a, b.key) for a, b in plan] == [
        ("shift", "A@v0,a0,shift0.5s"), ("shift+pgd", "A@v0,a0.1,shift0.5s"), ("fgsm", "A@v0,a0.1"),
        ("shift+pgd", "A+V@v0.1,a0.2,shift0.5s")]
    with pytest.raises(ValueError, match="max_shift"):
        attack_plan(["shift"], [protocol], None)


def test_engine_records_l2_norms_within_the_budgets_and_the_split_of_the_joint_ball(tmp_path: Path) -> None:
    model = TwoInputLinear()
    ev, ea = 0.5, 0.3
    results = evaluate_robustness(model, toy_loader(model), make_args(
        norm="l2", joint_eps=1.0, epsilons=[(0.0, ea), (ev, 0.0), (ev, ea)]), DistInfo(), tmp_path)
    records = load_records(tmp_path / "per_sample.npz")
    audio = records.column(RecordKey("pgd", "A@l2:v0,a0.3", "default"), "l2_a")
    visual = records.column(RecordKey("pgd", "V@l2:v0.5,a0", "default"), "l2_v")
    assert audio.max() <= ea + 1e-4 and visual.max() <= ev + 1e-4
    assert audio.min() > 0.9 * ea and visual.min() > 0.9 * ev  # L2 PGD spends its radius on a linear model
    joint = RecordKey("pgd", "A+V@l2:v0.5,a0.3,j1", "default")
    used_v = (records.column(joint, "l2_v") / ev) ** 2
    used_a = (records.column(joint, "l2_a") / ea) ** 2
    assert np.all(used_v + used_a <= 1 + 1e-3) and np.all(used_v + used_a > 0.8)
    split = records.column(joint, "split_v")
    np.testing.assert_allclose(split, used_v / (used_v + used_a), atol=1e-3)
    entry = next(e for e in results["attacks"] if e["budget_key"] == "A+V@l2:v0.5,a0.3,j1")
    assert entry["joint_eps"] == 1.0 and entry["norm"] == "l2"
    assert entry["perturbation"]["split_v_mean"] == pytest.approx(float(split.mean()), abs=1e-5)
    table = (tmp_path / "attack_table.md").read_text()
    assert f"spent {100 * float(split.mean()):.1f} % of the joint budget on vision" in table
    assert "L2 budgets" in table and "visual L2 (mean / max)" in table
    assert results["norm"] == "l2" and all("split_v_mean" not in e["perturbation"] for e in results["attacks"]
                                           if e["joint_eps"] is None)


def test_engine_with_a_db_audio_budget_keeps_every_clip_at_the_asked_snr(tmp_path: Path) -> None:
    model = TwoInputLinear()
    evaluate_robustness(model, toy_loader(model), make_args(norm="l2", audio_eps_db=-20.0, epsilons=[(0.0, 0.3)]),
                        DistInfo(), tmp_path)
    records = load_records(tmp_path / "per_sample.npz")
    snr = records.column(RecordKey("pgd", "A@l2:v0,a-20dB", "default"), "snr_a")
    assert snr.min() >= 20 - 1e-2 and snr.max() < 20.5  # ||δ||₂ = ||x||₂ · 10^(-20/20): SNR 20 dB


def test_a_visual_step_size_applies_beside_a_db_audio_budget(tmp_path: Path) -> None:
    model = TwoInputLinear()
    evaluate_robustness(model, toy_loader(model), make_args(audio_eps_db=-20.0, attack_alpha=0.01,
                                                            epsilons=[(0.03, 0.3)]), DistInfo(), tmp_path)
    records = load_records(tmp_path / "per_sample.npz")
    key = RecordKey("pgd", "A+V@v0.03,a-20dB", "default")
    linf_v, snr = records.column(key, "linf_v"), records.column(key, "snr_a")
    assert 0 < linf_v.min() and linf_v.max() <= 0.03 * 255 + 1e-3  # the visual step ran inside its budget
    assert np.isfinite(snr).all() and snr.min() > 0  # the audio too, at a fraction of each clip's peak


def test_shared_temporal_budget_is_evaluated_beside_the_per_frame_one_with_one_perturbation_for_every_frame():
    model = TwoInputLinear()
    args = make_args(temporal=["frame", "shared"], epsilons=[(0.05, 0.0)], num_frames=FRAMES[1])
    engine = AttackEngine(model, args, DistInfo(), budgets_from_args(args), ["pgd"], num_vis=4)
    run = engine.run(toy_loader(model))
    assert run.records.keys() == [RecordKey("pgd", "V@v0.05,a0", "default"),
                                  RecordKey("pgd", "V@v0.05,a0,shared", "default")]
    sample = run.vis[0]
    shared = sample["adv"]["V [shared over frames]"]["frames"] - sample["frames"]
    per_frame = sample["adv"]["V"]["frames"] - sample["frames"]
    assert (shared[:, 0] - shared[:, 1]).abs().max() < 1e-6 and shared.abs().max() > 0.04  # up to rounding
    assert (per_frame[:, 0] - per_frame[:, 1]).abs().max() > 0.04


def test_eps_grid2d_covers_the_product_with_single_modality_edges_and_writes_the_heat_map(tmp_path: Path) -> None:
    model = TwoInputLinear()
    runs = []
    for name in ("first", "second"):
        out = tmp_path / name
        results = evaluate_robustness(model, toy_loader(model), make_args(
            attack_type=["pgd", "fgsm"], epsilons=[(0.0, 0.3)], eps_grid2d=[0.3, 0.1]), DistInfo(), out)
        runs.append(out)
    eps_map = json.loads((runs[0] / "eps_map.json").read_text())
    assert eps_map["values"] == [0.0, 0.1, 0.3] and eps_map["attack"] == "pgd"
    cells = eps_map["cells"]
    assert cells[0][0]["key"] == "clean" and cells[0][0]["acc"] == results["clean"]["acc"] == 100.0
    assert [c["key"] for c in cells[0][1:]] == ["A@v0,a0.1", "A@v0,a0.3"]  # ε_v = 0: audio-only budgets
    assert [row[0]["key"] for row in cells[1:]] == ["V@v0.1,a0", "V@v0.3,a0"]  # ε_a = 0: visual-only
    assert cells[2][1]["key"] == "A+V@v0.3,a0.1" and len({c["key"] for row in cells for c in row}) == 9
    protocol = next(e for e in results["attacks"] if e["attack"] == "pgd" and e["budget_key"] == "A@v0,a0.3")
    assert cells[0][2]["acc"] == protocol["adv_acc"]  # the protocol budget is the map's point, evaluated once
    assert cells[2][2]["acc"] < 100.0
    records = load_records(runs[0] / "per_sample.npz")
    assert RecordKey("fgsm", "A@v0,a0.3", "default") in records.keys()  # the protocol budget: every attack
    assert not any(k.attack == "fgsm" and "v0.1" in k.budget for k in records.keys())  # map points: the first only
    assert (runs[0] / "eps_map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    side_by_side = tmp_path / "maps.png"
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), *map(str, runs), "--eps_maps",
                           str(side_by_side)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert side_by_side.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_map = tmp_path / "no_map"
    no_map.mkdir()
    (no_map / "attack_results.json").write_text((runs[0] / "attack_results.json").read_text())
    missing = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(no_map), "--eps_maps",
                              str(tmp_path / "none.png")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no eps_map.json in it or below it" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
