"""The threat model: what an attacker may change, as one frozen value that every layer takes.

A ``ThreatModel`` holds the budget per modality and its units, the norm, a joint L2 ball over both modalities,
a loudness-relative audio budget, one visual perturbation shared by all frames, and a misalignment of the audio
against the frames. It is validated once, on construction; it names itself for tables (``label``) and records
(``key``). ``ThreatSettings`` is what the command line asks for (the threat-model flags, defined and checked
here too); it turns the protocol's radii into threat models (``apply``).

Units: visual budgets are in ImageNet-normalised units (``units='normalized'``, the released code's: a change of
ε in ``(x - mean_c) / std_c`` is ε·std_c per pixel channel) or in [0, 1] pixels (``'pixel'``, the only units of an
L2 radius); audio budgets are in waveform amplitude, or, with ``audio_eps_db=D`` (D < 0), ``D`` dB below each
clip's own loudness: L∞, ``max|x| * 10^(D/20)`` (Carlini & Wagner's dB_x); L2, ``||x||_2 * 10^(D/20)``.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

MODALITIES = ("visual", "audio")
# The command-line flags of the threat model (``add_threat_flags``), e.g. for telling two evaluations apart.
THREAT_FLAGS = ("norm", "eps_units", "joint_eps", "audio_eps_db", "temporal", "eps_grid2d", "max_shift", "shift_steps")
NORMS = ("linf", "l2")
TEMPORAL = ("frame", "shared")
EPS_UNITS = ("normalized", "pixel")
IMAGENET_STD = (0.229, 0.224, 0.225)

T = TypeVar("T", bound="ThreatModel")


def normalized_eps_to_pixel(eps: float, std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """The per-channel pixel budget ``eps * std_c`` of a budget ``eps`` in ImageNet-normalised units."""
    return torch.tensor([eps * s for s in std])


def audio_db_radius(audio: Tensor, db: float, norm: str) -> Tensor:
    """``[B]``: each clip's audio budget ``db`` dB below its own loudness (L∞: its peak, L2: its norm); a silent
    clip gets 0: nothing to perturb."""
    flat = audio.detach().float().flatten(1)
    loudness = flat.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)
    return loudness * 10 ** (db / 20)


def _finite_at_least_zero(value: float, what: str) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {value}")
    return value


@dataclass(frozen=True)
class ThreatModel:
    """One threat model; see the module docstring. ``units`` None: normalised for L∞, pixels for L2. Invalid
    combinations raise ValueError on construction."""

    eps_visual: float = 0.0
    eps_audio: float = 0.0
    norm: str = "linf"
    units: str | None = None
    joint_eps: float | None = None
    audio_eps_db: float | None = None
    temporal: str = "frame"
    max_shift: float | None = None

    def __post_init__(self) -> None:
        if self.units is None:  # the norm's natural units: normalised for L∞ (the paper's), pixels for L2
            object.__setattr__(self, "units", "pixel" if self.norm == "l2" else "normalized")
        object.__setattr__(self, "eps_visual", _finite_at_least_zero(self.eps_visual, "eps['visual']"))
        object.__setattr__(self, "eps_audio", _finite_at_least_zero(self.eps_audio, "eps['audio']"))
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if self.temporal not in TEMPORAL:
            raise ValueError(f"temporal must be one of {TEMPORAL}, got {self.temporal!r}")
        if self.units not in EPS_UNITS:
            raise ValueError(f"eps_units must be one of {EPS_UNITS}, got '{self.units}'")
        if self.norm == "l2" and self.units != "pixel":
            raise ValueError("norm='l2' needs eps_units='pixel' (an L2 radius has no per-channel normalised units)")
        if self.joint_eps is not None:
            if self.norm != "l2":
                raise ValueError(f"joint_eps needs norm='l2', got norm={self.norm!r}")
            if not (math.isfinite(self.joint_eps) and self.joint_eps > 0):
                raise ValueError(f"joint_eps must be finite and > 0, got {self.joint_eps}")
            zero = [m for m in MODALITIES if self.eps[m] == 0 and not (m == "audio" and self.loudness_relative)]
            if zero:
                raise ValueError(f"joint_eps needs a unit budget > 0 for both modalities; eps['{zero[0]}'] is 0")
        if self.audio_eps_db is not None and not (math.isfinite(self.audio_eps_db) and self.audio_eps_db < 0):
            raise ValueError(f"audio_eps_db must be finite and < 0 (dB below the clip's loudness), "
                             f"got {self.audio_eps_db}")

    @classmethod
    def of(cls, eps: Mapping[str, float] | ThreatModel, **fields: Any) -> ThreatModel:
        """A ``ThreatModel`` as it is, or one from ``{'visual': ev, 'audio': ea}`` (a missing key is 0) and
        ``fields``."""
        if isinstance(eps, ThreatModel):
            if fields:
                raise ValueError(f"give the threat model's fields in the ThreatModel, not beside it: {sorted(fields)}")
            return eps
        if not isinstance(eps, Mapping):
            raise TypeError(f"eps must be a dict like {{'visual': 0.006, 'audio': 0.006}} or a ThreatModel, "
                            f"got {eps!r}")
        unknown = sorted(set(eps) - set(MODALITIES))
        if unknown:
            raise ValueError(f"eps keys must be among {MODALITIES}, got {unknown}")
        return cls(eps.get("visual") or 0.0, eps.get("audio") or 0.0, **fields)

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any], units: str | None = None) -> ThreatModel:
        """The threat model of a results entry: its ``eps_visual``, ``eps_audio`` and ``fields()``'s keys (missing
        ones, in files written before they existed, take the defaults)."""
        return cls(fields.get("eps_visual", 0.0), fields.get("eps_audio", 0.0), norm=fields.get("norm") or "linf",
                   units=units, joint_eps=fields.get("joint_eps"), audio_eps_db=fields.get("audio_eps_db"),
                   temporal=fields.get("temporal") or "frame", max_shift=fields.get("max_shift"))

    def radii_text(self, visual_units: str, audio_units: str) -> list[str]:
        """The radii in words, e.g. ``['εv=0.006 pixels', 'εa=-30 dB of the clip']`` (attacked modalities only)."""
        radii = []
        if self.attacks_visual:
            radii.append(f"εv={self.eps_visual:g} {visual_units}")
        if self.loudness_relative:
            radii.append(f"εa={self.audio_eps_db:g} dB of the clip")
        elif self.eps_audio > 0:
            radii.append(f"εa={self.eps_audio:g} {audio_units}")
        return radii

    def core(self) -> ThreatModel:
        """This threat model as a plain ``ThreatModel`` (without a subclass's extra fields)."""
        return ThreatModel(**{f.name: getattr(self, f.name) for f in dataclasses.fields(ThreatModel)})

    # ------------------------------------------------------------------------------------- the budget

    @property
    def eps(self) -> dict[str, float]:
        return {"visual": self.eps_visual, "audio": self.eps_audio}

    @property
    def loudness_relative(self) -> bool:
        """Whether the audio budget is relative to each clip's loudness (then per sample)."""
        return self.audio_eps_db is not None

    @property
    def attacks_visual(self) -> bool:
        return self.eps_visual > 0

    @property
    def attacks_audio(self) -> bool:
        return self.eps_audio > 0 or self.loudness_relative

    def attacks(self, modality: str) -> bool:
        return self.attacks_visual if modality == "visual" else self.attacks_audio

    def raw_units(self, modality: str, value: float, like: Tensor, std: Sequence[float] = IMAGENET_STD) -> Tensor:
        """A budget or step size of ``modality`` in raw input units, broadcastable against ``like``."""
        if modality == "visual" and self.units == "normalized":
            return normalized_eps_to_pixel(value, std).to(like).view(1, -1, *[1] * (like.dim() - 2))
        return torch.tensor(value, dtype=like.dtype, device=like.device)

    def radius(self, modality: str, clean: Tensor, std: Sequence[float] = IMAGENET_STD) -> Tensor:
        """``modality``'s budget in raw input units, broadcastable against ``clean`` (per sample for a
        loudness-relative audio budget)."""
        if modality == "audio" and self.loudness_relative:
            radius = audio_db_radius(clean, self.audio_eps_db, self.norm)
            return radius.view(-1, *[1] * (clean.dim() - 1)).to(clean)
        return self.raw_units(modality, self.eps[modality], clean, std)

    # ------------------------------------------------------------------------------------------ names

    @property
    def name(self) -> str:
        """A, V or A+V: the modalities with a budget."""
        if self.attacks_visual and self.attacks_audio:
            return "A+V"
        return "V" if self.attacks_visual else "A"

    def _audio_text(self) -> str:
        return f"{self.audio_eps_db:g}dB" if self.loudness_relative else f"{self.eps_audio:g}"

    @property
    def key(self) -> str:
        """The records' name of the budget: ``A@v0,a0.012`` for the default L∞ per-frame model; any other is
        named in it, e.g. ``A+V@l2:v1,a0.5,j1``, ``A@v0,a-30dB``, ``V@v0.012,a0,shared``, ``A@v0,a0.012,shift0.5s``."""
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
        """The threat model apart from the radii, in words ('' for the default L∞ per-frame budget)."""
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
        audio = f"{self.audio_eps_db:g} dB" if self.loudness_relative else f"{self.eps_audio:g}"
        radii = []
        if self.attacks_visual:
            radii.append(f"εv={self.eps_visual:g}")
        if self.attacks_audio:
            radii.append(f"εa={audio}")
        text = f"{self.name} ({', '.join(radii)})" if radii else self.name
        return f"{text} [{self.threat}]" if self.threat else text

    def fields(self) -> dict[str, Any]:
        """The threat model's fields for a results file (radii apart)."""
        return {"norm": self.norm, "joint_eps": self.joint_eps, "audio_eps_db": self.audio_eps_db,
                "temporal": self.temporal, "max_shift": self.max_shift}

    def shifted(self: T, max_shift: float) -> T:
        """This threat model after the audio was shifted by up to ``max_shift`` seconds."""
        return dataclasses.replace(self, max_shift=max_shift)


def describe_units(fields: Mapping[str, Any]) -> str:
    """The units line of a results file's table: its ``eps_units``, ``norm``, ``joint_eps``, ``audio_eps_db`` and
    ``temporal`` fields in words."""
    if fields.get("norm", "linf") == "l2":
        text = (f"L2 budgets: visual over the whole clip in {fields['eps_units']} units, audio over the waveform "
                f"in amplitude")
    else:
        text = f"visual ε in {fields['eps_units']} units, audio ε in waveform amplitude"
    if fields.get("audio_eps_db") is not None:
        text += f"; audio budget {fields['audio_eps_db']:g} dB relative to each clip's loudness"
    if fields.get("joint_eps") is not None:
        text += (f"; A+V budgets: one joint L2 ball ‖δv/εv‖² + ‖δa/εa‖² ≤ {fields['joint_eps']:g}², the pair being "
                 f"the units")
    return text


# ------------------------------------------------------------------------------------- the flags


@dataclass(frozen=True)
class ThreatSettings:
    """The threat model a run asks for on the command line (``add_threat_flags``), apart from the radii: one
    ``ThreatModel`` per protocol budget and ``--temporal`` mode (``apply``), the misalignment grid (``shifts``)
    and the (ε_v, ε_a) map's axis (``map_values``)."""

    norm: str = "linf"
    units: str = "normalized"
    joint_eps: float | None = None
    audio_eps_db: float | None = None
    temporal: tuple[str, ...] = ("frame",)
    max_shift: float | None = None
    shift_steps: int = 9
    eps_grid2d: tuple[float, ...] | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ThreatSettings:
        """The settings of parsed flags; a namespace without some of them (an older run's) gets the defaults."""
        norm = getattr(args, "norm", "linf")
        grid2d = getattr(args, "eps_grid2d", None)
        units = getattr(args, "eps_units", None) or ("pixel" if norm == "l2" else "normalized")
        return cls(norm=norm, units=units, joint_eps=getattr(args, "joint_eps", None),
                   audio_eps_db=getattr(args, "audio_eps_db", None),
                   temporal=tuple(getattr(args, "temporal", None) or ("frame",)),
                   max_shift=getattr(args, "max_shift", None), shift_steps=getattr(args, "shift_steps", 9),
                   eps_grid2d=None if grid2d is None else tuple(grid2d))

    def apply(self, budget: T, temporal: str) -> T:
        """``budget`` (radii only) under these settings, its visual part per ``temporal``: the joint ball for
        budgets on both modalities, the dB audio budget in place of an audio radius."""
        both = budget.eps_visual > 0 and budget.eps_audio > 0
        db = self.audio_eps_db if budget.eps_audio > 0 else None
        return dataclasses.replace(budget, norm=self.norm, units=self.units,
                                   joint_eps=self.joint_eps if both else None, audio_eps_db=db,
                                   eps_audio=0.0 if db is not None else budget.eps_audio,
                                   temporal=temporal if budget.eps_visual > 0 else "frame")

    def expand(self, budget: T) -> list[T]:
        """``budget`` once per --temporal mode when it attacks the frames, else once."""
        modes = self.temporal if budget.eps_visual > 0 else self.temporal[:1]
        return [self.apply(budget, mode) for mode in modes]

    def map_values(self) -> list[float]:
        """The (ε_v, ε_a) map's axis: the --eps_grid2d values with 0, sorted, without repeats."""
        return sorted({0.0, *(self.eps_grid2d or ())})

    def shifts(self) -> list[float]:
        """The misalignment grid in seconds: ``shift_steps`` values evenly spaced in [-max_shift, max_shift]."""
        if self.max_shift is None:
            return []
        if self.shift_steps == 1:
            return [0.0]
        return [round(float(s), 9) for s in np.linspace(-self.max_shift, self.max_shift, self.shift_steps)]

    def fields(self) -> dict[str, Any]:
        """The settings for a results file."""
        return {"norm": self.norm, "joint_eps": self.joint_eps, "audio_eps_db": self.audio_eps_db,
                "temporal": list(self.temporal)}


def add_threat_flags(group: Any, positive_float: Callable[[str], float],
                     non_negative_float: Callable[[str], float], positive_int: Callable[[str], int]) -> None:
    """The threat-model flags, on an argparse group (the type converters are the parser's)."""
    group.add_argument("--norm", choices=list(NORMS), default="linf",
                       help="threat model: per-modality L-inf balls (the paper's) or L2 balls (visual over the whole "
                            "clip in [0, 1] pixels, audio over the waveform)")
    group.add_argument("--eps_units", choices=list(EPS_UNITS), default=None,
                       help="visual budget units: ImageNet-normalised (the paper's; eps*std_c in pixels) "
                            "or [0, 1] pixels (default: normalized with --norm linf, pixel with --norm l2, the only "
                            "units of L2); the audio budget is always in waveform amplitude")
    group.add_argument("--joint_eps", type=positive_float, default=None, metavar="J",
                       help="--norm l2: one joint ball over both modalities for the A+V budgets, "
                            "||d_v/eps_v||^2 + ||d_a/eps_a||^2 <= J^2 (the budget pairs are the units); the attack "
                            "chooses the split, which is reported")
    group.add_argument("--audio_eps_db", type=float, default=None, metavar="D",
                       help="loudness-relative audio budget (D < 0 dB) replacing the audio eps of every budget that "
                            "attacks audio: L-inf max|x|*10^(D/20), L2 ||x||_2*10^(D/20) (SNR -D dB)")
    group.add_argument("--temporal", nargs="+", choices=list(TEMPORAL), default=["frame"],
                       help="visual perturbation per frame, or one shared by all frames of a clip (needs "
                            "--num_frames > 1); both: evaluated side by side as separate budgets")
    group.add_argument("--eps_grid2d", type=non_negative_float, nargs="+", default=None, metavar="EPS",
                       help="the (eps_v, eps_a) map: every pair of these values (0 added) under the first "
                            "--attack_type; writes eps_map.json and eps_map.png")
    group.add_argument("--max_shift", type=positive_float, default=None, metavar="SECONDS",
                       help="misalignment attacks (shift, shift+<attack>): shift the audio window against the "
                            "frames by up to this many seconds (read from the wav, no wrap-around)")
    group.add_argument("--shift_steps", type=positive_int, default=9,
                       help="shifts of the misalignment grid, evenly spaced in [-max_shift, +max_shift]")


def check_threat_flags(args: argparse.Namespace, error: Callable[[str], Any],
                       joint_ball_attacks: Sequence[str] = ()) -> None:
    """Resolve --eps_units and check that the threat-model flags fit together and with the attacks:
    ``error(message)`` for the first that does not. ``joint_ball_attacks``: the attacks of --attack_type that
    have no joint-ball version."""
    if args.eps_units is None:
        args.eps_units = "pixel" if args.norm == "l2" else "normalized"
    elif args.norm == "l2" and args.eps_units == "normalized":
        error("--eps_units normalized is not defined for --norm l2 (the L2 radius is in [0, 1] pixels)")
    if args.joint_eps is not None:
        if args.norm != "l2":
            error("--joint_eps needs --norm l2")
        if args.audio_eps_db is not None:
            error("--joint_eps cannot be combined with --audio_eps_db (the joint ball's audio unit is eps_a)")
        if args.epsilons and not any(ev > 0 and ea > 0 for ev, ea in args.epsilons):
            error("--joint_eps applies to A+V budgets: give an --epsilons pair with both values > 0")
        if joint_ball_attacks:
            error(f"--joint_eps: Square has no joint-ball version, so --attack_type {' '.join(joint_ball_attacks)} "
                  f"cannot run under it (use apgd / apgd-t / pgd)")
    if args.audio_eps_db is not None and not args.audio_eps_db < 0:
        error(f"--audio_eps_db must be < 0 dB (relative to the clip's loudness), got {args.audio_eps_db:g}")
    if args.audio_eps_db is not None and getattr(args, "attack_alpha", None) is not None:
        error("--attack_alpha with --audio_eps_db: the audio step is a fixed share of each clip's own budget, so the "
              "step would apply to vision only; drop --attack_alpha (or give a fixed audio budget)")
    args.temporal = list(dict.fromkeys(args.temporal))
    if "shared" in args.temporal and getattr(args, "num_frames", 1) < 2:
        error("--temporal shared needs --num_frames > 1 (one frame has nothing to share)")
    if args.eps_grid2d is not None:
        if args.audio_eps_db is not None:
            error("--eps_grid2d cannot be combined with --audio_eps_db (the map's audio axis is eps_a)")
        if not any(eps > 0 for eps in args.eps_grid2d):
            error("--eps_grid2d needs a value > 0")
