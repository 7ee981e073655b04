"""scripts/demo_study.py: the demo's in-process driver (its full run is the demo itself)."""
from __future__ import annotations

import importlib.util
import io
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_driver():
    spec = importlib.util.spec_from_file_location("demo_study", REPO / "scripts" / "demo_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_indented_detail_lines_are_dropped_across_partial_writes() -> None:
    driver = load_driver()
    target = io.StringIO()
    stream = driver.DropIndented(target)
    for chunk in ("PGD A: 35.0 %\n  per class: 1, 2", ", 3\nAA A+V", ": 52.0 %\n", "  apgd-ce\n"):
        stream.write(chunk)
    assert target.getvalue() == "PGD A: 35.0 %\nAA A+V: 52.0 %\n"


def test_the_demo_attacks_every_model_with_autoattack_and_full_keeps_the_standard_budget() -> None:
    driver = load_driver()
    reduced, full = driver.attack_flags(False), driver.attack_flags(True)
    for flags in (reduced, full):
        assert flags[flags.index("--attack_type") + 1:flags.index("--attack_type") + 3] == ["pgd", "autoattack"]
    assert full[full.index("--apgd_steps") + 1] == "100" and full[full.index("--square_queries") + 1] == "5000"
    assert reduced[reduced.index("--apgd_steps") + 1] == "10"


def test_each_evaluation_parses_and_its_corruptions_folder_is_found_without_the_sweep(tmp_path) -> None:
    import main_attack
    from evaluation.eval_dir import eval_folder_of

    driver = load_driver()
    (tmp_path / "categories.txt").write_text("".join(f"c{i}\n" for i in range(6)))
    model = ["--dataset", "synthetic", "--data_root", str(tmp_path), "--ckpt", str(tmp_path / "ckpt")]
    for full in (False, True):
        for head in ("audio", "visual", "concat"):
            argv, corruption_argv = driver.attack_argvs(head, model, driver.attack_flags(full), ["1"], full)
            attack, corruptions = main_attack.parse_args(argv), main_attack.parse_args(corruption_argv)
            assert attack.eps_grid2d and not corruptions.eps_grid2d and not corruptions.attack_type
            assert eval_folder_of(tmp_path, "corruptions", attack) == eval_folder_of(tmp_path, "corruptions",
                                                                                    corruptions)
