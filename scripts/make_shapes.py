"""Generate the second generated dataset, "shapes" (see dataset/shapes_dataset.py): rotated shaded polygons
over fractal-noise backgrounds, short synthesised sound events at -12...20 dB SNR.

    python scripts/make_shapes.py --out DIR [--num_classes 10] [--per_class 60] [--seed 0] [--size 112]
        [--object_scale 0.31 0.62] [--centre_bias 0] [--snr_db -12 20]

The output (DIR/videos, categories.txt, boxes.json) goes through scripts/preprocess.py and
scripts/create_index.py like any folder of videos.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402

from dataset.shapes_dataset import ShapesConfig, ShapesConfigError, generate_shapes  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults = ShapesConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (videos/, categories.txt, boxes.json)")
    parser.add_argument("--num_classes", type=int, default=defaults.num_classes)
    parser.add_argument("--per_class", type=int, default=defaults.per_class, help="videos per class")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--size", type=int, default=defaults.size, help="frame height and width in pixels")
    parser.add_argument("--duration", type=float, default=defaults.duration, help="clip length in seconds")
    parser.add_argument("--fps", type=int, default=defaults.fps, help="frame rate of the videos")
    parser.add_argument("--audio_rate", type=int, default=defaults.audio_rate, help="audio sample rate in Hz")
    parser.add_argument("--object_scale", type=float, nargs=2, default=list(defaults.object_scale),
                        metavar=("LO", "HI"), help="object side as a fraction of the frame side, uniform in [LO, HI]")
    parser.add_argument("--centre_bias", type=float, default=defaults.centre_bias,
                        help="probability that the object sits near the frame centre instead of anywhere")
    parser.add_argument("--snr_db", type=float, nargs=2, default=list(defaults.snr_db), metavar=("LO", "HI"),
                        help="signal-to-noise ratio of the sound events in dB, uniform in [LO, HI]")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesConfig)}
    params["object_scale"], params["snr_db"] = tuple(params["object_scale"]), tuple(params["snr_db"])
    try:
        ShapesConfig(**params)
        if args.workers < 1:
            raise ShapesConfigError("workers", f"must be >= 1, got {args.workers}")
    except ShapesConfigError as err:
        parser.error(f"argument --{err.field}: {err}")
    boxes = generate_shapes(args.out, workers=args.workers, **params)
    print(f"wrote {len(boxes['videos'])} videos of {len(boxes['classes'])} classes to {args.out}")


if __name__ == "__main__":
    main()
