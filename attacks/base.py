"""The multimodal L∞ attack base: budgets and their units, feasible sets, the model calls, restarts and
the sign-step loop.

An attack perturbs the raw inputs of the model: frames ``[B, 3, T, H, W]`` in [0, 1] and the
waveform ``[B, 1, L]`` in [-1, 1]. Each modality has its own budget. A modality whose budget is 0,
or that the model does not use, is returned as the very tensor passed in. Attacks run in float32
with autocast switched off, whatever the caller's precision.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from attacks.losses import LossFn, get_loss
from models.av_model import AVModel, ModelOutput
from models.visual import IMAGENET_STD

MODALITIES = ("visual", "audio")
VALID_RANGE = {"visual": (0.0, 1.0), "audio": (-1.0, 1.0)}
EPS_UNITS = ("normalized", "pixel")

Inputs = dict[str, Tensor]


def normalized_eps_to_pixel(eps: float, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """The per-channel pixel budget ``eps * std_c`` of a budget ``eps`` in ImageNet-normalised units.

    A change of ``eps`` in ``(x - mean_c) / std_c`` is a change of ``eps * std_c`` in the pixel ``x``.
    """
    return torch.tensor([eps * s for s in std])


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` values viewed to broadcast against ``like [B, ...]``."""
    return values.view(-1, *[1] * (like.dim() - 1))


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


def _autocast_off(device_type: str) -> AbstractContextManager:
    """A region where autocast is disabled on ``device_type`` (nothing to do where autocast does not exist)."""
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return nullcontext()


class Ball:
    """The feasible set of one modality: the L∞ ball around the clean input, within the valid range.

    ``radius`` and ``step`` are in raw input units and broadcast against the input (per channel for
    visual budgets in normalised units).
    """

    def __init__(self, clean: Tensor, radius: Tensor, step: Tensor, valid_range: tuple[float, float]) -> None:
        self.clean = clean
        self.radius = radius
        self.step = step
        self.lower = (clean - radius).clamp_(min=valid_range[0])
        self.upper = (clean + radius).clamp_(max=valid_range[1])

    def project_(self, x: Tensor) -> Tensor:
        """Clamp ``x`` into the set in place; the ball and range bounds are merged, so it is one clamp."""
        return x.clamp_(self.lower, self.upper)

    def random_point(self, generator: torch.Generator) -> Tensor:
        """A point drawn uniformly from the ball, clamped into the range."""
        noise = torch.rand(self.clean.shape, generator=generator, dtype=self.clean.dtype, device=self.clean.device)
        return self.project_(noise.mul_(2).sub_(1).mul_(self.radius).add_(self.clean))

    def subset(self, index: Tensor) -> Ball:
        """The same ball for the samples ``index`` only."""
        part = copy.copy(self)
        part.clean, part.lower, part.upper = self.clean[index], self.lower[index], self.upper[index]
        return part


