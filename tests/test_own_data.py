"""The README's "Your own dataset" commands, run as written on generated videos (two epochs per model)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def own_data_block() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Your own dataset\n")
    begin = text.index("```bash\n", start) + len("```bash\n")
    return text[begin: text.index("```\n", begin)]


def test_the_own_data_section_runs_end_to_end(tmp_path: Path) -> None:
    source = tmp_path / "source"
    subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--out", str(source),
                    "--num_classes", "3", "--per_class", "4", "--size", "64", "--duration", "2", "--workers", "1"],
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
