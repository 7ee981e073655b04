"""Print the paper-style robustness table of several evaluated runs, as Markdown and CSV.

    python scripts/summarize.py RUN_DIR [RUN_DIR ...] [--csv table.csv] [--markdown table.md] [--findings]
                                [--eps_maps maps.png]

Rows are models (each run's fusion head or defense label, or its folder name when two runs share one);
columns are clean accuracy and the A / V / A+V attacks of each attack type (AA: the AutoAttack cascade),
each with its 95 % Wilson interval, and the gradient-masking checks' verdict. Each RUN_DIR must hold the
attack_results.json that ``main_attack.py --mode eval`` (or main_defense.py) writes; with its
per_sample.npz, every finding comparing two models gets an exact McNemar test on the shared samples.
``--eps_maps`` draws the (ε_v, ε_a) maps of the runs (their eps_map.json, from --eps_grid2d) side by side.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
from collections import Counter

from evaluation.reporting.plots import plot_eps_maps
from evaluation.reporting.tables import findings, summary_table, to_csv, to_markdown
from evaluation.robustness.records import load_records
from utils.fileio import write_text_atomic


def load_runs(run_dirs: list[Path]) -> list[tuple[str, dict]]:
    runs = []
    for run_dir in run_dirs:
        path = run_dir / "attack_results.json"
        if not path.is_file():
            sys.exit(f"error: {path} not found (run main_attack.py --mode eval for this run first)")
        try:
            runs.append(json.loads(path.read_text()))
        except json.JSONDecodeError as err:
            sys.exit(f"error: {path}: not valid JSON ({err})")
    heads = Counter(r.get("label") or r["arch_classifier"] for r in runs)
    return [((r.get("label") or r["arch_classifier"]) if heads[r.get("label") or r["arch_classifier"]] == 1
             else d.name, r) for d, r in zip(run_dirs, runs)]


def load_eps_maps(run_dirs: list[Path], names: list[str]) -> list[dict]:
    """Each run's eps_map.json, labelled with its row name in the table."""
    maps = []
    for run_dir, name in zip(run_dirs, names):
        path = run_dir / "eps_map.json"
        if not path.is_file():
            sys.exit(f"error: {path} not found (evaluate this run with --eps_grid2d for its map)")
        try:
            maps.append({**json.loads(path.read_text()), "label": name})
        except json.JSONDecodeError as err:
            sys.exit(f"error: {path}: not valid JSON ({err})")
    return maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dirs", nargs="+", type=Path, help="run folders with attack_results.json")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--findings", action="store_true",
                        help="also answer the paper's questions: does audio-visual beat unimodal, clean and attacked?")
    parser.add_argument("--eps_maps", type=Path, default=None, metavar="OUT.png",
                        help="also draw the runs' (eps_v, eps_a) maps (--eps_grid2d) side by side into this PNG")
    args = parser.parse_args()
    runs = load_runs(args.run_dirs)
    header, rows = summary_table(runs)
    markdown, csv_text = to_markdown(header, rows), to_csv(header, rows)
    print(markdown)
    print(csv_text)
    if args.findings:
        records = {name: load_records(d / "per_sample.npz") for (name, _), d in zip(runs, args.run_dirs)
                   if (d / "per_sample.npz").is_file()}
        print("\n".join(findings(runs, records)))
    if args.csv:
        write_text_atomic(args.csv, csv_text)
    if args.markdown:
        write_text_atomic(args.markdown, markdown)
    if args.eps_maps:
        plot_eps_maps(load_eps_maps(args.run_dirs, [name for name, _ in runs]), args.eps_maps)
        print(f"wrote {args.eps_maps}")


if __name__ == "__main__":
    main()
