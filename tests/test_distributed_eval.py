"""Every evaluation mode gives the same numbers under torchrun with 2 gloo CPU processes as in one process.

A tiny rendered synthetic dataset (SoP layout plus boxes.json) whose test split has 7 clips, so that with
2 ranks and batches of 2 the shards are unequal (4 and 3 samples) and each rank ends on a short batch; a
DistributedSampler would pad rank 1 with a repeat of sample 0, which metrics.json's count and the per-sample
records (each sample once) would show. Two
tiny models are trained once, in-process: a ``concat`` one (attack and defense evaluations) and a ``loc``
one (localization). Each evaluation then runs once in this process and once through the real torchrun on a
copy of the run folder, and the outputs are compared: every count and per-sample integer column exactly and
in dataset order, floating-point figures to ``FLOAT_TOL``. BatchNorm is in eval mode, so a sample's numbers do
not depend on its batch mates in exact arithmetic; in float32 the convolutions round differently for another
batch size (logits differ by ~1e-7), and where an attack takes the sign of a gradient component that is
about 0 that component may flip, moving the loss by ~1e-5 relative (observed: < 2e-5).

Random draws (random starts, AutoAttack's random starts, Square's search, the sanity PGD) come from one
generator per sample, seeded from --seed and the sample's dataset index, so they are compared too.

The localization metrics that rank the pixels of the upsampled map (cIoU's median mask, the peak, the top
mass) need exact ties where the map repeats a cell: the maps are upsampled in float64 for that, and
``test_localization_pixel_ranking_metrics_match_one_process`` holds them to the float tolerance.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import main_attack
import main_defense
import main_localization
from dataset.generators.synthetic import SynthConfig, class_names
from evaluation.eval_dir import find_evaluations
from evaluation.robustness.records import load_records
from tests.sop_fixture import write_rendered_clip
from training.engine import run_dir_of

REPO = Path(__file__).resolve().parents[1]
SEED = 3
NUM_CLASSES = 4  # APGD-T needs 4
TRAIN_PER_CLASS = 2
TEST_PER_CLASS = (2, 2, 2, 1)  # 7 test clips: odd, so the two ranks' shards differ in size
NUM_TEST = sum(TEST_PER_CLASS)
BATCH = 2
FLOAT_TOL = {"rtol": 1e-4, "atol": 1e-5}  # float32 rounding and flipped signs of ~0 gradients: see above
EPSILONS = ["--epsilons", "0.25,0", "0.1,0.05"]
SUBSET = 5  # --eval_samples: one or two clips per class, an odd count again
pytestmark = pytest.mark.usefixtures("one_thread")


def write_root(root: Path) -> Path:
    """Rendered synthetic clips in the SoP layout; train.csv = val.csv (8 clips), test.csv (7 clips).
    Returns the boxes.json path."""
    names = class_names(NUM_CLASSES)
    config = SynthConfig(num_classes=NUM_CLASSES, per_class=TRAIN_PER_CLASS + max(TEST_PER_CLASS), seed=SEED,
                         size=64, duration=1.0, fps=8, audio_rate=11025, p_distractor=0.0, p_occlusion=0.0,
                         p_noise_burst=0.0, p_audio_distractor=0.0)
    rows: dict[str, list[str]] = {"train": [], "test": []}
    videos = {}
    for c, name in enumerate(names):
        for v in range(TRAIN_PER_CLASS + TEST_PER_CLASS[c]):
            row, key, meta = write_rendered_clip(root, config, SEED, c, v, name)
            rows["train" if v < TRAIN_PER_CLASS else "test"].append(row)
            videos[key] = meta
    (root / "train.csv").write_text("\n".join(rows["train"]) + "\n")
    (root / "val.csv").write_text("\n".join(rows["train"]) + "\n")
    (root / "test.csv").write_text("\n".join(rows["test"]) + "\n")
    (root / "categories.txt").write_text("\n".join(names) + "\n")
    boxes = root / "boxes.json"
    boxes.write_text(json.dumps({"size": [64, 64], "videos": videos}))
    return boxes


def model_flags(root: Path, ckpt: Path, head: str) -> list[str]:
    return ["--dataset", "synthetic", "--data_root", str(root), "--ckpt", str(ckpt), "--arch_classifier", head,
            "--arch_frame", "smallcnn", "--frame_dim", "16", "--arch_sound", "anet", "--sound_dim", "16",
            "--imgSize", "64", "--audLen", "2048", "--batch_size_per_gpu", str(BATCH), "--workers", "0",
            "--num_epoch", "6", "--lr_steps", "50", "--lr_frame", "0.01", "--lr_sound", "0.01",
            "--lr_classifier", "0.05", "--seed", str(SEED), "--device", "cpu", "--num_vis", "0"]


def with_ckpt(flags: list[str], ckpt: Path) -> list[str]:
    out = list(flags)
    out[out.index("--ckpt") + 1] = str(ckpt)
    return out


def torchrun(script: str, argv: list[str]) -> None:
    """``script argv`` through torchrun with 2 gloo processes on the CPU."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / script), *argv, "--num_gpus", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]


