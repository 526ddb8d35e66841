"""The package's imports run one way, as docs/architecture.md draws them: no circles between modules,
and a room imports only rooms on lower floors. The floors are read from that page, so the map and
this test cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "omniglot_inversion"
MAP = ROOT / "docs" / "architecture.md"
TOP = "omniglot_inversion"


def floors() -> dict[str, int]:
    """Room -> floor from the ``floors`` block of docs/architecture.md (lines ``N  room, room  # note``)."""
    block = re.search(r"```floors\n(.*?)```", MAP.read_text(), re.S)
    assert block, "docs/architecture.md has no ```floors block"
    rooms = {}
    for line in block.group(1).splitlines():
        line = line.split("#")[0].strip()
        if line:
            floor, names = line.split(None, 1)
            rooms.update({name.strip(): int(floor) for name in names.split(",")})
    return rooms


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its __init__)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    """The room a module lives in: its subpackage, or its own name at the top of the package
    (``omniglot_inversion`` itself is the public API)."""
    parts = module.split(".")
    return TOP if len(parts) == 1 else parts[1]


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules that ``path`` imports anywhere in it, function bodies included; ``from
    package import name`` counts the submodule when ``name`` is one, else the package."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; import by the package's full name"
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in known else node.module)
    return {name for name in found if name == TOP or name.startswith(TOP + ".")}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_every_room_is_on_the_map(graph):
    rooms = floors()
    unmapped = sorted({room(module) for module in graph} - set(rooms))
    assert not unmapped, f"rooms missing from docs/architecture.md's floors: {unmapped}"
    empty = sorted(set(rooms) - {room(module) for module in graph})
    assert not empty, f"docs/architecture.md lists rooms the package does not have: {empty}"


def against_the_floors(graph: dict[str, set[str]], rooms: dict[str, int]) -> list[str]:
    """Each import of a room on the same or a higher floor than the importer's room."""
    return [f"{module} (floor {rooms[room(module)]}) imports {target} (floor {rooms[room(target)]})"
            for module, targets in sorted(graph.items()) for target in sorted(targets)
            if room(target) != room(module) and rooms[room(target)] >= rooms[room(module)]]


def circles(graph: dict[str, set[str]]) -> list[str]:
    """The import circles a depth-first walk of ``graph`` meets, each as ``a -> b -> a``."""
    found = []
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                found.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_imports_go_down_only(graph):
    wrong = against_the_floors(graph, floors())
    assert not wrong, "imports against the direction of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_circles(graph):
    found = circles(graph)
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_checks_catch_what_they_guard(tmp_path):
    """The graph sees function-level imports, and both checks report a planted fault."""
    inner = tmp_path / "inner.py"
    inner.write_text("import numpy\n\ndef f():\n    from omniglot_inversion.pipelines import part1\n"
                     "    import omniglot_inversion.io.files\n")
    assert imports(inner, modules()) == {"omniglot_inversion.pipelines.part1", "omniglot_inversion.io.files"}
    planted = {"omniglot_inversion.io.files": {"omniglot_inversion.measure.plots"},
               "omniglot_inversion.measure.plots": {"omniglot_inversion.measure.evaluation"},
               "omniglot_inversion.measure.evaluation": {"omniglot_inversion.measure.plots"}}
    assert circles(planted) == ["omniglot_inversion.measure.plots -> omniglot_inversion.measure.evaluation"
                                " -> omniglot_inversion.measure.plots"]
    assert against_the_floors(planted, {"io": 1, "measure": 2}) == [
        "omniglot_inversion.io.files (floor 1) imports omniglot_inversion.measure.plots (floor 2)"]
    assert room("omniglot_inversion.io.files") == "io" and room(TOP) == TOP
