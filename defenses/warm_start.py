"""Warm starts for a memory bank's sparse coding: each sample's code from its last forward pass, kept per sample.

An attack codes the same sample's slightly moved feature at every step; starting the solver from that sample's
previous code instead of zero leaves the lasso solution as it is (up to the solver's tolerance) and saves most of
its iterations. Codes are kept only inside a *scope* that names the samples of the forward passes it covers:

    with cache.scope(sample_ids):      # e.g. one evaluation batch: its dataset indices
        bank(f_clean)                  # coded from zero; remembered per sample
        with cache.scope(sample_ids):  # e.g. one attack: starts from the clean codes, forgets its own at the end
            bank(f_attacked)           # coded from each sample's last code

Inside a scope of ``n`` samples a forward pass of ``n`` rows is taken to hold those samples in that order; any
other pass (a subset an attack runs on, rows it repeats) is not identified and is coded from zero, as is a row
whose id appears twice in the scope. A code is only ever read for the id it was stored under, so one sample's
code never seeds another's, and the codes (hence the results) do not depend on the batch a sample is in.
``rows(ids)`` names the rows of the passes inside it without opening a scope of its own (an attack's subset of
the samples, e.g. those APGD has not fooled yet): they read and write the innermost scope's codes.
A row whose feature is exactly the one last coded for its sample gets that code back without iterating (the same
input gives the same output, e.g. a repeated clean pass). Scopes nest: an inner scope reads its own codes, then
those of the scopes around it, and writes only its own, which end with it. Outside every scope nothing is kept.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class _Scope:
    ids: list[int]
    unique: list[bool]  # False where an id appears twice: those rows are not identified
    entries: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict)  # id -> (feature, code)


@dataclass
class Seeds:
    """Where a pass's rows start: ``init [B, N]`` (zero where nothing is known), ``known`` rows that have a code,
    and ``repeated`` rows whose feature equals the one their code was computed for (the code is reused as it is)."""

    ids: list[int | None]  # None: a row that is not identified (never stored)
    init: Tensor
    known: Tensor
    repeated: Tensor


class CodeCache:
    """Per-sample codes of one bank, kept inside nested scopes (see the module docstring)."""

    def __init__(self) -> None:
        self._scopes: list[_Scope] = []

    @property
    def active(self) -> bool:
        return bool(self._scopes)

    @contextmanager
    def scope(self, sample_ids: Tensor | Sequence[int]) -> Iterator[None]:
        """Forward passes of ``len(sample_ids)`` rows inside the block are these samples, in this order."""
        ids = [int(i) for i in (sample_ids.tolist() if isinstance(sample_ids, Tensor) else sample_ids)]
        counts: dict[int, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        self._scopes.append(_Scope(ids, [counts[i] == 1 for i in ids]))
        try:
            yield
        finally:
            self._scopes.pop()

    @contextmanager
    def rows(self, sample_ids: Tensor | Sequence[int]) -> Iterator[None]:
        """Forward passes of ``len(sample_ids)`` rows inside the block are these samples, in this order, reading and
        writing the codes of the innermost scope (e.g. the samples an attack still runs on, a subset of its scope's);
        nothing to do outside every scope."""
        if not self._scopes:
            yield
            return
        ids = [int(i) for i in (sample_ids.tolist() if isinstance(sample_ids, Tensor) else sample_ids)]
        counts: dict[int, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        self._scopes.append(_Scope(ids, [counts[i] == 1 for i in ids], self._scopes[-1].entries))
        try:
            yield
        finally:
            self._scopes.pop()

    def _lookup(self, sample_id: int) -> tuple[Tensor, Tensor] | None:
        for scope in reversed(self._scopes):
            if sample_id in scope.entries:
                return scope.entries[sample_id]
        return None

    def seeds(self, F: Tensor, num_atoms: int) -> Seeds | None:
        """The starts of the rows of ``F [B, d]``, or None when the pass is outside any scope or not identified."""
        if not self._scopes:
            return None
        scope = self._scopes[-1]
        if F.shape[0] != len(scope.ids):
            return None
        ids: list[int | None] = [i if ok else None for i, ok in zip(scope.ids, scope.unique)]
        init = F.new_zeros(F.shape[0], num_atoms)
        known = torch.zeros(F.shape[0], dtype=torch.bool)
        repeated = torch.zeros(F.shape[0], dtype=torch.bool)
        for row, sample_id in enumerate(ids):
            entry = None if sample_id is None else self._lookup(sample_id)
            if entry is None:
                continue
            feature, code = entry
            init[row] = code
            known[row] = True
            repeated[row] = torch.equal(feature, F[row])
        return Seeds(ids, init, known.to(F.device), repeated.to(F.device))

    def store(self, seeds: Seeds, F: Tensor, codes: Tensor) -> None:
        """Remember the codes ``[B, N]`` of the identified rows of ``F`` in the innermost scope."""
        entries = self._scopes[-1].entries
        F, codes = F.detach(), codes.detach()
        for row, sample_id in enumerate(seeds.ids):
            if sample_id is not None:
                entries[sample_id] = (F[row].clone(), codes[row].clone())