class Twins:
    """One trained run copied into two checkpoint folders: ``single`` for the one-process evaluation and
    ``ddp`` for the torchrun one."""

    def __init__(self, flags: list[str], base: Path) -> None:
        self.flags = flags
        run = Path(run_dir_of(main_attack.parse_args(flags)))
        self.runs = {}
        for name in ("single", "ddp"):
            shutil.copytree(run, base / name / run.name)
            self.runs[name] = base / name / run.name

    def argv(self, name: str, *extra: str) -> list[str]:
        return [*with_ckpt(self.flags, self.runs[name].parent), *extra]

    def run_both(self, entry_point, script: str, *extra: str) -> None:
        entry_point.main(self.argv("single", *extra))
        torchrun(script, self.argv("ddp", *extra))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return root, write_root(root)


@pytest.fixture(scope="module")
def concat_run(data, tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], Path]:
    """The ``concat`` model trained under ``<base>/trained`` with its memory banks (built in one process:
    build_bank refuses more); returns (its flags, base)."""
    base = tmp_path_factory.mktemp("concat")
    flags = model_flags(data[0], base / "trained", "concat")
    main_attack.main(["--mode", "train", *flags])
    main_defense.main([*flags, "--mode", "build_bank", "--lambda_cos", "0", "--bank_size", "8"])
    return flags, base


@pytest.fixture(scope="module")
def attack_eval(concat_run) -> Twins:
    flags, base = concat_run
    twins = Twins(flags, base / "attack")
    twins.run_both(main_attack, "main_attack.py", "--mode", "eval", "--attack_type", "fgsm", "pgd", "apgd",
                   "apgd-t", "autoattack", "--attack_steps", "3", "--apgd_steps", "3", "--apgd_targets", "2",
                   "--square_queries", "20", "--random_start", "--sanity_eps", "0.3", *EPSILONS)
    return twins


@pytest.fixture(scope="module")
def subset_eval(concat_run) -> Twins:
    """PGD on the class-stratified ``--eval_samples`` subset of the test split (5 of its 7 clips)."""
    flags, base = concat_run
    twins = Twins(flags, base / "subset")
    twins.run_both(main_attack, "main_attack.py", "--mode", "eval", "--attack_type", "pgd", "--attack_steps", "2",
                   "--eval_samples", str(SUBSET), "--sanity_eps", "0", *EPSILONS)
    return twins


@pytest.fixture(scope="module")
def defense_eval(concat_run) -> Twins:
    flags, base = concat_run
    twins = Twins(flags, base / "defense")
    twins.run_both(main_defense, "main_defense.py", "--mode", "eval", "--lambda_cos", "0", "--use_banks",
                   "--bank_size", "8", "--coding_max_iter", "50", "--attack_type", "pgd", "--attack_steps", "2",
                   "--sanity_eps", "0", *EPSILONS)
    return twins


@pytest.fixture(scope="module")
def localization_eval(data, tmp_path_factory: pytest.TempPathFactory) -> Twins:
    root, boxes = data
    base = tmp_path_factory.mktemp("loc")
    flags = model_flags(root, base / "trained", "loc")
    main_attack.main(["--mode", "train", *flags])
    twins = Twins(flags, base)
    twins.run_both(main_localization, "main_localization.py", "--boxes", str(boxes), "--attack_type", "pgd",
                   "--attack_steps", "2", *EPSILONS)
    return twins


def load_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: data[name] for name in data.files}


def compared(name: str) -> bool:
    return name != "seconds"  # wall clock


def assert_same_json(single, ddp, path: str = "") -> None:
    """Equal structure; ints, strings and bools exactly, floats to ``FLOAT_TOL``; wall-clock seconds not."""
    if isinstance(single, dict):
        assert isinstance(ddp, dict) and single.keys() == ddp.keys(), (path, sorted(single), sorted(ddp))
        for key in sorted(single):
            if compared(key):
                assert_same_json(single[key], ddp[key], f"{path}/{key}")
    elif isinstance(single, list):
        assert isinstance(ddp, list) and len(single) == len(ddp), (path, single, ddp)
        for i, (a, b) in enumerate(zip(single, ddp)):
            assert_same_json(a, b, f"{path}[{i}]")
    elif isinstance(single, float):
        assert isinstance(ddp, float), (path, single, ddp)
        np.testing.assert_allclose(ddp, single, **FLOAT_TOL, err_msg=path)
    else:
        assert type(single) is type(ddp) and single == ddp, (path, single, ddp)


