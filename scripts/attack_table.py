"""Print the table of attacks from the attack registry, or (--write README.md) replace the README's table between
its ``<!-- attack-table:start -->`` / ``<!-- attack-table:end -->`` markers with it; a test keeps the two equal.

    python scripts/attack_table.py --write README.md
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attacks import attack_table_markdown  # noqa: E402
from utils.fileio import write_text_atomic  # noqa: E402

BLOCK = re.compile(r"(<!-- attack-table:start -->\n).*?(<!-- attack-table:end -->)", re.S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, default=None, metavar="README.md",
                        help="replace the table between the markers of this file")
    args = parser.parse_args()
    table = attack_table_markdown()
    if args.write is None:
        print(table, end="")
        return
    text = args.write.read_text()
    if not BLOCK.search(text):
        sys.exit(f"error: {args.write}: no '<!-- attack-table:start -->' ... '<!-- attack-table:end -->' block")
    write_text_atomic(args.write, BLOCK.sub(lambda m: m.group(1) + table + m.group(2), text))
    print(f"wrote the attack table into {args.write}")


if __name__ == "__main__":
    main()
