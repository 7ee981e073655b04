"""The attack registry, the cascades composed of registered attacks, and ``build_attack``.

One registry drives everything that lists or builds attacks: the command line's ``--attack_type`` choices
(``attack_choices``), the evaluation engine (what each attack reads from the flags, which ones are black-box or
optimise the variant's loss: ``describe``), the validation of flags (``unsupported``) and the README's table
(``attack_table_markdown``, checked by a test). Adding an attack is one ``Attack`` subclass plus its
``@ATTACKS.register(name)`` line; adding a cascade is one ``CASCADES.register`` line.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from attacks.base import Attack
from attacks.losses import LossFn
from attacks.threat import ThreatModel
from models.registry import Registry

ATTACKS: Registry[type] = Registry("attack")
ALIASES = {"aa": "autoattack", "fsgm": "fgsm"}  # the original code's spelling of fgsm; AutoAttack's short name

# Options that repeat an attack's work; an attack without the option must not be asked for more than one.
REPEAT_OPTIONS = {"restarts": 1, "eot_iter": 1}


@dataclass(frozen=True)
class Component:
    """One step of a cascade: recorded as ``<cascade>/<name>``, run with the registered ``attack`` and its
    fixed ``options`` (``(keyword, value)`` pairs that override the flags, e.g. a random start)."""

    name: str
    attack: str
    options: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        """``name (`attack`, option=value, ...)`` for tables."""
        shown = [f"`{self.attack}`"] + [f"{k}={v}" for k, v in self.options]
        return f"{self.name} ({', '.join(shown)})"


@dataclass(frozen=True)
class Cascade:
    """Attacks run one after another, each on the samples every earlier one left standing (AutoAttack's way).
    Its components run once each: restarts and random starts are not theirs to take from the flags (a
    component's own ``options`` say whether it starts at a random point)."""

    components: tuple[Component, ...]
    description: str

    def attacks(self) -> list[type]:
        return [ATTACKS.get(c.attack) for c in self.components]


class CascadeRegistry:
    """Name -> ``Cascade``."""

    def __init__(self) -> None:
        self._entries: dict[str, Cascade] = {}

    def register(self, name: str, cascade: Cascade) -> None:
        if name in self._entries or name in ATTACKS:
            raise ValueError(f"attack '{name}' is already registered")
        self._entries[name] = cascade

    def get(self, name: str) -> Cascade:
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


CASCADES = CascadeRegistry()
# AutoAttack's standard version: APGD-CE and APGD-T from a random point of the ball (seeded), FAB-T, Square.
_RANDOM_START = (("random_start", True),)
CASCADES.register("autoattack", Cascade(
    (Component("apgd-ce", "apgd", _RANDOM_START), Component("apgd-t", "apgd-t", _RANDOM_START),
     Component("fab-t", "fab-t"), Component("square", "square")),
    "AutoAttack's standard ensemble (Croce & Hein 2020): APGD-CE, APGD-T (both from a random start), FAB-T, "
    "Square, each on the samples still standing"))
CASCADES.register("aa-fast", Cascade(
    (Component("apgd-ce", "apgd", _RANDOM_START), Component("apgd-t", "apgd-t", _RANDOM_START),
     Component("square", "square")),
    "AutoAttack without FAB-T: APGD-CE, APGD-T (both from a random start), Square, each on the samples still "
    "standing"))


@dataclass(frozen=True)
class AttackSpec:
    """What the evaluation needs to know of an attack or a cascade, read from the classes' declarations."""

    name: str
    family: str
    uses_loss: bool
    norms: tuple[str, ...]
    joint_ball: bool
    min_classes: int
    cascade: Cascade | None = None

    @property
    def black_box(self) -> bool:
        return self.family == "black-box"


def canonical(name: str) -> str:
    """The registered name of ``name`` ('aa' -> 'autoattack', 'fsgm' -> 'fgsm')."""
    return ALIASES.get(name, name)


def describe(name: str) -> AttackSpec:
    """The ``AttackSpec`` of a registered attack or cascade (aliases allowed); an unknown name is an error."""
    name = canonical(name)
    if name in CASCADES:
        cascade = CASCADES.get(name)
        parts = cascade.attacks()
        families = {cls.family for cls in parts}
        norms = tuple(n for n in parts[0].norms if all(n in cls.norms for cls in parts))
        return AttackSpec(name, families.pop() if len(families) == 1 else "mixed", any(c.uses_loss for c in parts),
                          norms, all(cls.joint_ball for cls in parts), max(cls.min_classes for cls in parts), cascade)
    cls = ATTACKS.get(name)
    return AttackSpec(name, cls.family, cls.uses_loss, tuple(cls.norms), cls.joint_ball, cls.min_classes)


def attack_names() -> list[str]:
    """Every registered single attack and cascade, canonical names only."""
    aliases = set(ALIASES)
    return [n for n in ATTACKS.names() if n not in aliases] + CASCADES.names()


def black_box_attacks() -> list[str]:
    return [n for n in attack_names() if describe(n).black_box]


def attack_settings(name: str) -> dict[str, str]:
    """A registered attack's keyword options and the flag (argparse destination) that sets each."""
    return dict(ATTACKS.get(canonical(name)).settings)


def unsupported(name: str, threat: ThreatModel | None = None, num_classes: int | None = None) -> str | None:
    """Why attack ``name`` cannot run under ``threat`` or on ``num_classes`` classes (None when it can)."""
    spec = describe(name)
    if threat is not None and threat.norm not in spec.norms:
        return f"'{spec.name}' does not support {threat.norm.upper()} budgets"
    if threat is not None and threat.joint_eps is not None and not spec.joint_ball:
        return f"'{spec.name}' does not support L2 joint budgets"
    if num_classes is not None and num_classes < spec.min_classes:
        return f"'{spec.name}' needs at least {spec.min_classes} classes, this model has {num_classes}"
    return None


def attack_options(name: str) -> frozenset[str]:
    """The keyword options ``ATTACKS[name]`` takes (besides ``model`` and ``eps``), e.g. to pass
    ``restarts`` only to the attacks that have restarts."""
    return frozenset(inspect.signature(ATTACKS.get(name)).parameters) - {"model", "eps"}


def build_attack(name: str, model: nn.Module, eps: Mapping[str, float] | ThreatModel, steps: int | None = None,
                 alpha: float | Mapping[str, float] | None = None, loss: str | LossFn = "ce",
                 **options: Any) -> Attack:
    """Build ``ATTACKS[name]`` so that one set of options (e.g. the CLI flags) builds every attack.

    ``model``: any ``nn.Module`` called as ``model(frames, audio)`` that returns logits, a tuple whose first
    item is the logits, or a ``ModelOutput`` (``as_model_output``). ``eps``: the threat model
    (``attacks.threat.ThreatModel``) or a ``{'visual': ev, 'audio': ea}`` dict (L∞, normalised visual units);
    an attack raises ValueError for a threat model it does not support (Square: a joint ball).

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
    return cls(model, eps, **kwargs)


def attack_table_markdown() -> str:
    """The README's table of attacks, from the registry."""
    rows = ["| `--attack_type` | attack | family | objective | norms | joint L2 ball | flags |",
            "|---|---|---|---|---|---|---|"]
    for name in attack_names():
        spec = describe(name)
        objective = "the variant's loss (`--attack_loss`)" if spec.uses_loss and spec.cascade is None else "its own"
        if spec.cascade is not None:
            flags = "components: " + ", ".join(c.label() for c in spec.cascade.components)
            objective = "each component's"
        else:
            flags = ", ".join(f"`--{flag}`" for flag in attack_settings(name).values())
        aliases = [a for a, target in ALIASES.items() if target == name]
        shown = f"`{name}`" + "".join(f" / `{a}`" for a in aliases)
        summary = spec.cascade.description if spec.cascade is not None else ATTACKS.get(name).summary
        norms = ", ".join(n.upper() for n in spec.norms)
        rows.append(f"| {shown} | {summary} | {spec.family} | {objective} | {norms} | "
                    f"{'yes' if spec.joint_ball else 'no'} | {flags} |")
    return "\n".join(rows) + "\n"
