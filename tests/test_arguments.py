"""Flag parsing: dataset presets, explicit flags winning, environment roots, one-line errors."""
from __future__ import annotations

import pytest

import main_attack
from arguments import ArgParser
from dataset.presets import AVE_CATEGORIES, KINETICS_SOUNDS_CATEGORIES, MUSIC_CATEGORIES


def parse(argv):
    return ArgParser("test").add_data_arguments().parse(argv)


def test_presets_fill_categories_counts_and_paths(monkeypatch):
    monkeypatch.delenv("MUSIC_ROOT", raising=False)
    args = parse(["--dataset", "MUSIC"])
    assert args.categories == MUSIC_CATEGORIES and args.cls_num == 11
    assert args.list_train == "data/MUSIC/train.csv" and args.frame_path == "data/MUSIC/frames"
    assert len(AVE_CATEGORIES) == 28 and parse(["--dataset", "AVE"]).cls_num == 28
    assert len(KINETICS_SOUNDS_CATEGORIES) == 27 and parse(["--dataset", "Kinetics"]).cls_num == 27


def test_environment_root_and_explicit_flags_win(monkeypatch, tmp_path):
    monkeypatch.setenv("KINETICS_ROOT", str(tmp_path))
    args = parse(["--dataset", "Kinetics", "--list_val", "/elsewhere/val.csv", "--categories", "a,b", "c"])
    assert args.list_train == str(tmp_path / "train.csv")
    assert args.audio_path == str(tmp_path / "audio")
    assert args.list_val == "/elsewhere/val.csv"
    assert args.categories == ["a", "b", "c"] and args.cls_num == 3
    args = parse(["--dataset", "Kinetics", "--data_root", "/data/ks"])
    assert args.list_test == "/data/ks/test.csv"


def test_synthetic_reads_categories_file(tmp_path):
    (tmp_path / "categories.txt").write_text("zeta\nalpha\n\nbeta\n")
    args = parse(["--dataset", "synthetic", "--data_root", str(tmp_path)])
    assert args.categories == ["zeta", "alpha", "beta"] and args.cls_num == 3


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "MUSIC", "--cls_num", "5"], "--cls_num 5 does not match the 11 --categories"),
    (["--dataset", "imagenet"], "argument --dataset: invalid choice"),
    (["--num_frames", "0"], "argument --num_frames"),
    (["--frameRate", "-8"], "argument --frameRate"),
    (["--bogus_flag", "1"], "unrecognized arguments: --bogus_flag"),
    (["--categories", "a,a"], "--categories: duplicate class names"),
    (["--dataset", "synthetic", "--data_root", "/nonexistent/root"], "categories file not found"),
])
def test_bad_values_are_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert message in lines[0] and "error:" in lines[0]
    assert len(lines) == 2 and "--help" in lines[1]


@pytest.mark.parametrize(("argv", "message"), [
    (["--attack_type", "aa", "--categories", "a,b,c"], "need at least 4 classes"),
    (["--arch_sound", "mel", "--audLen", "512", "--stft_frame", "1022"], "--audLen 512 is shorter than --stft_frame"),
    (["--ssl_momentum", "0.9"], "--ssl_momentum 0.9 does not apply to --arch_classifier concat; it applies to "
                                "ssl_slavc, ssl_slavc_enc"),
    (["--ssl_temperature", "0.05", "--arch_classifier", "loc"], "--ssl_temperature 0.05 does not apply"),
    (["--ssl_momentum", "1", "--arch_classifier", "ssl_slavc"], "argument --ssl_momentum: must be in [0, 1)"),
    (["--ssl_audio_bn", "--arch_classifier", "ssl_slavc"], "--ssl_audio_bn does not apply to --arch_classifier "
                                                           "ssl_slavc; it applies to ssl, ssl_avc, ssl_fnac, ssl_lvs"),
])
def test_flag_combinations_are_checked_against_each_other(argv, message, capsys):
    builder = (ArgParser("test").add_run_arguments(["eval"]).add_data_arguments().add_model_arguments()
               .add_attack_arguments())
    with pytest.raises(SystemExit):
        builder.parse(["--dataset", "MUSIC", *argv])
    assert message in capsys.readouterr().err
    assert builder.parse(["--dataset", "MUSIC", "--attack_type", "aa"]).attack_type == ["aa"]


def test_model_options_of_the_self_supervised_heads_name_the_run() -> None:
    builder = ArgParser("test").add_run_arguments(["eval"]).add_data_arguments().add_model_arguments()
    args = builder.parse(["--dataset", "MUSIC", "--arch_classifier", "ssl_slavc_enc", "--ssl_momentum", "0.9",
                          "--ssl_temperature", "0.05"])
    assert "-ssl_slavc_enc-t0.05-m0.9-" in f"-{args.id}-"
    args = builder.parse(["--dataset", "MUSIC", "--arch_classifier", "ssl", "--ssl_temperature", "0.1",
                          "--ssl_audio_bn"])
    assert "-ssl-t0.1-audiobn-" in f"-{args.id}-"


def test_audio_bn_refuses_frozen_batchnorm(capsys) -> None:
    with pytest.raises(SystemExit):
        main_attack.parse_args(["--mode", "train", "--dataset", "MUSIC", "--arch_classifier", "ssl",
                                "--ssl_audio_bn", "--freeze_bn"])
    assert "--ssl_audio_bn centres the audio projection" in capsys.readouterr().err
