"""The L2 Square attack's moves (Andriushchenko et al. 2020, as in AutoAttack's L2 version), on frames and
waveforms: the initial perturbation and one candidate per iteration, for one modality's ``L2Ball``.

The building block is a "pseudo-Gaussian" window: concentric rectangles of weight ``1 / (k + 1)^2``, positive
in one half of the window and negative in the other, of unit L2 norm (on a waveform, the 1-D counterpart:
nested intervals). A candidate puts a new window (random signs per channel, plus the window's old content)
at a random place, moves the content of a second random window into it, and rescales the whole
perturbation onto the sphere of radius eps. As AutoAttack normalises per channel of an image, the window's
content is normalised per block (one channel of one frame; one waveform), and each modality stays on the
sphere of its own budget. Each sample's draws come from its own stream (``attacks.streams``).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from attacks.regions import L2Ball, per_sample, sample_norms
from attacks.streams import Streams

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


def pseudo_gaussian(size: int, dims: int, streams: Streams, like: Tensor) -> Tensor:
    """Per sample a ``size``-long (``dims=1``) or ``size x size`` (``dims=2``) window, ``[B, size(, size)]``:
    nested boxes, positive in the first half along the first axis and negative in the second, unit L2 norm;
    in 2-D transposed with probability 1/2 (a draw per sample), in ``like``'s dtype and on its device."""
    rest = (size,) * (dims - 1)
    window = torch.cat([_nested((size // 2, *rest)), -_nested((size - size // 2, *rest))])
    window = (window / window.norm()).to(like)
    windows = window.expand(len(streams), *window.shape)
    if dims == 2:
        transpose = streams.rand((), like) < 0.5
        windows = torch.where(transpose.view(-1, 1, 1), window.T, windows)
    return windows


def _place(windows: Tensor, starts: list[Tensor], shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """Per-sample ``windows`` (``[B, s]`` or ``[B, s, s]``) placed at per-sample ``starts`` (one ``[B]`` tensor
    per axis) on a grid of ``shape``: ``(values, inside)``, both ``[B, *shape]``."""
    size = windows.shape[1]
    batch = starts[0].shape[0]
    rows = torch.arange(batch, device=windows.device).view(batch, *[1] * len(shape))
    offsets, inside = [], torch.ones(batch, *shape, dtype=torch.bool, device=windows.device)
    for axis, (start, length) in enumerate(zip(starts, shape)):
        view = [batch] + [1] * len(shape)
        view[axis + 1] = length
        offset = (torch.arange(length, device=windows.device) - start.to(windows.device)[:, None]).view(view)
        inside = inside & (offset >= 0) & (offset < size)
        offsets.append(offset.clamp(0, size - 1))
    values = windows[(rows, *offsets)]
    return values * inside, inside


def _grid(delta: Tensor) -> tuple[int, ...]:
    """The axes windows live on: ``(H, W)`` of frames, ``(L,)`` of a waveform."""
    return tuple(delta.shape[-2:]) if delta.dim() == 5 else (delta.shape[-1],)


def _view(t: Tensor, delta: Tensor) -> Tensor:
    """``[B, *grid]`` viewed to broadcast against ``delta`` (over channels and frames)."""
    return t.view(t.shape[0], *[1] * (delta.dim() - t.dim()), *t.shape[1:])


def _block_norms(t: Tensor, dims: int) -> Tensor:
    """The L2 norm of every block of ``t``: over its last ``dims`` axes (the grid), kept for broadcasting."""
    return t.pow(2).sum(dim=tuple(range(-dims, 0)), keepdim=True).sqrt()


def _onto_sphere(ball: L2Ball, delta: Tensor) -> Tensor:
    """``clean + delta`` with ``delta`` rescaled to norm eps, projected into the ball and the range."""
    radius = per_sample(ball.radius_per_sample, delta)
    scaled = delta / per_sample(sample_norms(delta), delta).clamp_min(TINY) * radius
    return ball.project_(ball.clean + scaled)


def initial_point(ball: L2Ball, streams: Streams) -> Tensor:
    """A tiling of pseudo-Gaussian windows with random signs per sample, channel and window, rescaled to the
    sphere of radius eps. Frames: windows of side ``max(1, H // 5)`` on a grid centred on the frame, the same
    on every frame; waveforms: 25 windows of length ``max(1, L // 25)``, centred likewise."""
    delta = torch.zeros_like(ball.low)
    grid = _grid(delta)
    dims = len(grid)
    size = max(1, (grid[0] // 5) if dims == 2 else grid[0] // 25)
    axes = [range((n - (n // size) * size) // 2, n - size + 1, size) for n in grid]
    sign_shape = (delta.shape[1], *[1] * (delta.dim() - 2))
    for corner in (torch.cartesian_prod(*[torch.tensor(list(a)) for a in axes]).view(-1, dims)):
        windows = pseudo_gaussian(size, dims, streams, delta)
        box = tuple(slice(int(c), int(c) + size) for c in corner)
        target = delta[(..., *box)]
        target += _view(windows, delta) * streams.signs(sign_shape, delta)
    return _onto_sphere(ball, delta)


def window_size(p: float, grid: tuple[int, ...]) -> int:
    """AutoAttack's L2 window for the share ``p``: side ``round(sqrt(p H W))`` on frames, ``round(p L)`` on a
    waveform, at least 3 and odd, at most the grid's shortest axis."""
    area = math.prod(grid)
    size = max(round((p * area) ** (1 / len(grid))), 3)
    size += 1 - size % 2
    return min(size, min(grid))


def candidate(ball: L2Ball, current: Tensor, p: float, streams: Streams) -> Tensor:
    """One L2 Square move from ``current`` (per sample): a new window at a random place (random signs per
    channel, plus the window's old content normalised per block) whose norm per block takes both windows'
    mass and a share of the unused budget, a second random window emptied; the result rescaled onto the
    sphere of radius eps."""
    delta = ball.delta(current)
    grid = _grid(delta)
    dims = len(grid)
    size = window_size(p, grid)
    blocks = delta[0].numel() // math.prod(grid)

    def random_starts() -> list[Tensor]:
        return [streams.randint(0, n - size + 1, (), delta.device) for n in grid]

    windows = pseudo_gaussian(size, dims, streams, delta)
    pattern, first = _place(windows, random_starts(), grid)
    _, second = _place(windows, random_starts(), grid)
    first, second, pattern = _view(first, delta), _view(second, delta), _view(pattern, delta)
    both = first | second
    radius = ball.radius_per_sample
    norm_all, norm_both = sample_norms(delta), sample_norms(delta * both)
    signs = streams.signs((delta.shape[1], *[1] * (delta.dim() - 2)), delta)
    new = pattern * signs + delta * first / (_block_norms(delta * first, dims) + TINY)
    mass = ((radius**2 - norm_all**2).clamp_min(0) / blocks + norm_both**2).sqrt()
    new = new / (_block_norms(new, dims) + TINY) * per_sample(mass, new)
    return _onto_sphere(ball, torch.where(both, 0.0, delta) + new)
