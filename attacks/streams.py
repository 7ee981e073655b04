"""Per-sample random streams: one generator per sample, seeded from the attack's seed and the sample's id.

A sample's random draws (random starts, restarts, Square's windows and signs) then depend on the seed and the
sample alone: the same sample gets the same adversarial input whatever its batch, its place in the batch, the
batch size or the number of processes. Draws happen on the CPU (so CPU and GPU runs draw the same numbers) and
come back on the device asked for.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def _mix(value: int) -> int:
    """SplitMix64's finaliser: a bijection of 64-bit integers that spreads nearby inputs far apart."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, sample_id: int) -> int:
    """The seed of sample ``sample_id``'s generator under the attack seed ``seed`` (a 63-bit integer)."""
    return _mix(_mix(seed & _MASK64) ^ (sample_id & _MASK64)) >> 1


class SampleStreams:
    """One CPU ``torch.Generator`` per sample of a batch. ``subset`` shares the generators, so a sample's stream
    continues where it stopped whichever subset draws from it next. Every draw is ``[B, *shape]``: row ``i``
    comes from sample ``i``'s generator only."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    @classmethod
    def seeded(cls, seed: int, sample_ids: Sequence[int]) -> SampleStreams:
        return cls([torch.Generator().manual_seed(sample_seed(seed, int(i))) for i in sample_ids])

    def __len__(self) -> int:
        return len(self.generators)

    def subset(self, index: Tensor) -> SampleStreams:
        """The streams of the samples ``index`` (a 1-D index tensor), the same generator objects."""
        return SampleStreams([self.generators[i] for i in index.tolist()])

    def _stack(self, draw, like_dtype: torch.dtype, device: torch.device | str) -> Tensor:
        rows = [draw(g) for g in self.generators]
        if not rows:
            raise ValueError("no samples to draw for")
        return torch.stack(rows).to(device=device, dtype=like_dtype)

    def rand(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Uniform on [0, 1), ``[B, *shape]``, in ``like``'s dtype and on its device."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.rand(shape, generator=g, dtype=like.dtype), like.dtype, like.device)

    def randn(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """Standard normal, ``[B, *shape]``, in ``like``'s dtype and on its device."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.randn(shape, generator=g, dtype=like.dtype), like.dtype, like.device)

    def randint(self, low: int, high: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        """Integers in ``[low, high)``, ``[B, *shape]`` (int64) on ``device``."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.randint(low, high, shape, generator=g), torch.int64, device)

    def signs(self, shape: Sequence[int], like: Tensor) -> Tensor:
        """±1 with equal probability, ``[B, *shape]``, in ``like``'s dtype and on its device."""
        return self.randint(0, 2, shape, like.device).mul_(2).sub_(1).to(like.dtype)


class BatchStream:
    """One generator, on the inputs' device, drawing for a whole batch at once: what attacks use when they are
    given neither a seed nor sample ids (e.g. adversarial training's), where no draw is to be repeated and
    per-sample CPU generators would only cost time. The same interface as ``SampleStreams``; a subset draws
    from the same generator."""

    def __init__(self, generator: torch.Generator, size: int) -> None:
        self.generator = generator
        self.size = size

    @classmethod
    def seeded(cls, seed: int, size: int, device: torch.device | str) -> BatchStream:
        return cls(torch.Generator(device=device).manual_seed(seed), size)

    def __len__(self) -> int:
        return self.size

    def subset(self, index: Tensor) -> BatchStream:
        return BatchStream(self.generator, index.numel())

    def rand(self, shape: Sequence[int], like: Tensor) -> Tensor:
        return torch.rand((self.size, *shape), generator=self.generator, dtype=like.dtype,
                          device=self.generator.device).to(like.device)

    def randn(self, shape: Sequence[int], like: Tensor) -> Tensor:
        return torch.randn((self.size, *shape), generator=self.generator, dtype=like.dtype,
                           device=self.generator.device).to(like.device)

    def randint(self, low: int, high: int, shape: Sequence[int], device: torch.device | str) -> Tensor:
        return torch.randint(low, high, (self.size, *shape), generator=self.generator,
                             device=self.generator.device).to(device)

    def signs(self, shape: Sequence[int], like: Tensor) -> Tensor:
        return self.randint(0, 2, shape, like.device).mul_(2).sub_(1).to(like.dtype)


Streams = SampleStreams | BatchStream
