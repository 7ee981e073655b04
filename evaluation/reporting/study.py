"""A study table across evaluations: rows are evaluated models, columns are (attack, threat model) pairs, and
findings that compare like with like on the samples both evaluations share.

A column names its whole threat model: the attack with its steps (or queries) and loss, the budget (A, V, A+V)
with each modality's radius and units (visual: ImageNet-normalised or [0, 1] pixels, L∞ per value or L2 over the
clip; audio: waveform amplitude or dB relative to the clip), and the joint ball, shared-over-frames or
misalignment settings. Two evaluations meet in one column only when all of that is equal, so an L2 result never
sits under an L∞ heading.

Findings, each naming the two things compared, the test (exact McNemar on the discordant pairs) and p, with the
accuracies recomputed on the shared samples:

* clean accuracy of every audio-visual model against the best unimodal one;
* per attack family (attack, steps, loss, norm, units): an audio-visual model's worst budget against the best
  unimodal model under the attack on its own modality;
* every defended model ('concat+dissim' ...) against the undefended model of its head, in every column both have.
"""
from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attacks.threat import ThreatModel
from evaluation.reporting.tables import accuracy_text
from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import Records
from evaluation.stats import mcnemar_exact, wilson_interval

ATTACK_NAMES = {"autoattack": "AA", "aa": "AA"}
GRADIENT_STEPS = {"fgsm": None, "pgd": "attack_steps", "mim": "attack_steps", "apgd": "apgd_steps",
                  "apgd-t": "apgd_steps"}


@dataclass
class Evaluation:
    """One evaluated model: its row name, where it came from, its results and (when readable) records."""

    name: str
    path: Path
    results: dict
    records: Records | None = None

    @property
    def head(self) -> str:
        return self.results.get("arch_classifier", "?")

    @property
    def label(self) -> str:
        return self.results.get("label") or self.head

    @property
    def defended(self) -> bool:
        return "+" in (self.results.get("label") or "")


@dataclass(frozen=True)
class Column:
    """An (attack, threat model, budget) cell heading; ``family`` is the same without the budget."""

    family: str
    budget: str
    radii: str
    order: int = field(default=0, compare=False)

    @property
    def label(self) -> str:
        return f"{self.family} · {self.budget} {self.radii}"

    @property
    def attack_free(self) -> tuple[str, str, str]:
        """The column without a defense's attack variants: where a defense meets its undefended base."""
        return re.sub(r" worst of \S+", "", self.family), self.budget, self.radii


def _attack_text(entry: dict, results: dict) -> str:
    attack = entry["attack"]
    base = attack.split("+")[-1]
    name = ATTACK_NAMES.get(attack, attack.upper())
    steps_flag = GRADIENT_STEPS.get(base)
    if base == "fgsm":
        name += "-1"
    elif steps_flag:
        steps = results.get(steps_flag) or (10 if steps_flag == "attack_steps" else 100)
        name += f"-{steps}"
    elif base == "square":
        name += f"-{results.get('square_queries', 5000)}q"
    elif base in ("autoattack", "aa"):
        name += f"(apgd {results.get('apgd_steps', 100)}, {results.get('apgd_targets', 9)} targets, " \
                f"square {results.get('square_queries', 5000)}q)"
    if base not in ("square", "autoattack", "aa"):
        name += f" {results.get('attack_loss', 'ce')}"
    variants = results.get("variants") or []
    if len(variants) > 1:
        name += f" worst of {'/'.join(variants)}"
    return name


def _units(results: dict, norm: str) -> tuple[str, str]:
    visual = "pixels" if results.get("eps_units") == "pixel" else "ImageNet-normalised"
    if norm == "l2":
        visual += ", L2 over the clip"
    return visual, "amplitude"


