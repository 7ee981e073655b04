"""The L2 Square attack's moves (Andriushchenko et al. 2020, as in AutoAttack's L2 version), on frames and
waveforms: the initial perturbation and one candidate per iteration, for one modality's ``L2Ball``.

The building block is a "pseudo-Gaussian" window: concentric rectangles of weight ``1 / (k + 1)^2``, positive
in one half of the window and negative in the other, of unit L2 norm (on a waveform, the 1-D counterpart:
nested intervals). A candidate puts a new window (random signs per channel, plus the window's old content)
at a random place, moves the content of a second random window into it, and rescales the whole
perturbation onto the sphere of radius eps.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks.regions import L2Ball, per_sample, sample_norms

TINY = 1e-12


def _nested(lengths: tuple[int, ...]) -> Tensor:
    """Nested boxes around the centre of a ``lengths`` grid, box ``k`` (half-width ``k``) of weight
    ``1 / (k + 1)^2``, summed; unit L2 norm (all zeros for an empty grid)."""
    out = torch.zeros(lengths)
    if out.numel() == 0:
        return out
    centres = [n // 2 for n in lengths]
    for k in range(max(c + 1 for c in centres)):
        box = tuple(slice(max(c - k, 0), min(c + k + 1, n)) for c, n in zip(centres, lengths))
        out[box] += 1.0 / (k + 1) ** 2
    return out / out.norm()


def pseudo_gaussian(size: int, dims: int, generator: torch.Generator) -> Tensor:
    """A ``size``-long (``dims=1``) or ``size x size`` (``dims=2``) window: nested boxes, positive in the first
    half along the first axis and negative in the second, unit L2 norm; in 2-D transposed with probability
    1/2."""
    rest = (size,) * (dims - 1)
    window = torch.cat([_nested((size // 2, *rest)), -_nested((size - size // 2, *rest))])
    window = window / window.norm()
    if dims == 2 and torch.rand((), generator=generator, device=generator.device) < 0.5:
        window = window.T
    return window


def _place(window: Tensor, starts: list[Tensor], shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """``window`` (``[s]`` or ``[s, s]``) placed at per-sample ``starts`` (one ``[B]`` tensor per axis) on a grid
    of ``shape``: ``(values, inside)``, both ``[B, *shape]``."""
    size = window.shape[0]
    batch = starts[0].shape[0]
    offsets, inside = [], torch.ones(batch, *shape, dtype=torch.bool, device=starts[0].device)
    for axis, (start, length) in enumerate(zip(starts, shape)):
        view = [batch] + [1] * len(shape)
        view[axis + 1] = length
        offset = (torch.arange(length, device=start.device) - start[:, None]).view(view)
        inside = inside & (offset >= 0) & (offset < size)
        offsets.append(offset.clamp(0, size - 1))
    values = window.to(starts[0].device)[tuple(offsets)]
    return values * inside, inside


def _grid(delta: Tensor) -> tuple[int, ...]:
    """The axes windows live on: ``(H, W)`` of frames, ``(L,)`` of a waveform."""
    return tuple(delta.shape[-2:]) if delta.dim() == 5 else (delta.shape[-1],)


def _view(t: Tensor, delta: Tensor) -> Tensor:
    """``[B, *grid]`` viewed to broadcast against ``delta`` (over channels and frames)."""
    return t.view(t.shape[0], *[1] * (delta.dim() - t.dim()), *t.shape[1:])


def _random_signs(delta: Tensor, generator: torch.Generator) -> Tensor:
    """One ±1 per sample and channel, broadcasting against ``delta``."""
    shape = (*delta.shape[:2], *[1] * (delta.dim() - 2))
    bits = torch.randint(0, 2, shape, generator=generator, device=delta.device)
    return bits.mul_(2).sub_(1).to(delta.dtype)


def _onto_sphere(ball: L2Ball, delta: Tensor) -> Tensor:
    """``clean + delta`` with ``delta`` rescaled to norm eps, projected into the ball and the range."""
    radius = per_sample(ball.radius_per_sample, delta)
    scaled = delta / per_sample(sample_norms(delta), delta).clamp_min(TINY) * radius
    return ball.project_(ball.clean + scaled)


def initial_point(ball: L2Ball, generator: torch.Generator) -> Tensor:
    """A tiling of pseudo-Gaussian windows with random signs per sample, channel and window, rescaled to the
    sphere of radius eps. Frames: windows of side ``max(1, H // 5)`` on a grid centred on the frame, the same
    on every frame; waveforms: 25 windows of length ``max(1, L // 25)``, centred likewise."""
    delta = torch.zeros_like(ball.low)
    grid = _grid(delta)
    dims = len(grid)
    size = max(1, (grid[0] // 5) if dims == 2 else grid[0] // 25)
    axes = [range((n - (n // size) * size) // 2, n - size + 1, size) for n in grid]
    for corner in (torch.cartesian_prod(*[torch.tensor(list(a)) for a in axes]).view(-1, dims)):
        window = pseudo_gaussian(size, dims, generator).to(delta)
        box = tuple(slice(int(c), int(c) + size) for c in corner)
        target = delta[(..., *box)]
        target += window.view(*[1] * (delta.dim() - dims), *window.shape) * _random_signs(target, generator)
    return _onto_sphere(ball, delta)


def window_size(p: float, grid: tuple[int, ...]) -> int:
    """AutoAttack's L2 window for the share ``p``: side ``round(sqrt(p H W))`` on frames, ``round(p L)`` on a
    waveform, at least 3 and odd, at most the grid's shortest axis."""
    area = math.prod(grid)
    size = max(round((p * area) ** (1 / len(grid))), 3)
    size += 1 - size % 2
    return min(size, min(grid))


def candidate(ball: L2Ball, current: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """One L2 Square move from ``current`` (per sample): a new window at a random place (random signs per
    channel, plus the window's old content, normalised) whose norm takes both windows' mass and a share of the
    unused budget, a second random window emptied; the result rescaled onto the sphere of radius eps."""
    delta = ball.delta(current)
    grid = _grid(delta)
    size = window_size(p, grid)
    batch = delta.shape[0]

    def random_starts() -> list[Tensor]:
        return [torch.randint(n - size + 1, (batch,), generator=generator, device=delta.device) for n in grid]

    window = pseudo_gaussian(size, len(grid), generator).to(delta)
    pattern, first = _place(window, random_starts(), grid)
    _, second = _place(window, random_starts(), grid)
    first, second, pattern = _view(first, delta), _view(second, delta), _view(pattern, delta)
    both = first | second
    radius = ball.radius_per_sample
    norm_all, norm_first, norm_both = (sample_norms(delta), sample_norms(delta * first),
                                       sample_norms(delta * both))
    new = pattern * _random_signs(delta, generator) + delta * first / per_sample(norm_first + TINY, delta)
    mass = ((radius**2 - norm_all**2).clamp_min(0) / delta.shape[1] + norm_both**2).sqrt()
    new = new / per_sample(sample_norms(new) + TINY, new) * per_sample(mass, new)
    return _onto_sphere(ball, torch.where(both, 0.0, delta) + new)
