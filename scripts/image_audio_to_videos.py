"""Turn still images with their sound (Flickr-SoundNet's test release: frames/<id>.jpg + audio/<id>.wav) into
videos that scripts/preprocess.py takes, through PyAV only (no ffmpeg binary).

    python scripts/image_audio_to_videos.py --frames FRAMES --audio AUDIO --out VIDEOS --class_name CLASS [--fps 8]

Every FRAMES/<id>.jpg (or .png) with an AUDIO/<id>.wav becomes VIDEOS/CLASS/<id>.mp4: the picture held for the
whole sound (h264, the picture cropped to an even size as yuv420p needs) and the sound as mono AAC at the wav's
own rate. A picture without its wav, or the reverse, is listed and left out; an unreadable file is an error naming
it. Existing videos are kept (delete them to convert again).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
from PIL import Image, UnidentifiedImageError  # noqa: E402

from dataset.generators.synthetic import encode_mp4  # noqa: E402
from utils.cli import OneLineParser, fail  # noqa: E402
from utils.fileio import atomic_path  # noqa: E402

PICTURES = (".jpg", ".jpeg", ".png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="image_audio_to_videos.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", required=True, type=Path, help="folder of <id>.jpg (or .png) pictures")
    parser.add_argument("--audio", required=True, type=Path, help="folder of <id>.wav sounds")
    parser.add_argument("--out", required=True, type=Path, help="videos root: <out>/<class_name>/<id>.mp4")
    parser.add_argument("--class_name", required=True,
                        help="class folder for the videos (one of your model's categories; a benchmark without "
                             "labels scores the maps only)")
    parser.add_argument("--fps", type=int, default=8, help="frame rate of the videos")
    args = parser.parse_args(argv)
    for flag in ("frames", "audio"):
        if not getattr(args, flag).is_dir():
            parser.error(f"--{flag}: no such directory: {getattr(args, flag)}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder")
    if args.fps < 1:
        parser.error(f"--fps must be at least 1, got {args.fps}")
    if not args.class_name or "/" in args.class_name or "," in args.class_name:
        parser.error(f"--class_name {args.class_name!r}: give a plain folder name (no '/' or ',')")
    return args


def load_picture(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            picture = np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError) as err:
        fail(f"{path}: cannot read the picture ({err})")
    height, width = picture.shape[0] // 2 * 2, picture.shape[1] // 2 * 2
    if height < 2 or width < 2:
        fail(f"{path}: picture too small ({picture.shape[1]} x {picture.shape[0]})")
    return np.ascontiguousarray(picture[:height, :width])


def load_sound(path: Path) -> tuple[np.ndarray, int]:
    try:
        wave, rate = sf.read(path, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        fail(f"{path}: cannot read the sound ({err})")
    if not len(wave):
        fail(f"{path}: no samples")
    return np.clip(wave.mean(axis=1), -1, 1), rate


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pictures = {p.stem: p for p in sorted(args.frames.iterdir()) if p.suffix.lower() in PICTURES}
    sounds = {p.stem: p for p in sorted(args.audio.iterdir()) if p.suffix.lower() == ".wav"}
    unpaired = [f"{i}: picture without sound" for i in sorted(set(pictures) - set(sounds))]
    unpaired += [f"{i}: sound without picture" for i in sorted(set(sounds) - set(pictures))]
    if unpaired:
        print(f"warning: {len(unpaired)} id(s) left out: {'; '.join(unpaired[:10])}"
              + (f"; and {len(unpaired) - 10} more" if len(unpaired) > 10 else ""), file=sys.stderr)
    out = args.out / args.class_name
    out.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    for vid in sorted(set(pictures) & set(sounds)):
        target = out / f"{vid}.mp4"
        if target.exists():
            kept += 1
            continue
        picture = load_picture(pictures[vid])
        wave, rate = load_sound(sounds[vid])
        frames = np.repeat(picture[None], max(1, math.ceil(len(wave) / rate * args.fps)), axis=0)
        with atomic_path(target, suffix=".mp4") as tmp:
            encode_mp4(tmp, frames, wave, args.fps, rate)
        written += 1
    print(f"wrote {written} video(s) into {out}, kept {kept} already there")
    return 0


if __name__ == "__main__":
    sys.exit(main())
