"""main_defense.py: dissimilarity training, adversarial training, memory banks, worst-case evaluation."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

import main_attack
import main_defense
from attacks import build_attack
from attacks.threat import ThreatModel
from dataset.loaders import build_dataset, build_loader, to_device
from evaluation.eval_dir import eval_folder_of
from evaluation.robustness.records import RecordKey, load_records
from models import AVModel
from utils.distributed import DistInfo

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["red", "green", "blue"]
COLOURS = [(200, 40, 40), (40, 200, 40), (40, 40, 200)]
TONES = [300.0, 600.0, 1200.0]
RATE, SECONDS, FPS = 11025, 2.0, 8


def write_learnable_root(root: Path, per_class: int = 6) -> Path:
    """Each class: frames of its colour with noise, audio of its tone with noise; train = val = test."""
    rng = np.random.default_rng(0)
    rows = []
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            frame_dir = root / "frames" / name / f"v{i}.mp4"
            frame_dir.mkdir(parents=True)
            for k in range(1, int(SECONDS * FPS) + 1):
                pixels = np.clip(np.array(COLOURS[label]) + rng.normal(0, 40, (32, 32, 3)), 0, 255)
                Image.fromarray(pixels.astype(np.uint8)).save(frame_dir / f"{k:06d}.jpg", quality=95)
            t = np.arange(int(SECONDS * RATE)) / RATE
            wave = 0.3 * np.sin(2 * np.pi * TONES[label] * t) + rng.normal(0, 0.1, t.shape)
            (root / "audio" / name).mkdir(parents=True, exist_ok=True)
            sf.write(root / "audio" / name / f"v{i}.wav", wave.astype(np.float32), RATE, subtype="FLOAT")
            rows.append(f"/{name}/v{i}.wav,/{name}/v{i}.mp4,{int(SECONDS * FPS)}")
    for split in ("train", "val", "test"):
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    (root / "categories.txt").write_text("\n".join(CLASSES) + "\n")
    return root


def flags(root: Path, ckpt: Path, *extra: str, epochs: int = 4, width: int = 16) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", "concat",
            "--arch_frame", "smallcnn", "--frame_dim", str(width), "--arch_sound", "anet", "--sound_dim", str(width),
            "--imgSize", "32", "--audLen", "2048", "--batch_size_per_gpu", "6", "--workers", "0", "--seed", "5",
            "--num_epoch", str(epochs), "--lr_steps", "100", "--lr_frame", "0.05", "--lr_sound", "0.05",
            "--lr_classifier", "0.05", "--device", "cpu", *extra]


def run_dir(argv: list[str]) -> Path:
    args = main_defense.parse_args(argv)
    return Path(args.ckpt) / args.id


def init_from(run: Path) -> list[str]:
    return ["--weights_frame", str(run / "frame_best.pth"), "--weights_sound", str(run / "sound_best.pth"),
            "--weights_classifier", str(run / "classifier_best.pth")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The data and a trained, undefended audio-visual model (main_attack.py)."""
    root = write_learnable_root(tmp_path_factory.mktemp("data"))
    ckpt = tmp_path_factory.mktemp("ckpt")
    argv = flags(root, ckpt, "--mode", "train")
    main_attack.main(argv)
    args = main_attack.parse_args(argv)
    return root, ckpt, Path(args.ckpt) / args.id


def test_undefended_defense_run_is_the_recognition_run_and_suffixes_name_the_training(base):
    root, ckpt, run = base
    assert run_dir(flags(root, ckpt, "--lambda_cos", "0")) == run
    assert run_dir(flags(root, ckpt, "--lambda_cos", "1")).name == run.name + "-dissim1"
    budget = "eps0.012_0.012-steps5"
    assert run_dir(flags(root, ckpt, "--lambda_cos", "0", "--train_mode", "adv")).name == f"{run.name}-adv-{budget}"
    assert run_dir(flags(root, ckpt, "--train_mode", "trades")).name == f"{run.name}-trades6-{budget}"
    # two adversarial trainings with other budgets or steps do not share a folder
    names = {run_dir(flags(root, ckpt, "--train_mode", "adv", *extra)).name
             for extra in ([], ["--train_eps", "0.012", "0"], ["--train_attack_steps", "7"])}
    assert len(names) == 3


