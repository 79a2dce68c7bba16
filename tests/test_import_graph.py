"""The package's import graph: no cycle, and no layer importing one above it (docs/design.md)."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "csfr"
# lower layers first; a module may import its own layer and those before it
LAYERS = ["csfr.ops", "csfr.configs", "csfr.data", "csfr.losses", "csfr.models", "csfr.engine", "csfr.profiling",
          "csfr.cli", "csfr.api", "csfr.train", "csfr.evaluate", "csfr.predict", "csfr.export", "csfr"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """csfr modules a module imports, at its top or lazily inside a function (a lazy import is a
    dependency too); `from P import m` counts as an import of the module P.m when there is one, else of P."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("csfr"):
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("csfr")}
    return found


@functools.cache
def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    # an import of the root package from inside it (`from csfr import _C`, the compiled extension)
    # runs once the package is loaded: not an edge
    return {name: {t for t in imports(path, set(modules)) if t in modules and t not in (name, "csfr")}
            for name, path in modules.items()}


def layer(name: str) -> int:
    return max(i for i, prefix in enumerate(LAYERS) if name == prefix or name.startswith(prefix + ".")) \
        if name != "csfr" else len(LAYERS) - 1


def test_no_import_cycle():
    edges, state, cycles = graph(), {}, []

    def visit(node, stack):
        state[node] = "open"
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(" -> ".join(stack[stack.index(target):] + [target]))
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles


@pytest.mark.parametrize("name", sorted(graph()))
def test_no_upward_import(name):
    upward = [t for t in graph()[name] if layer(t) > layer(name) and not name.startswith(t + ".")]
    assert not upward, f"{name} imports {upward} from a layer above it"
