"""Gradient-masking checks run with every evaluation (after AutoAttack's ``checks.py`` and RobustBench's rules).

Each check returns a dict with ``status``: ``passed``, ``flagged`` (the numbers may overstate robustness) or
``not run`` (with ``why`` and the flag that runs it in ``run_with``), ``flag`` (``status == 'flagged'``), the
figures behind it and a one-line ``message``. The ``verdict`` is ``passed`` only when every check ran and
passed; otherwise ``flagged: <checks>`` and / or ``incomplete: not run: <checks>``. A budget sweep
(``--eps_grid``) and a black-box attack (Square, or AutoAttack's cascade) are part of a complete verdict.

* ``zero_gradient``: samples whose input gradient of the cross-entropy is all zero, per modality, although
  their loss is not zero (a loss that is exactly 0 in float32, a saturated softmax, is counted apart);
* ``randomness``: samples whose output differs between two forward passes of the same input (use EOT:
  ``--eot_iter``);
* ``softmax_output``: outputs that look like probabilities instead of logits;
* ``black_box``: samples a black-box attack (Square) fooled but no white-box attack of that budget did;
* ``eps_monotone``: robust accuracy that rises with ε along a budget sweep (``--eps_grid``);
* ``sanity``: accuracy that stays above chance under a large budget (``--sanity_eps``, a short PGD);
* ``dynamic``: a forward pass that runs an optimisation (the memory banks' sparse coding): adaptive
  attacks required; the adaptive variants evaluated are listed;
* ``dense_codes``: the implicit gradient through the sparse coding met codes that are not unique lasso
  solutions and acted as BPDA there, and no unrolled variant was evaluated.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from evaluation.robustness.protocol import Budget
from evaluation.robustness.records import Records
from evaluation.stats import wilson_interval
from models.av_model import ModelOutput
from utils.distributed import DistInfo, all_reduce_sum
from utils.precision import autocast_off

RANDOMNESS_TOL = 1e-5  # relative change of the logits between two passes that counts as randomness
BLACK_BOX_TOLERANCE = 0.002  # share of samples (AutoAttack's check_square_sr uses 0.2 %)
SANITY_ATTACK = "sanity-pgd"  # the record key of the large-budget run
SANITY_STEPS = 10
COUNTS = ("n", "zero_visual", "zero_audio", "saturated", "random", "softmax_like")


class GradientProbe:
    """Counts, over the batches of an evaluation, the per-sample facts the checks need from the model."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.uses = {"visual": getattr(model, "uses_visual", True), "audio": getattr(model, "uses_audio", True)}
        self.counts = dict.fromkeys(COUNTS, 0)

    def update(self, frames: Tensor, audio: Tensor, labels: Tensor, out: ModelOutput) -> None:
        device = frames.device.type
        with autocast_off(device):
            with torch.no_grad():
                again = self.model(frames, audio).logits.float()
            logits = out.logits.float()
            scale = logits.abs().amax(dim=1).clamp_min(1.0)
            self.counts["random"] += int(((again - logits).abs().amax(dim=1) > RANDOMNESS_TOL * scale).sum())
            sums_to_one = (logits.sum(dim=1) - 1).abs() < 1e-4
            self.counts["softmax_like"] += int(((logits >= 0).all(dim=1) & sums_to_one).sum())
            inputs = {"visual": frames.detach().float().clone(), "audio": audio.detach().float().clone()}
            wanted = [m for m in inputs if self.uses[m]]
            for m in wanted:
                inputs[m].requires_grad_(True)
            with torch.enable_grad():
                losses = F.cross_entropy(self.model(inputs["visual"], inputs["audio"]).logits.float(), labels,
                                         reduction="none")
                grads = torch.autograd.grad(losses.sum(), [inputs[m] for m in wanted], allow_unused=True)
        saturated = losses.detach() == 0
        self.counts["saturated"] += int(saturated.sum())
        for m, grad in zip(wanted, grads):
            zero = torch.ones_like(saturated) if grad is None else grad.flatten(1).abs().amax(dim=1) == 0
            self.counts[f"zero_{m}"] += int((zero & ~saturated).sum())
        self.counts["n"] += labels.numel()

    def summary(self, info: DistInfo) -> dict[str, Any]:
        totals = all_reduce_sum(torch.tensor([self.counts[k] for k in COUNTS], dtype=torch.float64), info)
        summary: dict[str, Any] = {k: int(v) for k, v in zip(COUNTS, totals.tolist())}
        summary["uses"] = self.uses
        return summary


def with_status(check: dict) -> dict:
    """``check`` (which ran) with its ``status``: ``flagged`` or ``passed``."""
    return {"status": "flagged" if check["flag"] else "passed", **check}


