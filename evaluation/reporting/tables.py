"""Tables of robustness results: one run's attack_table.md, the paper-style summary over runs, and the findings
with exact McNemar tests on the per-sample records.

Every accuracy is printed with its 95 % Wilson interval, ``64.58 [54.6, 73.4]``.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

from attacks.threat import describe_units
from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import Records
from evaluation.stats import format_accuracy, mcnemar_exact

BUDGET_ORDER = ("A", "V", "A+V")
ATTACK_LABELS = {"autoattack": "AA"}
RunResults = tuple[str, dict]  # (row name, attack_results.json)


def _acc(figures: dict | None) -> str:
    """``figures`` with n / correct as 'acc [low, high]'; older results without counts as 'acc'."""
    if figures is None:
        return "n/a"
    if "n" in figures and "correct" in figures:
        return format_accuracy(figures["correct"], figures["n"])
    value = figures.get("adv_acc", figures.get("acc"))
    return "n/a" if value is None else f"{value:.2f}"


def attack_label(attack: str) -> str:
    return ATTACK_LABELS.get(attack, attack.upper())


def _protocol_entries(results: dict) -> list[dict]:
    return [e for e in results["attacks"] if not e["grid"]]


def budget_label(entry: dict) -> str:
    """The budget's column label; an entry without one (results written before budgets named their threat
    model) gets the label of the default L∞ budget."""
    if "label" in entry:
        return entry["label"]
    if entry["budget"] == "A":
        return f"A (εa={entry['eps_audio']:g})"
    if entry["budget"] == "V":
        return f"V (εv={entry['eps_visual']:g})"
    return f"A+V (εv={entry['eps_visual']:g}, εa={entry['eps_audio']:g})"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def attack_table_markdown(results: dict) -> str:
    """Accuracy (%) [95 % interval] per attack (rows) and budget (columns), the AutoAttack components, the
    per-sample worst case over every attack, perturbation sizes, cosine similarities and the checks."""
    entries = _protocol_entries(results)
    attacks = list(dict.fromkeys(e["attack"] for e in entries))
    labels = list(dict.fromkeys(budget_label(e) for e in entries))
    variants = results.get("variants") or ["default"]
    lines = [f"# {results.get('label') or results['run']}", "",
             f"{results['num_samples']} test samples; accuracy in % with its 95 % Wilson interval; "
             f"{_units_text(results)}; {results['attack_steps'] or 'default'} steps, loss {results['attack_loss']}."]
    if len(variants) > 1:
        lines.append(f"Each attack's figure is the share of samples correct under every variant ({', '.join(variants)})"
                     "; AA cascades over all of them.")
    lines += ["", _row(["attack", "clean"] + labels), "|---" * (len(labels) + 2) + "|"]
    clean = _acc(results["clean"])
    for attack in attacks:
        cells = {budget_label(e): e for e in entries if e["attack"] == attack}
        lines.append(_row([attack_label(attack), clean] + [_acc(cells.get(label)) for label in labels]))
        components = next((e["components"] for e in cells.values() if "components" in e), None)
        for i, component in enumerate(components or []):
            name = component["component"].upper() + (f" ({component['variant']})" if len(variants) > 1 else "")
            after = {budget_label(e): e["components"][i] if i < len(e.get("components", [])) else None
                     for e in cells.values()}
            lines.append(_row([f"↳ after {name}", ""] + [_acc(after.get(label)) for label in labels]))
    worst = {budget_label(w): w for w in results.get("worst_case", []) if not w["grid"]}
    if len(attacks) > 1 and worst:
        lines.append(_row(["**worst case, all attacks**", clean] + [_acc(worst.get(label)) for label in labels]))
    lines += _perturbation_lines(entries, results.get("norm", "linf") == "l2")
    lines += _split_lines(entries) + _misalignment_lines(results, entries)
    if results["clean"].get("cos_mean") is not None:
        lines += ["", "Mean cos(feat_v, feat_a), clean vs adversarial:", "",
                  _row(["attack", "clean"] + labels), "|---" * (len(labels) + 2) + "|"]
        for attack in attacks:
            cos = {budget_label(e): e["cos_adv_mean"] for e in entries if e["attack"] == attack}
            lines.append(_row([attack_label(attack), f"{results['clean']['cos_mean']:.3f}"]
                              + ["n/a" if cos.get(lb) is None else f"{cos[lb]:.3f}" for lb in labels]))
    lines += _check_lines(results.get("checks"))
    seconds = sum(e["seconds"] for e in results["attacks"])
    lines += ["", f"Attack time: {seconds:.1f} s in all."]
    return "\n".join(lines) + "\n"


def _units_text(results: dict) -> str:
    """The budgets' norm and units in words."""
    text = describe_units(results)
    if "shared" in results.get("temporal", []):
        text += "; 'shared over frames': one visual perturbation added to every frame (its clip L2 is √T times it)"
    return text


