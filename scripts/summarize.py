"""One study table over evaluations: evaluation folders, run folders or a whole ckpt/ tree.

    python scripts/summarize.py PATH [PATH ...] [--markdown t.md] [--csv t.csv] [--json t.json] [--findings]
                                [--eps_maps maps.png]

Every attack evaluation found under the paths (each RUN/evals/<name>/attack_results.json, or a folder holding
one) is a row, named after its model (fusion head or defense label; the run and evaluation folder when that is
ambiguous). Every column names its attack and threat model: the attack with its steps and loss, the norm, each
modality's radius with its units, and the budget (A, V, A+V); only evaluations under the same threat model share
a column. Accuracy in % with its 95 % Wilson interval. ``--findings`` answers the paper's questions (audio-visual
against unimodal, clean and attacked; each defense against its base) with exact McNemar tests on the samples both
evaluations share (their per_sample.npz). ``--eps_maps`` draws every (ε_v, ε_a) map found (eps_map.json, from
--eps_grid2d) side by side.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
from collections import Counter

from evaluation.reporting.plots import plot_eps_maps
from evaluation.reporting.study import Evaluation, findings, study_table, to_csv, to_json, to_markdown
from evaluation.robustness.records import load_records
from utils.cli import OneLineParser, fail
from utils.fileio import write_json_atomic, write_text_atomic

RESULTS = "attack_results.json"


def result_files(paths: list[Path], name: str) -> list[Path]:
    """``name`` in each path, or every ``name`` below it (sorted), each once."""
    found: dict[Path, None] = {}
    for path in paths:
        if not path.exists():
            fail(f"{path}: no such file or folder")
        if path.is_file():
            path = path.parent
        hits = [path / name] if (path / name).is_file() else sorted(path.rglob(name))
        if not hits:
            fail(f"{path}: no {name} in it or below it (evaluate a run first: main_attack.py --mode eval --run RUN)")
        for hit in hits:
            found.setdefault(hit.resolve())
    return list(found)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        fail(f"{path}: cannot read it as JSON ({err})")
    if not isinstance(data, dict):
        fail(f"{path}: expected a JSON object")
    return data


def _records(folder: Path):
    path = folder / "per_sample.npz"
    if not path.is_file():
        return None
    try:
        return load_records(path)
    except Exception as err:  # numpy / zipfile raise many types for a damaged archive
        fail(f"{path}: cannot read the per-sample records ({type(err).__name__}: {err}); evaluate again with "
             "--overwrite")


def load_evaluations(paths: list[Path], with_records: bool) -> list[Evaluation]:
    evaluations = []
    for path in result_files(paths, RESULTS):
        results = _read_json(path)
        if "clean" not in results or "attacks" not in results:
            fail(f"{path}: not an attack evaluation's results (no 'clean' / 'attacks')")
        evaluations.append(Evaluation(results.get("label") or results.get("arch_classifier", "?"), path.parent,
                                      results, _records(path.parent) if with_records else None))
    labels = Counter(ev.name for ev in evaluations)
    for ev in evaluations:
        if labels[ev.name] > 1:
            same_eval = sum(other.name == ev.name and other.path.name == ev.path.name for other in evaluations)
            ev.name = f"{ev.name} ({ev.path.name})" if same_eval == 1 else f"{ev.name} ({_where(ev.path)})"
    return evaluations


def _where(folder: Path) -> str:
    """'run/eval name' for an evaluation folder RUN/evals/NAME, else the folder's own name."""
    return f"{folder.parent.parent.name}/{folder.name}" if folder.parent.name == "evals" else folder.name


def load_eps_maps(paths: list[Path], evaluations: list[Evaluation]) -> list[dict]:
    names = {ev.path: ev.name for ev in evaluations}
    return [{**_read_json(path), "label": names.get(path.parent, path.parent.name)}
            for path in result_files(paths, "eps_map.json")]


def main() -> None:
    parser = OneLineParser(prog="summarize.py", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", type=Path,
                        help="evaluation folders, run folders or a ckpt/ tree (searched for attack_results.json)")
    parser.add_argument("--markdown", type=Path, default=None, help="also write the Markdown table here")
    parser.add_argument("--csv", type=Path, default=None, help="also write the table as CSV here")
    parser.add_argument("--json", type=Path, default=None, help="also write the table (and findings) as JSON here")
    parser.add_argument("--findings", action="store_true",
                        help="also compare the models (exact McNemar tests on the samples both evaluations share)")
    parser.add_argument("--eps_maps", type=Path, default=None, metavar="OUT.png",
                        help="also draw every (eps_v, eps_a) map found (--eps_grid2d) side by side into this PNG")
    args = parser.parse_args()
    evaluations = load_evaluations(args.paths, with_records=args.findings)
    header, rows, columns = study_table(evaluations)
    markdown, csv_text = to_markdown(header, rows), to_csv(header, rows)
    print(markdown)
    found = findings(evaluations) if args.findings else []
    if found:
        print("\n".join(f"- {line}" for line in found))
    if args.markdown:
        write_text_atomic(args.markdown, markdown + ("\n" + "\n".join(f"- {f}" for f in found) + "\n" if found else ""))
    if args.csv:
        write_text_atomic(args.csv, csv_text)
    if args.json:
        write_json_atomic(args.json, to_json(evaluations, columns, found))
    if args.eps_maps:
        plot_eps_maps(load_eps_maps(args.paths, evaluations), args.eps_maps)
        print(f"wrote {args.eps_maps}")


if __name__ == "__main__":
    main()
