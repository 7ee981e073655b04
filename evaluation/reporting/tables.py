"""One run's robustness table (attack_table.md); the study table over runs and its findings are in
``evaluation.reporting.study``.

Every accuracy is printed with its 95 % Wilson interval, ``64.58 [54.6, 73.4]``.
"""
from __future__ import annotations

from collections.abc import Sequence

from attacks.threat import describe_units
from evaluation.stats import format_accuracy

ATTACK_LABELS = {"autoattack": "AA"}


def accuracy_text(figures: dict | None, missing: str = "n/a") -> str:
    """``figures`` with n / correct as 'acc [low, high]'; older results without counts as 'acc'; ``missing`` for
    none."""
    if figures is None:
        return missing
    if "n" in figures and "correct" in figures:
        return format_accuracy(figures["correct"], figures["n"])
    value = figures.get("adv_acc", figures.get("acc"))
    return missing if value is None else f"{value:.2f}"


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
    clean = accuracy_text(results["clean"])
    for attack in attacks:
        cells = {budget_label(e): e for e in entries if e["attack"] == attack}
        lines.append(_row([attack_label(attack), clean] + [accuracy_text(cells.get(label)) for label in labels]))
        components = next((e["components"] for e in cells.values() if "components" in e), None)
        for i, component in enumerate(components or []):
            name = component["component"].upper() + (f" ({component['variant']})" if len(variants) > 1 else "")
            after = {budget_label(e): e["components"][i] if i < len(e.get("components", [])) else None
                     for e in cells.values()}
            lines.append(_row([f"↳ after {name}", ""] + [accuracy_text(after.get(label)) for label in labels]))
    worst = {budget_label(w): w for w in results.get("worst_case", []) if not w["grid"]}
    if len(attacks) > 1 and worst:
        lines.append(_row(["**worst case, all attacks**", clean]
                          + [accuracy_text(worst.get(label)) for label in labels]))
    lines += _perturbation_lines(entries, results.get("norm", "linf") == "l2")
    lines += _split_lines(entries) + _misalignment_lines(results, entries)
    if results["clean"].get("cos_mean") is not None:
        lines += ["", "Mean cos(feat_v, feat_a), clean vs adversarial:", "",
                  _row(["attack", "clean"] + labels), "|---" * (len(labels) + 2) + "|"]
        for attack in attacks:
            cos = {budget_label(e): e["cos_adv_mean"] for e in entries if e["attack"] == attack}
            lines.append(_row([attack_label(attack), f"{results['clean']['cos_mean']:.3f}"]
                              + ["n/a" if cos.get(lb) is None else f"{cos[lb]:.3f}" for lb in labels]))
    unchanged = sorted({f"{budget_label(e)}: {e['unchanged']}" for e in entries if e.get("unchanged")})
    if unchanged:
        lines += [""] + [f"{text}." for text in unchanged]
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
