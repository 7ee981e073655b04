"""The embedded dataset through the real pipeline: make_synthetic -> preprocess -> create_index -> loader."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from dataset.av_dataset import AVDataset
from dataset.presets import read_categories_file

REPO = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def test_synthetic_videos_become_a_loadable_sop_dataset(tmp_path):
    src, root = tmp_path / "src", tmp_path / "root"
    run("make_synthetic.py", "--out", str(src), "--num_classes", "3", "--per_class", "3", "--size", "64",
        "--duration", "2", "--workers", "1")
    run("preprocess.py", "--videos", str(src / "videos"), "--out", str(root), "--workers", "1")
    (root / "categories.txt").write_text((src / "categories.txt").read_text())
    run("create_index.py", "--root", str(root), "--split", "0.34", "0.33", "0.33")
    categories = read_categories_file(root / "categories.txt")
    boxes = json.loads((src / "boxes.json").read_text())
    rows = [line.split(",") for split in ("train", "val", "test")
            for line in (root / f"{split}.csv").read_text().splitlines()]
    assert len(rows) == 9 and {r[2] for r in rows} == {"16"}  # 2 s at 8 fps
    for split in ("train", "val", "test"):
        ds = AVDataset(str(root / f"{split}.csv"), str(root / "audio"), str(root / "frames"), categories,
                       img_size=64, aud_len=11025, train=split == "train", skip_bad=True)
        assert len(ds) == 3
        for i in range(len(ds)):
            item = ds[i]
            assert item["frames"].shape == (3, 1, 64, 64) and item["audio"].shape == (1, 11025)
            assert item["label"].item() == boxes["videos"][item["info"]]["label"]
            assert item["audio"].abs().max() > 0.05 and torch.isfinite(item["audio"]).all()
    stats = run("dataset_stats.py", "--dataset", "synthetic", "--data_root", str(root), "--imgSize", "64",
                "--audLen", "4096", "--workers", "0")
    assert "total" in stats.stdout and "frames per clip: min 16" in stats.stdout
    rerun = run("preprocess.py", "--videos", str(src / "videos"), "--out", str(root), "--workers", "1")
    assert "skipped (already done): 9" in rerun.stdout