def not_run(why: str, run_with: str) -> dict:
    """A check that could not run on what was evaluated: never counted as passed."""
    return {"status": "not run", "flag": False, "why": why, "run_with": run_with,
            "message": f"not run: {why} (run it with {run_with})"}


def verdict(checks: dict[str, dict]) -> str:
    """``passed`` only when every check ran and passed; else what flagged and what did not run."""
    flagged = [name for name, check in checks.items() if check["status"] == "flagged"]
    missing = [name for name, check in checks.items() if check["status"] == "not run"]
    if not flagged and not missing:
        return "passed"
    parts = []
    if flagged:
        parts.append("flagged: " + ", ".join(flagged))
    if missing:
        parts.append("incomplete: not run: " + ", ".join(missing))
    return "; ".join(parts)


def _fraction(count: int, n: int) -> float:
    return count / n if n else 0.0


def check_zero_gradient(probe: dict) -> dict:
    n = probe["n"]
    fractions = {m: _fraction(probe[f"zero_{m}"], n) for m in ("visual", "audio") if probe["uses"][m]}
    flag = any(f > 0 for f in fractions.values())
    text = ", ".join(f"{m} {100 * f:.1f}%" for m, f in fractions.items())
    message = (f"zero input gradient with a non-zero loss: {text} of samples; gradient attacks see nothing there"
               if flag else f"no zero input gradients ({text})")
    if probe["saturated"]:
        message += f"; {probe['saturated']} samples have a loss of exactly 0 (saturated softmax; DLR / margin " \
                   "losses and Square still attack them)"
    return with_status({"flag": flag, "fraction": fractions, "saturated": probe["saturated"], "message": message})


def check_randomness(probe: dict, eot_iter: int) -> dict:
    fraction = _fraction(probe["random"], probe["n"])
    flag = fraction > 0 and eot_iter == 1
    if fraction == 0:
        message = "deterministic: two forward passes agree"
    else:
        message = (f"randomised: {100 * fraction:.1f}% of samples change between two forward passes; "
                   + ("attack with EOT (--eot_iter 20)" if eot_iter == 1 else f"attacked with EOT ({eot_iter})"))
    return with_status({"flag": flag, "fraction": fraction, "eot_iter": eot_iter, "message": message})


def check_softmax(probe: dict) -> dict:
    fraction = _fraction(probe["softmax_like"], probe["n"])
    flag = fraction > 0.5
    message = ("outputs look like probabilities (non-negative, summing to 1): attacks need logits"
               if flag else "outputs are logits")
    return with_status({"flag": flag, "fraction": fraction, "message": message})


def check_black_box(records: Records, budgets: Sequence[Budget], black_box: Sequence[str]) -> dict:
    """Per budget, the samples a black-box attack fooled (correct == 0 while clean-correct) that every
    white-box attack of the budget left correct."""
    clean = np.asarray(records.clean_correct, dtype=bool)
    per_budget, worst = {}, 0.0
    for budget in budgets:
        keys = [k for k in records.keys() if k.budget == budget.key and k.attack != SANITY_ATTACK]
        box = [k for k in keys if (k.component or k.attack) in black_box]
        white = [k for k in keys if k not in box]
        if not box or not white:
            continue
        fooled_by_box = np.zeros_like(clean)
        for key in box:
            fooled_by_box |= records.column(key) == 0
        survived_white = np.ones_like(clean)
        for key in white:
            survived_white &= records.column(key) != 0
        count = int((clean & fooled_by_box & survived_white).sum())
        per_budget[budget.key] = count
        worst = max(worst, _fraction(count, clean.size))
    flag = worst > BLACK_BOX_TOLERANCE
    if not per_budget:
        return not_run("no black-box attack was evaluated beside a white-box one", "--attack_type ... square "
                       "(or autoattack)")
    if flag:
        message = (f"a black-box attack fooled samples no white-box attack did ({per_budget}): gradients may be "
                   "masked")
    else:
        message = "the black-box attack found nothing the white-box attacks missed"
    return with_status({"flag": flag, "samples": per_budget, "message": message})


def _budget_kind(budget: Budget) -> str | None:
    if budget.eps_visual and budget.eps_audio:
        return "A+V" if math.isclose(budget.eps_visual, budget.eps_audio) else None
    return budget.name