def test_lambda_cos_defaults_to_the_dissimilarity_only_for_standard_training():
    assert main_defense.parse_args(["--dataset", "MUSIC"]).lambda_cos == 1.0
    assert main_defense.parse_args(["--dataset", "MUSIC", "--train_mode", "adv"]).lambda_cos == 0.0
    assert main_defense.parse_args(["--dataset", "MUSIC", "--train_mode", "trades"]).lambda_cos == 0.0
    explicit = main_defense.parse_args(["--dataset", "MUSIC", "--train_mode", "adv", "--lambda_cos", "0.5"])
    assert explicit.lambda_cos == 0.5


@pytest.mark.parametrize("flags", [[], ["--train_mode", "adv"], ["--train_mode", "trades"]])
def test_self_supervised_heads_refuse_label_training_at_parse_time(flags, capsys):
    with pytest.raises(SystemExit):
        main_defense.parse_args(["--dataset", "MUSIC", "--mode", "train", "--arch_classifier", "ssl"] + flags)
    assert "self-supervised" in capsys.readouterr().err
    args = main_defense.parse_args(["--dataset", "MUSIC", "--mode", "train", "--arch_classifier", "ssl",
                                    "--lambda_cos", "0"])
    assert args.lambda_cos == 0.0


def test_dissimilarity_term_lowers_audio_visual_cosine(base):
    root, ckpt, run = base
    runs = {}
    for lam in ("0", "1"):
        argv = flags(root, ckpt, "--lambda_cos", lam, "--id", f"lambda{lam}", *init_from(run), epochs=10)
        main_defense.main(["--mode", "train", *argv])
        runs[lam] = json.loads((run_dir(argv) / "history.json").read_text())
    plain, dissim = ([r["train_cos"] for r in runs[lam]] for lam in ("0", "1"))
    assert dissim[-1] < dissim[0] and dissim[-1] < plain[-1] - 0.1, (plain, dissim)


def test_adversarial_training_raises_robust_accuracy(base, tmp_path):
    root, ckpt, run = base
    eps = ["--eps_units", "pixel", "--train_eps", "0.06", "0.06", "--train_attack_steps", "3"]
    adv = flags(root, ckpt, "--lambda_cos", "0", "--train_mode", "adv", *eps, epochs=4)
    main_defense.main(["--mode", "train", *adv, *init_from(run)])
    attack = ["--mode", "eval", "--attack_type", "pgd", "--epsilons", "0.06,0.06", "--eps_units", "pixel",
              "--defense_attacks", "ce", "--num_vis", "0"]
    accs = {}
    for name, argv in (("standard", flags(root, ckpt, "--lambda_cos", "0")), ("adv", adv)):
        main_defense.main([*attack, *argv])
        out = eval_folder_of(run_dir(argv), "defense", main_defense.parse_args([*attack, *argv]))
        assert out.name == "defense_nobanks_ce_pgd_AV_v0.06a0.06_px"
        results = json.loads((out / "attack_results.json").read_text())
        accs[name] = results["attacks"][0]["adv_acc"]
    assert accs["adv"] >= accs["standard"] + 20, accs


def test_trades_trains_and_keeps_its_own_run(base):
    root, ckpt, run = base
    argv = flags(root, ckpt, "--lambda_cos", "0", "--train_mode", "trades", "--eps_units", "pixel",
                 "--train_eps", "0.03", "0.03", "--train_attack_steps", "2", *init_from(run), epochs=1)
    main_defense.main(["--mode", "train", *argv])
    history = json.loads((run_dir(argv) / "history.json").read_text())
    assert len(history) == 1 and np.isfinite(history[0]["train_loss"])


