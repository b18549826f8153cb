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
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from boundary_inference.embedded_prefect import prefect_status, start_prefect, stop_prefect

ROOT = Path(__file__).resolve().parent.parent
STARTER = (
    "import json, sys; from pathlib import Path;"
    " from boundary_inference.embedded_prefect import start_prefect;"
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
    assert (prefect_state / "prefect" / "prefect.db-wal").exists()  # SQLite in WAL mode

    # kill -9: the lock goes with the process; the next start replaces it on the same port.
    os.kill(pid, signal.SIGKILL)
    _wait_stopped(prefect_state)
    assert prefect_status(prefect_state).state == "stopped"
    again = start_prefect(prefect_state)
    assert again.pid != pid and again.port == port

    stopped = stop_prefect(prefect_state)
    assert (stopped.state, stopped.alive) == ("stopped", False)


def test_status_of_a_state_dir_without_a_server(tmp_path: Path) -> None:
    status = prefect_status(tmp_path)
    assert (status.state, status.alive, status.pid) == ("stopped", False, None)
