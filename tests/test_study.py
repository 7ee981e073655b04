"""The study table: columns name their whole threat model, only like meets like, and findings name both sides,
the test and p, on the samples both evaluations share."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluation.reporting.study import Evaluation, findings, study_table
from evaluation.robustness.records import RecordKey, Records
from evaluation.stats import mcnemar_exact


def entry(budget: str, ev: float, ea: float, correct: int, n: int, norm: str = "linf") -> dict:
    key = {"A": f"A@v0,a{ea:g}", "V": f"V@v{ev:g},a0", "A+V": f"A+V@v{ev:g},a{ea:g}"}[budget]
    if norm == "l2":
        key = key.replace("@", "@l2:")
    return {"attack": "pgd", "budget": budget, "budget_key": key, "eps_visual": ev, "eps_audio": ea, "norm": norm,
            "grid": False, "n": n, "correct": correct, "adv_acc": 100.0 * correct / n}


def evaluation(name: str, head: str, clean: np.ndarray, attacked: dict[str, np.ndarray], norm: str = "linf",
               ids: list[str] | None = None, label: str | None = None) -> Evaluation:
    n = len(clean)
    ids = ids or [f"c/{i}" for i in range(n)]
    radii = {"A": (0.0, 0.012), "V": (0.012, 0.0), "A+V": (0.006, 0.006)} if norm == "linf" else \
        {"A": (0.0, 0.5), "V": (1.0, 0.0), "A+V": (1.0, 0.5)}
    entries = [entry(b, *radii[b], int(v.sum()), n, norm) for b, v in attacked.items()]
    records = Records(ids=ids, index=list(range(n)), labels=[0] * n, clean_correct=list(clean))
    for e in entries:
        key = RecordKey("pgd", e["budget_key"], "default")
        records.columns[key] = {"correct": attacked[e["budget"]].astype(np.int8)}
    results = {"arch_classifier": head, "label": label, "norm": norm, "eps_units": "pixel" if norm == "l2"
               else "normalized", "attack_steps": None, "attack_loss": "ce", "attacks": entries,
               "clean": {"acc": 100.0 * clean.mean(), "n": n, "correct": int(clean.sum())}}
    return Evaluation(name, Path(f"/runs/{name}/evals/e"), results, records)


def test_l2_and_linf_never_share_a_column_and_each_column_names_its_threat_model():
    ones = np.ones(10, bool)
    linf = evaluation("concat", "concat", ones, {"A": ones, "V": ones})
    l2 = evaluation("concat-l2", "concat", ones, {"A": ones}, norm="l2")
    header, rows, columns = study_table([linf, l2])
    assert header[3:-1] == ["PGD-10 ce [L∞] · A (εa=0.012 amplitude)",
                            "PGD-10 ce [L∞] · V (εv=0.012 ImageNet-normalised)",
                            "PGD-10 ce [L2] · A (εa=0.5 amplitude)"]
    assert rows[0][5] == "—" and rows[1][3] == "—" and rows[1][5].startswith("100.00")


def test_findings_compare_on_shared_samples_and_say_when_a_difference_is_not_significant():
    rng = np.random.default_rng(0)
    clean_uni, clean_av = rng.random(40) < 0.6, rng.random(40) < 0.9
    uni = evaluation("audio", "audio", clean_uni, {"A": clean_uni & (rng.random(40) < 0.5)})
    # the audio-visual run evaluated 30 of the 40 samples, in another order, plus 5 the other never saw
    order = list(rng.permutation(40)[:30])
    ids = [f"c/{i}" for i in order] + [f"d/{i}" for i in range(5)]
    clean = np.concatenate([clean_av[order], np.ones(5, bool)])
    av = evaluation("concat", "concat", clean, {"A": np.zeros(35, bool), "V": clean.copy()}, ids=ids)
    lines = findings([uni, av])
    clean_line = next(line for line in lines if line.startswith("clean accuracy"))
    expected = mcnemar_exact(clean_av[order], clean_uni[order])
    assert "on 30 shared samples" in clean_line and f"p = {expected.p_value:.3g}" in clean_line
    assert f"{100 * clean_av[order].mean():.2f}" in clean_line
    attack_line = next(line for line in lines if line.startswith("PGD-10 ce [L∞]"))
    assert "concat worst case (A (εa=0.012 amplitude))" in attack_line and "audio under its own A" in attack_line
    same = evaluation("visual", "visual", clean_uni, {"V": clean_uni})
    twin = evaluation("concat", "concat", clean_uni, {"V": clean_uni})
    assert "no significant difference (exact McNemar p = 1" in findings([same, twin])[0]
