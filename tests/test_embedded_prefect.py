"""The embedded Prefect server (one daemon per state dir, liveness by lock and pid). The rule that
a deployment run never starts embedded servers: tests/test_deployment_runs.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from boundary_inference.local.prefect_server import (
    prefect_database_status,
    prefect_status,
    start_prefect,
    stop_prefect,
)

ROOT = Path(__file__).resolve().parent.parent
STARTER = (
    "import json, sys; from pathlib import Path;"
    " from boundary_inference.local.prefect_server import start_prefect;"
    " s = start_prefect(Path(sys.argv[1])); print(json.dumps([s.pid, s.port]))"
)


@pytest.fixture
def prefect_state() -> Iterator[Path]:
    # Outside pytest's basetemp (a concurrent session may delete it under a live daemon).
    path = Path(tempfile.mkdtemp(prefix="bi-pf-"))
    yield path
    stop_prefect(path)
    shutil.rmtree(path, ignore_errors=True)


def _wait_stopped(state_dir: Path, deadline_s: float = 120.0) -> None:
    """The kernel releases the daemon's lock when it dies; wait for that event (bounded)."""
    deadline = time.monotonic() + deadline_s
    while prefect_status(state_dir).alive:
        assert time.monotonic() < deadline, "the killed server's lock was never released"
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_concurrent_starters_share_one_server_that_survives_them(prefect_state: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    starters = [
        subprocess.Popen(
            [sys.executable, "-c", STARTER, str(prefect_state)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(5)
    ]
    results = []
    for starter in starters:
        out, err = starter.communicate(timeout=800)
        assert starter.returncode == 0, err[-3000:]
        results.append(tuple(json.loads(out.strip().splitlines()[-1])))
    assert len(set(results)) == 1, results  # one server, every starter joined it
    ((pid, port),) = set(results)

    # The starters have all exited; the daemon lives on and answers.
    status = prefect_status(prefect_state)
    assert (status.state, status.pid, status.alive) == ("running", pid, True)
    assert status.address == f"http://127.0.0.1:{port}/api"
    assert httpx.get(f"{status.address}/health", timeout=30).status_code == 200
    # Its database is its own PostgreSQL (with pg_trgm), not SQLite.
    database = prefect_database_status(prefect_state)
    assert (database.state, database.directory) == ("running", prefect_state / "prefect" / "pg")
    assert not list((prefect_state / "prefect").glob("*.db*"))
    assert _prefect_tables(database.address) >= {"flow_run", "task_run", "deployment"}

    # kill -9: the lock goes with the process; the next start replaces it on the same port.
    os.kill(pid, signal.SIGKILL)
    _wait_stopped(prefect_state)
    assert prefect_status(prefect_state).state == "stopped"
    again = start_prefect(prefect_state)
    assert again.pid != pid and again.port == port

    # Its database killed under the live server: the next start joins the server and restarts
    # the database, and the server reconnects (a write through the API succeeds).
    database = prefect_database_status(prefect_state)
    assert database.pid is not None
    os.kill(database.pid, signal.SIGKILL)
    while prefect_database_status(prefect_state).alive:
        time.sleep(0.05)
    assert start_prefect(prefect_state) == again
    restarted = prefect_database_status(prefect_state)
    assert restarted.state == "running" and restarted.pid != database.pid
    deadline = time.monotonic() + 120
    body = {"name": f"after-restart-{uuid.uuid4().hex[:6]}"}
    while (code := httpx.post(f"{again.api_url}/flows/", json=body, timeout=30).status_code) != 201:
        assert time.monotonic() < deadline, code
        time.sleep(0.5)

    stopped = stop_prefect(prefect_state)
    assert (stopped.state, stopped.alive) == ("stopped", False)
    assert prefect_database_status(prefect_state).state == "stopped"  # stopped with its server


def _prefect_tables(address: str | None) -> set[str]:
    import psycopg

    assert address is not None
    with psycopg.connect(address.replace("/postgres?", "/prefect?"), connect_timeout=30) as conn:
        rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {str(name) for (name,) in rows}


def test_status_of_a_state_dir_without_a_server(tmp_path: Path) -> None:
    status = prefect_status(tmp_path)
    assert (status.state, status.alive, status.pid) == ("stopped", False, None)
