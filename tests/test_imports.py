"""No import cycles in ``src/diffdict``.

The graph is built from the imports a module runs when it is imported: ``import`` and
``from ... import`` statements at its top level (also inside top-level ``if`` / ``try``
blocks), not those inside functions or classes, nor those under ``if TYPE_CHECKING:``
(they never run). Importing ``a.b.c`` also runs the packages ``a`` and ``a.b`` first,
so an import reaches their ``__init__`` modules too, except the packages the importing
module is itself inside (those are already being imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import diffdict

SRC = Path(diffdict.__file__).resolve().parent.parent


def _modules() -> dict[str, tuple[Path, bool]]:
    modules = {}
    for path in sorted((SRC / "diffdict").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if package else parts)] = (path, package)
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(body: list[ast.stmt], name: str, package: bool) -> set[str]:
    """Every dotted name the module-level statements of ``body`` import (a ``from m
    import x`` gives both ``m`` and ``m.x``: x may be a submodule)."""
    names: set[str] = set()
    for node in body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                names |= _imported(node.body, name, package) | _imported(node.orelse, name, package)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                names |= _imported(block, name, package)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        edges: set[str] = set()
        for target in _imported(ast.parse(path.read_text(), str(path)).body, name, package):
            if target not in modules:
                continue
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the packages above the target run first
                step = ".".join(parts[:i])
                if step in modules and step != name and not name.startswith(step + "."):
                    edges.add(step)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle (its first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert "diffdict.capture" in graph and "diffdict.hosts.base" in graph
    assert "diffdict.errors" in graph["diffdict.hosts.base"]
    assert "diffdict.dictionaries" in graph["diffdict.evaluate"]  # a package above an import runs first
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)
