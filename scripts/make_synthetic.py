"""Generate the embedded synthetic audio-visual dataset (see dataset/generators/synthetic.py).

    python scripts/make_synthetic.py --out DIR [--num_classes 6] [--per_class 40] [--seed 0] [--size 112]
    python scripts/make_synthetic.py --out DIR --names_from MUSIC   (11 classes named like MUSIC's: a stand-in
                                                                     for the MUSIC scripts)
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from dataset.generators.cli import config_params, generator_parser  # noqa: E402
from dataset.generators.synthetic import SynthConfig, generate, rename_classes  # noqa: E402
from dataset.presets import PRESETS  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    defaults = SynthConfig()
    parser = generator_parser(__doc__, defaults)
    parser.add_argument("--names_from", choices=[n for n, p in PRESETS.items() if p.categories], default=None,
                        help="name the classes after this dataset's categories (sets --num_classes)")
    parser.add_argument("--p_distractor", type=float, default=defaults.p_distractor,
                        help="probability of a silent object of another class in the picture")
    parser.add_argument("--p_occlusion", type=float, default=defaults.p_occlusion,
                        help="probability that a patch hides 50-70%% of the sounding object")
    parser.add_argument("--p_noise_burst", type=float, default=defaults.p_noise_burst,
                        help="probability of loud broadband noise over most of the clip")
    parser.add_argument("--p_audio_distractor", type=float, default=defaults.p_audio_distractor,
                        help="probability of an off-screen sound of another class")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.names_from:
        args.num_classes = len(PRESETS[args.names_from].categories)
    params = config_params(parser, args, SynthConfig)
    boxes = generate(args.out, workers=args.workers, **params)
    if args.names_from:
        boxes = rename_classes(args.out, PRESETS[args.names_from].categories)
    print(f"wrote {len(boxes['videos'])} videos of {len(boxes['classes'])} classes to {args.out}")


if __name__ == "__main__":
    main()
