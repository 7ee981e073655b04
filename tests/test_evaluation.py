"""The evaluation engine on purpose-built toy models: per-sample worst case over variants, cascades on the
samples still standing, per-sample records, and each gradient-masking check firing where it should."""
from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.robustness.checks import check_eps_monotone
from evaluation.robustness.engine import Variant
from evaluation.robustness.pipeline import evaluate_robustness
from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import RecordKey, Records, load_records
from models.av_model import ModelOutput
from utils.distributed import DistInfo

NUM_CLASSES = 4
LENGTH = 32


def make_args(**overrides) -> SimpleNamespace:
    args = dict(id="toy", arch_classifier="toy", categories=[f"c{i}" for i in range(NUM_CLASSES)],
                cls_num=NUM_CLASSES, attack_type=["pgd"], epsilons=[(0.0, 0.5)], eps_grid=None,
                eps_grid_modality=["audio"], attack_steps=None, apgd_steps=100, apgd_targets=9, attack_alpha=None,
                attack_loss="ce",
                eps_units="pixel", random_start=False, restarts=1, eot_iter=1, square_queries=300,
                square_p_init=0.8, seed=0, num_vis=0, sanity_eps=0.0, audRate=11025)
    args.update(overrides)
    return SimpleNamespace(**args)


class AudioLinear(nn.Module):
    """An audio-only linear classifier with a fixed seed; ``quantise`` rounds the waveform first (a zero
    input gradient almost everywhere), ``noise`` adds fresh noise on every forward pass."""

    uses_visual, uses_audio = False, True

    def __init__(self, quantise: bool = False, noise: float = 0.0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(LENGTH, NUM_CLASSES, generator=gen), requires_grad=False)
        self.quantise, self.noise = quantise, noise

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        x = audio.flatten(1)
        if self.quantise:
            x = torch.round(x * 2) / 2
        if self.noise:
            x = x + self.noise * torch.randn_like(x)
        return ModelOutput(x @ self.weight, None, None, None)


def toy_loader(model: nn.Module, n: int = 16, batch: int = 8, scale: float = 0.05) -> list[dict]:
    """Batches whose labels are the model's clean predictions (every sample correct on clean inputs)."""
    gen = torch.Generator().manual_seed(1)
    audio = (torch.rand(n, 1, LENGTH, generator=gen) * 2 - 1) * scale
    frames = torch.randint(0, 256, (n, 3, 1, 4, 4), generator=gen, dtype=torch.uint8)  # as the loader gives them
    with torch.no_grad():
        labels = model(frames.float() / 255, audio).logits.argmax(dim=1)
    return [{"frames": frames[i:i + batch], "audio": audio[i:i + batch], "label": labels[i:i + batch],
             "index": torch.arange(i, min(i + batch, n)), "info": [f"c/{j}" for j in range(i, min(i + batch, n))]}
            for i in range(0, n, batch)]


def masked_ce(keep) -> Variant:
    """A variant whose loss only has a gradient for the samples ``keep(labels)`` selects."""
    def factory(ctx):
        def loss(out: ModelOutput, labels: Tensor) -> Tensor:
            return F.cross_entropy(out.logits, labels, reduction="none") * keep(labels).float()
        return loss
    return factory


def run(model, tmp_path: Path, variants=None, loader=None, **overrides) -> dict:
    args = make_args(**overrides)
    return evaluate_robustness(model, loader or toy_loader(model), args, DistInfo(), tmp_path, variants)


