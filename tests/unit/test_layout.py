"""The layout the README promises: handlers/ is a tree that never reaches into scripts/,
and scripts/ shows its concerns as sub-packages rather than a flat folder."""

from __future__ import annotations

import ast
from pathlib import Path

HANDLERS = Path("handlers")


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, as dotted names (`from handlers import base` gives handlers.base)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def handlers_graph() -> dict[str, set[str]]:
    modules = {f"handlers.{path.stem}": path for path in HANDLERS.glob("*.py")}
    modules["handlers"] = modules.pop("handlers.__init__")
    return {name: {m for m in imported_modules(path) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of module names, or [] when the graph is a tree (a DAG)."""
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> list[str]:
        state[node] = "open"
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*path, node, target]
            if target not in state and (cycle := visit(target, [*path, node])):
                return cycle
        state[node] = "done"
        return []

    for start in sorted(graph):
        if start not in state and (cycle := visit(start, [])):
            return cycle
    return []


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_handlers_have_no_import_cycle() -> None:
    graph = handlers_graph()
    assert "handlers.base" in graph and "handlers.envelopes" in graph
    assert find_cycle(graph) == []


def test_envelopes_never_import_the_base_class() -> None:
    assert "handlers.base" not in handlers_graph()["handlers.envelopes"]


def test_handlers_never_import_scripts() -> None:
    offenders = {path.name: sorted(m for m in imported_modules(path) if m.split(".")[0] == "scripts")
                 for path in HANDLERS.glob("*.py")}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_example_handlers_import_the_toolkit_only_from_the_package_front() -> None:
    """An author imports the toolkit from `handlers`, not from its inner modules; a model's network
    is its own code (the example models keep theirs in handlers.architectures)."""
    modules = set(handlers_graph())
    for name in ("tabular", "digits", "minilm"):
        inner = imported_modules(HANDLERS / f"{name}.py") & modules
        assert inner == {"handlers", "handlers.architectures"}, (name, inner)


def test_scripts_top_level_is_a_few_modules_and_one_package_per_concern() -> None:
    top = sorted(path.name for path in Path("scripts").glob("*.py"))
    assert len(top) <= 6, top
    packages = sorted(path.parent.name for path in Path("scripts").glob("*/__init__.py"))
    assert {"build", "client", "config", "measure", "operate", "serve"} <= set(packages), packages
