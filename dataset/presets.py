"""Per-dataset presets: categories, data root and the paper's schedule for MUSIC, AVE and Kinetics-Sounds.

``--dataset NAME`` fills whatever the user did not give explicitly: categories and cls_num, the
data root (flag ``--data_root``, else the dataset's environment variable, else ``data/<name>``) and
from it the index files and the audio / frame folders. The embedded ``synthetic`` dataset reads its
categories from ``<root>/categories.txt``, written by ``scripts/make_synthetic.py``; ``custom`` (your own
data) reads them from there too or, without that file, from the class folders under ``<root>/audio``.
"""
from __future__ import annotations

import os
import sys
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
    folder_categories: bool = False  # without categories.txt, the sorted class folders under <root>/audio

    def default_root(self) -> Path:
        env = os.environ.get(self.root_env)
        return Path(env) if env else Path("data") / self.name


PRESETS: dict[str, DatasetPreset] = {
    "MUSIC": DatasetPreset("MUSIC", "MUSIC_ROOT", MUSIC_CATEGORIES, 100, (30, 60, 90), (6e-6, 1e-6), 0.5),
    "AVE": DatasetPreset("AVE", "AVE_ROOT", AVE_CATEGORIES, 30, (10, 20), (2e-6, 7e-7), 0.5),
    "Kinetics": DatasetPreset("Kinetics", "KINETICS_ROOT", KINETICS_SOUNDS_CATEGORIES, 30, (10, 20),
                              (2e-6, 5.8e-7), 0.6),
    "synthetic": DatasetPreset("synthetic", "SYNTHETIC_ROOT", [], 30, (20, 25)),
    "custom": DatasetPreset("custom", "CUSTOM_ROOT", [], 30, (20, 25), folder_categories=True),
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
    if not names:
        raise ValueError(f"{path}: no class names (one per line)")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: duplicate class names")
    return names


def root_categories(root: str | os.PathLike, folder_categories: bool) -> list[str]:
    """The class names of a dataset root: ``root/categories.txt``; without it, when ``folder_categories``,
    the sorted names of the class folders under ``root/audio`` (a note on stderr says so). With both, a class
    folder that the file does not name is an error (its clips would have no label)."""
    root = Path(root)
    listing = root / CATEGORIES_FILE
    if not folder_categories:
        return read_categories_file(listing)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such dataset folder (--data_root)")
    audio = root / "audio"
    # hidden folders (.ipynb_checkpoints, ...) are no classes, as for preprocess.py and create_index.py
    subfolders = [p for p in audio.iterdir() if p.is_dir()] if audio.is_dir() else []
    folders = sorted(p.name for p in subfolders if not p.name.startswith("."))
    if listing.is_file():
        names = read_categories_file(listing)
        unknown = [name for name in folders if name not in names]
        if unknown:
            raise ValueError(f"{audio}: class folder(s) {', '.join(unknown)} not listed in {listing}")
        return names
    if not folders:
        raise FileNotFoundError(f"{root}: neither {CATEGORIES_FILE} nor class folders under {audio} "
                                "(run scripts/preprocess.py into it first)")
    print(f"note: {listing} not found; using the {len(folders)} class folders under {audio}, sorted, as the "
          f"labels 0..{len(folders) - 1}: {', '.join(folders)}", file=sys.stderr)
    return folders
