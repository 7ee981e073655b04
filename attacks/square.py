"""Square attack (Andriushchenko et al. 2020), L∞ and L2: a score-based random search that needs only logits."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from attacks import square_l2
from attacks.base import Attack, Inputs, Problem
from attacks.losses import margin
from attacks.regions import Ball, L2Ball, per_sample
from attacks.registry import ATTACKS
from attacks.streams import Streams
from attacks.threat import IMAGENET_STD, ThreatModel

# Iterations, on a schedule rescaled to 10000 queries, after which the window's share p is halved.
HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(iteration: int, queries: int, p_init: float) -> float:
    """The share ``p`` of the input one window covers at ``iteration`` (0-based) of ``queries``: ``p_init``
    halved at every one of ``HALVING_ITERATIONS`` that ``iteration * 10000 / queries`` has passed."""
    rescaled = int(iteration / queries * 10000)
    return p_init / 2 ** sum(rescaled > t for t in HALVING_ITERATIONS)


def _visual_window(frames: Tensor, p: float, streams: Streams) -> Tensor:
    """``[B, 1, 1, H, W]`` masks: per sample a square of side ``max(1, round(sqrt(p H W)))`` (at most
    ``min(H, W) - 1``) at a random position, the same on every frame of the clip."""
    b, _, _, h, w = frames.shape
    side = max(1, min(round(math.sqrt(p * h * w)), min(h, w) - 1))
    top = streams.randint(0, h - side + 1, (1,), frames.device)
    left = streams.randint(0, w - side + 1, (1,), frames.device)
    rows, cols = torch.arange(h, device=frames.device), torch.arange(w, device=frames.device)
    in_rows = (rows >= top) & (rows < top + side)
    in_cols = (cols >= left) & (cols < left + side)
    return (in_rows[:, :, None] & in_cols[:, None, :]).view(b, 1, 1, h, w)


def _audio_window(audio: Tensor, p: float, streams: Streams) -> Tensor:
    """``[B, 1, L]`` masks: per sample a contiguous window of ``max(1, round(p L))`` samples at a random place."""
    b, _, length = audio.shape
    size = min(length, max(1, round(p * length)))
    start = streams.randint(0, length - size + 1, (1,), audio.device)
    positions = torch.arange(length, device=audio.device)
    return ((positions >= start) & (positions < start + size)).view(b, 1, length)


def _set_window(ball: Ball, current: Tensor, inside: Tensor, streams: Streams) -> Tensor:
    """``current`` with the window ``inside`` set to ``clean ± radius`` (one random sign per sample and
    channel), projected into the ball and the range.

    Where that leaves a sample unchanged (its window already held those values) the signs of a random
    non-empty set of channels are flipped, as the paper redraws: a window always changes the input. Every
    sample draws its flips whether it needs them or not, so its stream does not depend on the others.
    """
    b, channels = current.shape[:2]
    sign_shape = (b, channels) + (1,) * (current.dim() - 2)
    signs = streams.signs(sign_shape[1:], current)
    subsets = streams.randint(1, 2**channels, (1,), current.device)

    def candidate_for(signs: Tensor) -> Tensor:
        return ball.project_(torch.where(inside, ball.clean + signs * ball.radius, current))

    candidate = candidate_for(signs)
    unchanged = (candidate == current).flatten(1).all(dim=1)
    if unchanged.any():
        flips = (subsets >> torch.arange(channels, device=current.device)) & 1
        flipped = signs * (1 - 2 * flips).to(signs.dtype).view(sign_shape)
        candidate = candidate_for(torch.where(per_sample(unchanged, signs), flipped, signs))
    return candidate


@ATTACKS.register("square")
class Square(Attack):
    """Random search on the logit margin ``z_y - max_{i!=y} z_i``: no gradients, one forward pass a query.

    Start: visual, vertical stripes (one random sign per sample, channel and column, the same on every row
    and frame) of ``±eps``; audio, a random sign per waveform sample (the 1-D counterpart of the stripes:
    a waveform has no second axis to be constant along). Then ``queries`` iterations; in each, every sample
    not yet misclassified gets a candidate whose window (a square on the frames, see ``_visual_window``; a
    contiguous stretch of the waveform, ``_audio_window``; both at once when both have a budget) is set to
    ``clean ± eps`` with a random sign per channel, of share ``p = square_fraction(...)`` of the input. The
    candidate is kept if it lowers the sample's margin. Budgets are those of ``Attack`` (per channel for
    visual budgets in normalised units); every point is clamped into the ball and the valid range.

    With ``norm='l2'`` the moves are the L2 version's (``attacks.square_l2``: pseudo-Gaussian windows on the
    frames and on the waveform, every point on the sphere of radius eps before the range clip). A joint ball
    is not supported (ValueError); a loudness-relative audio budget (each clip's own ``eps``) and
    ``temporal='shared'`` (one perturbation for every frame) work as in ``Attack``.

    ``seed`` as in ``Attack`` (each sample draws from its own stream). The gradient attacks' options
    (steps, alpha, loss, random start) do not apply; ``build_attack`` ignores them, and rejects
    ``restarts`` or ``eot_iter`` above 1. ``queries + 1`` forward passes at most.
    """

    summary = ("Square attack (Andriushchenko et al. 2020): score-based random search on the margin, one window per "
               "modality per query")
    family = "black-box"
    uses_loss = False
    joint_ball = False
    settings = {"queries": "square_queries", "p_init": "square_p_init", "seed": "seed"}

    def __init__(self, model: nn.Module, eps: Mapping[str, float] | ThreatModel, *, queries: int = 5000,
                 p_init: float = 0.8, seed: int | None = None, std: Sequence[float] = IMAGENET_STD) -> None:
        if ThreatModel.of(eps).joint_eps is not None:
            raise ValueError("the square attack takes per-modality budgets only, not joint_eps")
        if queries < 1:
            raise ValueError(f"queries must be >= 1, got {queries}")
        if not 0 < p_init <= 1:
            raise ValueError(f"p_init must be in (0, 1], got {p_init}")
        super().__init__(model, eps, steps=queries, seed=seed, loss=margin, std=std)
        self.p_init = p_init

    @property
    def queries(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return (f"Square(eps={self.eps}, queries={self.queries}, p_init={self.p_init}, "
                f"eps_units='{self.threat.units}', {self._threat_repr()}seed={self.seed})")

    def perturb(self, problem: Problem) -> Inputs:
        balls = problem.region.balls
        x = {m: self._initial_point(m, ball, problem.streams) for m, ball in balls.items()}
        losses, fooled = problem.evaluate(x)
        index, part = None, problem
        for iteration in range(self.queries):
            if index is None or bool(fooled[index].any()):  # the samples still standing changed: subset anew
                index = (~fooled).nonzero().squeeze(1)
                if index.numel() == 0:
                    break
                part = problem.subset(index)
            p = square_fraction(iteration, self.queries, self.p_init)
            candidate = {}
            for m, ball in part.region.balls.items():
                candidate[m] = self._candidate(m, ball, x[m][index], p, part.streams)
            candidate_losses, candidate_fooled = part.evaluate(candidate)
            improved = candidate_losses > losses[index]
            rows = index[improved]
            for m, v in x.items():
                v.index_copy_(0, rows, candidate[m][improved])
            losses[rows] = candidate_losses[improved]
            fooled[rows] = candidate_fooled[improved]
        return x

    @staticmethod
    def _candidate(modality: str, ball: Ball | L2Ball, current: Tensor, p: float,
                   streams: Streams) -> Tensor:
        """A new point from ``current`` with windows of share ``p``: L∞, ``_set_window``; L2, ``square_l2``."""
        if isinstance(ball, L2Ball):
            return square_l2.candidate(ball, current, p, streams)
        inside = (_visual_window if modality == "visual" else _audio_window)(current, p, streams)
        return _set_window(ball, current, inside, streams)

    @staticmethod
    def _initial_point(modality: str, ball: Ball | L2Ball, streams: Streams) -> Tensor:
        if isinstance(ball, L2Ball):
            return square_l2.initial_point(ball, streams)
        clean = ball.clean
        shape = (*clean.shape[:2], *[1] * (clean.dim() - 3), clean.shape[-1]) if modality == "visual" else clean.shape
        return ball.project_(clean + streams.signs(shape[1:], clean) * ball.radius)
