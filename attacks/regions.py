"""Feasible sets of the attacks: where an adversarial input may lie, and the steepest-ascent step in its norm.

One modality's set is an L∞ ``Ball`` or an ``L2Ball`` around the clean input, intersected with the valid
range. With ``shared=True`` (frames ``[B, 3, T, H, W]`` only) the perturbation is one ``[B, 3, 1, H, W]``
tensor added to every frame: the range bounds are intersected over the frames, so the clipped perturbation
is the same in every frame. An attack call's region is either ``Independent`` (one set per modality) or a
``JointL2Ball`` (one L2 ball over both modalities, each scaled by its own unit).

Radii and steps are in raw input units: ``[B, ...]`` tensors broadcast against the modality's
perturbation (per channel for L∞ visual budgets in normalised units, per sample for loudness-relative
audio budgets).
"""
from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from attacks.streams import Streams

Inputs = dict[str, Tensor]


def per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``[B]`` values viewed to broadcast against ``like [B, ...]``."""
    return values.view(-1, *[1] * (like.dim() - 1))


def sample_norms(t: Tensor) -> Tensor:
    """``[B]``: the L2 norm of every sample of ``t [B, ...]``."""
    return torch.linalg.vector_norm(t.flatten(1), dim=1)


def _batched(value: Tensor, clean: Tensor) -> Tensor:
    """``value`` (0-d, ``[1, ...]`` or ``[B, ...]``) as a ``[B, ...]`` tensor of ``clean``'s rank."""
    value = value.to(clean)
    if value.dim() == 0:
        value = value.view([1] * clean.dim())
    if value.dim() != clean.dim():
        raise ValueError(f"a budget of shape {tuple(value.shape)} does not broadcast against an input of "
                         f"shape {tuple(clean.shape)}")
    return value.expand(clean.shape[0], *value.shape[1:])


def _unit(t: Tensor) -> Tensor:
    """``t`` divided by each sample's L2 norm; a zero sample stays zero."""
    return t / per_sample(sample_norms(t), t).clamp_min(torch.finfo(t.dtype).tiny)


class ModalitySet:
    """What the sets of one modality share: the clean input, its valid range, the step size and how the
    perturbation sits in the input (``delta``: one per frame, or one for all frames when ``shared``)."""

    norm: str = ""
    per_sample_fields: tuple[str, ...] = ("clean", "radius", "step", "low", "high")

    def __init__(self, clean: Tensor, radius: Tensor, step: Tensor, valid_range: tuple[float, float],
                 shared: bool = False) -> None:
        if shared and clean.dim() != 5:
            raise ValueError(f"temporal='shared' needs frames of shape [B, 3, T, H, W], got {tuple(clean.shape)}")
        self.clean = clean
        self.radius = _batched(radius, clean)
        self.step = _batched(step, clean)
        self.valid_range = valid_range
        self.shared = shared
        lo, hi = valid_range
        # bounds on the perturbation from the valid range, over all frames when shared
        low, high = lo - clean, hi - clean
        self.low = low.amax(dim=2, keepdim=True) if shared else low
        self.high = high.amin(dim=2, keepdim=True) if shared else high

    def delta(self, x: Tensor) -> Tensor:
        """The perturbation of ``x``: ``x - clean``, averaged over the frames when shared (the exact
        Euclidean projection onto the perturbations that are the same in every frame)."""
        d = x - self.clean
        return d.mean(dim=2, keepdim=True) if self.shared else d

    def reduce_grad(self, grad: Tensor) -> Tensor:
        """The gradient w.r.t. the perturbation: summed over the frames when shared."""
        return grad.sum(dim=2, keepdim=True) if self.shared else grad

    def set_delta_(self, x: Tensor, d: Tensor, moved: Tensor) -> Tensor:
        """``x <- clean + d`` clipped into the range, in place. Where ``moved`` (``[B]``) is False and the
        perturbation is per frame, ``x`` keeps its value (up to the range clamp), so a point already in the
        set stays exactly as it is."""
        lo, hi = self.valid_range
        if self.shared:
            return x.copy_((self.clean + d.clamp(self.low, self.high)).clamp_(lo, hi))
        return x.copy_(torch.where(per_sample(moved, x), self.clean + d, x).clamp_(lo, hi))

    def random_delta(self, streams: Streams) -> Tensor:
        """Standard normal noise of the perturbation's shape, each sample's from its own stream."""
        return streams.randn(self.low.shape[1:], self.clean)

    def subset(self, index: Tensor) -> ModalitySet:
        """The same set for the samples ``index`` only."""
        part = copy.copy(self)
        for name in self.per_sample_fields:
            setattr(part, name, getattr(self, name)[index])
        return part