def check_eps_monotone(records: Records, budgets: Sequence[Budget]) -> dict:
    """For every attack and budget kind (A, V, A+V with equal ε), accuracy must not rise with ε."""
    rises, compared = [], 0
    for attack in sorted({k.attack_name for k in records.keys() if k.attack != SANITY_ATTACK}):
        for kind in ("A", "V", "A+V"):
            line = sorted((max(b.eps_visual, b.eps_audio), b.key) for b in budgets if _budget_kind(b) == kind)
            accs = []
            for eps, key in line:
                matching = [k for k in records.keys() if k.attack_name == attack and k.budget == key]
                if matching:
                    accs.append((eps, float(records.robust(matching).mean())))
            compared += max(len(accs) - 1, 0)
            for (eps0, acc0), (eps1, acc1) in zip(accs, accs[1:]):
                if acc1 > acc0:
                    rises.append(f"{attack} {kind}: {100 * acc0:.1f}% at ε={eps0:g} -> {100 * acc1:.1f}% at ε={eps1:g}")
    if not compared:
        return not_run("no attack was evaluated at two budgets of one kind, so accuracy cannot be followed along ε",
                       "--eps_grid 0.006 0.012 0.024 (a budget sweep)")
    flag = bool(rises)
    message = ("robust accuracy rises with ε: " + "; ".join(rises)) if flag else \
        "robust accuracy does not rise with ε along the budgets evaluated"
    return with_status({"flag": flag, "rises": rises, "message": message})


def check_sanity(records: Records, num_classes: int, sanity_eps: float) -> dict:
    keys = [k for k in records.keys() if k.attack == SANITY_ATTACK]
    if not keys:
        return not_run("the large-budget sanity run was switched off (--sanity_eps 0)", "--sanity_eps 0.3")
    n = records.num_samples
    correct = int((records.column(keys[0]) == 1).sum())
    low, high = wilson_interval(correct, n)
    chance = 1 / num_classes
    flag = low > chance
    acc = _fraction(correct, n)
    message = (f"accuracy under a large budget (ε={sanity_eps:g}, PGD-{SANITY_STEPS}) is {100 * acc:.1f}% "
               f"[{100 * low:.1f}, {100 * high:.1f}]" + (f", above chance {100 * chance:.1f}%: the attack cannot "
                                                         "reach the model's errors (masking?)" if flag else
                                                         f", not above chance {100 * chance:.1f}%"))
    return with_status({"flag": flag, "eps": sanity_eps, "acc": 100 * acc, "ci": [100 * low, 100 * high],
                        "chance": 100 * chance, "message": message})


def check_dynamic(model: nn.Module, variants: Sequence[str]) -> dict:
    """A model whose forward pass runs an optimisation declares it with ``runs_optimisation`` (the memory
    banks); it needs adaptive attacks, and the variants evaluated are listed."""
    dynamic = bool(getattr(model, "runs_optimisation", False))
    if not dynamic:
        return with_status({"flag": False, "dynamic": False, "message": "static forward pass"})
    adaptive = list(variants)
    message = ("dynamic: the forward pass runs an optimisation (sparse coding); adaptive attacks required — "
               f"evaluated: {', '.join(adaptive)}")
    flag = len(adaptive) < 2
    if flag:
        message += " (only one: add BPDA and the adaptive loss, --defense_attacks ce ce+cos bpda)"
    return with_status({"flag": flag, "dynamic": True, "variants": adaptive, "message": message})


def check_dense_codes(dense_backward: int, purifications: Sequence[str | None]) -> dict:
    """The implicit lasso gradient met codes that are not unique lasso solutions (``DenseCodeWarning``): there it
    is BPDA's, so without the unrolled gradient among the variants no exact white-box gradient was tried."""
    if not dense_backward:
        return with_status({"flag": False, "backward_passes": 0, "message": "no implicit gradient met a dense code"})
    flag = "unrolled" not in purifications
    message = (f"the implicit gradient met dense codes in {dense_backward} backward passes and acted as BPDA there"
               + ("; evaluate --coding_grad unrolled (or raise --coding_max_iter / lower --coding_tol) for an "
                  "exact white-box gradient" if flag else "; the unrolled variant covers them"))
    return with_status({"flag": flag, "backward_passes": dense_backward, "message": message})


def run_checks(records: Records, probe: dict, budgets: Sequence[Budget], model: nn.Module, variants: Sequence[str],
               num_classes: int, eot_iter: int, sanity_eps: float, black_box: Sequence[str], dense_backward: int = 0,
               purifications: Sequence[str | None] = ()) -> dict:
    """Every check, and the ``verdict`` over them (``verdict``)."""
    checks = {
        "zero_gradient": check_zero_gradient(probe),
        "randomness": check_randomness(probe, eot_iter),
        "softmax_output": check_softmax(probe),
        "black_box": check_black_box(records, budgets, black_box),
        "eps_monotone": check_eps_monotone(records, budgets),
        "sanity": check_sanity(records, num_classes, sanity_eps),
        "dynamic": check_dynamic(model, variants),
        "dense_codes": check_dense_codes(dense_backward, purifications),
    }
    checks["verdict"] = verdict(checks)
    if checks["dynamic"]["dynamic"] and not checks["dynamic"]["flag"]:
        checks["verdict"] += f" (dynamic: adaptive variants {', '.join(variants)} evaluated)"
    return checks
