"""The project's modules import each other without a cycle.

A cycle works only by the accident of import order (a module half-initialised while
another reads it), or by hiding one side under ``if TYPE_CHECKING:`` or inside a function,
so a new one fails here. Every import statement counts: at module level, inside a
function, and under ``TYPE_CHECKING`` (two modules that need each other's types are one
concept split in two, or need a third module both can import).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("rlm_jobs", "workers", "sandbox", "bench", "tests")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            # Hidden folders are not the project's (bench/.ref-venv holds the reference).
            if not any(part.startswith(".") for part in path.relative_to(ROOT).parts):
                found[_module_name(path)] = path
    return found


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Project modules ``module`` imports (a name imported from a package that is itself a
    module counts as that module)."""
    targets: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                targets.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in child.names:
                    submodule = f"{base}.{alias.name}"
                    # A submodule imported from its package is an edge to the submodule; a
                    # name defined in the package's __init__ is an edge to the package.
                    targets.add(submodule if submodule in known else base)
            visit(child)

    visit(tree)
    return {t for t in targets if t in known and t != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def connect(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imported(
            ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known
        )
        for name, path in modules.items()
    }


def test_the_graph_sees_the_imports_it_should() -> None:
    # Given the project's import graph, an import we know of is in it (the check is live)
    graph = import_graph()
    assert "rlm_jobs.models" in graph["rlm_jobs.loop"]
    assert "rlm_jobs.keys" in graph["rlm_jobs.store"]  # `from rlm_jobs import keys`
    # under TYPE_CHECKING, and inside a function
    assert "rlm_jobs.status" in graph["rlm_jobs.errors"]
    assert "workers.enqueue" in graph["rlm_jobs.cli"]


def test_a_cycle_is_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_back() -> None:
    assert _cycles(import_graph()) == []


def test_no_test_module_imports_another() -> None:
    # Shared helpers live in the tests.support package (and conftest fixtures), never in a test file
    graph = import_graph()

    def is_test(module: str) -> bool:
        return module.startswith("tests.") and module.rpartition(".")[2].startswith("test_")

    assert {m: sorted(t for t in graph[m] if is_test(t)) for m in graph if is_test(m)} == {
        m: [] for m in graph if is_test(m)
    }