class Ball(ModalitySet):
    """The L∞ ball of one modality around the clean input, within the valid range.

    Per frame, the ball and range bounds are merged, so projecting is one clamp. Steepest ascent: ``sign``.
    """

    norm = "linf"
    per_sample_fields = (*ModalitySet.per_sample_fields, "lower", "upper")

    def __init__(self, clean: Tensor, radius: Tensor, step: Tensor, valid_range: tuple[float, float],
                 shared: bool = False) -> None:
        super().__init__(clean, radius, step, valid_range, shared)
        if shared:  # bounds on the shared perturbation
            self.lower = torch.maximum(-self.radius, self.low)
            self.upper = torch.minimum(self.radius, self.high)
        else:  # bounds on the input
            self.lower = (clean - self.radius).clamp_(min=valid_range[0])
            self.upper = (clean + self.radius).clamp_(max=valid_range[1])

    def project_(self, x: Tensor) -> Tensor:
        """``x`` moved into the set, in place."""
        if not self.shared:
            return x.clamp_(self.lower, self.upper)
        lo, hi = self.valid_range
        return x.copy_((self.clean + self.delta(x).clamp(self.lower, self.upper)).clamp_(lo, hi))

    def random_point(self, streams: Streams) -> Tensor:
        """A perturbation drawn uniformly from the ball, clipped into the range."""
        noise = streams.rand(self.low.shape[1:], self.clean)
        return self.project_(self.clean + noise.mul_(2).sub_(1).mul_(self.radius))

    def steepest(self, grad: Tensor) -> Tensor:
        """The steepest-ascent direction of unit L∞ norm (broadcasts against the input)."""
        return self.reduce_grad(grad).sign()


class L2Ball(ModalitySet):
    """The L2 ball of one modality around the clean input (radius per sample, over the whole perturbation:
    the clip's frames, or the one shared frame perturbation), then the valid range.

    Projection: the perturbation is scaled onto the ball, then clipped into the range. Clipping moves every
    value towards the clean one (which is in the range), so the result stays in the ball. Steepest ascent:
    ``grad / ||grad||_2`` per sample.
    """

    norm = "l2"

    def __init__(self, clean: Tensor, radius: Tensor, step: Tensor, valid_range: tuple[float, float],
                 shared: bool = False) -> None:
        super().__init__(clean, radius, step, valid_range, shared)
        if self.radius.shape[1:].numel() != 1:
            raise ValueError("an L2 radius is one number per sample (no per-channel budgets)")
        self.radius_per_sample = self.radius.flatten()

    def subset(self, index: Tensor) -> L2Ball:
        part = super().subset(index)
        part.radius_per_sample = self.radius_per_sample[index]
        return part

    def project_(self, x: Tensor) -> Tensor:
        d = self.delta(x)
        norms = sample_norms(d)
        outside = norms > self.radius_per_sample
        scale = torch.where(outside, self.radius_per_sample / norms.clamp_min(torch.finfo(d.dtype).tiny), 1.0)
        return self.set_delta_(x, d * per_sample(scale, d), outside)

    def random_point(self, streams: Streams) -> Tensor:
        """A perturbation drawn uniformly from the ball (a normal direction, radius ``r U^(1/n)``), clipped
        into the range."""
        direction = _unit(self.random_delta(streams))
        dims = direction[0].numel()
        u = streams.rand((), direction)
        d = direction * per_sample(self.radius_per_sample * u.pow(1 / dims), direction)
        return self.project_(self.clean + d)

    def steepest(self, grad: Tensor) -> Tensor:
        return _unit(self.reduce_grad(grad))


class Independent:
    """The region of an attack call whose modalities have their own sets (``{'visual': Ball, ...}``)."""

    def __init__(self, balls: dict[str, ModalitySet]) -> None:
        self.balls = balls

    @property
    def clean(self) -> Inputs:
        return {m: ball.clean for m, ball in self.balls.items()}

    @property
    def step(self) -> Inputs:
        return {m: ball.step for m, ball in self.balls.items()}

    def project_(self, x: Inputs) -> Inputs:
        for m, ball in self.balls.items():
            ball.project_(x[m])
        return x

    def random_point(self, streams: Streams) -> Inputs:
        return {m: ball.random_point(streams) for m, ball in self.balls.items()}

    def steepest(self, grads: Inputs) -> Inputs:
        return {m: self.balls[m].steepest(g) for m, g in grads.items()}

    def subset(self, index: Tensor) -> Independent:
        return Independent({m: ball.subset(index) for m, ball in self.balls.items()})