def test_worst_case_over_variants_is_per_sample_and_below_each_variant(tmp_path: Path) -> None:
    model = AudioLinear()
    loader = toy_loader(model)
    labels = torch.cat([b["label"] for b in loader])
    split = labels.median()
    variants = [Variant("low", masked_ce(lambda y: y <= split)), Variant("high", masked_ce(lambda y: y > split))]
    results = run(model, tmp_path, variants, loader)
    entry = results["attacks"][0]
    low, high = entry["variant_acc"]["low"], entry["variant_acc"]["high"]
    # each variant fools only its own samples (a large budget fools any sample it attacks) ...
    assert low == pytest.approx(100 * float((labels > split).float().mean()))
    assert high == pytest.approx(100 * float((labels <= split).float().mean()))
    # ... so a sample survives both only if neither attacked it: none does, strictly below both variants
    assert entry["adv_acc"] == 0.0 < min(low, high)
    assert entry["n"] == 16 and entry["correct"] == 0 and entry["ci"][0] == 0.0 < entry["ci"][1]
    # the records recombine afterwards into the same figure, indexed by sample id
    records = load_records(tmp_path / "per_sample.npz")
    assert records.ids == [f"c/{i}" for i in range(16)]
    assert records.robust(records.keys()).sum() == 0
    saved = json.loads((tmp_path / "attack_results.json").read_text())
    assert saved["attacks"][0]["adv_acc"] == 0.0 and "checks" in saved


def test_cascade_attacks_only_the_samples_still_standing(tmp_path: Path) -> None:
    model = AudioLinear()
    loader = toy_loader(model)
    seen: list[int] = []
    original = model.forward

    def counting_forward(frames, audio):
        seen.append(audio.shape[0])
        return original(frames, audio)

    model.forward = counting_forward
    results = run(model, tmp_path, loader=loader, attack_type=["autoattack"], epsilons=[(0.0, 0.5)], apgd_steps=5,
                  square_queries=50)
    entry = results["attacks"][0]
    names = [c["component"] for c in entry["components"]]
    assert names == ["apgd-ce", "apgd-t", "fab-t", "square"]
    # APGD-CE at a large budget fools every sample: the later components get nothing to attack
    assert entry["components"][0]["correct"] == 0 and entry["adv_acc"] == 0.0
    records = load_records(tmp_path / "per_sample.npz")
    assert [k.component for k in records.keys()] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    later = [k for k in records.keys() if k.component in ("apgd-t", "fab-t", "square")]
    assert all((records.column(k) == -1).all() for k in later)
    # per batch of 8: a few checks' passes and APGD-CE's 5 steps; Square's 50 queries never ran
    assert max(seen) == 8 and len(seen) <= 2 * 15


def test_checks_stay_silent_on_a_plain_model(tmp_path: Path) -> None:
    results = run(AudioLinear(), tmp_path, attack_type=["pgd", "square"], epsilons=[(0.0, 0.02), (0.0, 0.05)],
                  sanity_eps=1.0)
    checks = results["checks"]
    assert checks["verdict"] == "passed", checks
    assert checks["sanity"]["acc"] < 100 / NUM_CLASSES


def test_a_pgd_only_evaluation_is_incomplete_and_says_which_checks_did_not_run(tmp_path: Path) -> None:
    results = run(AudioLinear(), tmp_path, attack_type=["pgd"], epsilons=[(0.0, 0.02)], sanity_eps=0.0)
    checks = results["checks"]
    assert checks["verdict"] == "incomplete: not run: black_box, eps_monotone, sanity", checks["verdict"]
    assert {name for name in ("black_box", "eps_monotone", "sanity") if checks[name]["status"] == "not run"} == {
        "black_box", "eps_monotone", "sanity"}
    assert "--eps_grid" in checks["eps_monotone"]["run_with"] and "square" in checks["black_box"]["run_with"]
    assert checks["zero_gradient"]["status"] == "passed"
    table = (tmp_path / "attack_table.md").read_text()
    assert "Gradient-masking checks: **incomplete: not run: black_box, eps_monotone, sanity**" in table
    assert "- ○ eps_monotone: not run:" in table


