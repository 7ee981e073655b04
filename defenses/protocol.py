"""What evaluation needs to know of a defended model, asked through one small interface.

A defended model states the ways gradients may cross its defense (``purification_modes``), whether its forward
pass runs an optimisation (``runs_optimisation``: a "dynamic" defense that needs adaptive attacks), how to attack
it adaptively (``adaptive_attacks``), and what its defense met on the way (``diagnostics``, e.g. dense codes). The
engine asks for a purification mode for the duration of an attack (``purifying``) instead of setting attributes.
A defense that keeps per-sample state between forward passes (warm starts) may also offer ``sample_scope``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class AdaptiveAttack:
    """One white-box configuration against a defense: the attack ``loss`` and the ``purification`` mode its
    gradients take through the defense (None: the defense's own)."""

    name: str
    loss: str = "ce"
    purification: str | None = None


@runtime_checkable
class Defense(Protocol):
    """A defended model, besides being called as ``model(frames, audio)``."""

    purification_modes: tuple[str, ...]
    adaptive_advice: str

    @property
    def runs_optimisation(self) -> bool: ...

    def purifying(self, mode: str) -> AbstractContextManager[None]: ...

    def adaptive_attacks(self, names: Sequence[str], gradient: str) -> list[AdaptiveAttack]: ...

    def diagnostics(self) -> Mapping[str, int]: ...


def purifying(model: Any, mode: str | None) -> AbstractContextManager[None]:
    """``model.purifying(mode)`` for a ``Defense``; nothing to do for ``mode=None``; a ValueError for a mode the
    model does not have (an undefended model has none)."""
    if mode is None:
        return nullcontext()
    if not isinstance(model, Defense):
        raise ValueError(f"purification mode '{mode}' asked of {type(model).__name__}, which has no defense")
    if mode not in model.purification_modes:
        raise ValueError(f"purification mode must be one of {model.purification_modes}, got '{mode}'")
    return model.purifying(mode)


def sample_scope(model: Any, sample_ids: Any) -> AbstractContextManager[None]:
    """``model.sample_scope(sample_ids)`` for a defense that keeps per-sample state between forward passes (the
    memory banks' warm starts: passes of ``len(sample_ids)`` rows inside are these samples, in order); nothing to
    do for any other model or without ids."""
    scope = getattr(model, "sample_scope", None)
    if sample_ids is None or not callable(scope):
        return nullcontext()
    return scope(sample_ids)


def without_state(model: Any) -> AbstractContextManager[None]:
    """Forward passes inside the block use no per-sample state, whatever scope they are in (a scope of no samples):
    e.g. the pass that decides whether an adversarial input fools the model, which must not depend on the attack's
    history."""
    return sample_scope(model, ())


def diagnostics(model: Any) -> dict[str, int]:
    """The defense's counts (``{}`` for an undefended model)."""
    return dict(model.diagnostics()) if isinstance(model, Defense) else {}
