"""Run folders and evaluation folders: one folder per evaluation, runs addressed by --run, runs that cannot be
mixed up (retraining, locks, label order, training index), one-line errors."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main_attack
import main_defense
from evaluation.eval_dir import default_name, find_evaluations
from tests.sop_fixture import make_root
from training.chance import ChanceWatch
from utils.folders import LOCK_FILE, FolderError, folder_lock

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat_a", "cat_b", "cat_c"]


def flags(root: Path, ckpt: Path, run_id: str = "", seed: str = "3") -> list[str]:
    extra = ["--id", run_id] if run_id else []
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", "concat",
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--imgSize", "32", "--audLen", "2048", "--batch_size_per_gpu", "4", "--workers", "0",
            "--num_epoch", "1", "--lr_steps", "5", "--seed", seed] + extra


QUICK = ["--num_vis", "0", "--sanity_eps", "0", "--workers", "0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_root(tmp_path_factory.mktemp("data"), CLASSES, per_class=2, num_frames=24)
    ckpt = tmp_path_factory.mktemp("ckpt")
    main_attack.main(["--mode", "train"] + flags(root, ckpt))
    return root, ckpt, ckpt / main_attack.parse_args(flags(root, ckpt)).id


def error_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main_attack.main(argv)
    text = capsys.readouterr().err + (exit_info.value.code if isinstance(exit_info.value.code, str) else "")
    return text


def test_two_threat_models_keep_two_folders_listed_in_the_index(trained, capsys):
    _, _, run = trained
    main_attack.main(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"] + QUICK)
    main_attack.main(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm", "--norm", "l2",
                      "--epsilons", "1,0", "0,0.5"] + QUICK)
    linf, l2 = run / "evals" / "attack_fgsm_paper", run / "evals" / "attack_fgsm_V_l2-v1a0+A_l2-v0a0.5"
    for folder in (linf, l2):
        assert (folder / "attack_results.json").is_file() and (folder / "per_sample.npz").is_file()
        assert (folder / "attack_table.md").is_file() and (folder / "acc_vs_eps.png").is_file()
    assert json.loads((linf / "attack_results.json").read_text()).get("norm", "linf") == "linf"
    assert json.loads((l2 / "attack_results.json").read_text())["norm"] == "l2"
    record = json.loads((l2 / "eval.json").read_text())
    assert record["status"] == "complete" and "--norm l2" in record["command"]
    assert "attack_results.json" in record["files"] and record["flags"]["norm"] == "l2"
    index = json.loads((run / "evals" / "index.json").read_text())
    names = {e["name"] for e in index["evaluations"]}
    assert {linf.name, l2.name} <= names
    assert set(find_evaluations(run, "attack")) >= {linf, l2}

    before = (linf / "attack_results.json").stat().st_mtime_ns
    capsys.readouterr()
    main_attack.main(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"] + QUICK)
    assert "reusing" in capsys.readouterr().out
    assert (linf / "attack_results.json").stat().st_mtime_ns == before

    named = ["--mode", "eval", "--run", str(run), "--eval_name", "mine"] + QUICK
    main_attack.main(named + ["--attack_type", "fgsm"])
    message = error_of(named + ["--attack_type", "pgd"], capsys)
    assert "already holds another attack evaluation" in message and "--attack_type pgd (saved: fgsm)" in message
    main_attack.main(named + ["--attack_type", "pgd", "--overwrite"])
    assert json.loads((run / "evals" / "mine" / "attack_results.json").read_text())["attacks"][0]["attack"] == "pgd"


def test_eval_samples_evaluates_a_stratified_subset_of_the_same_run_into_its_own_folder(trained):
    _, _, run = trained
    argv = ["--mode", "eval", "--run", str(run), "--attack_type", "fgsm", "--eval_samples", "3"] + QUICK
    args = main_attack.parse_args(argv)
    assert Path(args.ckpt) / args.id == run
    main_attack.main(argv)
    folder = run / "evals" / default_name("attack", args)
    assert folder.name.endswith("_e3") and folder != run / "evals" / default_name(
        "attack", main_attack.parse_args(argv[:-len(QUICK) - 2] + QUICK))
    with np.load(folder / "per_sample.npz") as records:
        assert sorted(records["labels"].tolist()) == [0, 1, 2]
    assert json.loads((folder / "eval.json").read_text())["flags"]["eval_samples"] == 3


def test_run_folder_gives_the_training_flags_and_refuses_other_shapes(trained, capsys):
    root, ckpt, run = trained
    args = main_attack.parse_args(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"])
    assert (args.imgSize, args.audLen, args.arch_frame, args.frame_dim, args.seed) == (32, 2048, "smallcnn", 16, 3)
    assert Path(args.ckpt) / args.id == run
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--mode", "eval", "--run", str(run), "--imgSize", "96"])
    err = capsys.readouterr().err
    assert "--imgSize 96 (the run: 32)" in err and len(err.strip().splitlines()) <= 2
    repeated = flags(root, ckpt)
    repeated[repeated.index("--audLen") + 1] = "4096"
    message = error_of(["--mode", "eval", "--attack_type", "fgsm"] + QUICK + repeated, capsys)
    assert "--audLen 4096 (the run: 2048)" in message


def test_training_again_into_a_finished_run_is_refused_or_cleared(trained, capsys):
    root, ckpt, _ = trained
    base = flags(root, ckpt, run_id="again")
    main_attack.main(["--mode", "train"] + base)
    run = ckpt / main_attack.parse_args(base).id
    main_attack.main(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"] + QUICK)
    other_seed = flags(root, ckpt, run_id="again", seed="4")
    assert "already holds a run" in error_of(["--mode", "train"] + other_seed, capsys)
    assert "--seed 4 (the run: 3)" in error_of(["--mode", "train", "--resume"] + other_seed, capsys)
    weights = (run / "classifier_latest.pth").resolve().read_bytes()
    main_attack.main(["--mode", "train", "--overwrite"] + other_seed)
    assert not (run / "evals").exists()  # the old model's results are gone with it
    assert json.loads((run / "args.json").read_text())["seed"] == 4
    assert (run / "classifier_latest.pth").resolve().read_bytes() != weights


def test_a_lock_keeps_a_second_writer_out_and_a_stale_one_is_taken_over(trained, capsys, tmp_path):
    root, ckpt, _ = trained
    base = flags(root, ckpt, run_id="locked")
    run = ckpt / main_attack.parse_args(base).id
    with folder_lock(run, "test"):
        message = error_of(["--mode", "train"] + base, capsys)
        assert str(run / LOCK_FILE) in message and f"process {os.getpid()}" in message
        with pytest.raises(FolderError), folder_lock(run, "again"):
            pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": int(dead.stdout), "host": os.uname().nodename}))
    main_attack.main(["--mode", "train"] + base)
    assert not (run / LOCK_FILE).exists() and (run / "classifier_best.pth").exists()


def test_a_reordered_categories_file_is_refused_at_evaluation(trained, capsys):
    root, ckpt, run = trained
    categories = root / "categories.txt"
    try:
        categories.write_text("\n".join(reversed(CLASSES)) + "\n")
        message = error_of(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"] + QUICK, capsys)
        assert "cat_a, cat_b, cat_c" in message and "cat_c, cat_b, cat_a" in message
        message = error_of(["--mode", "eval", "--attack_type", "fgsm"] + QUICK + flags(root, ckpt), capsys)
        assert "label order" in message
    finally:
        categories.write_text("\n".join(CLASSES) + "\n")
    train_csv = root / "train.csv"
    rows = train_csv.read_text()
    try:
        train_csv.write_text("\n".join(rows.splitlines()[:-1]) + "\n")
        assert "changed since" in error_of(["--mode", "eval", "--run", str(run), "--attack_type", "fgsm"] + QUICK,
                                           capsys)
    finally:
        train_csv.write_text(rows)


def test_evaluation_names_follow_the_threat_model():
    args = main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", "pgd"])
    assert default_name("attack", args) == "attack_pgd_paper"
    args = main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", "pgd", "--audio_eps_db", "-30"])
    assert default_name("attack", args) == "attack_pgd_A_v0a-30dB+V_v0.012a0+AV_v0.006a-30dB"
    args = main_attack.parse_args(["--dataset", "MUSIC", "--attack_type", "pgd", "--eps_units", "pixel",
                                   "--attack_loss", "dlr", "--corruptions", "jpeg", "--corruption_severities", "1",
                                   "3"])
    assert default_name("attack", args) == "attack_pgd_paper_px_loss-dlr"
    assert default_name("corruptions", args) == "corruptions_jpeg_sev13"


def test_chance_level_training_warns_once_after_three_epochs():
    watch = ChanceWatch(num_classes=10)
    at_chance = {"train_loss": 2.30, "train_acc": 11.0}
    assert watch.update({**at_chance, "epoch": 0}) is None and watch.update({**at_chance, "epoch": 1}) is None
    warning = watch.update({**at_chance, "epoch": 2})
    assert warning and "chance level for 3 epochs" in warning
    assert watch.update({**at_chance, "epoch": 3}) is None
    learning = ChanceWatch(num_classes=10)
    for epoch in range(5):
        assert learning.update({"train_loss": 2.3 - 0.3 * epoch, "train_acc": 10.0 + 12 * epoch}) is None or epoch < 2


@pytest.mark.parametrize("argv, expected", [
    (["--bogus_flag"], "unrecognized arguments: --bogus_flag"),
    (["--arch_frame", "resnet18", "--frame_dim", "64"], "--frame_dim 64 does not apply to --arch_frame resnet18"),
    (["--attack_alpha", "0.001", "--audio_eps_db", "-30"], "--attack_alpha with --audio_eps_db"),
    (["--mode", "train", "--eval_name", "x"], "--eval_name names an evaluation folder"),
    (["--mode", "train", "--eval_samples", "60"], "--eval_samples picks the test clips of an evaluation"),
])
def test_bad_flags_end_in_one_line_and_a_hint(argv, expected):
    proc = subprocess.run([sys.executable, str(REPO / "main_attack.py"), "--dataset", "MUSIC", *argv],
                          capture_output=True, text=True)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 2, proc.stderr
    assert expected in lines[0] and "--help" in lines[1]


def test_the_defense_reads_an_undefended_run_as_undefended(trained, capsys):
    _, _, run = trained
    args = main_defense.parse_args(["--mode", "eval", "--run", str(run), "--use_banks"])
    assert args.lambda_cos == 0 and args.train_mode == "standard" and Path(args.ckpt) / args.id == run
    assert main_defense.defense_label(args) == "concat+banks"
    with pytest.raises(SystemExit):
        main_defense.parse_args(["--mode", "eval", "--run", str(run), "--lambda_cos", "1"])
    assert "--lambda_cos 1.0 (the run: 0.0)" in capsys.readouterr().err


def test_dataset_statistics_of_a_run_use_its_data_and_shapes(trained, capsys, monkeypatch):
    _, _, run = trained
    spec = importlib.util.spec_from_file_location("dataset_stats", REPO / "scripts" / "dataset_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", ["dataset_stats.py", "--run", str(run)])
    module.main()
    out = capsys.readouterr().out
    assert "3 classes" in out and "frames (6, 3, 1, 32, 32)" in out and "audio (6, 1, 2048)" in out
