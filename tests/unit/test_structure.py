"""The shape of the code base, checked from its source: no import circles in server/, and each layer imports only
what it may, at any depth: actors/ nothing of server/; admission (services.py), the protocol, the job table and the
store neither Ray nor Starlette, through whatever they import; no module of server/ over MAX_LINES."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 450  # no module of server/ is longer: past it, a module holds more than one concern


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(*packages: str) -> dict[str, Path]:
    """Every module of `packages` (subpackages included), by dotted name."""
    return {module_name(path): path for package in packages for path in sorted((ROOT / package).rglob("*.py"))}


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


def package_graph(*packages: str) -> dict[str, set[str]]:
    known = modules(*packages)
    return {name: {other for other in imports(path) if other in known} - {name} for name, path in known.items()}


def loaded_with(name: str, graph: dict[str, set[str]]) -> set[str]:
    """The project's modules that importing `name` loads: what it imports, their packages' __init__, and so on."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1)]
        todo += [other for other in (*graph.get(module, ()), *parents) if other in graph]
    return seen


def third_party(name: str) -> set[str]:
    """The top-level packages outside the project that importing module `name` loads, at any depth."""
    known = modules("server", "actors")
    graph = package_graph("server", "actors")
    return {other.split(".")[0] for module in loaded_with(name, graph) for other in imports(known[module])
            if other.split(".")[0] not in ("server", "actors")}


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
    assert len(graph) > 10 and "server.store.sqlite" in graph
    assert cycle(graph) is None, f"import circle: {' -> '.join(cycle(graph) or [])}"


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None


def test_the_transitive_check_sees_through_modules_and_packages() -> None:
    """Ray reaches app.py only through modules it imports; the store package's __init__ loads every backend."""
    assert "ray" not in {name.split(".")[0] for name in imports(ROOT / "server" / "app.py")}
    assert {"ray", "starlette"} <= third_party("server.app")
    assert "server.store.redis" in loaded_with("server.store.interface", package_graph("server", "actors"))


def test_actors_import_nothing_of_the_server() -> None:
    for path in (ROOT / "actors").glob("*.py"):
        assert not any(name == "server" or name.startswith("server.") for name in imports(path)), path


def test_each_layer_loads_only_what_it_may() -> None:
    forbidden = {"server.services": ("ray", "starlette"), "server.protocol": ("ray", "starlette"),
                 "server.jobs": ("ray", "starlette"), "server.table": ("ray", "starlette"),
                 "server.store": ("ray", "starlette"), "server.access": ("ray", "starlette")}
    for name, roots in forbidden.items():
        loaded = third_party(name)
        assert not loaded & set(roots), (name, sorted(loaded & set(roots)))


def test_no_server_module_is_over_the_line_limit() -> None:
    long = {str(path.relative_to(ROOT)): lines for path in (ROOT / "server").rglob("*.py")
            if (lines := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
