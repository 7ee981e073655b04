"""Per-dataset presets: categories, data root and the paper's schedule for MUSIC, AVE and Kinetics-Sounds.

``--dataset NAME`` fills whatever the user did not give explicitly: categories and cls_num, the
data root (flag ``--data_root``, else the dataset's environment variable, else ``data/<name>``) and
from it the index files and the audio / frame folders. The embedded ``synthetic`` dataset reads its
categories from ``<root>/categories.txt``, written by ``scripts/make_synthetic.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

MUSIC_CATEGORIES = [
    "flute", "acoustic_guitar", "accordion", "xylophone", "erhu", "tuba",
    "saxophone", "cello", "violin", "clarinet", "trumpet",
]

# The 28 AVE events with folder-safe names (lower case, words joined by "_"), in the order of the
# dataset's own Annotations.txt class list.
AVE_CATEGORIES = [
    "church_bell", "male_speech_man_speaking", "bark", "fixed_wing_aircraft_airplane",
    "race_car_auto_racing", "female_speech_woman_speaking", "helicopter", "violin_fiddle",
    "flute", "ukulele", "frying_food", "truck", "shofar", "motorcycle", "acoustic_guitar",
    "train_horn", "clock", "banjo", "goat", "baby_cry_infant_cry", "bus", "chainsaw", "cat",
    "horse", "toilet_flush", "rodents_rats_mouse", "accordion", "mandolin",
]

KINETICS_SOUNDS_CATEGORIES = [
    "laughing", "playing_clarinet", "singing", "playing_harmonica", "playing_keyboard",
    "playing_xylophone", "playing_bass_guitar", "tapping_guitar", "playing_drums", "playing_piano",
    "ripping_paper", "playing_saxophone", "tickling", "playing_trumpet", "tapping_pen",
    "playing_organ", "tap_dancing", "playing_accordion", "blowing_nose", "shuffling_cards",
    "playing_guitar", "playing_trombone", "playing_bagpipes", "shoveling_snow", "bowling",
    "playing_violin", "chopping_wood",
]

CATEGORIES_FILE = "categories.txt"


@dataclass(frozen=True)
class DatasetPreset:
    name: str
    root_env: str
    categories: list[str] = field(default_factory=list)  # empty: read <root>/categories.txt
    num_epoch: int = 30
    lr_steps: tuple[int, ...] = (10, 20)
    ista_steps: tuple[float, float] = (6e-6, 1e-6)  # the released ISTA step sizes, visual and audio
    bank_mix: float = 0.5

    def default_root(self) -> Path:
        env = os.environ.get(self.root_env)
        return Path(env) if env else Path("data") / self.name


PRESETS: dict[str, DatasetPreset] = {
    "MUSIC": DatasetPreset("MUSIC", "MUSIC_ROOT", MUSIC_CATEGORIES, 100, (30, 60, 90), (6e-6, 1e-6), 0.5),
    "AVE": DatasetPreset("AVE", "AVE_ROOT", AVE_CATEGORIES, 30, (10, 20), (2e-6, 7e-7), 0.5),
    "Kinetics": DatasetPreset("Kinetics", "KINETICS_ROOT", KINETICS_SOUNDS_CATEGORIES, 30, (10, 20),
                              (2e-6, 5.8e-7), 0.6),
    "synthetic": DatasetPreset("synthetic", "SYNTHETIC_ROOT", [], 30, (20, 25)),
}


def read_categories_file(path: str | os.PathLike) -> list[str]:
    """Class names, one per line, in label order (blank lines and '#' comments ignored)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: categories file not found (make_synthetic.py / create_index.py write it; "
            "or pass --categories)")
    names = [line.strip() for line in path.read_text().splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names
