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

from boundary_inference.local.prefect_server import start_prefect_database, stop_prefect_database
from tests.prefect_pg import _free_port

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
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    url = start_prefect_database(directory)
    try:
        with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: url}):
            server = SubprocessASGIServer(port=_free_port())
            server.start(timeout=BUILD_TIMEOUT_S)  # migrates the empty database
            server.stop()
    finally:
        stop_prefect_database(directory)
