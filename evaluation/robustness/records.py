"""Per-sample records of an evaluation, indexed by sample id, and the robust accuracy of any set of attacks.

One record per ``RecordKey`` (attack, budget, variant; within a cascade also the component) holds, for every
test sample, whether the model was still correct on the adversarial input, the cross-entropy there and the
perturbation's size:

* ``correct``: int8, 1 = correct, 0 = fooled (or wrong on the clean input and not attacked),
  -1 = not attacked because an earlier attack of its cascade already fooled it;
* ``loss``: cross-entropy of the adversarial input (NaN where not attacked);
* ``linf_v``: the visual perturbation's L∞ in 1/255 pixel steps; ``psnr_v``: its PSNR in dB;
* ``snr_a``: the audio perturbation's SNR in dB, 10·log10(‖x‖² / ‖δ‖²) (NaN where not attacked,
  +inf for an untouched modality);
* ``l2_v`` / ``l2_a``: the L2 norm of the visual perturbation over the whole clip (in [0, 1] pixels) and of
  the audio perturbation over the waveform;
* ``split_v`` (joint L2 budgets only): the share of the joint budget spent on vision,
  ‖δv/εv‖² / (‖δv/εv‖² + ‖δa/εa‖²) (``attacks.joint_split``);
* ``shift_s`` (misalignment attacks only): the audio shift in seconds the attack chose.

A sample is robust under a set of attacks when it is correct on the clean input and correct (1) under
every attack of the set: a per-sample worst case, never a minimum of accuracies. ``per_sample.npz`` stores
the records so any ensemble can be recombined afterwards (``load_records``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from utils.distributed import DistInfo, all_gather_list
from utils.fileio import atomic_path

FIELDS = ("correct", "loss", "linf_v", "psnr_v", "snr_a", "l2_v", "l2_a", "split_v", "shift_s")
KEY_SEPARATOR = "|"
COMPONENT_SEPARATOR = "/"
_KEY_PATTERN = re.compile(r"(?P<attack>[^|/]+)(?:/(?P<component>[^|/]+))?\|(?P<budget>[^|]+)\|(?P<variant>[^|]+)")


@dataclass(frozen=True)
class RecordKey:
    """Names one per-sample record: the ``attack`` (for a cascade, the cascade and its ``component``), the
    ``budget`` (``Budget.key``, or a corruption's severity) and the ``variant`` (a defense's adaptive attack,
    a localization objective, ...). ``name`` is its one form in files, ``parse`` reads it back."""

    attack: str
    budget: str
    variant: str
    component: str | None = None

    def __post_init__(self) -> None:
        names = KEY_SEPARATOR + COMPONENT_SEPARATOR
        parts = {"attack": (self.attack, names), "budget": (self.budget, KEY_SEPARATOR),
                 "variant": (self.variant, KEY_SEPARATOR)}
        if self.component is not None:
            parts["component"] = (self.component, names)
        for part, (value, forbidden) in parts.items():
            if not value or any(c in value for c in forbidden):
                raise ValueError(f"record key {part} {value!r}: must be non-empty and free of {forbidden!r}")

    @property
    def attack_name(self) -> str:
        """The attack that made the record as reports name it: ``<cascade>/<component>`` within a cascade."""
        return self.attack if self.component is None else f"{self.attack}{COMPONENT_SEPARATOR}{self.component}"

    @property
    def name(self) -> str:
        """The key in ``per_sample.npz``: ``attack|budget|variant``, the attack as ``attack_name``."""
        return KEY_SEPARATOR.join((self.attack_name, self.budget, self.variant))

    @classmethod
    def parse(cls, text: str) -> RecordKey:
        """The key whose ``name`` is ``text``."""
        match = _KEY_PATTERN.fullmatch(text)
        if match is None:
            raise ValueError(f"record key {text!r}: expected 'attack|budget|variant' or "
                             "'cascade/component|budget|variant'")
        return cls(**match.groupdict())


def perturbation_sizes(clean_frames: Tensor | None, adv_frames: Tensor | None, clean_audio: Tensor | None,
                       adv_audio: Tensor | None) -> dict[str, Tensor]:
    """Per-sample ``linf_v`` (1/255 steps), ``psnr_v`` (dB, peak 1), ``l2_v`` (pixels), ``snr_a`` (dB) and
    ``l2_a`` (amplitude) of a perturbation; a modality an attack left untouched (it returns the very tensor it
    was given) gets no entry."""
    sizes: dict[str, Tensor] = {}
    if clean_frames is not None and adv_frames is not None and adv_frames is not clean_frames:
        delta = (adv_frames.detach().float() - clean_frames.float()).flatten(1)
        sizes["linf_v"] = delta.abs().amax(dim=1) * 255
        mse = delta.pow(2).mean(dim=1)
        sizes["l2_v"] = delta.pow(2).sum(dim=1).sqrt()
        sizes["psnr_v"] = torch.where(mse > 0, -10 * torch.log10(mse.clamp_min(1e-30)), torch.full_like(mse, math.inf))
    if clean_audio is not None and adv_audio is not None and adv_audio is not clean_audio:
        delta = (adv_audio.detach().float() - clean_audio.float()).flatten(1)
        noise = delta.pow(2).sum(dim=1)
        signal = clean_audio.float().flatten(1).pow(2).sum(dim=1)
        sizes["snr_a"] = torch.where(noise > 0, 10 * torch.log10(signal.clamp_min(1e-30) / noise.clamp_min(1e-30)),
                                     torch.full_like(noise, math.inf))
        sizes["l2_a"] = noise.sqrt()
    return sizes


@dataclass
class Records:
    """Per-sample columns of one evaluation: ``ids`` / ``index`` / ``labels`` / ``clean_correct`` and, per key
    and field, one value per sample (NumPy arrays once ``finish``-ed, Python lists while collecting)."""

    ids: list = field(default_factory=list)
    index: list = field(default_factory=list)
    labels: list = field(default_factory=list)
    clean_correct: list = field(default_factory=list)
    columns: dict[RecordKey, dict[str, list]] = field(default_factory=dict)  # key -> field -> values
    extra: dict[str, list] = field(default_factory=dict)  # per-sample columns of the caller (e.g. clean metrics)
    _rows: dict[RecordKey, int] = field(default_factory=dict, repr=False)  # samples recorded per key

    def add_samples(self, ids: Sequence[str], index: Tensor, labels: Tensor, clean_correct: Tensor) -> None:
        self.ids += list(ids)
        self.index += index.tolist()
        self.labels += labels.tolist()
        self.clean_correct += clean_correct.tolist()

    def add(self, key: RecordKey, values: dict[str, Tensor | Sequence], batch_size: int) -> None:
        """Append one batch of ``batch_size`` per-sample ``values`` (fields of ``FIELDS`` or any per-sample
        metric); a field missing from this batch, or first seen in it, is NaN for the samples without it."""
        columns = self.columns.setdefault(key, {})
        before = self._rows.get(key, 0)
        for field_name, value in values.items():
            column = columns.setdefault(field_name, [math.nan] * before)
            column.extend(value.tolist() if isinstance(value, Tensor) else list(value))
        for field_name, column in columns.items():
            if field_name not in values:
                column.extend([math.nan] * batch_size)
        self._rows[key] = before + batch_size

    def add_extra(self, name: str, values: Tensor | Sequence) -> None:
        self.extra.setdefault(name, []).extend(values.tolist() if isinstance(values, Tensor) else list(values))

    def gather(self, info: DistInfo) -> None:
        """Every rank's samples on every rank, in dataset-index order, each sample once (a DistributedSampler
        pads the last batch with repeated samples).

        One collective whatever each rank recorded: every rank sends all its columns at once, and they are
        merged by key and field name, never by position. A field a rank did not record for a key (e.g. a cascade
        component that found no sample standing there) is NaN for that rank's samples; a column whose length is
        not the rank's sample count is an error naming the key, the field and the rank."""
        if info.enabled:
            parts = all_gather_list([self._payload()], info)
            self._merge(parts)
        order = sorted(range(len(self.index)), key=lambda i: self.index[i])
        keep, seen = [], set()
        for i in order:
            if self.index[i] not in seen:
                seen.add(self.index[i])
                keep.append(i)

        def pick(values: list) -> list:
            return [values[i] for i in keep]

        self.ids, self.index, self.labels = pick(self.ids), pick(self.index), pick(self.labels)
        self.clean_correct = pick(self.clean_correct)
        for columns in self.columns.values():
            for name in columns:
                columns[name] = pick(columns[name])
        for name in self.extra:
            self.extra[name] = pick(self.extra[name])
        self._rows = {key: len(self.ids) for key in self.columns}

    def _payload(self) -> dict:
        return {"ids": self.ids, "index": self.index, "labels": self.labels, "clean_correct": self.clean_correct,
                "columns": self.columns, "extra": self.extra}

    def _merge(self, parts: list[dict]) -> None:
        """The ranks' payloads (``_payload``) concatenated in rank order, columns matched by name."""
        for rank, part in enumerate(parts):
            size = len(part["ids"])
            for name in ("index", "labels", "clean_correct"):
                _check_length(part[name], size, f"'{name}'", rank)
            for key, columns in part["columns"].items():
                for field_name, values in columns.items():
                    _check_length(values, size, f"{key.name} field '{field_name}'", rank)
            for name, values in part["extra"].items():
                _check_length(values, size, f"extra column '{name}'", rank)
        keys = list(dict.fromkeys(key for part in parts for key in part["columns"]))
        columns: dict[RecordKey, dict[str, list]] = {}
        for key in keys:
            fields = list(dict.fromkeys(f for part in parts for f in part["columns"].get(key, {})))
            columns[key] = {f: [v for part in parts
                                for v in part["columns"].get(key, {}).get(f, [math.nan] * len(part["ids"]))]
                            for f in fields}
        extras = list(dict.fromkeys(name for part in parts for name in part["extra"]))
        self.extra = {name: [v for part in parts for v in part["extra"].get(name, [math.nan] * len(part["ids"]))]
                      for name in extras}
        self.columns = columns
        for name in ("ids", "index", "labels", "clean_correct"):
            setattr(self, name, [v for part in parts for v in part[name]])

    @property
    def num_samples(self) -> int:
        return len(self.ids)

    def column(self, key: RecordKey, name: str = "correct") -> np.ndarray:
        return np.asarray(self.columns[key][name])

    def keys(self) -> list[RecordKey]:
        return list(self.columns)

    def attack_keys(self, attack: str, budget_key: str) -> list[RecordKey]:
        """The keys of ``attack`` at ``budget_key`` in run order: every variant of a single attack, or every
        component of a cascade."""
        return [k for k in self.keys() if k.budget == budget_key and k.attack == attack]

    def correct_under(self, attack: str, budget_key: str) -> np.ndarray:
        """Per-sample bool behind one (attack, budget) figure: robust, i.e. correct on the clean input and never
        fooled, by any component of a cascade or any variant of a single attack (a clean-misclassified sample
        that an attack happens to leave correct is not robust)."""
        keys = self.attack_keys(attack, budget_key)
        if not keys:
            raise KeyError(f"no per-sample records of {attack} at {budget_key}")
        return self.robust(keys)

    def robust(self, keys: Iterable[RecordKey]) -> np.ndarray:
        """Per-sample bool: correct on the clean input and under every attack of ``keys``."""
        robust = np.asarray(self.clean_correct, dtype=bool)
        for key in keys:
            robust = robust & (self.column(key) == 1)
        return robust

    def save(self, path: str | os.PathLike) -> None:
        """``per_sample.npz``: ``ids``, ``index``, ``labels``, ``clean_correct`` and ``<key>/<field>`` arrays,
        keys written as their ``RecordKey.name``; extra columns as ``extra/<name>``."""
        arrays = {"ids": np.asarray(self.ids, dtype=str), "index": np.asarray(self.index, dtype=np.int64),
                  "labels": np.asarray(self.labels, dtype=np.int64),
                  "clean_correct": np.asarray(self.clean_correct, dtype=bool)}
        for key, columns in self.columns.items():
            for name, values in columns.items():
                dtype = np.int8 if name == "correct" else np.float32
                arrays[f"{key.name}/{name}"] = np.asarray(values, dtype=dtype)
        for name, values in self.extra.items():
            arrays[f"extra/{name}"] = np.asarray(values)
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)


def _check_length(values: list, size: int, what: str, rank: int) -> None:
    if len(values) != size:
        raise RuntimeError(f"per-sample records of rank {rank}: {what} has {len(values)} values for {size} samples")


def load_records(path: str | os.PathLike) -> Records:
    """The ``Records`` of a ``per_sample.npz`` (for recombining ensembles or comparing models per sample)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: per-sample records not found (run the evaluation first)")
    with np.load(path, allow_pickle=False) as data:
        records = Records(ids=data["ids"].tolist(), index=data["index"].tolist(), labels=data["labels"].tolist(),
                          clean_correct=data["clean_correct"].tolist())
        for name in data.files:
            if "/" not in name:
                continue
            key, column = name.rsplit("/", 1)
            if key == "extra":
                records.extra[column] = data[name].tolist()
                continue
            try:
                record_key = RecordKey.parse(key)
            except ValueError as error:
                raise ValueError(f"{path}: array {name!r}: {error}") from None
            records.columns.setdefault(record_key, {})[column] = data[name].tolist()
    return records
