"""A migrated Prefect database, copied instead of migrated.

Every Prefect server the suite starts on an empty database (each xdist worker's harness, a
module's own ``prefect server start``, a state dir's embedded server started by the CLI) first
runs Prefect's migrations: 5.4 of the 8.9 CPU-s of such a start, measured here. The suite starts
about eight of them on two cores. So the first one is built once per run: a PostgreSQL cluster
whose Prefect database a real Prefect server start migrated, then stopped. Each later server
gets a copy of that stopped cluster as its ``pg`` directory (``cp -a``: the files keep their
owner, the PostgreSQL system user when the suite runs as root), and starts on a database that
is already at Prefect's head revision, exactly what a second start of the same server finds.

The first start on an empty database stays tested: ``tests/test_embedded_prefect.py`` starts
its servers without a copy, several starters at once.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from filelock import FileLock

BUILD_TIMEOUT_S = 600  # a hang guard: one server start on a loaded machine


def migrated_prefect_cluster(root: Path) -> Path:
    """The stopped, migrated cluster under ``root`` (built on first use; the xdist workers of
    one run share ``root`` and build it once, under a file lock); returns its data directory."""
    directory = root / "prefect-template"
    ready = directory / "ready"
    with FileLock(str(root / "prefect-template.lock")):
        if not ready.exists():
            shutil.rmtree(directory, ignore_errors=True)  # a build cut short
            directory.mkdir(parents=True)
            _build(directory)
            ready.touch()
    return directory / "pg"


def seed_prefect_cluster(directory: Path, template: Path) -> None:
    """Give ``directory`` (what :func:`start_prefect_database` is called with) a copy of the
    migrated cluster, unless it holds a cluster already."""
    target = directory / "pg"
    if target.exists():
        return
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(template), str(target)], check=True, timeout=120)


def _build(directory: Path) -> None:
    from tests.prefect_pg import serve_prefect_api

    with serve_prefect_api(directory, startup_timeout_s=BUILD_TIMEOUT_S):
        pass  # the server's start migrated the empty database; exit stops it and PostgreSQL