class Problem:
    """One attack call: the model, objective and labels, the attacked modalities' balls, the inputs that
    stay as they are (``fixed``), and the call's random numbers. Build it with the model in eval mode.

    A model that ``encodes_separately`` is run as ``fuse(...)`` on the attacked modalities' fresh encodings
    and the fixed ones' encodings, which are computed once here under ``no_grad`` (so a defense's costly
    purification of the fixed modality runs once and is never differentiated). With ``eot_iter > 1`` the
    fixed modalities are re-encoded (still without gradients) in every pass, so that the average also
    covers the randomness of their encoders. Any other model runs as ``model(frames, audio)``.

    ``eot_iter``: every loss, logit and gradient is the mean over that many forward passes (expectation
    over transformation, for randomised models). ``seed``: the seed of the call's private random generator
    (random starts, Square's search); None draws one from torch's global generator.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, labels: Tensor, balls: dict[str, Ball],
                 fixed: dict[str, Tensor | None], *, eot_iter: int = 1, seed: int | None = None) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.labels = labels
        self.balls = balls
        self.fixed = fixed
        self.eot_iter = eot_iter
        self.seed = seed
        self._generator: torch.Generator | None = None
        self.separate = encodes_separately(model)
        self.encoded = self._encode_fixed() if self.separate and eot_iter == 1 else None

    @property
    def generator(self) -> torch.Generator:
        """The call's random generator, on the inputs' device; subsets share it."""
        if self._generator is None:
            seed = self.seed if self.seed is not None else int(torch.randint(2**62, (1,)))
            device = next(iter(self.balls.values())).clean.device
            self._generator = torch.Generator(device=device).manual_seed(seed)
        return self._generator

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
        part.balls = {m: ball.subset(index) for m, ball in self.balls.items()}
        part.fixed = _select(self.fixed, index)
        part.encoded = _select(self.encoded, index)
        part.loss_fn = self.loss_fn if loss_fn is None else loss_fn
        part._generator = self.generator
        return part

    def start(self, random: bool = False) -> Inputs:
        """Fresh leaf tensors requiring grad: the clean inputs, or random points of the balls."""
        return {m: (ball.random_point(self.generator) if random else ball.clean.clone()).requires_grad_()
                for m, ball in self.balls.items()}

    def forward(self, x: Inputs) -> ModelOutput:
        """One forward pass on the attacked inputs ``x`` and the fixed ones."""
        if not self.separate:
            inputs = {**self.fixed, **x}
            return self.model(inputs["visual"], inputs["audio"])
        parts = self.encoded if self.encoded is not None else self._encode_fixed()
        model = self.model
        feat_v, fmap_v = model.encode_visual(x["visual"]) if "visual" in x else parts["visual"]
        feat_a = model.encode_audio(x["audio"]) if "audio" in x else parts["audio"]
        return model.fuse(feat_v, feat_a, fmap_v)

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
    """Base of the multimodal L∞ attacks; on its own, ``steps`` sign steps of size α, each projected.

    ``eps``: ``{'visual': ev, 'audio': ea}`` (a missing key is 0). ``alpha``: the step size, one
    number for every modality or a per-modality dict; None is ``default_step * eps``. With
    ``eps_units='normalized'`` (the released code's units) the visual ``eps`` and ``alpha`` are in
    ImageNet-normalised units, i.e. ``eps * std_c`` per pixel channel; with ``'pixel'`` in [0, 1]
    pixel units. Audio values are always in waveform amplitude.

    ``restarts``: the attack runs that many times (random starts, so ``random_start`` is required for
    more than one); each run after the first attacks only the samples no run has fooled yet, and each
    sample keeps its best run (``BestSoFar``), found with one extra forward pass per run.
    ``eot_iter``: losses and gradients are means over that many forward passes (``Problem``).
    ``seed``: the seed of each call's private random generator; None draws one from torch's global one.

    Subclasses change the step rule (``direction``) or, for a different algorithm, ``perturb``.
    The model is in eval mode during the attack (each module's previous mode is restored after),
    and only the inputs are differentiated: parameters get no ``.grad``. The attack runs in float32
    with autocast off (inputs are cast; adversarial inputs come back as float32).
    """

    default_step: ClassVar[float] = 1 / 8

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
                 restarts: int = 1, eot_iter: int = 1, seed: int | None = None,
                 loss: str | LossFn = "ce", eps_units: str = "normalized",
                 std: Sequence[float] = IMAGENET_STD) -> None:
        if not isinstance(eps, Mapping):
            raise TypeError(f"eps must be a dict like {{'visual': 0.006, 'audio': 0.006}}, got {eps!r}")
        budgets = _per_modality(eps, "eps")
        self.eps = {m: float(budgets[m] or 0.0) for m in MODALITIES}
        for m, e in self.eps.items():
            if not math.isfinite(e) or e < 0:
                raise ValueError(f"eps['{m}'] must be finite and >= 0, got {e}")
        alphas = _per_modality(alpha, "alpha")
        self.alpha = {m: self.default_step * self.eps[m] if alphas[m] is None else float(alphas[m])
                      for m in MODALITIES}
        for m, a in self.alpha.items():
            if alphas[m] is not None and not (math.isfinite(a) and a > 0):
                raise ValueError(f"alpha for {m} must be finite and > 0, got {a}")
        if eps_units not in EPS_UNITS:
            raise ValueError(f"eps_units must be one of {EPS_UNITS}, got '{eps_units}'")
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
        self.eps_units = eps_units
        self.std = tuple(std)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
                f"loss='{self.loss_name}', eps_units='{self.eps_units}', restarts={self.restarts}, "
                f"eot_iter={self.eot_iter}, seed={self.seed})")

    def __call__(self, frames: Tensor | None, audio: Tensor | None,
                 labels: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(adv_frames, adv_audio)``; an unattacked modality comes back as the tensor passed in."""
        inputs = {"visual": frames, "audio": audio}
        attacked = [m for m in MODALITIES if self.eps[m] > 0 and getattr(self.model, f"uses_{m}", True)]
        for m in attacked:
            if inputs[m] is None:
                raise ValueError(f"the {m} budget is > 0 but the {m} input is None")
        if not attacked:
            return frames, audio
        with _autocast_off(inputs[attacked[0]].device.type):
            balls = {}
            for m in attacked:
                clean = inputs[m].detach().float()
                balls[m] = Ball(clean, self._raw_units(m, self.eps[m], clean),
                                self._raw_units(m, self.alpha[m], clean), VALID_RANGE[m])
            fixed = {m: None if v is None else v.detach().float() for m, v in inputs.items() if m not in balls}
            modes = [(module, module.training) for module in self.model.modules()]
            self.model.eval()
            try:
                problem = Problem(self.model, self.loss_fn, labels, balls, fixed, eot_iter=self.eot_iter,
                                  seed=self.seed)
                adv = self._run_restarts(problem)
            finally:
                for module, mode in modes:
                    module.training = mode
        out = {**inputs, **{m: v.detach() for m, v in adv.items()}}
        return out["visual"], out["audio"]

    def _raw_units(self, modality: str, value: float, like: Tensor) -> Tensor:
        """A budget or step size in raw input units, broadcastable against ``like``."""
        if modality == "visual" and self.eps_units == "normalized":
            return normalized_eps_to_pixel(value, self.std).to(like).view(1, -1, *[1] * (like.dim() - 2))
        return torch.tensor(value, dtype=like.dtype, device=like.device)

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
        state: dict[str, Tensor] = {}
        for _ in range(self.steps):
            grads = problem.loss_and_grad(x)[2]
            with torch.no_grad():
                for m, grad in grads.items():
                    ball = problem.balls[m]
                    ball.project_(x[m].addcmul_(ball.step, self.direction(m, grad, state)))
        return x

    def direction(self, modality: str, grad: Tensor, state: dict[str, Tensor]) -> Tensor:
        """The step direction from this step's gradient (which it may overwrite); ``state`` lives for
        one call. Here ``sign(grad)``."""
        return grad.sign_()
