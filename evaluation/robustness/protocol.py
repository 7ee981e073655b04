"""Attack budgets, their threat models, and the paper's protocol.

The paper's protocol: audio-only attack (eps_a = 0.012); visual-only (eps_v = 0.012); joint audio-visual
(eps_a = eps_v = 0.006). Visual budgets are in ImageNet-normalised units by default (``--eps_units
normalized``, as the released code), audio budgets in waveform amplitude.

A budget also names its threat model: the norm (L-inf or L2), a joint L2 ball over both
modalities (``--joint_eps``, A+V budgets only), a loudness-relative audio budget in dB (``--audio_eps_db``),
one visual perturbation shared by all frames (``--temporal shared``) and a misalignment of the audio against
the frames (``max_shift``, for the shift attacks). The default threat model (L-inf, per frame, fixed units)
keeps the budget keys of earlier results, ``A@v0,a0.012``; any other is named in the key, e.g.
``A+V@l2:v1,a0.5,j1``, ``A@v0,a-30dB``, ``V@v0.012,a0,shared``, ``A@v0,a0.012,shift0.5s``.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Budget:
    """One attack budget: per-modality radius and its threat model; ``grid`` marks points of an --eps_grid
    sweep or of the --eps_grid2d map, ``eps_map`` the map's points (which only the first attack type runs).
    The name (A, V, A+V) says which radii are non-zero; a misalignment (``max_shift``) is part of the threat
    model, so the shift alone is 'A [shift ±s]'."""

    eps_visual: float
    eps_audio: float
    grid: bool = False
    norm: str = "linf"
    joint_eps: float | None = None
    audio_eps_db: float | None = None
    temporal: str = "frame"
    max_shift: float | None = None
    eps_map: bool = False

    @property
    def attacks_visual(self) -> bool:
        return self.eps_visual > 0

    @property
    def attacks_audio(self) -> bool:
        return self.eps_audio > 0 or self.audio_eps_db is not None

    @property
    def name(self) -> str:
        if self.attacks_visual and self.attacks_audio:
            return "A+V"
        return "V" if self.attacks_visual else "A"

    def _audio_text(self) -> str:
        return f"{self.audio_eps_db:g}dB" if self.audio_eps_db is not None else f"{self.eps_audio:g}"

    @property
    def key(self) -> str:
        spec = f"v{self.eps_visual:g},a{self._audio_text()}"
        if self.norm != "linf":
            spec = f"{self.norm}:{spec}"
        if self.joint_eps is not None:
            spec += f",j{self.joint_eps:g}"
        if self.temporal != "frame":
            spec += f",{self.temporal}"
        if self.max_shift is not None:
            spec += f",shift{self.max_shift:g}s"
        return f"{self.name}@{spec}"

    @property
    def threat(self) -> str:
        """The threat model apart from the radii, in words ('' for the default L-inf per-frame budget)."""
        parts = []
        if self.norm != "linf":
            parts.append(self.norm.upper())
        if self.joint_eps is not None:
            parts.append(f"joint ball J={self.joint_eps:g}")
        if self.temporal != "frame" and self.attacks_visual:
            parts.append(f"{self.temporal} over frames")
        if self.max_shift is not None:
            parts.append(f"shift ±{self.max_shift:g} s")
        return ", ".join(parts)

    @property
    def label(self) -> str:
        """Table column: 'A (εa=0.012)', 'A+V (εv=1, εa=0.5) [L2, joint ball J=1]', 'A (εa=-30 dB)' ..."""
        audio = f"{self.audio_eps_db:g} dB" if self.audio_eps_db is not None else f"{self.eps_audio:g}"
        radii = []
        if self.attacks_visual:
            radii.append(f"εv={self.eps_visual:g}")
        if self.eps_audio > 0 or self.audio_eps_db is not None:
            radii.append(f"εa={audio}")
        text = f"{self.name} ({', '.join(radii)})" if radii else self.name
        return f"{text} [{self.threat}]" if self.threat else text

    def shifted(self, max_shift: float) -> Budget:
        """This budget after the audio was shifted by up to ``max_shift`` seconds (shift+<attack>)."""
        return dataclasses.replace(self, max_shift=max_shift)


PAPER_PROTOCOL = (Budget(0.0, 0.012), Budget(0.012, 0.0), Budget(0.006, 0.006))


@dataclass(frozen=True)
class ThreatModel:
    """The run-level threat-model flags; ``from_args`` reads them with the defaults of an older namespace."""

    norm: str = "linf"
    joint_eps: float | None = None
    audio_eps_db: float | None = None
    temporal: tuple[str, ...] = ("frame",)
    max_shift: float | None = None
    shift_steps: int = 9
    eps_grid2d: tuple[float, ...] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ThreatModel:
        grid2d = getattr(args, "eps_grid2d", None)
        return cls(norm=getattr(args, "norm", "linf"), joint_eps=getattr(args, "joint_eps", None),
                   audio_eps_db=getattr(args, "audio_eps_db", None),
                   temporal=tuple(getattr(args, "temporal", None) or ("frame",)),
                   max_shift=getattr(args, "max_shift", None), shift_steps=getattr(args, "shift_steps", 9),
                   eps_grid2d=None if grid2d is None else tuple(grid2d))

    def apply(self, budget: Budget, temporal: str) -> Budget:
        """``budget`` (radii only) under this threat model, its visual part per ``temporal``."""
        both = budget.eps_visual > 0 and budget.eps_audio > 0
        db = self.audio_eps_db if budget.eps_audio > 0 else None
        return dataclasses.replace(budget, norm=self.norm, joint_eps=self.joint_eps if both else None,
                                   audio_eps_db=db, eps_audio=0.0 if db is not None else budget.eps_audio,
                                   temporal=temporal if budget.eps_visual > 0 else "frame")

    def expand(self, budget: Budget) -> list[Budget]:
        """``budget`` once per --temporal mode when it attacks the frames, else once."""
        modes = self.temporal if budget.eps_visual > 0 else self.temporal[:1]
        return [self.apply(budget, mode) for mode in modes]

    def map_values(self) -> list[float]:
        """The (ε_v, ε_a) map's axis: the --eps_grid2d values with 0, sorted, without repeats."""
        return sorted({0.0, *(self.eps_grid2d or ())})

    def map_budgets(self) -> dict[tuple[float, float], Budget]:
        """The map's budgets by (ε_v, ε_a), (0, 0) (the clean input) left out; first --temporal mode only."""
        values = self.map_values()
        return {(ev, ea): self.apply(Budget(ev, ea, grid=True, eps_map=True), self.temporal[0])
                for ev in values for ea in values if ev or ea}

    def shifts(self) -> list[float]:
        """The misalignment grid in seconds: ``shift_steps`` values evenly spaced in [-max_shift, max_shift]."""
        if self.max_shift is None:
            return []
        if self.shift_steps == 1:
            return [0.0]
        return [round(float(s), 9) for s in np.linspace(-self.max_shift, self.max_shift, self.shift_steps)]