def test_zero_gradient_and_black_box_checks_fire_on_a_quantised_model(tmp_path: Path) -> None:
    model = AudioLinear(quantise=True)
    results = run(model, tmp_path, attack_type=["pgd", "square"], epsilons=[(0.0, 0.5)])
    checks = results["checks"]
    assert checks["zero_gradient"]["flag"] and checks["zero_gradient"]["fraction"]["audio"] == 1.0
    pgd = next(e for e in results["attacks"] if e["attack"] == "pgd")
    square = next(e for e in results["attacks"] if e["attack"] == "square")
    assert pgd["adv_acc"] == 100.0 and square["adv_acc"] < 100.0  # gradients see nothing, random search does
    assert checks["black_box"]["flag"]
    assert checks["verdict"].startswith("flagged: zero_gradient, black_box")
    assert checks["zero_gradient"]["status"] == checks["black_box"]["status"] == "flagged"


class Constant(nn.Module):
    """Predicts class 0 whatever the input: no budget can fool it."""

    uses_visual, uses_audio = False, True

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]), requires_grad=False)

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        return ModelOutput(self.bias + 0 * audio.flatten(1)[:, :1], None, None, None)


def test_sanity_check_fires_when_a_large_budget_cannot_reach_chance(tmp_path: Path) -> None:
    results = run(Constant(), tmp_path, epsilons=[(0.0, 0.01)], sanity_eps=1.0)
    sanity = results["checks"]["sanity"]
    assert sanity["flag"] and sanity["acc"] == 100.0 and sanity["chance"] == 25.0


def test_randomness_check_fires_on_a_noisy_model_and_suggests_eot(tmp_path: Path) -> None:
    results = run(AudioLinear(noise=0.05), tmp_path, epsilons=[(0.0, 0.01)])
    assert results["checks"]["randomness"]["flag"]
    assert "--eot_iter" in results["checks"]["randomness"]["message"]


class PerturbationDetector(nn.Module):
    """Answers class 0 whenever the waveform has a sample beyond 0.3 (a detector of large perturbations), else
    a linear classifier biased towards class 0: small budgets fool it, large ones do not."""

    uses_visual, uses_audio = False, True

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        x = audio.flatten(1)
        logits = torch.stack([0.5 - x.sum(dim=1), x.sum(dim=1), -x.sum(dim=1), -1 - x.sum(dim=1)], dim=1)
        detected = (x.abs().amax(dim=1) > 0.3).float()
        return ModelOutput(logits + 100 * detected[:, None] * F.one_hot(torch.zeros_like(detected).long(), 4),
                           None, None, None)


def test_eps_monotone_check_fires_when_accuracy_rises_with_eps(tmp_path: Path) -> None:
    model = PerturbationDetector()
    loader = toy_loader(model, scale=0.01)
    assert all(int(b["label"].max()) == 0 for b in loader)
    results = run(model, tmp_path, loader=loader, attack_type=["fgsm"], epsilons=[(0.0, 0.05)],
                  eps_grid=[0.5], eps_grid_modality=["audio"])
    accs = [e["adv_acc"] for e in results["attacks"]]
    assert accs == [0.0, 100.0]
    assert results["checks"]["eps_monotone"]["flag"]
    assert "fgsm A" in results["checks"]["eps_monotone"]["rises"][0]


def test_eps_monotone_check_reads_per_sample_records() -> None:
    records = Records(ids=["a", "b"], index=[0, 1], labels=[0, 0], clean_correct=[True, True])
    small, large = Budget(0.0, 0.01), Budget(0.0, 0.02, grid=True)
    records.add(RecordKey("pgd", small.key, "default"), {"correct": torch.tensor([1, 0])}, 2)
    records.add(RecordKey("pgd", large.key, "default"), {"correct": torch.tensor([0, 0])}, 2)
    assert not check_eps_monotone(records, [small, large])["flag"]
    records.columns[RecordKey("pgd", large.key, "default")]["correct"] = [1, 1]
    assert check_eps_monotone(records, [small, large])["flag"]