class JointL2Ball:
    """One L2 ball over the modalities' perturbations, each divided by its unit (its per-modality budget):
    ``sum_m ||d_m / unit_m||^2 <= radius^2``, then each modality's valid range.

    ``parts``: one ``L2Ball`` per modality whose radius is that modality's unit (``[B]`` per sample, e.g.
    a loudness-relative audio budget; a sample whose unit is 0 gets no perturbation in that modality).
    ``step``: the step size in the scaled space (units of ``radius``). Projection scales all the stacked,
    scaled perturbations of a sample by one factor onto the ball (exact), then clips each into its range.
    Steepest ascent: the gradient w.r.t. the scaled perturbations, normalised over all modalities at once.
    """

    def __init__(self, parts: dict[str, L2Ball], radius: float, step: float) -> None:
        self.parts = parts
        self.radius = radius
        self._step = step

    @property
    def clean(self) -> Inputs:
        return {m: part.clean for m, part in self.parts.items()}

    @property
    def step(self) -> Inputs:
        return {m: torch.tensor(self._step, dtype=part.clean.dtype, device=part.clean.device)
                for m, part in self.parts.items()}

    def _units(self, m: str, like: Tensor) -> tuple[Tensor, Tensor]:
        """Modality ``m``'s units and whether each is non-zero, both broadcasting against ``like``."""
        unit = per_sample(self.parts[m].radius_per_sample, like)
        return unit, unit > 0

    def scaled_norms(self, deltas: Inputs) -> Tensor:
        """``[B]``: ``sqrt(sum_m ||d_m / unit_m||^2)`` (a modality whose unit is 0 counts as 0)."""
        squares = []
        for m, d in deltas.items():
            unit, positive = self._units(m, d)
            squares.append(sample_norms(torch.where(positive, d / torch.where(positive, unit, 1.0), 0.0)).pow(2))
        return torch.stack(squares).sum(0).sqrt()

    def project_(self, x: Inputs) -> Inputs:
        deltas = {m: part.delta(x[m]) for m, part in self.parts.items()}
        norms = self.scaled_norms(deltas)
        outside = norms > self.radius
        scale = torch.where(outside, self.radius / norms.clamp_min(torch.finfo(norms.dtype).tiny), 1.0)
        for m, d in deltas.items():
            _, positive = self._units(m, d)
            moved = outside | ~positive.flatten()
            self.parts[m].set_delta_(x[m], torch.where(positive, d * per_sample(scale, d), 0.0), moved)
        return x

    def random_point(self, streams: Streams) -> Inputs:
        """A point drawn uniformly from the scaled ball (a normal direction over all modalities, radius
        ``radius U^(1/n)``), clipped into the ranges."""
        noise = {}
        for m, part in self.parts.items():
            z = part.random_delta(streams)
            noise[m] = torch.where(self._units(m, z)[1], z, 0.0)
        total = torch.stack([sample_norms(z) for z in noise.values()]).pow(2).sum(0).sqrt()
        dims = sum(z[0].numel() for z in noise.values())
        u = streams.rand((), total)
        length = self.radius * u.pow(1 / dims) / total.clamp_min(torch.finfo(total.dtype).tiny)
        x = {m: self.parts[m].clean + z * per_sample(length, z) * self._units(m, z)[0] for m, z in noise.items()}
        return self.project_(x)

    def steepest(self, grads: Inputs) -> Inputs:
        scaled = {m: self.parts[m].reduce_grad(g) * self._units(m, g)[0] for m, g in grads.items()}
        total = torch.stack([sample_norms(s) for s in scaled.values()]).pow(2).sum(0).sqrt()
        total = total.clamp_min(torch.finfo(total.dtype).tiny)
        return {m: s / per_sample(total, s) * self._units(m, s)[0] for m, s in scaled.items()}

    def subset(self, index: Tensor) -> JointL2Ball:
        return JointL2Ball({m: part.subset(index) for m, part in self.parts.items()}, self.radius, self._step)


Region = Independent | JointL2Ball


def joint_split(clean_v: Tensor, adv_v: Tensor, clean_a: Tensor, adv_a: Tensor, eps_v: float | Tensor,
                eps_a: float | Tensor, *, temporal: str = "frame") -> Tensor:
    """``[B]``: the visual share ``s_v = ||d_v/eps_v||^2 / (||d_v/eps_v||^2 + ||d_a/eps_a||^2)`` of a joint
    L2 budget's perturbations ``d = adv - clean``. ``eps_a`` may be per sample (``[B]``, loudness-relative
    budgets). With ``temporal='shared'`` the visual norm is that of the shared (frame-averaged) perturbation,
    the one the joint ball constrains. NaN for a sample with no perturbation in either modality."""
    d_v = (adv_v.float() - clean_v.float())
    if temporal == "shared":
        d_v = d_v.mean(dim=2)
    d_a = adv_a.float() - clean_a.float()

    def scaled(d: Tensor, eps: float | Tensor) -> Tensor:
        unit = torch.as_tensor(eps, dtype=torch.float32, device=d.device).expand(d.shape[0])
        return torch.where(unit > 0, sample_norms(d).pow(2) / torch.where(unit > 0, unit, 1.0).pow(2), 0.0)

    scaled_v, scaled_a = scaled(d_v, eps_v), scaled(d_a, eps_a)
    total = scaled_v + scaled_a
    return torch.where(total > 0, scaled_v / total, math.nan)
