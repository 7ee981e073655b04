"""Training options of the self-supervised localizers end to end through main_attack.py: the collapse detector
stops a training whose clips are all the same (--on_collapse stop) with its figures, and --weights_frame simclr
pretrains the frame encoder on the training frames first."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import main_attack
from tests.test_localization import model_flags, write_synthetic_root
from training.engine import run_dir_of

pytestmark = pytest.mark.usefixtures("one_thread")


def ssl_flags(root: Path, ckpt: Path, epochs: int) -> list[str]:
    flags = model_flags(root, ckpt)
    flags[flags.index("loc")] = "ssl"
    flags[flags.index("--num_epoch") + 1] = str(epochs)
    return flags


def test_collapse_stops_a_training_on_identical_clips(tmp_path: Path) -> None:
    """Every frame the same grey picture and every clip silent: every embedding is the same, retrieval is at
    chance, and --on_collapse stop ends the training after its second epoch with the numbers."""
    root = tmp_path / "data"
    write_synthetic_root(root)
    grey = Image.new("RGB", (64, 64), (120, 120, 120))
    for picture in (root / "frames").rglob("*.jpg"):
        grey.save(picture)
    for wav in (root / "audio").rglob("*.wav"):
        sf.write(wav, np.zeros(11025, dtype=np.float32), 11025, subtype="FLOAT")
    flags = ssl_flags(root, tmp_path / "ckpt", epochs=4)
    with pytest.raises(SystemExit, match=r"collapsed: embedding spread audio 1\.000.*retrieval 0\.\d+ vs chance "
                                         r"0\.100.*after epoch 1"):
        main_attack.main(["--mode", "train", *flags, "--on_collapse", "stop"])
    history = json.loads((Path(run_dir_of(main_attack.parse_args(flags))) / "history.json").read_text())
    assert len(history) == 2 and history[-1]["spread_a"] > 0.99


def test_simclr_pretraining_runs_before_training(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "data"
    write_synthetic_root(root)
    flags = ssl_flags(root, tmp_path / "ckpt", epochs=1)
    main_attack.main(["--mode", "train", *flags, "--weights_frame", "simclr", "--pretrain_epochs", "2"])
    run = Path(run_dir_of(main_attack.parse_args(flags)))
    pretraining = json.loads((run / "simclr_history.json").read_text())
    assert [entry["epoch"] for entry in pretraining] == [0, 1]
    assert all(np.isfinite(entry["simclr_loss"]) for entry in pretraining)
    history = json.loads((run / "history.json").read_text())
    assert {"spread_a", "spread_v", "retrieval", "retrieval_chance"} <= set(history[0])
    with pytest.raises(SystemExit, match="--weights_frame simclr"):
        main_attack.main(["--mode", "eval", *flags, "--weights_frame", "simclr"])


def test_ssl_training_options_are_refused_where_they_do_not_apply(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_synthetic_root(root)
    loc = model_flags(root, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="--ssl_uniformity, --ssl_warmup_epochs, --ssl_pitch_shift apply to the "
                                         "self-supervised heads"):
        main_attack.main(["--mode", "train", *loc, "--ssl_uniformity", "1", "--ssl_warmup_epochs", "1",
                          "--ssl_pitch_shift", "1.2"])
    with pytest.raises(ValueError, match="--ssl_warmup_epochs 2 leaves no epoch"):
        main_attack.main(["--mode", "train", *ssl_flags(root, tmp_path / "ckpt", epochs=2), "--ssl_warmup_epochs", "2"])