def test_record_keys_keep_the_file_names_and_read_back_typed(tmp_path: Path) -> None:
    records = Records(ids=["a"], index=[0], labels=[0], clean_correct=[True])
    cascade = RecordKey("autoattack", "A@v0,a0.1", "default", "apgd-ce")
    single = RecordKey("shift+pgd", "A@v0,a0.002,shift1.5s", "ce+cos")
    records.add(cascade, {"correct": torch.tensor([0])}, 1)
    records.add(single, {"correct": torch.tensor([1])}, 1)
    records.save(tmp_path / "per_sample.npz")
    with np.load(tmp_path / "per_sample.npz") as data:
        assert {"autoattack/apgd-ce|A@v0,a0.1|default/correct", "shift+pgd|A@v0,a0.002,shift1.5s|ce+cos/correct"} \
            <= set(data.files)
    loaded = load_records(tmp_path / "per_sample.npz")
    assert loaded.keys() == [cascade, single]
    assert loaded.attack_keys("autoattack", "A@v0,a0.1") == [cascade] and cascade.attack_name == "autoattack/apgd-ce"
    assert loaded.correct_under("shift+pgd", single.budget).tolist() == [True]


@pytest.mark.parametrize("text", ["pgd|A@v0,a0.1", "pgd|A@v0,a0.1|default|x", "aa/apgd/ce|A@v0,a0.1|default",
                                  "|A@v0,a0.1|default", "pgd||default"])
def test_a_malformed_record_key_is_refused_naming_the_file(tmp_path: Path, text: str) -> None:
    with pytest.raises(ValueError, match="record key"):
        RecordKey.parse(text)
    path = tmp_path / "per_sample.npz"
    np.savez(path, ids=np.array(["a"]), index=np.array([0]), labels=np.array([0]), clean_correct=np.array([True]),
             **{f"{text}/correct": np.array([1], dtype=np.int8)})
    with pytest.raises(ValueError, match=re.escape(f"{path}: array")):
        load_records(path)


def test_a_record_key_refuses_the_separators_of_its_file_name() -> None:
    for fields in (("pgd|x", "A", "default"), ("pgd", "A", "a|b"), ("aa/b", "A", "default"), ("pgd", "", "default")):
        with pytest.raises(ValueError, match="record key"):
            RecordKey(*fields)
    with pytest.raises(ValueError, match="component"):
        RecordKey("autoattack", "A", "default", "apgd/ce")


def test_records_fill_missing_fields_and_keep_one_row_per_sample() -> None:
    records = Records()
    records.add_samples(["a", "b"], torch.tensor([1, 0]), torch.tensor([0, 1]), torch.tensor([True, False]))
    key = RecordKey("pgd", "A@v0,a0.1", "default")
    records.add(key, {"correct": torch.tensor([1, 0])}, 2)
    records.add_samples(["a"], torch.tensor([1]), torch.tensor([0]), torch.tensor([True]))  # a padded repeat
    records.add(key, {"correct": torch.tensor([1]), "snr_a": torch.tensor([20.0])}, 1)
    records.gather(DistInfo())
    assert records.ids == ["b", "a"] and records.index == [0, 1]
    assert records.column(key).tolist() == [0, 1]
    assert np.isnan(records.column(key, "snr_a")[0]) and np.isnan(records.column(key, "snr_a")[1])


class DenseCodeModel(AudioLinear):
    """A defense (``defenses.protocol.Defense``) whose implicit gradient meets a dense code at every forward pass
    with gradients, as the memory banks' coding stopped early does."""

    purification_modes = ("implicit", "unrolled")
    adaptive_advice = "test defense"
    runs_optimisation = False

    def __init__(self) -> None:
        super().__init__()
        self.mode = "implicit"
        self.dense = 0

    @contextlib.contextmanager
    def purifying(self, mode: str):
        before, self.mode = self.mode, mode
        try:
            yield
        finally:
            self.mode = before

    def adaptive_attacks(self, names, gradient):
        return []

    def diagnostics(self) -> dict[str, int]:
        return {"dense_backward": self.dense}

    def forward(self, frames: Tensor, audio: Tensor) -> ModelOutput:
        if torch.is_grad_enabled() and audio.requires_grad and self.mode == "implicit":
            self.dense += 1
        return super().forward(frames, audio)