def column_of(entry: dict, results: dict) -> Column:
    """The column a results entry belongs to: attack and threat model in ``family``, the radii apart."""
    norm = entry.get("norm") or results.get("norm", "linf")
    visual_units, audio_units = _units(results, norm)
    threat = ThreatModel.from_fields({**entry, "norm": norm}, units=results.get("eps_units"))
    radii = threat.radii_text(visual_units, audio_units)
    family = f"{_attack_text(entry, results)} [{'L2' if norm == 'l2' else 'L∞'}"
    extra = []
    if threat.joint_eps is not None:
        extra.append(f"joint J={threat.joint_eps:g}")
    if threat.temporal != "frame":
        extra.append(f"{threat.temporal} over frames")
    if threat.max_shift is not None:
        extra.append(f"shift ±{threat.max_shift:g} s")
    family += (", " + ", ".join(extra) if extra else "") + "]"
    return Column(family, entry.get("budget", "?"), "(" + ", ".join(radii) + ")" if radii else "")


def protocol_entries(results: dict) -> list[dict]:
    return [e for e in results.get("attacks", []) if not e.get("grid")]


def _entry_key(entry: dict) -> str:
    return entry.get("budget_key") or Budget(entry["eps_visual"], entry["eps_audio"]).key


def correct_vector(ev: Evaluation, entry: dict | None) -> np.ndarray | None:
    if ev.records is None:
        return None
    if entry is None:
        return np.asarray(ev.records.clean_correct, dtype=bool)
    return ev.records.correct_under(entry["attack"], _entry_key(entry))


def columns_of(evaluations: Sequence[Evaluation]) -> list[Column]:
    seen: dict[Column, None] = {}
    for ev in evaluations:
        for entry in protocol_entries(ev.results):
            seen.setdefault(column_of(entry, ev.results))
    order = {"A": 0, "V": 1, "A+V": 2}
    families = list(dict.fromkeys(c.family for c in seen))
    return sorted(seen, key=lambda c: (families.index(c.family), order.get(c.budget, 3), c.radii))


def cells(ev: Evaluation) -> dict[Column, dict]:
    return {column_of(e, ev.results): e for e in protocol_entries(ev.results)}


def study_table(evaluations: Sequence[Evaluation]) -> tuple[list[str], list[list[str]], list[Column]]:
    """Header, rows and columns: model, evaluation, clean, one column per (attack, threat model, budget), checks."""
    columns = columns_of(evaluations)
    header = ["model", "evaluation", "clean"] + [c.label for c in columns] + ["checks"]
    rows = []
    for ev in evaluations:
        found = cells(ev)
        rows.append([ev.name, _where(ev.path), accuracy_text(ev.results.get("clean"), "—")]
                    + [accuracy_text(found.get(c), "—") for c in columns]
                    + [ev.results.get("checks", {}).get("verdict", "n/a")])
    return header, rows, columns


def _where(folder: Path) -> str:
    """'run/evals/name' for an evaluation folder, else the folder's path."""
    return f"{folder.parent.parent.name}/evals/{folder.name}" if folder.parent.name == "evals" else str(folder)


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    def line(cells_: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells_) + " |"
    return "\n".join([line(header), "|---" * len(header) + "|"] + [line(r) for r in rows]) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def to_json(evaluations: Sequence[Evaluation], columns: Sequence[Column], found: list[str]) -> dict:
    """The table as data: each column's threat model and each row's figures with counts and intervals."""
    rows = []
    for ev in evaluations:
        entries = cells(ev)
        rows.append({"model": ev.name, "evaluation": _where(ev.path), "clean": _figures(ev.results.get("clean")),
                     "cells": {c.label: _figures(entries.get(c)) for c in columns if c in entries},
                     "checks": ev.results.get("checks", {}).get("verdict")})
    return {"columns": [{"label": c.label, "attack_and_threat_model": c.family, "budget": c.budget, "radii": c.radii}
                        for c in columns], "rows": rows, "findings": found}


def _figures(figures: dict | None) -> dict | None:
    if figures is None:
        return None
    out = {k: figures[k] for k in ("n", "correct", "ci") if k in figures}
    out["acc"] = figures.get("adv_acc", figures.get("acc"))
    return out


# ---------------------------------------------------------------------------------------------- findings


