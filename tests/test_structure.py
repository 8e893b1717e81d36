"""The package's shape: no import cycle inside ``remoteexec/``, no module a reader cannot finish.

Both are read from the source itself: each module is parsed with ``ast`` (nothing is
imported), every ``import`` in it counts, also one inside a function or under
``TYPE_CHECKING``, relative imports are resolved against the module's package, and
``from X import y`` names the module ``X.y`` when there is one, else ``X``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "remoteexec"
MAX_LINES = 450

Graph = dict[str, set[str]]


def modules(root: Path) -> dict[str, Path]:
    """Every module under the package folder ``root``, by dotted name (where a package
    and a module have one name, the package, as for Python)."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        name = ".".join(parts)
        if path.name == "__init__.py" or name not in found:
            found[name] = path
    return found


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The modules of ``known`` that module ``name`` (in file ``path``) imports."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, node.module] if node.module else up)
            targets = [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                for alias in node.names
            ]
        else:
            continue
        yield from (t for t in targets if t in known and t != name)


def import_graph(root: Path) -> Graph:
    """Who imports whom among the modules under the package folder ``root``."""
    found = modules(root)
    known = set(found)
    return {name: set(imported(name, path, known)) for name, path in found.items()}


def cycles(graph: Graph) -> list[list[str]]:
    """One cycle for each group of modules that import each other (``[a, b, a]``)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_loop(graph, group) for group in groups]


def _loop(graph: Graph, group: set[str]) -> list[str]:
    """The shortest way round from the first module of ``group`` back to it."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & group):
                if nxt == start:
                    return [*paths[node], start]
                if nxt not in paths:
                    paths[nxt] = [*paths[node], nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no way round {sorted(group)}")  # a component always has one


def long_modules(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """The files under the package folder ``root`` longer than ``limit`` lines, by path
    (from the folder that holds ``root``), with their lengths."""
    lengths = {
        str(path.relative_to(root.parent)): len(path.read_text().splitlines())
        for path in sorted(root.rglob("*.py"))
    }
    return {name: n for name, n in lengths.items() if n > limit}


# The package -----------------------------------------------------------------------------


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph(PACKAGE)
    assert len(graph) > 20 and graph["remoteexec.worker"], "the package was not read"
    found = [" -> ".join(loop) for loop in cycles(graph)]
    assert not found, "import cycles: " + "; ".join(found)


def test_no_module_over_450_lines() -> None:
    found = [f"{name} ({n} lines)" for name, n in sorted(long_modules(PACKAGE).items())]
    assert not found, f"modules over {MAX_LINES} lines: " + ", ".join(found)


# The checks themselves, on a package made for them -------------------------------------------


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from .a import A\n",
        "a.py": "from .b import B\nA = 1\n",
        "b.py": "import os\nB = 2\n\ndef later():\n    from .sub import c\n",
        "sub/__init__.py": "",
        "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import a\n",
        "d.py": "import pkg.sub.c\nfrom . import b, a\nfrom .a import A\n",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def test_imports_resolve_relative_absolute_and_inside_functions(package: Path) -> None:
    assert import_graph(package) == {
        "pkg": {"pkg.a"},
        "pkg.a": {"pkg.b"},
        "pkg.b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg.a"},
        "pkg.d": {"pkg.sub.c", "pkg.b", "pkg.a"},
    }


def test_a_cycle_is_found_and_named(package: Path) -> None:
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]
    (package / "sub" / "c.py").write_text("X = 1\n")
    assert cycles(import_graph(package)) == []


def test_a_long_module_is_found_and_named(package: Path) -> None:
    assert long_modules(package) == {}
    (package / "d.py").write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_modules(package) == {"pkg/d.py": MAX_LINES + 1}
