"""docs/design.md's import rules, checked on every module of the package by reading its imports (ast).

The two tables under "What each module may import" are the rules: which package areas an area may
import, and which areas alone may import a library. Lazy imports inside functions count too.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "fastneurons"
DESIGN = ROOT / "docs" / "design.md"


def design_tables() -> tuple:
    """({area: allowed areas or {'*'}}, {library: areas}) parsed from the section of design.md."""
    text = DESIGN.read_text()
    section = text.split("## What each module may import", 1)[1].split("\n## ", 1)[0]
    areas, libraries, table = {}, {}, None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            table = None
            continue
        if cells[0] in ("area", "library"):
            table = areas if cells[0] == "area" else libraries
            continue
        if set(cells[0]) <= set("-") or table is None:
            continue
        name = cells[0].replace("\\", "")
        table[name] = {item.strip() for item in cells[1].split(",") if item.strip()}
    return areas, libraries


def area_of(path: Path) -> str:
    """The area a module belongs to: its subpackage, or its own name for a top-level module."""
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else Path(parts[0]).stem


def imports_of(source: str) -> list:
    """(package area or None, top-level library or None) for every import statement in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [_classify(alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative imports are not used in fastneurons"
            if node.module == "fastneurons":  # from fastneurons import config / _C / __version__
                found += [_classify(f"fastneurons.{alias.name}") for alias in node.names]
            else:
                found.append(_classify(node.module))
    return found


def _classify(name: str):
    parts = name.split(".")
    if parts[0] != "fastneurons":
        return None, parts[0]
    if len(parts) == 1:
        return "root", None
    first = parts[1]
    if first == "_C" or (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file():
        return first, None
    return "root", None  # a name of the package root, e.g. __version__


def violations(area: str, source: str, rules=None) -> list:
    """The imports of ``source`` (a module of ``area``) that design.md's rules forbid."""
    areas, libraries = rules or design_tables()
    allowed = areas[area]
    problems = []
    for imported, library in imports_of(source):
        if imported is not None and imported not in (area, "root") and "*" not in allowed \
                and imported not in allowed:
            problems.append(f"{area} imports fastneurons.{imported}")
        if library in libraries and area not in libraries[library]:
            problems.append(f"{area} imports {library} (only {', '.join(sorted(libraries[library]))} may)")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_design_md_lists_every_area():
    areas, libraries = design_tables()
    assert {area_of(path) for path in MODULES} | {"_C"} >= set(areas) - {"*"}
    assert {area_of(path) for path in MODULES} <= set(areas)
    assert {"argparse", "torch", "h5py", "tqdm"} <= set(libraries)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_module_keeps_the_import_rules(path):
    assert violations(area_of(path), path.read_text()) == []


@pytest.mark.parametrize("area,source,problem", [
    ("store", "from fastneurons.analysis.dead import dead_neurons", "store imports fastneurons.analysis"),
    ("store", "def f():\n    from fastneurons.recording import runner", "store imports fastneurons.recording"),
    ("analysis", "import torch", "analysis imports torch"),
    ("analysis", "from fastneurons.store.writer import CountsWriter", "analysis imports fastneurons.store"),
    ("kernels", "from fastneurons.ngrams import keys", "kernels imports fastneurons.ngrams"),
    ("bench", "import argparse", "bench imports argparse"),
    ("recording", "from fastneurons import config, reporting", "recording imports fastneurons.reporting"),
])
def test_a_broken_rule_is_caught(area, source, problem):
    assert any(found.startswith(problem) for found in violations(area, source))


def test_allowed_imports_pass():
    assert violations("kernels", "from fastneurons import _C") == []
    assert violations("store", "from fastneurons import __version__\nfrom fastneurons.ngrams import runs") == []
    assert violations("cli", "import argparse\nfrom fastneurons.reporting import analyze") == []
    assert re.search(r"\| cli \| \* \|", DESIGN.read_text())
