"""The package's shape: no import cycle between modules (lazy imports included), and imports
between folders point one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tuner", "trainables", "dashboards", "search_spaces")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def all_nodes(tree: ast.AST):
    """Every node, those under `if TYPE_CHECKING:` included: a type-only import is an arrow of
    the design too (a circle of them is two modules that cannot be read apart)."""
    yield from ast.walk(tree)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The project modules a file imports anywhere in it: at the top, inside a function, or for
    type annotations only."""
    found: set[str] = set()
    for node in all_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tuner import schema` imports the submodule; the package itself only when a
            # name is one of its attributes (Python runs a package's __init__ before any of its
            # submodules anyway, so counting it would make a package that imports its own
            # submodules, as tuner/__init__.py does, a cycle with each of them)
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            takes_attributes = any(name not in modules for name in submodules)
            names = [node.module] * takes_attributes + submodules
        else:
            continue
        found |= {name for name in names if name in modules}
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    names = set(modules)
    return {name: imports_of(path, names) - {name} for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_lazy_imports() -> None:
    graph = import_graph()
    assert "tuner.results.retrain" in graph["tuner.cli"]  # imported inside the `train` command
    assert "tuner.driver.study" in graph["tuner.cli"]


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


@pytest.mark.parametrize("module", sorted(n for n in project_modules() if n.startswith("train")))
def test_trainables_never_import_the_service(module: str) -> None:
    imported = import_graph()[module]
    assert not {i for i in imported if i.startswith(("tuner", "dashboards"))}


def test_dashboards_read_only_the_results_vocabulary() -> None:
    """The renderer takes plain tables; from tuner it reads only their column names."""
    imported = {i for i in import_graph()["dashboards.render"] if i.startswith("tuner")}
    assert imported <= {
        "tuner",
        "tuner.results.outcomes",
        "tuner.tracking.schema",
        "tuner.results.trials",
    }


def test_results_corner_is_layered() -> None:
    """Readers of MLflow never import the writers, and nothing below study imports it."""
    graph = import_graph()
    for reader in (
        "tuner.tracking.runs",
        "tuner.results.trials",
        "tuner.tracking.schema",
        "tuner.results.exporting",
    ):
        assert "tuner.driver.study" not in graph[reader]
        assert "tuner.results.summary" not in graph[reader]
    assert "tuner.tracking.mlflow_callback" not in graph["tuner.tracking.runs"]
    assert "tuner.results.exporting" not in graph["tuner.tracking.mlflow_callback"]


@pytest.mark.parametrize("folder", ["tuner.tracking"])
def test_the_driver_is_imported_by_nothing_it_drives(folder: str) -> None:
    """The driver runs the study with the tracking writers, never the other way round: what
    tracking needs of the driver's live state it names as a Protocol (`RecordedTrials`)."""
    graph = import_graph()
    modules = [name for name in graph if name == folder or name.startswith(f"{folder}.")]
    assert modules
    back = {(name, i) for name in modules for i in graph[name] if i.startswith("tuner.driver")}
    assert back == set()
