"""The layers of docs/ARCHITECTURE.md, read from the source: no import arrow points up.

Static (``ast``), so a module is checked without being imported, including imports inside
functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The layer above flows and tasks: the only modules of the package allowed to import them.
ENTRY_POINTS = {"cli", "demo", "bench", "bench_submit", "calibration_bench", "faults_bench"}


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_entry_point(path: Path) -> bool:
    stem = path.stem
    return path.parent == ROOT / "boundary_inference" and (
        stem in ENTRY_POINTS or stem.startswith("cli_") or stem.endswith("_bench")
    )


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports_into(package: str, ours: set[str]) -> set[str]:
    """ "<module> imports <name>" for each import in ``package`` of a top-level package in ``ours``."""
    return {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules(package)
        for name in _imports(path)
        if _top(name) in ours
    }


def test_adapters_never_import_flows_or_tasks() -> None:
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("boundary_inference")
        if not _is_entry_point(path)
        for name in _imports(path)
        if _top(name) in ("flows", "tasks")
    }
    assert not upward, sorted(upward)


def test_tasks_never_import_flows_or_entry_points() -> None:
    upward = {
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _modules("tasks")
        for name in _imports(path)
        if _top(name) == "flows"
        or (
            name.startswith("boundary_inference.")
            and _is_entry_point(ROOT / (name.replace(".", "/") + ".py"))
        )
    }
    assert not upward, sorted(upward)


def test_the_gpu_payload_imports_nothing_of_ours_but_config() -> None:
    upward = _imports_into("modal_app", {"boundary_inference", "flows", "tasks"})
    assert not upward, sorted(upward)


def test_config_imports_nothing_of_ours() -> None:
    # The Modal image ships exactly modal_app and config (modal_config.build_image): an import of
    # boundary_inference here would fail in the container at `import config`.
    upward = _imports_into("config", {"boundary_inference", "flows", "tasks", "modal_app"})
    assert not upward, sorted(upward)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from flows.boundary_inference import x\n")
    assert "flows.boundary_inference" in _imports(module)