def _perturbation_lines(entries: list[dict], with_l2: bool = False) -> list[str]:
    rows = []
    for e in entries:
        p = e.get("perturbation") or {}
        if not p:
            continue
        snr = (f"{p['snr_a_mean']:.1f} / {p['snr_a_min']:.1f}" if "snr_a_mean" in p else "-")
        linf = f"{p['linf_v_mean']:.2f} / {p['linf_v_max']:.2f}" if "linf_v_mean" in p else "-"
        psnr = f"{p['psnr_v_mean']:.1f}" if "psnr_v_mean" in p else "-"
        cells = [attack_label(e["attack"]), budget_label(e), snr, linf, psnr]
        if with_l2:
            cells += [f"{p['l2_v_mean']:.3g} / {p['l2_v_max']:.3g}" if "l2_v_mean" in p else "-",
                      f"{p['l2_a_mean']:.3g} / {p['l2_a_max']:.3g}" if "l2_a_mean" in p else "-"]
        rows.append(_row(cells))
    if not rows:
        return []
    header = ["attack", "budget", "audio SNR dB (mean / min)", "visual L∞ in 1/255 (mean / max)",
              "visual PSNR dB (mean)"]
    if with_l2:
        header += ["visual L2 (mean / max)", "audio L2 (mean / max)"]
    return ["", "Perturbation size over the attacked samples:", "", _row(header), "|---" * len(header) + "|"] + rows


def _split_lines(entries: list[dict]) -> list[str]:
    """How each attack split a joint L2 budget between the modalities."""
    lines = [f"- {attack_label(e['attack'])} {budget_label(e)}: the attack spent "
             f"{100 * e['perturbation']['split_v_mean']:.1f} % of the joint budget on vision (mean over samples)"
             for e in entries if "split_v_mean" in (e.get("perturbation") or {})]
    return ["", "Split of the joint budget:", ""] + lines if lines else []


def _misalignment_lines(results: dict, entries: list[dict]) -> list[str]:
    """The shift grid, the clips too short for some shift, and the shifts the attacks chose."""
    shift = results.get("misalignment")
    if not shift:
        return []
    lines = ["", f"Misalignment: audio shifted by up to ±{shift['max_shift']:g} s ({shift['shift_steps']} shifts, "
             "read from the wav, no wrap-around; the unshifted window is always a candidate); "
             f"{shift['clips_lacking_a_shift']} of {results['num_samples']} clips lack some shift (too short), "
             f"{shift['clips_lacking_every_shift']} lack every shift.", ""]
    for e in entries:
        if e.get("shift_counts"):
            counts = ", ".join(f"{s} s: {n}" for s, n in sorted(e["shift_counts"].items(), key=lambda i: float(i[0])))
            lines.append(f"- {attack_label(e['attack'])} {budget_label(e)}: shift chosen per sample: {counts}")
    return lines


