"""Tables of robustness results: one run's attack_table.md, and the paper-style summary over runs."""
from __future__ import annotations

import csv
import io

BUDGET_ORDER = ("A", "V", "A+V")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _protocol_entries(results: dict) -> list[dict]:
    return [e for e in results["attacks"] if not e["grid"]]


def budget_label(entry: dict) -> str:
    if entry["budget"] == "A":
        return f"A (εa={entry['eps_audio']:g})"
    if entry["budget"] == "V":
        return f"V (εv={entry['eps_visual']:g})"
    return f"A+V (εv={entry['eps_visual']:g}, εa={entry['eps_audio']:g})"


def attack_table_markdown(results: dict) -> str:
    """Accuracy (%) per attack type (rows) and budget (columns), then mean cos(feat_v, feat_a)."""
    entries = _protocol_entries(results)
    attacks = list(dict.fromkeys(e["attack"] for e in entries))
    labels = list(dict.fromkeys(budget_label(e) for e in entries))
    lines = [f"# {results['run']}", "",
             f"{results['num_samples']} test samples; visual eps in {results['eps_units']} units, audio eps in "
             f"waveform amplitude; {results['attack_steps']} steps, loss {results['attack_loss']}.", "",
             "| attack | clean | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
    for attack in attacks:
        accs = {budget_label(e): e["adv_acc"] for e in entries if e["attack"] == attack}
        lines.append(f"| {attack.upper()} | {_fmt(results['clean']['acc'])} | "
                     + " | ".join(_fmt(accs.get(label)) for label in labels) + " |")
    if results["clean"]["cos_mean"] is not None:
        lines += ["", "Mean cos(feat_v, feat_a), clean vs adversarial:", "",
                  "| attack | clean | " + " | ".join(labels) + " |", "|---" * (len(labels) + 2) + "|"]
        for attack in attacks:
            cos = {budget_label(e): e["cos_adv_mean"] for e in entries if e["attack"] == attack}
            lines.append(f"| {attack.upper()} | {results['clean']['cos_mean']:.3f} | "
                         + " | ".join("n/a" if cos.get(lb) is None else f"{cos[lb]:.3f}" for lb in labels) + " |")
    seconds = sum(e["seconds"] for e in results["attacks"])
    lines += ["", f"Attack time: {seconds:.1f} s in all."]
    return "\n".join(lines) + "\n"


def summary_table(runs: list[tuple[str, dict]]) -> tuple[list[str], list[list[str]]]:
    """Rows = models, columns = clean and A / V / A+V for each attack type (the paper's Table 1 layout)."""
    attacks: list[str] = []
    for _, results in runs:
        for e in _protocol_entries(results):
            if e["attack"] not in attacks:
                attacks.append(e["attack"])
    header = ["model", "clean"] + [f"{a.upper()} {b}" for a in attacks for b in BUDGET_ORDER]
    rows = []
    for name, results in runs:
        accs = {(e["attack"], e["budget"]): e["adv_acc"] for e in _protocol_entries(results)}
        adv = [_fmt(accs.get((a, b))) for a in attacks for b in BUDGET_ORDER]
        rows.append([name, _fmt(results["clean"]["acc"])] + adv)
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
