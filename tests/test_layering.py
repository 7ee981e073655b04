"""The layers import only downward: utils < dataset < models < attacks, defenses < evaluation, training < the
entry points; no entry point imports another; every import of a module inside a function counts too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RANK = {"utils": 0, "dataset": 1, "models": 2, "attacks": 3, "defenses": 3, "evaluation": 4, "training": 4}
ENTRY_POINTS = {"arguments": 5, "main_attack": 6, "main_defense": 6, "main_localization": 6}


def imported_top_levels(path: Path) -> set[str]:
    """The first component of every module ``path`` imports (absolute imports, at any depth of the code)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(package: str, rank: int, imports: set[str]) -> list[str]:
    """The imports of a module of ``package`` (at ``rank``) that reach up, sideways into another package of
    its rank, or into an entry point."""
    bad = []
    for name in sorted(imports):
        if name == package:
            continue
        if name in ENTRY_POINTS and ENTRY_POINTS[name] >= rank:
            bad.append(name)
        elif name in RANK and RANK[name] >= rank:
            bad.append(name)
    return bad


def project_modules() -> list[tuple[str, Path]]:
    modules = [(path.relative_to(ROOT).parts[0], path) for package in RANK for path in (ROOT / package).rglob("*.py")]
    modules += [(path.stem, path) for path in ROOT.glob("*.py") if path.stem in ENTRY_POINTS]
    return modules


def test_the_layer_table_covers_every_package_of_the_project() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()} - {"tests"}
    assert packages <= set(RANK), f"packages without a layer: {sorted(packages - set(RANK))}"
    assert {p.stem for p in ROOT.glob("main_*.py")} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("package,path", project_modules(), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_no_import_reaches_up(package: str, path: Path) -> None:
    rank = RANK.get(package, ENTRY_POINTS.get(package))
    bad = layer_violations(package, rank, imported_top_levels(path))
    assert not bad, f"{path.relative_to(ROOT)} (layer {package}) imports {bad}"


def test_the_checker_sees_imports_inside_functions_and_entry_points(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import torch\n\ndef f():\n    from evaluation.stats import wilson_interval\n"
                      "    import main_attack\n")
    imports = imported_top_levels(module)
    assert layer_violations("models", RANK["models"], imports) == ["evaluation", "main_attack"]
    assert layer_violations("main_defense", ENTRY_POINTS["main_defense"], imports) == ["main_attack"]
    assert layer_violations("attacks", RANK["attacks"], {"defenses", "models"}) == ["defenses"]
