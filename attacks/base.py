"""The multimodal L∞ attack base: budgets and their units, feasible sets, and the sign-step loop.

An attack perturbs the raw inputs of the model: frames ``[B, 3, T, H, W]`` in [0, 1] and the
waveform ``[B, 1, L]`` in [-1, 1]. Each modality has its own budget. A modality whose budget is 0,
or that the model does not use, is returned as the very tensor passed in.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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

    def random_point(self) -> Tensor:
        """A point drawn uniformly from the ball, clamped into the range."""
        noise = torch.rand_like(self.clean).mul_(2).sub_(1)
        return self.project_(noise.mul_(self.radius).add_(self.clean))


class Problem:
    """One attack call: the model, objective and labels, the attacked modalities' balls, and the
    inputs that stay as they are (``fixed``). Build it with the model in eval mode."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, labels: Tensor, balls: dict[str, Ball],
                 fixed: dict[str, Tensor | None]) -> None:
        self.model = model
        self.loss_fn = loss_fn
        self.labels = labels
        self.balls = balls
        self.fixed = fixed
        self.encoded = self._encode_fixed()

    def _encode_fixed(self) -> dict[str, Any] | None:
        """The encoder outputs of the fixed modalities of a plain ``AVModel``, computed once.

        They are the same at every step, so single-modality attacks skip the other encoder's forward
        pass (a ResNet-18 or a waveform net on 65535 samples). None for any other model, in which case
        every step runs ``model(frames, audio)``.
        """
        model = self.model
        if not (isinstance(model, AVModel) and type(model).forward is AVModel.forward):
            return None
        encoders = {"visual": model.net_frame, "audio": model.net_sound}
        used = {m: encoders[m] for m in self.fixed if encoders[m] is not None}
        if not used or any(self.fixed[m] is None for m in used):
            return None
        with torch.no_grad():
            return {m: encoder(self.fixed[m]) for m, encoder in used.items()}

    def start(self, random: bool = False) -> Inputs:
        """Fresh leaf tensors requiring grad: the clean inputs, or random points of the balls."""
        return {m: (ball.random_point() if random else ball.clean.clone()).requires_grad_()
                for m, ball in self.balls.items()}

    def forward(self, x: Inputs) -> ModelOutput:
        if self.encoded is None:
            inputs = {**self.fixed, **x}
            return self.model(inputs["visual"], inputs["audio"])
        model = self.model
        if "visual" in x:
            feat_v, fmap_v = model.net_frame(x["visual"])
        else:
            feat_v, fmap_v = self.encoded.get("visual", (None, None))
        feat_a = model.net_sound(x["audio"]) if "audio" in x else self.encoded.get("audio")
        return ModelOutput(model.net_classifier(feat_v, feat_a, fmap_v), feat_v, feat_a, fmap_v)

    def loss_and_grad(self, x: Inputs) -> tuple[Tensor, Tensor, Inputs]:
        """Per-sample losses and logits (detached), and the gradient of the summed loss w.r.t. ``x`` only.

        Grad mode is switched on here, so attacks also run inside a caller's ``torch.no_grad()``.
        """
        with torch.enable_grad():
            out = self.forward(x)
            losses = self.loss_fn(out, self.labels)
            grads = torch.autograd.grad(losses.sum(), list(x.values()))
        return losses.detach(), out.logits.detach(), dict(zip(x, grads))

    def fooled(self, logits: Tensor) -> Tensor:
        return logits.argmax(dim=1) != self.labels

    @torch.no_grad()
    def evaluate(self, x: Inputs) -> tuple[Tensor, Tensor]:
        """Per-sample losses and whether each sample is misclassified."""
        out = self.forward(x)
        return self.loss_fn(out, self.labels), self.fooled(out.logits)


class BestSoFar:
    """Per-sample best adversarial inputs: fooling the model beats not fooling it, then higher loss wins.

    It keeps references to the tensors it is given; callers must not modify them in place afterwards.
    """

    def __init__(self, x: Inputs, losses: Tensor, fooled: Tensor) -> None:
        self.x = {m: v.detach() for m, v in x.items()}
        self.losses = losses
        self.fooled = fooled

    @torch.no_grad()
    def update(self, x: Inputs, losses: Tensor, fooled: Tensor) -> None:
        better = (fooled & ~self.fooled) | ((fooled == self.fooled) & (losses > self.losses))
        self.x = {m: torch.where(per_sample(better, v), v.detach(), self.x[m]) for m, v in x.items()}
        self.losses = torch.where(better, losses, self.losses)
        self.fooled = self.fooled | fooled


class Attack:
    """Base of the multimodal L∞ attacks; on its own, ``steps`` sign steps of size α, each projected.

    ``eps``: ``{'visual': ev, 'audio': ea}`` (a missing key is 0). ``alpha``: the step size, one
    number for every modality or a per-modality dict; None is ``default_step * eps``. With
    ``eps_units='normalized'`` (the released code's units) the visual ``eps`` and ``alpha`` are in
    ImageNet-normalised units, i.e. ``eps * std_c`` per pixel channel; with ``'pixel'`` in [0, 1]
    pixel units. Audio values are always in waveform amplitude.

    Subclasses change the step rule (``direction``) or, for a different algorithm, ``perturb``.
    The model is in eval mode during the attack (each module's previous mode is restored after),
    and only the inputs are differentiated: parameters get no ``.grad``.
    """

    default_step: ClassVar[float] = 1 / 8

    def __init__(self, model: nn.Module, eps: Mapping[str, float], *, steps: int = 10,
                 alpha: float | Mapping[str, float] | None = None, random_start: bool = False,
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
        self.model = model
        self.steps = steps
        self.random_start = random_start
        self.loss_fn = get_loss(loss)
        self.loss_name = loss if isinstance(loss, str) else getattr(loss, "__name__", repr(loss))
        self.eps_units = eps_units
        self.std = tuple(std)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, "
                f"loss='{self.loss_name}', eps_units='{self.eps_units}')")

    def __call__(self, frames: Tensor | None, audio: Tensor | None,
                 labels: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(adv_frames, adv_audio)``; an unattacked modality comes back as the tensor passed in."""
        inputs = {"visual": frames, "audio": audio}
        balls = {}
        for m in MODALITIES:
            if self.eps[m] == 0 or not getattr(self.model, f"uses_{m}", True):
                continue
            if inputs[m] is None:
                raise ValueError(f"the {m} budget is > 0 but the {m} input is None")
            clean = inputs[m].detach()
            balls[m] = Ball(clean, self._raw_units(m, self.eps[m], clean), self._raw_units(m, self.alpha[m], clean),
                            VALID_RANGE[m])
        if not balls:
            return frames, audio
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            fixed = {m: v for m, v in inputs.items() if m not in balls}
            adv = self.perturb(Problem(self.model, self.loss_fn, labels, balls, fixed))
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