def test_banks_eval_reports_the_worst_adaptive_attack(base):
    root, ckpt, run = base
    argv = flags(root, ckpt, "--lambda_cos", "0", "--bank_size", "8", "--coding_max_iter", "50")
    main_defense.main(["--mode", "build_bank", *argv])
    bank = torch.load(run / "bank_v.pth", weights_only=True)
    assert bank["D"].shape == (16, 8) and bank["meta"]["method"] == "random"
    evaluation = ["--mode", "eval", "--use_banks", "--attack_type", "fgsm", "pgd", "--num_vis", "2", *argv]
    main_defense.main(evaluation)
    out = eval_folder_of(run, "defense", main_defense.parse_args(evaluation))
    results = json.loads((out / "attack_results.json").read_text())
    assert results["label"] == "concat+banks" and results["variants"] == ["ce", "ce+cos", "bpda"]
    records = load_records(out / "per_sample.npz")
    for entry in results["attacks"]:
        assert set(entry["variant_acc"]) == {"ce", "ce+cos", "bpda"}
        # per sample: correct under every variant, so never above the weakest variant's own accuracy
        assert entry["adv_acc"] <= min(entry["variant_acc"].values())
        keys = [RecordKey(entry["attack"], f"{entry['budget']}@v{entry['eps_visual']:g},a{entry['eps_audio']:g}", v)
                for v in ("ce", "ce+cos", "bpda")]
        survived = np.all([records.column(k) == 1 for k in keys], axis=0)
        assert entry["correct"] == int(survived.sum()) and entry["n"] == records.num_samples
    assert results["checks"]["dynamic"]["dynamic"] and "adaptive attacks required" in \
        results["checks"]["dynamic"]["message"]
    assert results["checks"]["verdict"].endswith("(dynamic: adaptive variants ce, ce+cos, bpda evaluated)")
    assert (out / "metrics.json").exists() and (out / "visualization" / "index.html").exists()
    summary = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), str(out)],
                             capture_output=True, text=True, check=True).stdout
    assert "| concat+banks |" in summary


def test_white_box_attack_through_sparse_coding_beats_the_non_adaptive_one(base):
    root, ckpt, run = base
    argv = flags(root, ckpt, "--lambda_cos", "0", "--bank_size", "8", "--use_banks", "--coding_max_iter", "50")
    if not (run / "bank_v.pth").exists():
        main_defense.main(["--mode", "build_bank", *argv])
    args = main_defense.parse_args(argv)
    defended, _ = main_defense.defended_model(args, DistInfo())
    defended.eval()
    plain = AVModel(defended.net_frame, defended.net_sound, defended.net_classifier)
    loader = build_loader(build_dataset(args, "test"), args, DistInfo(), train=False)
    eps = {"visual": 0.1, "audio": 0.1}
    correct = {"clean": 0, "non_adaptive": 0, "white_box": 0}
    for batch in loader:
        frames, audio, labels = to_device(batch, torch.device("cpu"))
        with torch.no_grad():
            correct["clean"] += (defended(frames, audio).logits.argmax(1) == labels).sum().item()
        for name, target in (("non_adaptive", plain), ("white_box", defended)):
            adv = build_attack("pgd", target, ThreatModel.of(eps, units="pixel"))(frames, audio, labels)
            with torch.no_grad():
                correct[name] += (defended(*adv).logits.argmax(1) == labels).sum().item()
    assert correct["white_box"] <= correct["non_adaptive"] and correct["white_box"] < correct["clean"], correct


def test_bank_of_another_feature_size_fails_clearly(base, tmp_path, capsys):
    root, ckpt, run = base
    if not (run / "bank_v.pth").exists():
        main_defense.main(["--mode", "build_bank", *flags(root, ckpt, "--lambda_cos", "0", "--bank_size", "8")])
    wide = flags(root, ckpt, "--lambda_cos", "0", epochs=1, width=32)
    main_defense.main(["--mode", "train", *wide])
    with pytest.raises(SystemExit) as exit_info:
        main_defense.main(["--mode", "eval", "--use_banks", "--weights_Dv", str(run / "bank_v.pth"),
                           "--attack_type", "none", *wide])
    message = str(exit_info.value)
    assert "bank_v.pth" in message and "16" in message and "32" in message
