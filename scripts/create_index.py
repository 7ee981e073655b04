"""Write ROOT/{train,val,test}.csv (and ROOT/categories.txt if absent) from a preprocessed SoP root.

    python scripts/create_index.py --root ROOT [--split 0.6 0.2 0.2] [--seed 0] [--min_frames 1]

Only videos with both a wav and a complete frame folder are indexed; the split is stratified by class.
A class or video name with a comma or a line break is an error (the index CSV is unquoted), and so is a class
without a single complete video (an empty class folder, or a class categories.txt lists): it would be a label with
no data. Videos that have frames but no wav, or a wav but no frames, are listed (ROOT/unpaired.txt) and left out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset.index import DataError  # noqa: E402
from dataset.index_builder import (  # noqa: E402
    CATEGORIES_FILE,
    check_fractions,
    empty_classes,
    format_table,
    scan_root,
    stratified_split,
    unpaired_ids,
    write_categories,
    write_index,
)
from dataset.presets import read_categories_file  # noqa: E402
from utils.cli import OneLineParser  # noqa: E402
from utils.fileio import write_text_atomic  # noqa: E402

UNPAIRED_FILE = "unpaired.txt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(prog="create_index.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="folder holding audio/ and frames/")
    parser.add_argument("--split", type=float, nargs=3, default=[0.6, 0.2, 0.2], metavar=("TRAIN", "VAL", "TEST"),
                        help="fractions of each class for train, val and test (sum to 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class shuffle")
    parser.add_argument("--min_frames", type=int, default=1, help="leave out videos with fewer frames")
    args = parser.parse_args(argv)
    try:
        check_fractions(args.split)
    except ValueError as error:
        parser.error(f"--split: {error}")
    if args.min_frames < 1:
        parser.error(f"--min_frames must be at least 1, got {args.min_frames}")
    if not args.root.is_dir():
        parser.error(f"--root: no such directory: {args.root}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        entries = scan_root(args.root, args.min_frames)
    except (FileNotFoundError, DataError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if not entries:
        print(f"error: no complete videos under {args.root} (each needs audio/<class>/<id>.wav and "
              f"frames/<class>/<id>.mp4/ with at least {args.min_frames} frame(s))", file=sys.stderr)
        return 1
    categories = args.root / CATEGORIES_FILE
    try:
        listed = read_categories_file(categories) if categories.is_file() else []
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    empty = empty_classes(args.root, entries, listed)
    if empty:
        print(f"error: class(es) without a complete video (at least {args.min_frames} frame(s) and a wav) under "
              f"{args.root}: {', '.join(empty)}; add clips, or remove the folder (and its line in {categories.name})",
              file=sys.stderr)
        return 1
    unpaired = unpaired_ids(args.root)
    report = args.root / UNPAIRED_FILE
    report.unlink(missing_ok=True)
    if unpaired:
        write_text_atomic(report, "".join(f"{line}\n" for line in unpaired))
        shown = "; ".join(unpaired[:10]) + (f"; and {len(unpaired) - 10} more" if len(unpaired) > 10 else "")
        print(f"warning: {len(unpaired)} video(s) have frames or audio but not both and are left out of the index: "
              f"{shown} (all listed in {report})", file=sys.stderr)
    splits = stratified_split(entries, args.split, args.seed)
    write_index(args.root, splits)
    print(format_table(splits))
    print(f"wrote {', '.join(str(args.root / f'{name}.csv') for name in splits)}")
    if write_categories(args.root, [entry.cls for entry in entries]):
        print(f"wrote {categories}")
    else:
        missing = sorted({entry.cls for entry in entries} - set(listed))
        print(f"kept existing {categories}")
        if missing:
            print(f"warning: classes not listed in {categories}: {', '.join(missing)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