def budgets_from_args(args: argparse.Namespace) -> list[Budget]:
    """The protocol (or --epsilons) under the threat model of the flags (once per --temporal mode), the
    --eps_grid sweep points for the accuracy-vs-eps figure, then the --eps_grid2d map's points; a point
    equal to an earlier budget is not repeated."""
    threat = ThreatModel.from_args(args)
    if args.epsilons:
        base = [Budget(ev, ea) for ev, ea in args.epsilons]
    else:
        base = list(PAPER_PROTOCOL)
    for eps in args.eps_grid or []:
        for modality in args.eps_grid_modality:
            base.append({"audio": Budget(0.0, eps, True), "visual": Budget(eps, 0.0, True),
                         "both": Budget(eps, eps, True)}[modality])
    budgets: list[Budget] = []
    for budget in [b for raw in base for b in threat.expand(raw)] + list(threat.map_budgets().values()):
        if all(b.key != budget.key for b in budgets):
            budgets.append(budget)
    return budgets


def attack_plan(attack_types: list[str], budgets: list[Budget], max_shift: float | None) -> list[tuple[str, Budget]]:
    """The (attack, budget) pairs of a run, budgets outermost: ``shift`` once, under its own budget (the
    misalignment alone); ``shift+<attack>`` under every budget, shifted; the --eps_grid2d map's points only
    under the first attack type; every other attack under every budget."""
    plan: list[tuple[str, Budget]] = []
    if "shift" in attack_types:
        if max_shift is None:
            raise ValueError("attack 'shift' needs max_shift (--max_shift SECONDS)")
        plan.append(("shift", Budget(0.0, 0.0, max_shift=max_shift)))
    for budget in budgets:
        for attack in attack_types:
            if attack == "shift" or (budget.eps_map and attack != attack_types[0]):
                continue
            if attack.startswith("shift+"):
                if max_shift is None:
                    raise ValueError(f"attack '{attack}' needs max_shift (--max_shift SECONDS)")
                plan.append((attack, budget.shifted(max_shift)))
            else:
                plan.append((attack, budget))
    return plan