def test_dense_code_check_counts_the_defense_diagnostics_and_wants_the_unrolled_variant(tmp_path: Path) -> None:
    model = DenseCodeModel()
    results = run(model, tmp_path, [Variant("ce", "ce", "implicit")], epsilons=[(0.0, 0.01)])
    dense = results["checks"]["dense_codes"]
    assert dense["flag"] and dense["backward_passes"] >= 10 and "--coding_grad unrolled" in dense["message"]
    covered = run(model, tmp_path / "both", [Variant("ce", "ce", "implicit"), Variant("unrolled", "ce", "unrolled")],
                  epsilons=[(0.0, 0.01)])
    assert covered["checks"]["dense_codes"]["backward_passes"] > 0 and not covered["checks"]["dense_codes"]["flag"]
    silent = run(AudioLinear(), tmp_path / "plain", epsilons=[(0.0, 0.01)])
    assert not silent["checks"]["dense_codes"]["flag"] and silent["checks"]["dense_codes"]["backward_passes"] == 0


def test_a_clean_misclassified_sample_is_never_robust_whatever_an_attack_leaves() -> None:
    """An attack on a sample the model already gets wrong can move it to the right class (a localization
    objective ignores the label, a CE step can overshoot); robust means clean-correct and never fooled."""
    records = Records()
    records.add_samples(["a", "b", "c"], torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]),
                        torch.tensor([False, True, True]))
    single = RecordKey("pgd", "A@v0,a0.1", "map")
    records.add(single, {"correct": torch.tensor([1, 1, 0], dtype=torch.int8)}, 3)
    component = RecordKey("autoattack", "A@v0,a0.1", "default", "apgd-ce")
    records.add(component, {"correct": torch.tensor([0, 1, 0], dtype=torch.int8)}, 3)
    records.gather(DistInfo())
    assert records.correct_under("pgd", "A@v0,a0.1").tolist() == [False, True, False]
    assert records.correct_under("autoattack", "A@v0,a0.1").tolist() == [False, True, False]


def test_the_results_record_the_settings_the_attacks_ran_with(tmp_path: Path) -> None:
    results = run(AudioLinear(), tmp_path, attack_type=["apgd-t", "pgd"], apgd_targets=5, apgd_steps=3,
                  epsilons=[(0.0, 0.02)])
    assert results["apgd_targets"] == NUM_CLASSES - 1  # 5 asked, 3 other classes exist
    settings = results["attack_settings"]
    assert settings["apgd-t"]["n_target_classes"] == NUM_CLASSES - 1 and settings["apgd-t"]["steps"] == 3
    assert settings["pgd"]["steps"] == 10 and settings["pgd"]["seed"] == 0  # the attack's default steps


def test_each_cascade_component_attacks_exactly_the_samples_still_standing(tmp_path: Path) -> None:
    """Component k runs on the clean-correct samples no earlier component fooled, and on no other: they are the
    ones with a result (correct 0/1 and a finite loss); the others are marked -1 (fooled earlier) or 0 (wrong on
    the clean input) with no loss."""
    model = AudioLinear()
    loader = toy_loader(model)
    loader[0]["label"] = loader[0]["label"].clone()
    loader[0]["label"][2] = (loader[0]["label"][2] + 1) % NUM_CLASSES  # one clean-misclassified sample
    run(model, tmp_path, loader=loader, attack_type=["autoattack"], epsilons=[(0.0, 0.005)], apgd_steps=3,
        apgd_targets=2, square_queries=20)
    records = load_records(tmp_path / "per_sample.npz")
    standing = np.asarray(records.clean_correct, dtype=bool)
    assert not standing.all()
    for key in records.keys():
        correct, loss = records.column(key), records.column(key, "loss")
        assert ((correct != -1) & ~np.isnan(loss)).tolist() == standing.tolist(), key.name
        assert (correct[~standing] != 1).all()
        assert ((correct == -1) == (~standing & np.asarray(records.clean_correct, dtype=bool))).all(), key.name
        standing = standing & (correct == 1)
    assert 0 < standing.sum() < len(standing)  # some fooled, some robust: the cascade had work at each step
