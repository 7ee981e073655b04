"""main_attack.py --mode eval end to end: budgets, results file, table, figures, HTML page, summary."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import main_attack
from evaluation.eval_dir import eval_folder_of
from evaluation.reporting.html import perturbation_caption, waveform_image
from evaluation.robustness.protocol import PAPER_PROTOCOL, Budget, budgets_from_args
from tests.sop_fixture import make_root, write_clip, write_index

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat_a", "cat_b", "cat_c"]
ODD_ID = "odd&'<b>id"  # a sample id that must be escaped in HTML and sanitised in file names


def flags(root: Path, ckpt: Path, head: str) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", head,
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--imgSize", "32", "--audLen", "2048", "--batch_size_per_gpu", "4", "--workers", "0",
            "--num_epoch", "1", "--lr_steps", "5", "--seed", "3"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A dataset with an oddly named sample, and trained concat and audio runs."""
    root = tmp_path_factory.mktemp("data")
    make_root(root, CLASSES, per_class=2, num_frames=24)
    odd_row = write_clip(root, "cat_b", ODD_ID, 24)
    test_rows = (root / "test.csv").read_text().splitlines() + [odd_row]
    write_index(root, "test.csv", test_rows)
    ckpt = tmp_path_factory.mktemp("ckpt")
    for head in ("concat", "audio"):
        main_attack.main(["--mode", "train"] + flags(root, ckpt, head))
    return root, ckpt


def run_dir(root: Path, ckpt: Path, head: str) -> Path:
    return Path(ckpt) / main_attack.parse_args(flags(root, ckpt, head)).id


def test_budgets_default_to_the_paper_protocol_and_grid_adds_points():
    args = main_attack.parse_args(["--dataset", "MUSIC"])
    assert budgets_from_args(args) == list(PAPER_PROTOCOL)
    assert [b.name for b in PAPER_PROTOCOL] == ["A", "V", "A+V"]
    assert (PAPER_PROTOCOL[0].eps_audio, PAPER_PROTOCOL[1].eps_visual, PAPER_PROTOCOL[2].eps_audio) == (
        0.012, 0.012, 0.006)
    args = main_attack.parse_args(["--dataset", "MUSIC", "--epsilons", "0.01,0", "0.002,0.003",
                                   "--eps_grid", "0.01", "0.02", "--eps_grid_modality", "visual"])
    budgets = budgets_from_args(args)
    assert budgets == [Budget(0.01, 0.0), Budget(0.002, 0.003), Budget(0.02, 0.0, grid=True)]


def test_attack_flags_are_validated_and_fsgm_is_fgsm(capsys):
    args = main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", "fsgm", "FGSM", "pgd"])
    assert args.attack_type == ["fgsm", "pgd"]
    assert main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", "none"]).attack_type == []
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--dataset", "MUSIC", "--epsilons", "0.01"])
    assert "expected EPS_VISUAL,EPS_AUDIO" in capsys.readouterr().err


