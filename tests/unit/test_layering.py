"""The import layering of handlers/ and scripts/, read from the code (every import, lazy ones included).

docs/architecture.md gives the layers and why. A module imports only from its own
layer or the ones below it, and no modules import each other in a circle: a loop
is how a low layer ends up needing a high one (the YAML reader needing torch).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("handlers", "scripts")
# What each layer may import besides itself, bottom to top (docs/architecture.md says why).
# operate, serve and deploy take only build.store from the build: the rest of it loads torch.
LAYERS: dict[str, tuple[str, ...]] = {
    "handlers": (),
    "scripts.config": (),
    "scripts.client": ("scripts.config",),
    "scripts.harness": ("handlers", "scripts.config"),
    "scripts.build": ("handlers", "scripts.config", "scripts.client", "scripts.harness"),
    "scripts.operate": ("scripts.config", "scripts.client", "scripts.build.store"),
    "scripts.serve": ("scripts.config", "scripts.client", "scripts.build.store", "scripts.operate"),
    "scripts.deploy": ("scripts.config", "scripts.client", "scripts.build.store", "scripts.serve"),
    "scripts.measure": ("handlers", "scripts"),  # the top: it measures everything below
}
# Run where torch is not installed (an operator's laptop, a CI job, a Kubernetes Job's image).
TORCH_FREE = ("scripts.config", "scripts.client", "scripts.operate", "scripts.serve", "scripts.deploy")
EXAMPLES = ("handlers.tabular", "handlers.digits", "handlers.minilm")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "torchserve_grpc" not in path.parts:  # generated gRPC stubs (scripts/client/grpc_stubs.py)
                found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (functions and `if` blocks too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, `level - 1` packages up
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            for alias in node.names:  # `from pkg import module` imports pkg.module
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in targets if target in known and target != name}


@cache
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_of(name: str) -> str | None:
    return next((layer for layer in LAYERS if within(name, layer)), None)


def test_every_module_has_a_layer() -> None:
    homeless = sorted(name for name in graph() if layer_of(name) is None and name != "scripts")
    assert not homeless, f"modules in no layer of LAYERS (add them, and to docs/architecture.md): {homeless}"


def test_each_layer_imports_only_itself_and_what_it_may() -> None:
    wrong = []
    for name, targets in graph().items():
        if (layer := layer_of(name)) is not None:
            allowed = (layer, *LAYERS[layer])
            wrong += [f"{name} -> {target}" for target in sorted(targets)
                      if not any(within(target, ok) for ok in allowed)]
    assert not wrong, "imports against the layering (docs/architecture.md):\n" + "\n".join(wrong)


def test_the_layering_is_read_from_real_imports() -> None:
    """Known edges, so that a scan that sees nothing cannot pass the tests above."""
    edges = graph()
    assert "handlers.batch" in edges["handlers.base"]
    assert "scripts.config.policies" in edges["scripts.operate.gate"]
    assert "scripts.build.store" in edges["scripts.operate.registry"]


def test_envelopes_never_import_the_contract() -> None:
    """A request walks one way: envelopes read and frame, and never call a hook back."""
    assert "handlers.base" not in edges_from("handlers.envelopes")


def test_example_handlers_import_the_toolkit_only_from_the_package_front() -> None:
    """An author imports the toolkit from `handlers`, not from its inner modules; a model's network
    is its own code (the example models keep theirs in handlers.architectures)."""
    for name in EXAMPLES:
        assert edges_from(name) == {"handlers", "handlers.architectures"}, name


def test_scripts_top_level_is_a_few_modules_and_one_package_per_concern() -> None:
    top = sorted(path.name for path in (ROOT / "scripts").glob("*.py"))
    assert len(top) <= 6, top
    packages = {path.parent.name for path in (ROOT / "scripts").glob("*/__init__.py")}
    assert packages == {layer.removeprefix("scripts.") for layer in LAYERS if layer.count(".") == 1
                        and (ROOT / layer.replace(".", "/")).is_dir()}, packages


def edges_from(name: str) -> set[str]:
    return graph()[name]


def test_no_import_circle() -> None:
    edges = graph()
    circles = [component for component in strongly_connected(edges) if len(component) > 1]
    assert not circles, f"modules that import each other in a circle: {circles}"


def test_the_yaml_reader_the_clients_and_the_operator_tools_load_no_torch() -> None:
    """Every module of the torch-free layers imports without torch or the handlers loading."""
    names = sorted(name for name in modules() if any(within(name, layer) for layer in TORCH_FREE))
    assert "scripts.operate.tsctl" in names and "scripts.deploy.kubernetes" in names
    code = "import importlib, sys\n" + f"for name in {names!r}:\n    importlib.import_module(name)\n" + (
        "loaded = sorted(m for m in ('torch', 'handlers') if m in sys.modules)\n"
        "assert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_the_scan_counts_imports_inside_functions(tmp_path: Path) -> None:
    """A loop through an import inside a function or an `if` is still a loop: the scan must see it."""
    probe = tmp_path / "probe.py"
    probe.write_text("def later():\n    from scripts.operate import tsctl\n"
                     "    if True:\n        import scripts.config.files\n")
    found = imports(probe, "scripts.config.probe", modules())
    assert found == {"scripts.operate.tsctl", "scripts.config.files"}


def test_a_circle_is_found() -> None:
    components = strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert sorted(components) == [["a", "b", "c"], ["d"]]


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components: a component of more than one module is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return components
