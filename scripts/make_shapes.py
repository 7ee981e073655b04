"""Generate the second generated dataset, "shapes" (see dataset/generators/shapes.py): rotated shaded polygons
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

from dataset.generators.cli import config_params, generator_parser  # noqa: E402
from dataset.generators.shapes import ShapesConfig, generate_shapes  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults = ShapesConfig()
    parser = generator_parser(__doc__, defaults)
    parser.add_argument("--object_scale", type=float, nargs=2, default=list(defaults.object_scale),
                        metavar=("LO", "HI"), help="object side as a fraction of the frame side, uniform in [LO, HI]")
    parser.add_argument("--centre_bias", type=float, default=defaults.centre_bias,
                        help="probability that the object sits near the frame centre instead of anywhere")
    parser.add_argument("--snr_db", type=float, nargs=2, default=list(defaults.snr_db), metavar=("LO", "HI"),
                        help="signal-to-noise ratio of the sound events in dB, uniform in [LO, HI]")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    params = config_params(parser, args, ShapesConfig)
    boxes = generate_shapes(args.out, workers=args.workers, **params)
    print(f"wrote {len(boxes['videos'])} videos of {len(boxes['classes'])} classes to {args.out}")


if __name__ == "__main__":
    main()