def _check_lines(checks: dict | None) -> list[str]:
    if not checks:
        return []
    lines = ["", f"Gradient-masking checks: **{checks['verdict']}**", ""]
    for name, check in checks.items():
        if isinstance(check, dict):
            mark = {"flagged": "⚠ ", "not run": "○ "}.get(check.get("status", "flagged" if check["flag"] else ""), "")
            lines.append(f"- {mark}{name}: {check['message']}")
    return lines


def summary_table(runs: list[RunResults]) -> tuple[list[str], list[list[str]]]:
    """Rows = models, columns = clean and A / V / A+V for each attack (the paper's Table 1 layout, plus AA),
    each with its interval, then the checks' verdict."""
    attacks: list[str] = []
    threats: list[str] = []  # '' (L∞ per frame) first, then each other threat model in order of appearance
    for _, results in runs:
        for e in _protocol_entries(results):
            if e["attack"] not in attacks:
                attacks.append(e["attack"])
            if e.get("threat", "") not in threats:
                threats.append(e.get("threat", ""))
    present = {(e["attack"], e["budget"], e.get("threat", "")) for _, r in runs for e in _protocol_entries(r)}
    columns = [(a, b, t) for a in attacks for t in threats for b in BUDGET_ORDER  # A, V, A+V of the paper's
               if (not t and any((a, c, t) in present for c in BUDGET_ORDER)) or (a, b, t) in present]
    header = ["model", "clean"] + [f"{attack_label(a)} {b}" + (f" [{t}]" if t else "") for a, b, t in columns]
    with_checks = any("checks" in r for _, r in runs)
    if with_checks:
        header.append("checks")
    rows = []
    for name, results in runs:
        entries = {(e["attack"], e["budget"], e.get("threat", "")): e for e in _protocol_entries(results)}
        row = [name, _acc(results["clean"])] + [_acc(entries.get(column)) for column in columns]
        if with_checks:
            row.append(results.get("checks", {}).get("verdict", "n/a"))
        rows.append(row)
    return header, rows


