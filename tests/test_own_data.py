"""The README's "Your own dataset" commands, run as written on generated videos (two epochs per model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def own_data_block() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Your own dataset\n")
    begin = text.index("```bash\n", start) + len("```bash\n")
    return text[begin: text.index("```\n", begin)]


def test_the_own_data_section_runs_end_to_end(tmp_path: Path) -> None:
    source = tmp_path / "source"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--out", str(source),
                    "--num_classes", "3", "--per_class", "3", "--size", "64", "--duration", "2", "--workers", "1"],
                   check=True, capture_output=True, text=True)
    work = tmp_path / "work"  # the commands' relative paths (data/, ckpt/) land here, not in the repository
    work.mkdir()
    for name in ("main_attack.py", "main_defense.py", "main_localization.py", "scripts"):
        (work / name).symlink_to(REPO / name)
    script = f'set -euo pipefail\npython() {{ "{sys.executable}" "$@"; }}\n' + own_data_block()
    script = script.replace("VIDEOS=path/to/videos", f"VIDEOS={source / 'videos'}", 1)
    env = dict(os.environ, EPOCHS="2", DEFENSE_EPOCHS="2", BOXES=str(source / "boxes.json"), OMP_NUM_THREADS="1",
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = {p.name.split("-")[1] + ("+dissim" if p.name.endswith("dissim1") else ""): p
            for p in (work / "ckpt" / "mydata").iterdir()}
    assert set(runs) == {"audio", "visual", "concat", "loc", "concat+dissim"}
    kinds = {name: sorted(e["kind"] for e in json.loads((run / "evals" / "index.json").read_text())["evaluations"])
             for name, run in runs.items()}
    assert kinds == {"audio": ["attack", "corruptions"], "visual": ["attack", "corruptions"],
                     "concat": ["attack", "corruptions"], "loc": ["localization", "localization"],
                     "concat+dissim": ["defense"]}
    boxed = json.loads(next((runs["loc"] / "evals").glob("localization_boxes-*/loc_results.json")).read_text())
    assert boxed["num_boxed"] > 0 and "center_prior" in boxed
    assert "| concat+dissim |" in proc.stdout and "defense, clean: concat+dissim" in proc.stdout
    assert "PGD-10 ce [L∞] · A (εa=0.012 amplitude)" in proc.stdout


def test_pictures_with_their_sound_become_videos_preprocess_takes(tmp_path: Path) -> None:
    frames, audio, videos, root = (tmp_path / name for name in ("frames", "audio", "videos", "root"))
    frames.mkdir()
    audio.mkdir()
    rng = np.random.default_rng(0)
    for vid, rate, seconds in (("a1", 16000, 2.0), ("b2", 22050, 1.5)):
        Image.fromarray(rng.integers(0, 255, (37, 51, 3), dtype=np.uint8)).save(frames / f"{vid}.jpg")
        sf.write(audio / f"{vid}.wav", 0.3 * rng.standard_normal((int(rate * seconds), 2)), rate)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(frames / "lonely.jpg")
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "image_audio_to_videos.py"), "--frames", str(frames),
                           "--audio", str(audio), "--out", str(videos), "--class_name", "guitar"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "lonely: picture without sound" in proc.stderr
    assert sorted(p.name for p in (videos / "guitar").iterdir()) == ["a1.mp4", "b2.mp4"]
    subprocess.run([sys.executable, str(REPO / "scripts" / "preprocess.py"), "--videos", str(videos), "--out",
                    str(root), "--workers", "1"], check=True, capture_output=True, text=True)
    for vid, seconds in (("a1", 2.0), ("b2", 1.5)):
        wave, rate = sf.read(root / "audio" / "guitar" / f"{vid}.wav")
        assert rate == 11025 and abs(len(wave) / rate - seconds) < 0.1
        count = len(list((root / "frames" / "guitar" / f"{vid}.mp4").glob("*.jpg")))
        assert abs(count - seconds * 8) <= 1
        with Image.open(root / "frames" / "guitar" / f"{vid}.mp4" / "000001.jpg") as first:
            assert first.size == (50, 36)  # cropped to an even size for yuv420p