def compare(first: tuple[str, Evaluation, dict | None], second: tuple[str, Evaluation, dict | None]) -> str:
    """'A x vs B y: verdict (exact McNemar p, discordant b vs c of n shared samples)', the accuracies on the shared
    samples; without records both reported figures and 'not tested'."""
    (name_a, ev_a, entry_a), (name_b, ev_b, entry_b) = first, second
    vec_a, vec_b = correct_vector(ev_a, entry_a), correct_vector(ev_b, entry_b)
    if vec_a is None or vec_b is None:
        acc_a = (entry_a or ev_a.results["clean"]).get("adv_acc", (entry_a or ev_a.results["clean"]).get("acc"))
        acc_b = (entry_b or ev_b.results["clean"]).get("adv_acc", (entry_b or ev_b.results["clean"]).get("acc"))
        return f"{name_a} {acc_a:.2f} vs {name_b} {acc_b:.2f}: not tested (no per-sample records)"
    ids_b = {sid: i for i, sid in enumerate(ev_b.records.ids)}
    pairs = [(i, ids_b[sid]) for i, sid in enumerate(ev_a.records.ids) if sid in ids_b]
    if not pairs:
        return f"{name_a} vs {name_b}: no shared samples, not compared"
    ia, ib = (list(x) for x in zip(*pairs))
    a, b = vec_a[ia], vec_b[ib]
    test = mcnemar_exact(a, b)
    n = len(pairs)
    acc_a, acc_b = 100.0 * a.mean(), 100.0 * b.mean()
    if test.p_value < 0.05:
        verdict = f"{name_a} {'higher' if acc_a > acc_b else 'lower'}, significant"
    else:
        verdict = "no significant difference"
    low, high = wilson_interval(int(a.sum()), n)
    return (f"{name_a} {acc_a:.2f} [{100 * low:.1f}, {100 * high:.1f}] vs {name_b} {acc_b:.2f} "
            f"({acc_a - acc_b:+.2f} points on {n} shared samples): {verdict} (exact McNemar p = {test.p_value:.3g}, "
            f"{test.b} vs {test.c} discordant)")


def findings(evaluations: Sequence[Evaluation]) -> list[str]:
    """The paper's questions and the defenses' effect, like with like (see the module docstring)."""
    plain = [ev for ev in evaluations if not ev.defended]
    unimodal = [ev for ev in plain if ev.head in ("audio", "visual")]
    fused = [ev for ev in plain if ev.head not in ("audio", "visual")]
    lines = []
    if unimodal and fused:
        best = max(unimodal, key=lambda ev: ev.results["clean"]["acc"])
        for ev in fused:
            lines.append("clean accuracy: " + compare((ev.name, ev, None), (best.name, best, None)))
        own = {"audio": "A", "visual": "V"}
        families = list(dict.fromkeys(c.family for c in columns_of(evaluations)))
        for family in families:
            candidates = [(ev, e) for ev in unimodal for c, e in cells(ev).items()
                          if c.family == family and c.budget == own[ev.head]]
            if not candidates:
                continue
            best_ev, best_entry = max(candidates, key=lambda p: p[1]["adv_acc"])
            best_col = column_of(best_entry, best_ev.results)
            for ev in fused:
                mine = [(c, e) for c, e in cells(ev).items() if c.family == family]
                if not mine:
                    continue
                worst_col, worst = min(mine, key=lambda p: p[1]["adv_acc"])
                lines.append(f"{family}: " + compare(
                    (f"{ev.name} worst case ({worst_col.budget} {worst_col.radii})", ev, worst),
                    (f"{best_ev.name} under its own {best_col.budget} {best_col.radii}", best_ev, best_entry)))
    for ev in evaluations:
        if not ev.defended:
            continue
        base = next((b for b in plain if b.head == ev.head), None)
        if base is None:
            continue
        lines.append("defense, clean: " + compare((ev.name, ev, None), (base.name, base, None)))
        base_cells = {column.attack_free: (column, entry) for column, entry in cells(base).items()}
        for column, entry in cells(ev).items():
            if column.attack_free in base_cells:
                base_column, base_entry = base_cells[column.attack_free]
                attacks = column.family if column == base_column else f"{column.family} vs {base_column.family}"
                lines.append(f"defense, {attacks} · {column.budget} {column.radii}: "
                             + compare((ev.name, ev, entry), (base.name, base, base_entry)))
    return lines or ["(findings need a unimodal and an audio-visual evaluation, or a defended one and its base)"]