def to_markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = [_row(header), "|---" * len(header) + "|"]
    lines += [_row(row) for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- findings


def entry_correct(records: Records, entry: dict | None) -> np.ndarray:
    """Per-sample correctness behind a results entry: clean (``entry`` None) or one (attack, budget)."""
    if entry is None:
        return np.asarray(records.clean_correct, dtype=bool)
    key = entry.get("budget_key") or Budget(entry["eps_visual"], entry["eps_audio"]).key
    return records.correct_under(entry["attack"], key)


def _aligned(a: tuple[Records, np.ndarray], b: tuple[Records, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """The two per-sample vectors on the samples both runs evaluated (by sample id); None if none shared."""
    ids_b = {sid: i for i, sid in enumerate(b[0].ids)}
    pairs = [(i, ids_b[sid]) for i, sid in enumerate(a[0].ids) if sid in ids_b]
    if not pairs:
        return None
    ia, ib = map(list, zip(*pairs))
    return a[1][ia], b[1][ib]


def _significance(first: tuple[Records, np.ndarray] | None, second: tuple[Records, np.ndarray] | None) -> str:
    """'significant (McNemar p = …)' or 'not significant (p = …)' on the shared samples; '' without records."""
    if first is None or second is None or first[0] is None or second[0] is None:
        return " (no per-sample records: significance not tested)"
    aligned = _aligned(first, second)
    if aligned is None:
        return " (no shared samples: significance not tested)"
    test = mcnemar_exact(*aligned)
    verdict = "significant" if test.p_value < 0.05 else "not significant"
    return f": {verdict} (exact McNemar p = {test.p_value:.3g}, {test.b} vs {test.c} discordant of {test.n})"


def findings(runs: list[RunResults], records: dict[str, Records] | None = None) -> list[str]:
    """The paper's questions answered on these runs, each comparison with an exact McNemar test on the
    per-sample records (``records`` by row name): does audio-visual beat unimodal clean, and under each
    attack (each unimodal model under the attack on its own modality, each audio-visual model under its
    worst budget)? Does a defended model beat its undefended base under each attack?"""
    records = records or {}

    def side(name: str, entry: dict | None) -> tuple[Records, np.ndarray] | None:
        rec = records.get(name)
        return None if rec is None else (rec, entry_correct(rec, entry))

    unimodal = {r["arch_classifier"]: (name, r) for name, r in runs
                if r["arch_classifier"] in ("audio", "visual") and "+" not in (r.get("label") or "")}
    fused = [(name, r) for name, r in runs if r["arch_classifier"] not in ("audio", "visual") and "+" not in
             (r.get("label") or "")]
    lines = []
    if unimodal and fused:
        best_uni_name, best_uni = max(unimodal.values(), key=lambda nr: nr[1]["clean"]["acc"])
        for name, r in fused:
            gain = r["clean"]["acc"] - best_uni["clean"]["acc"]
            lines.append(f"clean: {name} {r['clean']['acc']:.2f} vs best unimodal ({best_uni_name}) "
                         f"{best_uni['clean']['acc']:.2f}: {gain:+.2f} points"
                         + _significance(side(name, None), side(best_uni_name, None)))
        attacks = list(dict.fromkeys(e["attack"] for _, r in runs for e in _protocol_entries(r)))
        own_budget = {"audio": "A", "visual": "V"}
        for attack in attacks:
            uni = []
            for head, (name, r) in unimodal.items():
                entry = next((e for e in _protocol_entries(r) if e["attack"] == attack
                              and e["budget"] == own_budget[head]), None)
                if entry is not None:
                    uni.append((entry["adv_acc"], name, entry))
            if not uni:
                continue
            best_acc, best_name, best_entry = max(uni, key=lambda u: u[0])
            for name, r in fused:
                worst = min((e for e in _protocol_entries(r) if e["attack"] == attack), key=lambda e: e["adv_acc"],
                            default=None)
                if worst is None:
                    continue
                verdict = "more" if worst["adv_acc"] > best_acc else "less"
                others = ", ".join(f"{n} under {e['budget']} {a:.2f}" for a, n, e in uni)
                lines.append(f"{attack_label(attack)}: {name} worst case {worst['adv_acc']:.2f} (under "
                             f"{worst['budget']}) vs {others}: audio-visual is {verdict} robust than the best "
                             f"unimodal" + _significance(side(name, worst), side(best_name, best_entry)))
    lines += _defense_findings(runs, side)
    return lines or ["(findings need a unimodal and an audio-visual run, or a defended run and its base)"]


def _defense_findings(runs: list[RunResults], side) -> list[str]:
    """Each defended run ('concat+dissim+banks' ...) against the undefended run of its head, per attack, at
    the budget where the undefended model is weakest."""
    bases = {r["arch_classifier"]: (name, r) for name, r in runs if "+" not in (r.get("label") or "")}
    lines = []
    for name, r in runs:
        if "+" not in (r.get("label") or "") or r["arch_classifier"] not in bases:
            continue
        base_name, base = bases[r["arch_classifier"]]
        for attack in dict.fromkeys(e["attack"] for e in _protocol_entries(r)):
            base_entries = [e for e in _protocol_entries(base) if e["attack"] == attack]
            if not base_entries:
                continue
            weakest = min(base_entries, key=lambda e: e["adv_acc"])
            entry = next((e for e in _protocol_entries(r) if e["attack"] == attack
                          and e["budget"] == weakest["budget"]), None)
            if entry is None:
                continue
            delta = entry["adv_acc"] - weakest["adv_acc"]
            lines.append(f"defense, {attack_label(attack)} {weakest['budget']}: {name} {entry['adv_acc']:.2f} vs "
                         f"{base_name} {weakest['adv_acc']:.2f} ({delta:+.2f} points)"
                         + _significance(side(name, entry), side(base_name, weakest)))
    return lines