def assert_same_records(single: Path, ddp: Path, num_samples: int = NUM_TEST) -> None:
    """Two per_sample.npz: the same arrays, each of the ``num_samples`` samples once in dataset order; integer,
    bool and string columns exactly, floats to ``FLOAT_TOL`` (NaN where the other has NaN)."""
    s_rec, d_rec = load_npz(single), load_npz(ddp)
    assert s_rec.keys() == d_rec.keys()
    np.testing.assert_array_equal(s_rec["index"], np.arange(num_samples))
    for name in s_rec:
        assert s_rec[name].shape == d_rec[name].shape == (num_samples,), name
        if s_rec[name].dtype.kind in "biuU":
            np.testing.assert_array_equal(d_rec[name], s_rec[name], err_msg=name)
        else:
            np.testing.assert_allclose(d_rec[name], s_rec[name], **FLOAT_TOL, err_msg=name)


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def evaluation_of(run: Path) -> Path:
    """The one evaluation folder of a twin run (each runs exactly one evaluation)."""
    (folder,) = find_evaluations(run)
    return folder


def assert_same_evaluation(single: Path, ddp: Path, attacks: set[str]) -> None:
    """metrics.json, attack_results.json and per_sample.npz of two output folders agree."""
    assert_same_json(read_json(single / "metrics.json"), read_json(ddp / "metrics.json"))
    results = read_json(single / "attack_results.json")
    assert results["num_samples"] == NUM_TEST and results["clean"]["n"] == NUM_TEST
    assert {e["attack"] for e in results["attacks"]} == attacks
    assert all(e["n"] == NUM_TEST for e in results["attacks"] + results["worst_case"])
    assert_same_json(results, read_json(ddp / "attack_results.json"))
    assert_same_records(single / "per_sample.npz", ddp / "per_sample.npz")


def test_attack_eval_matches_one_process(attack_eval: Twins) -> None:
    """Every attack, AutoAttack's cascade, random starts and the sanity PGD: the same per-sample records and
    figures from 2 processes as from one, although a cascade component meets no survivor on one rank."""
    single, ddp = (evaluation_of(attack_eval.runs[name]) for name in ("single", "ddp"))
    assert single.name == ddp.name
    assert_same_evaluation(single, ddp, {"fgsm", "pgd", "apgd", "apgd-t", "autoattack"})
    records = load_records(single / "per_sample.npz")
    rank_of = np.asarray(records.index) % 2  # a DistributedSampler without shuffling deals samples in turn
    attacked = {key: ~np.isnan(records.column(key, "loss")) for key in records.keys()
                if key.component is not None and "loss" in records.columns[key]}  # no column: no survivor at all
    one_sided = [key for key, rows in attacked.items() if {int(r) for r in rank_of[rows]} in ({0}, {1})]
    assert one_sided, "no cascade component attacked samples on one rank only: the case this test is about"


def test_eval_samples_subset_matches_one_process(subset_eval: Twins) -> None:
    """``--eval_samples`` picks the same clips in every process: 2 ranks shard the subset, not the whole split,
    and the records hold each picked clip once, with every class represented."""
    single, ddp = (evaluation_of(subset_eval.runs[name]) for name in ("single", "ddp"))
    assert single.name == ddp.name and single.name.endswith(f"_e{SUBSET}")
    results = read_json(single / "attack_results.json")
    assert results["num_samples"] == results["clean"]["n"] == SUBSET
    assert_same_json(results, read_json(ddp / "attack_results.json"))
    assert_same_records(single / "per_sample.npz", ddp / "per_sample.npz", SUBSET)
    labels = load_npz(single / "per_sample.npz")["labels"]
    assert set(labels.tolist()) == set(range(NUM_CLASSES))


def test_defense_eval_with_banks_matches_one_process(defense_eval: Twins) -> None:
    single, ddp = (evaluation_of(defense_eval.runs[name]) for name in ("single", "ddp"))
    assert single.name.startswith("defense_banks_") and read_json(ddp / "eval.json")["status"] == "complete"
    assert_same_evaluation(single, ddp, {"pgd"})
    assert read_json(single / "attack_results.json")["variants"] == ["ce", "ce+cos", "bpda"]


def test_localization_matches_one_process(localization_eval: Twins) -> None:
    single, ddp = (evaluation_of(localization_eval.runs[name]) for name in ("single", "ddp"))
    results = read_json(single / "loc_results.json")
    assert results["num_samples"] == results["num_boxed"] == NUM_TEST
    assert {(e["objective"], e["budget"]) for e in results["attacks"]} == {
        (o, b) for o in ("class", "map") for b in ("V", "A+V")}
    assert_same_json(results, read_json(ddp / "loc_results.json"))
    assert_same_records(single / "per_sample.npz", ddp / "per_sample.npz")


def test_localization_pixel_ranking_metrics_match_one_process(localization_eval: Twins) -> None:
    single, ddp = (load_npz(evaluation_of(localization_eval.runs[name]) / "per_sample.npz")
                   for name in ("single", "ddp"))
    fields = ("ciou", "peak_shift_px", "map_iou_top_mass")
    compared = [name for name in single if name.rsplit("/", 1)[-1] in fields]
    assert len(compared) == 4 * len(fields)  # 2 objectives x 2 budgets
    for name in compared:
        np.testing.assert_allclose(ddp[name], single[name], **FLOAT_TOL, err_msg=name)
