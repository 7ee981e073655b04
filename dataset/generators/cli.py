"""Command-line flags shared by the dataset generators' scripts (scripts/make_synthetic.py, make_shapes.py)."""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import Any

from dataset.generators.synthetic import ConfigError
from utils.cli import OneLineParser


def generator_parser(description: str, defaults: Any) -> argparse.ArgumentParser:
    """A parser with ``--out``, the clip fields every generator config has (defaults from ``defaults``, a config
    instance) and ``--workers``; the script adds its own fields."""
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder (videos/, categories.txt, boxes.json)")
    parser.add_argument("--num_classes", type=int, default=defaults.num_classes)
    parser.add_argument("--per_class", type=int, default=defaults.per_class, help="videos per class")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--size", type=int, default=defaults.size, help="frame height and width in pixels")
    parser.add_argument("--duration", type=float, default=defaults.duration, help="clip length in seconds")
    parser.add_argument("--fps", type=int, default=defaults.fps, help="frame rate of the videos")
    parser.add_argument("--audio_rate", type=int, default=defaults.audio_rate, help="audio sample rate in Hz")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    return parser


def config_params(parser: argparse.ArgumentParser, args: argparse.Namespace, config_type: type) -> dict[str, Any]:
    """The config fields of ``args`` (lists made tuples), validated by building ``config_type`` and checking
    ``--workers``; a bad value ends in a one-line argparse error naming its flag."""
    params = {f.name: getattr(args, f.name) for f in dataclasses.fields(config_type)}
    params = {name: tuple(value) if isinstance(value, list) else value for name, value in params.items()}
    try:
        config_type(**params)
        if args.workers < 1:
            raise ConfigError("workers", f"must be >= 1, got {args.workers}")
    except ConfigError as err:
        parser.error(f"argument --{err.field}: {err}")
    return params
