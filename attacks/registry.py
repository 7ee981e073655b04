"""The attack registry and ``build_attack``, which builds any attack from one set of options."""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from models.registry import Registry

ATTACKS: Registry[type] = Registry("attack")


def build_attack(name: str, model: nn.Module, eps: Mapping[str, float], steps: int | None = None,
                 alpha: float | Mapping[str, float] | None = None, loss: str | LossFn = "ce",
                 eps_units: str = "normalized", **options: Any) -> Attack:
    """Build ``ATTACKS[name]`` so that one set of options (e.g. the CLI flags) builds every attack.

    ``steps``, ``alpha`` and ``options`` that are None keep the attack's default. An option the chosen
    attack does not have is ignored (FGSM has no steps or alpha, APGD no alpha, only PGD has
    restarts ...), but one that no registered attack has raises ValueError, as does an unknown name.
    """
    cls = ATTACKS.get(name)
    accepted = inspect.signature(cls).parameters
    known = {p for n in ATTACKS.names() for p in inspect.signature(ATTACKS.get(n)).parameters}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"no attack takes {unknown}; options: {sorted(known - {'model', 'eps'})}")
    kwargs = {k: v for k, v in {"steps": steps, "alpha": alpha, **options}.items() if v is not None and k in accepted}
    return cls(model, eps, loss=loss, eps_units=eps_units, **kwargs)
