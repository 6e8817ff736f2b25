"""The shape of the code base, checked from its source: no import circles in server/, and each layer
imports only what it may (actors/ nothing of server/, protocol.py no Ray or Starlette, store.py no Ray)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code (TYPE_CHECKING and function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def package_graph(package: str) -> dict[str, set[str]]:
    modules = {f"{package}.{path.stem}": path for path in (ROOT / package).glob("*.py") if path.stem != "__init__"}
    return {name: {other for other in imports(path) if other in modules} - {name} for name, path in modules.items()}


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle in `graph`, as the list of modules around it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circle_inside_server() -> None:
    graph = package_graph("server")
    assert len(graph) > 10
    assert cycle(graph) is None, f"import circle: {' -> '.join(cycle(graph) or [])}"


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_each_layer_imports_only_what_it_may() -> None:
    for path in (ROOT / "actors").glob("*.py"):
        assert not any(name == "server" or name.startswith("server.") for name in imports(path)), path
    forbidden = {"protocol.py": ("ray", "starlette"), "store.py": ("ray",), "jobs.py": ("ray", "starlette"),
                 "services.py": ("starlette",), "table.py": ("ray", "starlette")}
    for name, roots in forbidden.items():
        found = imports(ROOT / "server" / name)
        assert not any(module.split(".")[0] in roots for module in found), (name, sorted(found))
