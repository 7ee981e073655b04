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


# Options that repeat an attack's work; an attack without the option must not be asked for more than one.
REPEAT_OPTIONS = {"restarts": 1, "eot_iter": 1}


def attack_options(name: str) -> frozenset[str]:
    """The keyword options ``ATTACKS[name]`` takes (besides ``model`` and ``eps``), e.g. to pass
    ``restarts`` only to the attacks that have restarts."""
    return frozenset(inspect.signature(ATTACKS.get(name)).parameters) - {"model", "eps"}


def build_attack(name: str, model: nn.Module, eps: Mapping[str, float], steps: int | None = None,
                 alpha: float | Mapping[str, float] | None = None, loss: str | LossFn = "ce",
                 eps_units: str = "normalized", *, norm: str = "linf", joint_eps: float | None = None,
                 audio_eps_db: float | None = None, temporal: str = "frame", **options: Any) -> Attack:
    """Build ``ATTACKS[name]`` so that one set of options (e.g. the CLI flags) builds every attack.

    ``model``: any ``nn.Module`` called as ``model(frames, audio)`` that returns logits, a tuple whose first
    item is the logits, or a ``ModelOutput`` (``as_model_output``). The threat model (``eps_units``, ``norm``,
    ``joint_eps``, ``audio_eps_db``, ``temporal``; see ``Attack``) goes to every attack, which raises
    ValueError for one it does not support (Square: ``norm='l2'``).

    ``steps``, ``alpha`` and ``options`` that are None keep the attack's default. An option the chosen
    attack does not have is ignored (FGSM has no steps or alpha, APGD no alpha, APGD-T and Square have their
    own objective so no ``loss``, Square no steps, alpha or random start, only Square has queries ...),
    unless ignoring it would change what was asked: ``restarts`` or ``eot_iter`` above 1 (FGSM has no
    restarts, Square neither restarts nor EOT) and a loss *function* (a caller's own objective, as opposed
    to a loss name from the shared flags) raise ValueError. An option that no registered attack has raises
    ValueError, as does an unknown name.
    """
    cls = ATTACKS.get(name)
    accepted = attack_options(name)
    known = set().union(*(attack_options(n) for n in ATTACKS.names()))
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"no attack takes {unknown}; options: {sorted(known)}")
    for option, single in REPEAT_OPTIONS.items():
        value = options.get(option)
        if value is not None and value != single and option not in accepted:
            raise ValueError(f"attack '{name}' does not support {option} (got {option}={value}); "
                             f"use {option}=1 for it")
    if callable(loss) and "loss" not in accepted:
        raise ValueError(f"attack '{name}' has its own objective and cannot optimise the loss function "
                         f"{getattr(loss, '__name__', loss)!r}")
    kwargs = {k: v for k, v in {"steps": steps, "alpha": alpha, "loss": loss, **options}.items()
              if v is not None and k in accepted}
    return cls(model, eps, eps_units=eps_units, norm=norm, joint_eps=joint_eps, audio_eps_db=audio_eps_db,
               temporal=temporal, **kwargs)
