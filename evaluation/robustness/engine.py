"""The evaluation engine: every attack of a list, under every budget and attack variant, on each batch, with
per-sample records (``evaluation.robustness.records``).

Attacks come in two kinds:

* single attacks (``fgsm``, ``pgd``, ``mim``, ``apgd``, ``apgd-t``, ``square``) run on every sample, as the
  paper's tables report them;
* cascades (``autoattack``: APGD-CE, APGD-T, Square, as Croce & Hein 2020) run each component only on the
  samples every earlier component (of every variant) left standing, starting from the clean-correct ones;
* misalignment attacks: ``shift`` takes, per sample, the worst audio window of the shift grid
  (``dataset.misalignment``: the batch's ``audio_shifts``, ``shift_valid``, ``shift_seconds``) or the unshifted
  one: one that fools the model, else the one of highest loss; ``shift+<attack>`` runs that attack from the
  worst-shifted audio (the ball centred on it) and keeps the shifted input where the shift alone fooled.

Each budget carries its threat model (norm, joint L2 ball, dB audio budget, temporal sharing), passed on to
``build_attack``; a joint budget's split between the modalities is recorded per sample (``split_v``).

A *variant* is one configuration of the white-box attack: its loss (``ce``, the released adaptive
``ce+cos``, a localization objective ...) and, for a defended model, how gradients cross the sparse coding
(``purification``). The robust accuracy of a set of attacks is the share of samples correct under all of
them (per sample), so a defense's worst case over its variants is computed per sample too.

A defense that keeps per-sample state between forward passes (the memory banks' warm-started coding) gets the
batch's sample ids (``defenses.protocol.sample_scope``): the batch's scope holds the state of the clean pass, and
every attack runs in a scope of its own, which starts from that state and ends with the attack, so an attack's
result does not depend on the attacks run before it. The passes that decide whether an input fools the model
(after each attack, the shift search, the pages' inputs) use no state (``without_state``): the verdict is the
model's own, as without warm starts, and an attack's history can only change which inputs it finds.
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from attacks import ATTACKS, CASCADES, LossFn, attack_settings, build_attack, canonical, describe, joint_split
from attacks.base import perturbed_modalities
from attacks.registry import Component
from attacks.threat import MODALITIES, ThreatModel, ThreatSettings
from dataset.loaders import to_device
from defenses.protocol import purifying, sample_scope, without_state
from evaluation.robustness.checks import SANITY_ATTACK, SANITY_STEPS, GradientProbe
from evaluation.robustness.protocol import Budget, attack_plan
from evaluation.robustness.records import RecordKey, Records, perturbation_sizes
from models.av_model import ModelOutput, feature_cosine
from utils.distributed import DistInfo, all_gather_list

SHIFT = "shift"  # the misalignment attack; "shift+<attack>" follows it with <attack>
SHIFT_SEARCH = "shift search"  # the seconds spent choosing each batch's worst shifts


@dataclass
class BatchContext:
    """What an attack of one batch needs: inputs, labels, the clean output, and per-sample tensors an
    observer added (``data``, e.g. a localization objective's regions)."""

    frames: Tensor
    audio: Tensor
    labels: Tensor
    clean_out: ModelOutput
    data: dict[str, Any] = field(default_factory=dict)
    sample_ids: Tensor | None = None  # the dataset indices: each sample's random draws are seeded from its own

    def subset(self, idx: Tensor) -> BatchContext:
        data = {k: v[idx] if isinstance(v, Tensor) else v for k, v in self.data.items()}
        out = ModelOutput(*(None if t is None else t[idx] for t in self.clean_out))
        ids = None if self.sample_ids is None else self.sample_ids[idx.cpu()]
        return BatchContext(self.frames[idx], self.audio[idx], self.labels[idx], out, data, ids)


LossFactory = Callable[[BatchContext], "str | LossFn"]


@dataclass(frozen=True)
class Variant:
    """One white-box configuration: ``loss`` (a registered name, or a factory called with the batch
    context) and the ``purification`` mode a defended model's gradients take during its attacks (None: the
    model's own; ``defenses.protocol``)."""

    name: str
    loss: str | LossFactory = "ce"
    purification: str | None = None

    def loss_for(self, ctx: BatchContext) -> str | LossFn:
        return self.loss if isinstance(self.loss, str) else self.loss(ctx)


class Observer(Protocol):
    """Adds per-sample metrics of its own (localization): ``on_clean`` may fill ``ctx.data`` and returns
    per-sample values of the clean pass; ``on_adv`` returns per-sample values of an adversarial pass."""

    def on_clean(self, ctx: BatchContext, batch: dict) -> dict[str, Tensor]: ...

    def on_adv(self, key: RecordKey, ctx: BatchContext, adv_frames: Tensor, adv_audio: Tensor,
               out: ModelOutput) -> dict[str, Tensor]: ...


def expand_attack_types(attack_types: Sequence[str]) -> list[str]:
    """Canonical attack names, in order, without repeats ('aa' -> 'autoattack', 'fsgm' -> 'fgsm')."""
    return list(dict.fromkeys(canonical(a) for a in attack_types))


def is_shift_attack(attack: str) -> bool:
    return attack == SHIFT or attack.startswith(f"{SHIFT}+")


@dataclass
class ShiftSearch:
    """The worst window of a batch's shift grid per sample: its ``audio``, the ``seconds`` it is shifted by
    (0: the unshifted window), the model's output on it, and ``missing``, the invalid shifts per sample."""

    audio: Tensor
    seconds: Tensor
    out: ModelOutput
    missing: Tensor


@dataclass
class EvaluationRun:
    """What ``AttackEngine.run`` returns: per-sample records, seconds per key, probe counts, HTML samples."""

    records: Records
    seconds: dict[RecordKey | str, float]  # per record key, and SHIFT_SEARCH
    probe: dict[str, Any]
    vis: list[dict]
    unchanged: dict[RecordKey, str] = field(default_factory=dict)  # keys not attacked, and why


class AttackEngine:
    """Runs ``attack_types`` x ``budgets`` x ``variants`` over a loader; see the module docstring."""

    def __init__(self, model: nn.Module, args: argparse.Namespace, info: DistInfo, budgets: Sequence[Budget],
                 attack_types: Sequence[str], variants: Sequence[Variant] = (Variant("default"),),
                 observer: Observer | None = None, num_vis: int = 0, sanity_eps: float = 0.0) -> None:
        self.model = model
        self.args = args
        self.info = info
        self.budgets = list(budgets)
        self.attack_types = expand_attack_types(attack_types)
        self.variants = list(variants)
        self.observer = observer
        self.num_vis = num_vis
        self.sanity_eps = sanity_eps
        self.seconds: dict[RecordKey | str, float] = {}
        self.unchanged: dict[RecordKey, str] = {}
        self.plan = attack_plan(self.attack_types, self.budgets, ThreatSettings.from_args(args).max_shift)

    # ------------------------------------------------------------------------------------------ attacks

    def unchanged_reason(self, budget: Budget) -> str | None:
        """Why no attack under ``budget`` can change the model's output (every modality it perturbs is one the
        model does not use), or None when an attack can."""
        perturbed = [m for m in MODALITIES if budget.attacks(m)]
        if not perturbed or perturbed_modalities(budget, self.model):
            return None
        return (f"not attacked: the model does not use the {' or '.join(perturbed)} input this budget perturbs, so "
                f"every sample keeps its clean output")

    def _keep_clean(self, records: Records, key: RecordKey, ctx: BatchContext, idx: Tensor, reason: str,
                    not_run: Tensor | None = None) -> None:
        """Record the samples ``idx`` under ``key`` with their clean inputs and output, without running an attack."""
        sub = ctx.subset(idx)
        self._record(records, key, sub, idx, sub.frames, sub.audio, sub.clean_out, ctx.labels.numel(), not_run)
        self.unchanged[key] = reason

    def _build(self, name: str, budget: Budget, loss: str | LossFn | None, component: Component | None) -> Any:
        """Registered attack ``name`` under ``budget``, its settings read from the flags it declares. A cascade's
        components run once each (AutoAttack's standard version): no restarts, and a random start only where the
        ``component`` says so."""
        args = self.args
        options = {param: getattr(args, flag, None) for param, flag in attack_settings(name).items()}
        if component is not None:
            options.pop("restarts", None)
            options.pop("random_start", None)
            options.update(component.options)
        elif args.restarts > 1:
            options.setdefault("restarts", args.restarts)  # an attack without restarts refuses them
        if args.eot_iter > 1:
            options.setdefault("eot_iter", args.eot_iter)  # likewise EOT
        steps, alpha = options.pop("steps", None), options.pop("alpha", None)
        if alpha is not None and budget.loudness_relative:  # each clip's audio step follows its own budget
            alpha = {"visual": alpha}
        return build_attack(name, self.model, budget.core(), steps=steps, alpha=alpha,
                            loss=loss if loss is not None else "ce", **options)

    def effective_settings(self, num_classes: int) -> dict[str, dict[str, Any]]:
        """Per attack of the plan (each cascade component as ``<cascade>/<component>``), the settings it runs
        with: the flags it declares after its defaults and clamps (APGD-T's targets are at most ``num_classes -
        1``), as the results file records them."""
        settings: dict[str, dict[str, Any]] = {}
        for attack, budget in self.plan:
            name = attack.split("+", 1)[1] if attack.startswith(f"{SHIFT}+") else attack
            if name == SHIFT:
                continue
            spec = describe(name)
            parts = [(f"{name}/{c.name}", c.attack, c) for c in spec.cascade.components] if spec.cascade \
                else [(name, name, None)]
            for label, registered, component in parts:
                if label in settings:
                    continue
                built = self._build(registered, budget, None, component)
                values = {param: getattr(built, param) for param in type(built).settings
                          if param != "alpha" and hasattr(built, param)}  # alpha follows each budget
                if "n_target_classes" in values:
                    values["n_target_classes"] = min(values["n_target_classes"], num_classes - 1)
                settings[label] = values
        return settings

    def _attack(self, key: RecordKey, attacker: Any, ctx: BatchContext,
                variant: Variant) -> tuple[Tensor, Tensor, ModelOutput]:
        """``attacker`` on ``ctx`` with gradients through the defense as ``variant`` asks; timed under ``key``."""
        start = time.perf_counter()
        clean_logits = ctx.clean_out.logits if variant.purification is None else None  # the same forward pass
        with sample_scope(self.model, ctx.sample_ids), purifying(self.model, variant.purification):
            adv_frames, adv_audio = attacker(ctx.frames, ctx.audio, ctx.labels, sample_ids=ctx.sample_ids,
                                             clean_logits=clean_logits)
        if self.info.device.type == "cuda":
            torch.cuda.synchronize(self.info.device)
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
        with torch.no_grad(), without_state(self.model):
            out = self.model(adv_frames, adv_audio)
        return adv_frames, adv_audio, out

    def _record(self, records: Records, key: RecordKey, ctx: BatchContext, idx: Tensor, adv_frames: Tensor,
                adv_audio: Tensor, out: ModelOutput, batch_size: int, not_run: Tensor | None = None,
                budget: Budget | None = None, extra: dict[str, Tensor] | None = None) -> None:
        """Record the results of the samples ``idx`` of a batch of ``batch_size``: ``ctx``, the adversarial
        inputs, ``out`` and ``extra`` (more per-sample fields) hold those samples only. The other samples get
        -1 where ``not_run`` (fooled earlier in a cascade), else 0 (wrong on the clean input), and NaN for every
        other field. A joint ``budget`` adds the share of it spent on vision (``split_v``)."""
        correct = torch.zeros(batch_size, dtype=torch.int8)
        if not_run is not None:
            correct[not_run.cpu()] = -1
        values: dict[str, Tensor] = {"correct": correct}
        if idx.numel():
            correct[idx.cpu()] = (out.logits.argmax(dim=1) == ctx.labels).to(torch.int8).cpu()
            sub_values = {"loss": F.cross_entropy(out.logits.float(), ctx.labels, reduction="none"),
                          **perturbation_sizes(ctx.frames, adv_frames, ctx.audio, adv_audio)}
            cos = feature_cosine(out)
            if cos is not None:
                sub_values["cos"] = cos
            if budget is not None and budget.joint_eps is not None:
                sub_values["split_v"] = joint_split(ctx.frames, adv_frames.detach(), ctx.audio, adv_audio.detach(),
                                                    budget.eps_visual, budget.eps_audio, temporal=budget.temporal)
            sub_values.update(extra or {})
            if self.observer is not None:
                sub_values.update(self.observer.on_adv(key, ctx, adv_frames, adv_audio, out))
            values.update({name: _scatter(value, idx, batch_size) for name, value in sub_values.items()})
        records.add(key, values, batch_size)

    def _single(self, records: Records, attack: str, budget: Budget, ctx: BatchContext,
                vis_adv: dict | None) -> None:
        everyone = torch.arange(ctx.labels.numel(), device=ctx.labels.device)
        reason = self.unchanged_reason(budget)
        for variant in self.variants:
            key = RecordKey(attack, budget.key, variant.name)
            if reason is not None:
                self._keep_clean(records, key, ctx, everyone, reason)
                continue
            loss = variant.loss_for(ctx) if describe(attack).uses_loss else None
            adv_frames, adv_audio, out = self._attack(key, self._build(attack, budget, loss, None), ctx, variant)
            self._record(records, key, ctx, everyone, adv_frames, adv_audio, out, ctx.labels.numel(), budget=budget)
            if vis_adv is not None:
                vis_adv.setdefault((attack, budget, variant.name), (adv_frames, adv_audio, out))

    def _shift_search(self, ctx: BatchContext, batch: dict) -> ShiftSearch:
        """Per sample, the window of the shift grid (or the unshifted one) that fools the model, else the one
        of highest cross-entropy; invalid shifts (not in the clip) are never taken."""
        if "audio_shifts" not in batch:
            raise ValueError("the misalignment attacks need the shifted audio windows in each batch "
                             "('audio_shifts', 'shift_valid', 'shift_seconds'): evaluate with --max_shift "
                             "(dataset.misalignment.ShiftedAudio)")
        device = ctx.audio.device
        windows = batch["audio_shifts"].to(device)  # [B, K, 1, L]
        valid = batch["shift_valid"].to(device)  # [B, K]
        seconds = batch["shift_seconds"][0].tolist()
        start = time.perf_counter()
        best_audio = ctx.audio.clone()
        best_seconds = torch.zeros(ctx.labels.numel(), dtype=torch.float64)
        best_fooled = ctx.clean_out.logits.argmax(dim=1) != ctx.labels
        best_loss = F.cross_entropy(ctx.clean_out.logits.float(), ctx.labels, reduction="none")
        for k, shift in enumerate(seconds):
            ok = valid[:, k]
            if not ok.any():
                continue
            candidate = torch.where(ok.view(-1, 1, 1), windows[:, k], ctx.audio)  # invalid rows: never taken
            with torch.no_grad(), without_state(self.model):
                out = self.model(ctx.frames, candidate)
            fooled = out.logits.argmax(dim=1) != ctx.labels
            loss = F.cross_entropy(out.logits.float(), ctx.labels, reduction="none")
            better = ok & ((fooled & ~best_fooled) | ((fooled == best_fooled) & (loss > best_loss)))
            best_audio[better] = candidate[better]
            best_seconds[better.cpu()] = shift
            best_fooled, best_loss = best_fooled | (better & fooled), torch.where(better, loss, best_loss)
        with torch.no_grad(), without_state(self.model):
            best_out = self.model(ctx.frames, best_audio)  # every output field (features too) of the choice
        self.seconds[SHIFT_SEARCH] = self.seconds.get(SHIFT_SEARCH, 0.0) + time.perf_counter() - start
        return ShiftSearch(best_audio, best_seconds, best_out, (~valid).sum(dim=1).cpu())

    def _shift(self, records: Records, attack: str, budget: Budget, ctx: BatchContext, search: ShiftSearch,
               vis_adv: dict | None) -> None:
        """``shift`` alone (recorded once), or ``shift+<attack>`` from the worst-shifted audio per variant."""
        everyone = torch.arange(ctx.labels.numel(), device=ctx.labels.device)
        shifted = BatchContext(ctx.frames, search.audio, ctx.labels, search.out, ctx.data, ctx.sample_ids)
        extra = {"shift_s": search.seconds}
        if attack == SHIFT:
            key = RecordKey(attack, budget.key, self.variants[0].name)
            self._record(records, key, ctx, everyone, ctx.frames, search.audio, search.out, ctx.labels.numel(),
                         extra=extra)
            if vis_adv is not None:
                vis_adv.setdefault((attack, budget, None), (ctx.frames, search.audio, search.out))
            return
        follow_up = attack.split("+", 1)[1]
        shift_fooled = search.out.logits.argmax(dim=1) != ctx.labels
        for variant in self.variants:
            key = RecordKey(attack, budget.key, variant.name)
            loss = variant.loss_for(shifted) if describe(follow_up).uses_loss else None
            adv_frames, adv_audio, out = self._attack(key, self._build(follow_up, budget, loss, None), shifted,
                                                     variant)
            undo = shift_fooled & (out.logits.argmax(dim=1) == ctx.labels)  # the shift alone did better
            if undo.any():
                if adv_frames is not ctx.frames:
                    adv_frames = torch.where(undo.view(-1, 1, 1, 1, 1), ctx.frames, adv_frames)
                if adv_audio is not search.audio:
                    adv_audio = torch.where(undo.view(-1, 1, 1), search.audio, adv_audio)
                with torch.no_grad():
                    out = self.model(adv_frames, adv_audio)
            self._record(records, key, shifted, everyone, adv_frames, adv_audio, out, ctx.labels.numel(),
                         budget=budget, extra=extra)
            if vis_adv is not None:
                vis_adv.setdefault((attack, budget, variant.name), (adv_frames, adv_audio, out))

    def _cascade(self, records: Records, cascade: str, budget: Budget, ctx: BatchContext, clean_correct: Tensor,
                 vis_adv: dict | None) -> None:
        """Each component on the samples still standing; a component that does not depend on the variant
        (black-box, or a fixed objective under the same purification) runs once."""
        batch_size = ctx.labels.numel()
        standing = clean_correct.clone()
        reason = self.unchanged_reason(budget)
        final = None if vis_adv is None else [ctx.frames.clone(), ctx.audio.clone()]  # for the HTML page
        done: set[tuple] = set()
        components = [(c, ATTACKS.get(c.attack)) for c in CASCADES.get(cascade).components]
        plan = [(c, cls, v) for v in self.variants for c, cls in components if cls.family != "black-box"]
        plan += [(c, cls, self.variants[0]) for c, cls in components if cls.family == "black-box"]
        for component, cls, variant in plan:
            signature = (component.name, variant.loss if cls.uses_loss else None,
                         None if cls.family == "black-box" else variant.purification)
            if signature in done:
                continue
            done.add(signature)
            key = RecordKey(cascade, budget.key, variant.name, component.name)
            idx = standing.nonzero().squeeze(1)
            not_run = ~standing & clean_correct
            if idx.numel() == 0:
                self._record(records, key, ctx, idx, ctx.frames, ctx.audio, ctx.clean_out, batch_size, not_run)
                continue
            if reason is not None:
                self._keep_clean(records, key, ctx, idx, reason, not_run)
                continue
            sub = ctx.subset(idx)
            loss = variant.loss_for(sub) if cls.uses_loss else None
            adv_frames, adv_audio, out = self._attack(key, self._build(component.attack, budget, loss, component), sub,
                                                      variant)
            self._record(records, key, sub, idx, adv_frames, adv_audio, out, batch_size, not_run, budget)
            if final is not None:
                final[0][idx], final[1][idx] = adv_frames.detach(), adv_audio.detach()
            standing[idx] = out.logits.argmax(dim=1) == sub.labels
        if final is not None:
            with torch.no_grad(), without_state(self.model):
                vis_adv.setdefault((cascade, budget, None), (final[0], final[1], self.model(final[0], final[1])))

    def _sanity(self, records: Records, ctx: BatchContext) -> None:
        """A short PGD with a large budget on both modalities (random start, step 2.5 eps / steps)."""
        eps = self.sanity_eps
        budget = Budget(eps if getattr(self.model, "uses_visual", True) else 0.0,
                        eps if getattr(self.model, "uses_audio", True) else 0.0)
        attacker = build_attack("pgd", self.model, ThreatModel(budget.eps_visual, budget.eps_audio,
                                                               units=self.args.eps_units),
                                steps=SANITY_STEPS, alpha=2.5 * eps / SANITY_STEPS, random_start=True,
                                seed=self.args.seed)
        key = RecordKey(SANITY_ATTACK, budget.key, self.variants[0].name)
        adv_frames, adv_audio, out = self._attack(key, attacker, ctx, self.variants[0])
        everyone = torch.arange(ctx.labels.numel(), device=ctx.labels.device)
        self._record(records, key, ctx, everyone, adv_frames, adv_audio, out, ctx.labels.numel())

    # -------------------------------------------------------------------------------------------- loop

    def run(self, loader) -> EvaluationRun:
        self.model.eval()
        records = Records()
        probe = GradientProbe(self.model)
        vis: list[dict] = []
        for batch in tqdm(loader, desc="attacks", disable=not self.info.is_main, dynamic_ncols=True):
            with sample_scope(self.model, batch["index"]):  # a defense's per-sample state lives for the batch
                self._run_batch(batch, records, probe, vis)
        records.gather(self.info)
        return EvaluationRun(records, self._mean_seconds(), probe.summary(self.info), vis, dict(self.unchanged))

    def _run_batch(self, batch: dict, records: Records, probe: GradientProbe, vis: list[dict]) -> None:
        """Clean pass, every attack of the plan and the sanity run on one batch."""
        frames, audio, labels = to_device(batch, self.info.device)
        with torch.no_grad():
            out = self.model(frames, audio)
        clean_correct = out.logits.argmax(dim=1) == labels
        records.add_samples(batch["info"], batch["index"], labels.cpu(), clean_correct.cpu())
        cos = feature_cosine(out)
        if cos is not None:
            records.add_extra("cos_clean", cos.cpu())
        records.add_extra("clean_loss", F.cross_entropy(out.logits.float(), labels, reduction="none").cpu())
        with purifying(self.model, self.variants[0].purification):
            probe.update(frames, audio, labels, out)
        ctx = BatchContext(frames, audio, labels, out, sample_ids=batch["index"].cpu())
        if self.observer is not None:
            for name, values in self.observer.on_clean(ctx, batch).items():
                records.add_extra(name, values)
        vis_adv = {} if self.info.is_main and len(vis) < self.num_vis else None  # adversarial inputs to show
        search = None
        if any(is_shift_attack(attack) for attack, _ in self.plan):
            search = self._shift_search(ctx, batch)
            records.add_extra("shift_missing", search.missing)
        for attack, budget in self.plan:
            if attack in CASCADES:
                self._cascade(records, attack, budget, ctx, clean_correct, vis_adv)
            elif is_shift_attack(attack):
                self._shift(records, attack, budget, ctx, search, vis_adv)
            else:
                self._single(records, attack, budget, ctx, vis_adv)
        if self.sanity_eps > 0:
            self._sanity(records, ctx)
        if vis_adv is not None:
            vis.extend(self._vis_samples(batch, ctx, vis_adv, len(vis)))

    def _mean_seconds(self) -> dict[RecordKey | str, float]:
        """Seconds per key, averaged over the ranks in one collective: a rank where a cascade component found no
        survivor never timed it, so the ranks' keys differ and a collective per key would not match up."""
        parts = all_gather_list([self.seconds], self.info)
        keys = list(dict.fromkeys(k for part in parts for k in part))
        return {k: sum(part.get(k, 0.0) for part in parts) / len(parts) for k in keys}

    def _vis_samples(self, batch: dict, ctx: BatchContext, vis_adv: dict, have: int) -> list[dict]:
        """The first ``num_vis`` samples of rank 0 with their clean and adversarial inputs (first attack type,
        protocol budgets; one column per budget, or per variant and budget) for the HTML page."""
        keep = self.num_vis - have
        samples = []
        for i in range(min(keep, ctx.labels.numel())):
            sample = {"info": batch["info"][i], "label": int(ctx.labels[i]),
                      "clean_pred": int(ctx.clean_out.logits[i].argmax()), "frames": ctx.frames[i].cpu(),
                      "audio": ctx.audio[i].cpu(), "adv": {}}
            for (attack, budget, variant), (adv_frames, adv_audio, out) in vis_adv.items():
                if attack == self.attack_types[0] and not budget.grid:
                    name = f"{budget.name} [{budget.threat}]" if budget.threat else budget.name
                    column = name if variant is None or len(self.variants) == 1 else f"{variant} {name}"
                    sample["adv"][column] = {"frames": adv_frames[i].cpu(), "audio": adv_audio[i].cpu(),
                                                  "pred": int(out.logits[i].argmax()),
                                                  "budget": {"eps_visual": budget.eps_visual,
                                                             "eps_audio": budget.eps_audio}}
            samples.append(sample)
        return samples


def _scatter(values: Tensor, idx: Tensor, size: int, fill: float = math.nan) -> Tensor:
    """``values`` of samples ``idx`` placed in a ``[size]`` CPU float tensor filled with ``fill``."""
    out = torch.full((size,), fill, dtype=torch.float64)
    out[idx.cpu()] = values.detach().double().cpu()
    return out
