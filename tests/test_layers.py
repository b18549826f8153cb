"""The layers of docs/ARCHITECTURE.md, read from the source: folder against folder, no import arrow
points up and no two modules import each other, however far round.

Static (``ast``), so a module is checked without being imported, including imports inside
functions: a lazy import is still an arrow. There is no list of exempted files: a module's layer is
the folder it lives in.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom to top. A folder may import its own layer and the layers listed for it, nothing else.
LAYERS: dict[str, set[str]] = {
    "migrations": set(),  # the SQL files and where they are
    "config": {"migrations"},
    "modal_app": {"migrations", "config"},  # the GPU payload ships modal_app and config only
    "adapters": {"migrations", "config", "modal_app"},  # boundary_inference/ but its cli/
    "tasks": {"migrations", "config", "modal_app", "adapters"},
    "flows": {"migrations", "config", "modal_app", "adapters", "tasks"},
    "cli": {"migrations", "config", "modal_app", "adapters", "tasks", "flows"},  # .../cli/
    "benches": {"migrations", "config", "modal_app", "adapters", "tasks", "flows", "cli"},
}
# Inside flows/, the run's life (flows/run/) sits under the flows that use it.
FLOWS_RUN = "flows.run"


def _layer(module: str) -> str | None:
    """The layer of a dotted module name of ours, or None for a third-party module."""
    parts = module.split(".")
    if parts[0] == "boundary_inference":
        return "cli" if parts[1:2] == ["cli"] else "adapters"
    return parts[0] if parts[0] in LAYERS else None


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(name: str) -> str:
    """``from a.b import c`` names module ``a.b.c`` when that file exists, else ``a.b``."""
    candidate = ROOT / Path(*name.split("."))
    return name if candidate.with_suffix(".py").exists() or candidate.is_dir() else ""


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {
                f"{node.module}.{alias.name}"
                for alias in node.names
                if _resolve(f"{node.module}.{alias.name}")
            }
    return found


def _our_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for top in ("config", "migrations", "modal_app", "boundary_inference", "tasks", "flows"):
        for path in sorted((ROOT / top).rglob("*.py")):
            modules[_module_name(path)] = path
    for path in sorted((ROOT / "benches").rglob("*.py")):
        modules[_module_name(path)] = path
    return modules


def _graph() -> dict[str, set[str]]:
    modules = _our_modules()
    return {
        name: {imported for imported in _imports(path) if imported in modules and imported != name}
        for name, path in modules.items()
    }


def _upward(graph: dict[str, set[str]]) -> list[str]:
    arrows = []
    for module, imported in graph.items():
        layer = _layer(module)
        assert layer is not None
        for target in imported:
            target_layer = _layer(target)
            if target_layer is None or target_layer == layer or target_layer in LAYERS[layer]:
                continue
            arrows.append(f"{module} ({layer}) imports {target} ({target_layer})")
        if module.startswith(FLOWS_RUN + ".") or module == FLOWS_RUN:
            arrows += [
                f"{module} (the run's life) imports the flow module {target}"
                for target in imported
                if _layer(target) == "flows" and not target.startswith(FLOWS_RUN)
            ]
    return sorted(arrows)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
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


def _package_inits(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph without a package's ``__init__`` re-exporting its own submodules: importing
    ``boundary_inference.ledger`` for ``Ledger`` is the package's face, not a circle."""
    return {
        module: {t for t in imported if not t.startswith(module + ".")}
        for module, imported in graph.items()
    }


def test_no_import_points_up_a_layer() -> None:
    assert not _upward(_graph())


def test_no_two_modules_import_each_other() -> None:
    assert not _cycles(_package_inits(_graph()))


def test_runtime_code_never_imports_benches_or_tests() -> None:
    graph = _graph()
    runtime = [m for m in graph if _layer(m) != "benches"]
    bad = {f"{m} imports {t}" for m in runtime for t in _imports(_our_modules()[m])}
    assert not {b for b in bad if b.split(" imports ")[1].split(".")[0] in ("benches", "tests")}


def test_every_module_of_ours_has_a_layer() -> None:
    assert all(_layer(module) for module in _graph())


@pytest.mark.parametrize(
    ("source", "arrow"),
    [
        ("def f():\n    from flows.boundary_inference import x\n", "tasks.m (tasks) imports flows"),
        ("import boundary_inference.cli.app\n", "tasks.m (tasks) imports boundary_inference.cli"),
    ],
)
def test_the_checker_sees_an_upward_import(source: str, arrow: str) -> None:
    graph = {"tasks.m": {n for n in _imports_text(source) if _layer(n)}}
    assert any(a.startswith(arrow) for a in _upward(graph)), _upward(graph)


def test_the_checker_sees_a_circle() -> None:
    graph = {
        "adapters_a": {"adapters_b"},
        "adapters_b": {"adapters_c"},
        "adapters_c": {"adapters_a"},
    }
    assert _cycles(graph) == [["adapters_a", "adapters_b", "adapters_c"]]


def _imports_text(source: str) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found
