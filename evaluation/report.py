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
             f"waveform amplitude; {results['attack_steps'] or 'default'} steps, loss {results['attack_loss']}.", "",
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


def findings(runs: list[tuple[str, dict]]) -> list[str]:
    """The paper's questions answered on these runs, as sentences: does audio-visual beat unimodal
    clean, and does it under each attack (each unimodal model under the attack on its own modality,
    each audio-visual model under its worst attack)?"""
    unimodal = {r["arch_classifier"]: (name, r) for name, r in runs if r["arch_classifier"] in ("audio", "visual")}
    fused = [(name, r) for name, r in runs if r["arch_classifier"] not in ("audio", "visual")]
    if not unimodal or not fused:
        return ["(findings need at least one unimodal and one audio-visual run)"]
    best_uni_name, best_uni = max(unimodal.values(), key=lambda nr: nr[1]["clean"]["acc"])
    lines = []
    for name, r in fused:
        gain = r["clean"]["acc"] - best_uni["clean"]["acc"]
        lines.append(f"clean: {name} {r['clean']['acc']:.2f} vs best unimodal ({best_uni_name}) "
                     f"{best_uni['clean']['acc']:.2f}: {gain:+.2f} points")
    attacks = list(dict.fromkeys(e["attack"] for _, r in runs for e in _protocol_entries(r)))
    own_budget = {"audio": "A", "visual": "V"}
    for attack in attacks:
        uni = []
        for head, (name, r) in unimodal.items():
            acc = next((e["adv_acc"] for e in _protocol_entries(r)
                        if e["attack"] == attack and e["budget"] == own_budget[head]), None)
            if acc is not None:
                uni.append((acc, f"{name} under {own_budget[head]} {acc:.2f}"))
        for name, r in fused:
            worst = min(((e["adv_acc"], e["budget"]) for e in _protocol_entries(r) if e["attack"] == attack),
                        default=None)
            if worst is None or not uni:
                continue
            best_acc = max(a for a, _ in uni)
            verdict = "more" if worst[0] > best_acc else "less"
            lines.append(f"{attack.upper()}: {name} worst case {worst[0]:.2f} (under {worst[1]}) vs "
                         f"{', '.join(t for _, t in uni)}: audio-visual is {verdict} robust than the best unimodal")
    return lines
