"""The package's module layout: no import cycles between its modules (issue 15).

The graph is read from the source with ``ast``, so an import hidden inside a function (the usual way
a cycle is papered over) counts as much as a top-level one; only ``if TYPE_CHECKING:`` imports are
left out, since they never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "source" / "dlt_db_sync"


def module_name(path: Path) -> str:
    """``dlt_db_sync.room.module`` of a file below the package (a package's own name for __init__)."""
    parts = ("dlt_db_sync", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body, except under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    type_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"  # `from room import module`
                found.add(submodule if submodule in known else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (packages' ``__init__`` files are leaves: they are empty)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = {name for name, path in paths.items() if path.name != "__init__.py"}
    return {name: imported_modules(paths[name], modules) - {name} for name in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            following = next(edges, None)
            if following is not None:
                if following not in index:
                    index[following] = low[following] = len(index)
                    stack.append(following)
                    on_stack.add(following)
                    work.append((following, iter(sorted(graph[following]))))
                elif following in on_stack:
                    low[node] = min(low[node], index[following])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from dlt_db_sync.monitoring import metrics\n"
        "def f():\n    from dlt_db_sync.monitoring.watchdogs import Watchdog\n",
        encoding="utf-8",
    )
    known = {"dlt_db_sync.monitoring.metrics", "dlt_db_sync.monitoring.watchdogs"}
    assert imported_modules(module, known) == {"dlt_db_sync.monitoring.watchdogs"}


@pytest.mark.parametrize("room", ["monitoring", None])
def test_no_import_cycle(room: str | None) -> None:
    """Monitoring (run state, health, metrics, HTTP server, watchdogs, services) and the whole package."""
    graph = import_graph()
    if room is not None:
        prefix = f"dlt_db_sync.{room}."
        graph = {
            name: {m for m in edges if m.startswith(prefix)} for name, edges in graph.items() if name.startswith(prefix)
        }
        assert len(graph) >= 6, sorted(graph)
    assert cycles(graph) == []