def test_eval_writes_results_table_figures_and_html(trained):
    root, ckpt = trained
    argv = ["--mode", "eval", "--attack_type", "fgsm", "pgd", "--eps_grid", "0.05", "--eps_grid_modality", "both",
            "--num_vis", "7"] + flags(root, ckpt, "concat")
    main_attack.main(argv)
    out = eval_folder_of(run_dir(root, ckpt, "concat"), "attack", main_attack.parse_args(argv))
    assert out.name == "attack_fgsm+pgd_paper_grid0.05-both"
    results = json.loads((out / "attack_results.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    assert results["num_samples"] == metrics["num_samples"] == 7
    assert results["clean"]["acc"] == pytest.approx(metrics["test_acc"])
    keys = [(e["attack"], e["budget"], e["grid"]) for e in results["attacks"]]
    assert keys == [(a, b, g) for a in ("fgsm", "pgd") for b, g in (("A", False), ("V", False), ("A+V", False),
                                                                     ("A+V", True))]
    for entry in results["attacks"]:
        assert 0 <= entry["adv_acc"] <= 100 and entry["seconds"] > 0
        assert len(entry["cos_adv"]) == 7 and -1 <= entry["cos_adv_mean"] <= 1
        assert set(entry["per_class_adv_acc"]) == set(CLASSES)
    grid = next(e for e in results["attacks"] if e["grid"])
    assert grid["eps_visual"] == grid["eps_audio"] == 0.05
    table = (out / "attack_table.md").read_text()
    assert "| FGSM |" in table and "| PGD |" in table and "A+V (εv=0.006, εa=0.006)" in table
    for figure in ("acc_vs_eps.png", "cos_sim.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "visualization" / "index.html").read_text()
    assert page.count("<tr>") == 1 + 7
    assert "odd&amp;&#x27;&lt;b&gt;id" in page and ODD_ID not in page
    assets = sorted(p.name for p in (out / "visualization" / "assets").iterdir())
    assert all("<" not in name and "&" not in name and "'" not in name for name in assets)
    assert sum(name.endswith(".wav") for name in assets) == 7 * 4  # clean + A, V, A+V per sample
    assert sum(name.endswith("_wave.png") for name in assets) == 7 * 3  # the audio perturbation per budget
    audio_snr = page.count("SNR ") - page.count("PSNR ")
    assert audio_snr == 7 * 2 and page.count("PSNR ") == 7 * 2  # A and A+V attack the audio, V and A+V frames
    clean_wav = next(p for p in (out / "visualization" / "assets").glob("000_*.wav") if "_A" not in p.name)
    wave, rate = sf.read(clean_wav)
    assert rate == 11025 and len(wave) == 2048 and np.abs(wave).max() <= 1


def test_unattacked_modality_of_a_unimodal_model_leaves_accuracy_unchanged(trained):
    root, ckpt = trained
    argv = ["--mode", "eval", "--attack_type", "pgd", "--num_vis", "0"] + flags(root, ckpt, "audio")
    main_attack.main(argv)
    out = eval_folder_of(run_dir(root, ckpt, "audio"), "attack", main_attack.parse_args(argv))
    results = json.loads((out / "attack_results.json").read_text())
    visual_only = next(e for e in results["attacks"] if e["budget"] == "V")
    assert visual_only["adv_acc"] == results["clean"]["acc"]
    assert "does not use the visual input" in visual_only["unchanged"] and visual_only["seconds"] == 0.0
    assert not any("unchanged" in e for e in results["attacks"] if e["budget"] != "V")
    assert "V (εv=0.012): not attacked: the model does not use the visual input" in \
        (out / "attack_table.md").read_text()
    assert results["clean"]["cos_mean"] is None and not (out / "cos_sim.png").exists()
    assert not (out / "visualization").exists()


def summarize(capsys, monkeypatch, *argv: str) -> tuple[int | str, str, str]:
    """scripts/summarize.py in this process: (exit status or message, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("summarize", REPO / "scripts" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["summarize.py", *argv])
    status: int | str = 0
    try:
        module.main()
    except SystemExit as exit_info:
        status = exit_info.code
    out = capsys.readouterr()
    return status, out.out, out.err + (status if isinstance(status, str) else "")


def test_summarize_prints_the_study_table_and_findings(trained, capsys, monkeypatch):
    root, ckpt = trained
    dirs = []
    for head in ("audio", "concat"):
        argv = ["--mode", "eval", "--attack_type", "pgd", "--num_vis", "0"] + flags(root, ckpt, head)
        main_attack.main(argv)  # reused when an earlier test ran it
        dirs.append(str(eval_folder_of(run_dir(root, ckpt, head), "attack", main_attack.parse_args(argv))))
    capsys.readouterr()
    csv_path, json_path = Path(ckpt) / "table.csv", Path(ckpt) / "table.json"
    status, out, _ = summarize(capsys, monkeypatch, *dirs, "--csv", str(csv_path), "--json", str(json_path),
                               "--findings")
    assert status == 0
    assert "| model | evaluation | clean |" in out and "| audio |" in out and "| concat |" in out
    assert "PGD-10 ce [L∞] · A (εa=0.012 amplitude)" in out
    assert "PGD-10 ce [L∞] · A+V (εv=0.006 ImageNet-normalised, εa=0.006 amplitude)" in out
    assert "clean accuracy: concat" in out and "exact McNemar p =" in out and "shared samples" in out
    lines = csv_path.read_text().splitlines()
    assert lines[0].startswith("model,evaluation,clean,") and len(lines) == 3
    table = json.loads(json_path.read_text())
    assert [c["budget"] for c in table["columns"]] == ["A", "V", "A+V"]
    assert {r["model"] for r in table["rows"]} == {"audio", "concat"}
    status, out, _ = summarize(capsys, monkeypatch, str(ckpt))  # a whole ckpt/ tree: every evaluation below it
    assert status == 0 and "| audio | " in out and "| concat" in out
    empty = Path(ckpt) / "empty"
    empty.mkdir()
    status, _, err = summarize(capsys, monkeypatch, str(empty))
    assert status != 0 and "no attack_results.json in it or below it" in err
    broken = Path(dirs[0]) / "per_sample.npz"
    saved = broken.read_bytes()
    try:
        broken.write_bytes(saved[: len(saved) // 2])
        corrupt = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), dirs[0], "--findings"],
                                 capture_output=True, text=True)
        assert corrupt.returncode != 0 and "cannot read the per-sample records" in corrupt.stderr
        assert len(corrupt.stderr.strip().splitlines()) == 1
    finally:
        broken.write_bytes(saved)


def test_waveform_image_and_caption_show_the_perturbation():
    delta = torch.zeros(1, 100)
    delta[0, 50] = 0.01  # one positive spike: it reaches the top row, nothing reaches the bottom
    image = waveform_image(delta, width=100, height=21)
    assert (image[0] != 255).any() and (image[-1] == 255).all() and (image[10] != 255).all()
    assert (waveform_image(torch.zeros(1, 100)) != 255).sum() > 0  # the zero line only
    frames, audio = torch.full((3, 1, 4, 4), 0.5), torch.full((1, 100), 0.1)
    caption = perturbation_caption(frames, frames + 2 / 255, audio, audio + 0.01)
    # SNR = 10 log10(100 * 0.1^2 / (100 * 0.01^2)) = 20 dB; L∞ 2/255; PSNR = -10 log10((2/255)^2) = 42.1 dB
    assert caption == "SNR 20.0 dB, L∞ 2.00/255, PSNR 42.1 dB"
    assert perturbation_caption(frames, frames.clone(), audio, audio.clone()) == "inputs unchanged"
