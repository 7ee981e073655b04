"""The multimodal attack base: budgets and their units, the threat model (norm, joint budget,
loudness-relative audio budgets, per-frame or shared visual perturbations), the model calls, restarts and
the projected-step loop.

An attack perturbs the raw inputs of the model: frames ``[B, 3, T, H, W]`` in [0, 1] and the
waveform ``[B, 1, L]`` in [-1, 1]. Each modality has its own budget. A modality whose budget is 0,
or that the model does not use, is returned as the very tensor passed in. Attacks run in float32
with autocast switched off, whatever the caller's precision. The feasible sets live in ``attacks.regions``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.losses import NEEDS_FEATURES, LossFn, PerSampleLoss, get_loss
from attacks.regions import Ball, Independent, JointL2Ball, L2Ball, ModalitySet, Region
from attacks.streams import BatchStream, SampleStreams, Streams
from attacks.threat import IMAGENET_STD, MODALITIES, NORMS, ThreatModel
from models.av_model import AVModel, ModelOutput
from utils.precision import autocast_off

VALID_RANGE = {"visual": (0.0, 1.0), "audio": (-1.0, 1.0)}

Inputs = dict[str, Tensor]


def _per_modality(value: float | Mapping[str, float | None] | None, what: str) -> dict[str, float | None]:
    if not isinstance(value, Mapping):
        return dict.fromkeys(MODALITIES, value)
    unknown = sorted(set(value) - set(MODALITIES))
    if unknown:
        raise ValueError(f"{what} keys must be among {MODALITIES}, got {unknown}")
    return {m: value.get(m) for m in MODALITIES}


def _select(value: Any, index: Tensor) -> Any:
    """``value`` (a tensor, None, or a tuple / dict of them) restricted to the samples ``index``."""
    if isinstance(value, Tensor):
        return value[index]
    if isinstance(value, tuple):
        return tuple(_select(v, index) for v in value)
    if isinstance(value, dict):
        return {k: _select(v, index) for k, v in value.items()}
    return value


def encodes_separately(model: nn.Module) -> bool:
    """Whether attacks may run ``model`` as ``fuse(encode_visual(frames), encode_audio(audio))``.

    True for a model with callable ``encode_visual``, ``encode_audio`` and ``fuse`` (duck typing), except an
    ``AVModel`` subclass that overrides ``forward``: its forward may do more than ``fuse(*encode(...))``, so
    it is called whole.
    """
    if not all(callable(getattr(model, name, None)) for name in ("encode_visual", "encode_audio", "fuse")):
        return False
    return not (isinstance(model, AVModel) and type(model).forward is not AVModel.forward)


def as_model_output(out: Any) -> ModelOutput:
    """A model's output as a ``ModelOutput``: a ``ModelOutput`` as it is; logits ``[B, C]``; a tuple or list
    whose first item is the logits; or an object with a ``logits`` tensor attribute (e.g. a Hugging Face
    output). Only a ``ModelOutput`` carries features; the others get None for them."""
    if isinstance(out, ModelOutput):
        return out
    logits = out
    if isinstance(out, (tuple, list)) and out:
        logits = out[0]
    elif not isinstance(out, Tensor) and isinstance(getattr(out, "logits", None), Tensor):
        logits = out.logits
    if not isinstance(logits, Tensor):
        raise TypeError(f"the model returned {type(out).__name__}; attacks need logits [B, C], a tuple whose "
                        f"first item is the logits, or a ModelOutput")
    if logits.dim() != 2:
        raise ValueError(f"the model's logits must have shape [B, C], got {tuple(logits.shape)}")
    return ModelOutput(logits, None, None, None)


def perturbed_modalities(threat: ThreatModel, model: nn.Module) -> list[str]:
    """The modalities an attack under ``threat`` perturbs on ``model``: a budget > 0 and a model that uses it (a
    model without ``uses_<modality>`` is taken to use both)."""
    return [m for m in MODALITIES if threat.attacks(m) and getattr(model, f"uses_{m}", True)]


class Problem:
    """One attack call: the model, objective and labels, the feasible region of the attacked modalities
    (a ``Region``, or a ``{modality: ball}`` dict for independent balls), the inputs that stay as they are
    (``fixed``), and the call's random numbers. Build it with the model in eval mode.

    A model that ``encodes_separately`` is run as ``fuse(...)`` on the attacked modalities' fresh encodings
    and the fixed ones' encodings, which are computed once here under ``no_grad`` (so a defense's costly
    purification of the fixed modality runs once and is never differentiated). With ``eot_iter > 1`` the
    fixed modalities are re-encoded (still without gradients) in every pass, so that the average also
    covers the randomness of their encoders. Any other model runs as ``model(frames, audio)``; its output
    may be anything ``as_model_output`` takes, but a loss that needs features (``ce+cos``) needs a
    ``ModelOutput``.

    ``eot_iter``: every loss, logit and gradient is the mean over that many forward passes (expectation
    over transformation, for randomised models). ``seed`` and ``sample_ids``: every sample draws its random
    numbers (random starts, Square's search) from its own stream, seeded from ``seed`` and its id
    (``attacks.streams``), so its result does not depend on its batch; the samples' ids default to their places
    in the batch. With neither a seed nor ids (e.g. adversarial training), one generator seeded from torch's
    global one draws for the whole batch on its device.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, labels: Tensor, region: Region | dict[str, ModalitySet],
                 fixed: dict[str, Tensor | None], *, eot_iter: int = 1, seed: int | None = None,
                 sample_ids: Tensor | None = None, clean_logits: Tensor | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.labels = labels
        self.region = Independent(region) if isinstance(region, dict) else region
        self.fixed = fixed
        self.eot_iter = eot_iter
        self.seed = seed
        if sample_ids is not None and sample_ids.shape != labels.shape:
            raise ValueError(f"sample_ids must have one id per sample, shape {tuple(labels.shape)}; got "
                             f"{tuple(sample_ids.shape)}")
        self.sample_ids = sample_ids
        if clean_logits is not None and clean_logits.shape[0] != labels.shape[0]:
            raise ValueError(f"clean_logits must have one row per sample ({labels.shape[0]}); got "
                             f"{tuple(clean_logits.shape)}")
        self.known_clean_logits = None if clean_logits is None or eot_iter > 1 else clean_logits.detach().float()
        self._streams: Streams | None = None
        self.separate = encodes_separately(model)
        self.encoded = self._encode_fixed() if self.separate and eot_iter == 1 else None

    @property
    def streams(self) -> Streams:
        """The samples' random streams; a subset's are its samples' own (the same generators). Without a seed
        and without sample ids (nothing to repeat), one generator on the inputs' device draws for the batch."""
        if self._streams is None:
            seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)))
            if self.seed is None and self.sample_ids is None:
                device = next(iter(self.region.clean.values())).device
                self._streams = BatchStream.seeded(seed, self.labels.numel(), device)
            else:
                ids = self.sample_ids.tolist() if self.sample_ids is not None else range(self.labels.numel())
                self._streams = SampleStreams.seeded(seed, ids)
        return self._streams

    @torch.no_grad()
    def _encode_fixed(self) -> dict[str, Any]:
        """``{'visual': (feat_v, fmap_v), 'audio': feat_a}`` of the fixed modalities (None where unused)."""
        encoded: dict[str, Any] = {}
        for m, value in self.fixed.items():
            if not getattr(self.model, f"uses_{m}", True):
                encoded[m] = (None, None) if m == "visual" else None
            elif value is None:
                raise ValueError(f"the model uses the {m} modality but the {m} input is None")
            else:
                encoded[m] = self.model.encode_visual(value) if m == "visual" else self.model.encode_audio(value)
        return encoded

    def subset(self, index: Tensor, loss_fn: LossFn | None = None) -> Problem:
        """The same problem for the samples ``index`` (a 1-D index tensor), optionally with another loss."""
        part = copy.copy(self)
        part.labels = self.labels[index]
        part.region = self.region.subset(index)
        part.fixed = _select(self.fixed, index)
        part.encoded = _select(self.encoded, index)
        if loss_fn is None:  # a loss with per-sample data follows its samples
            loss_fn = self.loss_fn.subset(index) if isinstance(self.loss_fn, PerSampleLoss) else self.loss_fn
        part.loss_fn = loss_fn
        part._streams = self.streams.subset(index)
        part.sample_ids = None if self.sample_ids is None else self.sample_ids[index]
        part.known_clean_logits = _select(self.known_clean_logits, index)
        return part

    def clean_logits(self) -> Tensor:
        """The logits of the clean inputs: the caller's clean pass when it gave one, else one pass here."""
        if self.known_clean_logits is not None:
            return self.known_clean_logits
        return self.scores({m: v.clone() for m, v in self.region.clean.items()})[1]

    def start(self, random: bool = False) -> Inputs:
        """Fresh leaf tensors requiring grad: the clean inputs, or a random point of the region."""
        x = self.region.random_point(self.streams) if random else {m: v.clone() for m, v in self.region.clean.items()}
        return {m: v.requires_grad_() for m, v in x.items()}

    def project_(self, x: Inputs) -> Inputs:
        """``x`` moved into the region, in place."""
        return self.region.project_(x)

    def rows(self) -> AbstractContextManager:
        """Names this problem's samples to a model that keeps per-sample state between passes (a defense's warm
        starts: ``model.sample_rows(ids)``), so that a pass on a subset of the batch is identified too."""
        sample_rows = getattr(self.model, "sample_rows", None)
        if self.sample_ids is None or not callable(sample_rows):
            return nullcontext()
        return sample_rows(self.sample_ids)

    def forward(self, x: Inputs) -> ModelOutput:
        """One forward pass on the attacked inputs ``x`` and the fixed ones."""
        with self.rows():
            return self._forward(x)

    def _forward(self, x: Inputs) -> ModelOutput:
        if not self.separate:
            inputs = {**self.fixed, **x}
            raw = self.model(inputs["visual"], inputs["audio"])
            if any(self.loss_fn is f for f in NEEDS_FEATURES) and not isinstance(raw, ModelOutput):
                raise ValueError(f"the attack loss {getattr(self.loss_fn, '__name__', self.loss_fn)!r} needs the "
                                 f"model's features, but {type(self.model).__name__} returns "
                                 f"{type(raw).__name__}, not a ModelOutput(logits, feat_v, feat_a, fmap_v); "
                                 f"use loss='ce' or 'dlr'")
            return as_model_output(raw)
        parts = self.encoded if self.encoded is not None else self._encode_fixed()
        model = self.model
        feat_v, fmap_v = model.encode_visual(x["visual"]) if "visual" in x else parts["visual"]
        feat_a = model.encode_audio(x["audio"]) if "audio" in x else parts["audio"]
        return as_model_output(model.fuse(feat_v, feat_a, fmap_v))

    def loss_and_grad(self, x: Inputs) -> tuple[Tensor, Tensor, Inputs]:
        """Per-sample losses and logits (detached), and the gradient of the summed loss w.r.t. ``x`` only,
        each the mean over ``eot_iter`` passes.

        Grad mode is switched on here, so attacks also run inside a caller's ``torch.no_grad()``.
        """
        keys = list(x)
        losses = logits = None
        grads: list[Tensor] = []
        with torch.enable_grad():
            for _ in range(self.eot_iter):
                out = self.forward(x)
                loss = self.loss_fn(out, self.labels)
                grad = torch.autograd.grad(loss.sum(), [x[m] for m in keys])
                if losses is None:
                    losses, logits, grads = loss.detach(), out.logits.detach(), list(grad)
                else:
                    losses, logits = losses + loss.detach(), logits + out.logits.detach()
                    grads = [g.add_(h) for g, h in zip(grads, grad)]
        if self.eot_iter > 1:
            losses, logits = losses / self.eot_iter, logits / self.eot_iter
            grads = [g.div_(self.eot_iter) for g in grads]
        return losses, logits, dict(zip(keys, grads))

    @torch.no_grad()
    def scores(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Per-sample losses and logits, each the mean over ``eot_iter`` passes."""
        losses = logits = None
        for _ in range(self.eot_iter):
            out = self.forward(x)
            loss = self.loss_fn(out, self.labels)
            losses = loss if losses is None else losses + loss
            logits = out.logits if logits is None else logits + out.logits
        return losses / self.eot_iter, logits / self.eot_iter

    def fooled(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) != self.labels

    def evaluate(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Per-sample losses and whether each sample is misclassified."""
        losses, logits = self.scores(x)
        return losses, self.fooled(logits)


class BestSoFar:
    """Per-sample best adversarial inputs: fooling the model beats not fooling it, then higher loss wins.

    It keeps references to the tensors it is given and replaces (never modifies) its own; callers must not
    modify the tensors they passed in place afterwards.
    """

    def __init__(self, x: Inputs, losses: Tensor, fooled: Tensor) -> None:
        self.x = {m: v.detach() for m, v in x.items()}
        self.losses = losses
        self.fooled = fooled

    @torch.no_grad()
    def update(self, x: Inputs, losses: Tensor, fooled: Tensor, index: Tensor | None = None) -> None:
        """Offer new inputs for every sample, or (with ``index``) for the samples ``index`` only."""
        if index is None:
            index = torch.arange(losses.numel(), device=losses.device)
        old_losses, old_fooled = self.losses[index], self.fooled[index]
        better = (fooled & ~old_fooled) | ((fooled == old_fooled) & (losses > old_losses))
        rows = index[better]
        self.x = {m: self.x[m].index_copy(0, rows, v.detach()[better]) for m, v in x.items()}
        self.losses = self.losses.index_copy(0, rows, losses[better])
        self.fooled = self.fooled.index_copy(0, rows, fooled[better])


class Attack:
    """Base of the multimodal attacks; on its own, ``steps`` steepest-ascent steps of size α (sign steps for
    L∞, normalised-gradient steps for L2), each projected.

    ``eps``: the threat model (``attacks.threat.ThreatModel``: budgets per modality and their units, the norm,
    a joint L2 ball, a loudness-relative audio budget, per-frame or shared visual perturbations), or a dict
    ``{'visual': ev, 'audio': ea}`` (a missing key is 0) for the paper's: L∞, visual budgets in
    ImageNet-normalised units. ``alpha``: the step size, one number for every modality or a per-modality dict,
    in the budget's units; None is ``default_step * eps``. Under a joint ball ``alpha`` is one number, the step in
    units of the joint radius; under a loudness-relative audio budget the audio step is ``default_step`` times
    each clip's budget (no audio alpha).

    ``restarts``: the attack runs that many times (random starts, so ``random_start`` is required for
    more than one); each run after the first attacks only the samples no run has fooled yet, and each
    sample keeps its best run (``BestSoFar``), found with one extra forward pass per run.
    ``eot_iter``: losses and gradients are means over that many forward passes (``Problem``).
    ``seed``: with each sample's id, the seed of that sample's random stream (``attacks.streams``); None draws
    one per call from torch's global generator.

    Each attack class describes itself to the registry and the evaluation: ``family`` (``white-box`` or
    ``black-box``), ``uses_loss`` (whether it optimises the loss it is given, or its own objective), the
    ``norms`` it supports, whether it supports a ``joint_ball``, ``min_classes``, and ``settings``: its
    keyword options and the command-line flag (the ``argparse`` destination) that sets each.

    Subclasses change the step rule (``direction``) or, for a different algorithm, ``perturb``; the norm
    is the region's (``attacks.regions``). The model is in eval mode during the attack (each module's
    previous mode is restored after), and only the inputs are differentiated: parameters get no ``.grad``.
    The attack runs in float32 with autocast off (inputs are cast; adversarial inputs come back as float32).
    """

    default_step: ClassVar[float] = 1 / 8
    summary: ClassVar[str] = ""
    family: ClassVar[str] = "white-box"
    uses_loss: ClassVar[bool] = True
    norms: ClassVar[tuple[str, ...]] = NORMS
    joint_ball: ClassVar[bool] = True
    min_classes: ClassVar[int] = 2
    settings: ClassVar[dict[str, str]] = {"steps": "attack_steps", "alpha": "attack_alpha",
                                          "random_start": "random_start", "restarts": "restarts",
                                          "eot_iter": "eot_iter", "seed": "seed"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
                 restarts: int = 1, eot_iter: int = 1, seed: int | None = None,
                 loss: str | LossFn = "ce", std: Sequence[float] = IMAGENET_STD) -> None:
        self.threat = ThreatModel.of(eps)
        if self.threat.norm not in self.norms:
            raise ValueError(f"{type(self).__name__} supports norm {' / '.join(self.norms)}, not {self.threat.norm!r}")
        if self.threat.joint_eps is not None and not self.joint_ball:
            raise ValueError(f"{type(self).__name__} has no joint-ball version (joint_eps)")
        self.eps = self.threat.eps
        self.alpha, self.joint_alpha = self._step_sizes(alpha)
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if restarts < 1:
            raise ValueError(f"restarts must be >= 1, got {restarts}")
        if restarts > 1 and not random_start:
            raise ValueError("restarts > 1 needs random_start=True (restarts from the clean input are identical)")
        if eot_iter < 1:
            raise ValueError(f"eot_iter must be >= 1, got {eot_iter}")
        self.model = model
        self.steps = steps
        self.random_start = random_start
        self.restarts = restarts
        self.eot_iter = eot_iter
        self.seed = seed
        self.loss_fn = get_loss(loss)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))
        self.std = tuple(std)

    def _step_sizes(self, alpha: float | Mapping[str, float] | None) -> tuple[dict[str, float | None], float | None]:
        """The per-modality step sizes (None where they are per sample) and the joint ball's step (or None)."""
        threat = self.threat
        if threat.joint_eps is not None:
            if isinstance(alpha, Mapping):
                raise ValueError("with joint_eps, alpha is one number: the step in units of joint_eps")
            if alpha is not None and not (math.isfinite(alpha) and alpha > 0):
                raise ValueError(f"alpha must be finite and > 0, got {alpha}")
            return dict.fromkeys(MODALITIES), self.default_step * threat.joint_eps if alpha is None else float(alpha)
        alphas = _per_modality(alpha, "alpha")
        if threat.loudness_relative and alphas["audio"] is not None:
            raise ValueError("with a loudness-relative audio budget the audio step is a fixed share of each clip's "
                             "budget; give alpha for the visual modality only, e.g. alpha={'visual': a}")
        steps: dict[str, float | None] = {}
        for m in MODALITIES:
            if alphas[m] is not None:
                if not (math.isfinite(alphas[m]) and alphas[m] > 0):
                    raise ValueError(f"alpha for {m} must be finite and > 0, got {alphas[m]}")
                steps[m] = float(alphas[m])
            else:
                steps[m] = None if m == "audio" and threat.loudness_relative else self.default_step * self.eps[m]
        return steps, None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
                f"loss='{self.loss_name}', eps_units='{self.threat.units}', {self._threat_repr()}"
                f"restarts={self.restarts}, eot_iter={self.eot_iter}, seed={self.seed})")

    def _threat_repr(self) -> str:
        text = f"threat='{self.threat.label}'"
        if self.joint_alpha is not None:
            text += f", joint_alpha={self.joint_alpha}"
        return text + ", "

    def perturbs(self, modality: str) -> bool:
        """Whether this attack perturbs ``modality`` (a budget > 0 and a model that uses it)."""
        return modality in perturbed_modalities(self.threat, self.model)

    def __call__(self, frames: Tensor | None, audio: Tensor | None, labels: Tensor,
                 sample_ids: Tensor | None = None,
                 clean_logits: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """``(adv_frames, adv_audio)``; an unattacked modality comes back as the tensor passed in.

        ``sample_ids`` (``[B]`` integers, e.g. the dataset indices): each sample's random draws come from a
        stream seeded from ``seed`` and its id, so that a sample gets the same result in any batch; None: the
        samples' places in this batch. ``clean_logits``: the model's logits on these clean inputs when the caller
        has them (an evaluation's clean pass), which spares the attacks that start from them (APGD-T's and FAB-T's
        target classes) a forward pass; ignored with ``eot_iter > 1``."""
        inputs = {"visual": frames, "audio": audio}
        attacked = perturbed_modalities(self.threat, self.model)
        for m in attacked:
            if inputs[m] is None:
                raise ValueError(f"the {m} budget is > 0 but the {m} input is None")
        if not attacked:
            return frames, audio
        with autocast_off(inputs[attacked[0]].device.type):
            region = self._region({m: inputs[m].detach().float() for m in attacked})
            fixed = {m: None if v is None else v.detach().float() for m, v in inputs.items() if m not in attacked}
            modes = [(module, module.training) for module in self.model.modules()]
            self.model.eval()
            try:
                problem = Problem(self.model, self.loss_fn, labels, region, fixed, eot_iter=self.eot_iter,
                                  seed=self.seed, sample_ids=None if sample_ids is None else sample_ids.cpu(),
                                  clean_logits=clean_logits)
                adv = self._run_restarts(problem)
            finally:
                for module, mode in modes:
                    module.training = mode
        out = {**inputs, **{m: v.detach() for m, v in adv.items()}}
        return out["visual"], out["audio"]

    def radius(self, modality: str, clean: Tensor) -> Tensor:
        """Modality ``modality``'s budget in raw input units, broadcastable against ``clean``."""
        return self.threat.radius(modality, clean, self.std)

    def _region(self, clean: Inputs) -> Region:
        threat = self.threat
        shared = {m: m == "visual" and threat.temporal == "shared" for m in clean}
        radii = {m: self.radius(m, x) for m, x in clean.items()}
        if threat.joint_eps is not None:
            unused = torch.zeros(())
            parts = {m: L2Ball(x, radii[m], unused, VALID_RANGE[m], shared[m]) for m, x in clean.items()}
            return JointL2Ball(parts, threat.joint_eps, self.joint_alpha)
        ball_type = Ball if threat.norm == "linf" else L2Ball
        balls = {}
        for m, x in clean.items():
            alpha = self.alpha[m]
            step = radii[m] * self.default_step if alpha is None else threat.raw_units(m, alpha, x, self.std)
            balls[m] = ball_type(x, radii[m], step, VALID_RANGE[m], shared[m])
        return Independent(balls)

    def _run_restarts(self, problem: Problem) -> Inputs:
        x = self.perturb(problem)
        if self.restarts == 1:
            return x
        best = BestSoFar(x, *problem.evaluate(x))
        for _ in range(self.restarts - 1):
            index = (~best.fooled).nonzero().squeeze(1)
            if index.numel() == 0:
                break
            part = problem.subset(index)
            x = self.perturb(part)
            best.update(x, *part.evaluate(x), index=index)
        return best.x

    def perturb(self, problem: Problem) -> Inputs:
        """``steps`` projected steps ``x <- P(x + alpha * direction(grad))`` from the clean input or a
        random start; returns the final iterate."""
        x = problem.start(self.random_start)
        region = problem.region
        state: dict[str, Tensor] = {}
        for _ in range(self.steps):
            grads = problem.loss_and_grad(x)[2]
            with torch.no_grad():
                direction = self.direction(region, grads, state)
                for m, v in x.items():
                    v.addcmul_(region.step[m], direction[m])
                problem.project_(x)
        return x

    def direction(self, region: Region, grads: Inputs, state: dict[str, Tensor]) -> Inputs:
        """The step direction from this step's gradients (which it may overwrite); ``state`` lives for one
        call. Here the region's steepest ascent: ``sign(grad)`` for L∞, ``grad / ||grad||_2`` for L2."""
        return region.steepest(grads)
