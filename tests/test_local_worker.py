"""``submit --no-wait``: the job is a run of the ``boundary-inference/default`` deployment, run by
the state dir's worker daemon (started on first use, one per state dir, shown and stopped by
``services``), so the UI can cancel it and the deployment's limit counts it.

Driven through the real entry points: the CLI in its own processes, its embedded Prefect server
(none of the suite's harness), the worker it starts, the flow run that worker starts.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.flow_support import MakeEnv, clip_fixture
from tests.support import run_python

video = clip_fixture("video", seed=11, frames=30)
CLI = ["-m", "boundary_inference.cli"]
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def _cli(*args: str, env: dict[str, str], cwd: Path, timeout_s: float = 300) -> Any:
    return run_python([*CLI, *args], env=env, cwd=cwd, timeout_s=timeout_s)


def _services(env: dict[str, str], cwd: Path) -> dict[str, dict[str, Any]]:
    done = _cli("services", "status", "--json", env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)["services"]}


def _final_flow_run(api_url: str, flow_run_id: str, bound_s: float = 300) -> dict[str, Any]:
    """The flow run once final. ``bound_s`` bounds the test, it does not synchronise it: the
    loop ends on the server's answer."""
    deadline = time.monotonic() + bound_s
    while True:
        run = httpx.get(f"{api_url}/flow_runs/{flow_run_id}", timeout=30).json()
        if run["state"]["type"] in FINAL or time.monotonic() > deadline:
            return dict(run)
        time.sleep(0.5)


@pytest.mark.slow  # an embedded Prefect server, a worker, a flow run process: about a minute
def test_submit_no_wait_is_a_deployment_run_of_the_state_dirs_worker(
    make_env: MakeEnv, video: Any, tmp_path: Path
) -> None:
    env = make_env(clip=video)
    # The CLI's own embedded Prefect server under the test's state dir, not the suite's harness.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    try:
        done = _cli("submit", "v1", "--no-wait", "--json", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        created = json.loads(done.stdout)
        assert created["deployment"] == "boundary-inference/default"
        assert created["flow_run_url"].endswith(f"/runs/flow-run/{created['flow_run_id']}")

        services = _services(cli_env, tmp_path)
        worker, prefect = services["worker"], services["prefect"]
        assert worker["state"] == "running" and worker["pid"] == created["worker_pid"]
        assert worker["address"] == prefect["address"]  # it serves the state dir's server

        run = _final_flow_run(prefect["address"], created["flow_run_id"])
        assert run["state"]["type"] == "COMPLETED", run["state"]
        assert run["deployment_id"] is not None  # a deployment run, not the CLI's own
        (row,) = env.ledger.list_runs(limit=10)
        assert row["status"] == "succeeded" and row["flow_run_id"] == created["flow_run_id"]
        # Its process was the worker's child, not the CLI's (which has exited).
        assert psutil.Process(worker["pid"]).is_running()

        # The same key again: one worker serves it (no second daemon), and dedup skips it.
        done = _cli("submit", "v1", "--no-wait", "--json", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        again = json.loads(done.stdout)
        assert again["worker_pid"] == worker["pid"]
        second = _final_flow_run(prefect["address"], again["flow_run_id"])
        assert second["state"]["type"] == "COMPLETED"
        assert "skipped" in second["tags"]
        assert len(env.ledger.list_runs(limit=10)) == 1
    finally:
        stopped = _cli("services", "stop", env=cli_env, cwd=tmp_path, timeout_s=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "worker: stopped" in stopped.stdout
    assert not psutil.pid_exists(created["worker_pid"]) or (
        psutil.Process(created["worker_pid"]).status() == psutil.STATUS_ZOMBIE
    )
