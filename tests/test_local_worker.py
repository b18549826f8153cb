"""``submit --no-wait``: the job is a run of the ``boundary-inference/default`` deployment, run by
the state dir's worker daemon (started on first use, one per state dir, shown and stopped by
``services``), so the UI can cancel it and the deployment's limit counts it.

Driven through the real entry points: the CLI in its own processes, its embedded Prefect server
(none of the suite's harness), the worker it starts, the flow run that worker starts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from boundary_inference.local.prefect_server import prefect_dir
from tests.flow_support import MakeEnv, clip_fixture
from tests.prefect_template import seed_prefect_cluster
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


@pytest.mark.slow  # an embedded Prefect server, a worker, flow run processes: about a minute
def test_submit_is_a_deployment_run_of_the_state_dirs_worker_waited_on_or_not(
    make_env: MakeEnv, video: Any, tmp_path: Path, prefect_template: Path
) -> None:
    env = make_env(clip=video)
    seed_prefect_cluster(prefect_dir(env.state_dir), prefect_template)  # migrated already
    # The CLI's own embedded Prefect server under the test's state dir, not the suite's harness.
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    try:
        # `services start` starts what a submit would, the worker included; the submit joins it.
        done = _cli("services", "start", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        started = _services(cli_env, tmp_path)["worker"]
        assert started["state"] == "running", started

        # Waited on (the default): the outcome as the in-process path prints it, exit 0.
        done = _cli("submit", "v1", "--json", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        first = json.loads(done.stdout)
        assert first["status"] == "succeeded" and first["details"]["pairs"] == 29, first
        flow_run_id = first["flow_run_url"].rsplit("/", 1)[-1]
        (row,) = env.ledger.list_runs(limit=10)
        assert row["flow_run_id"] == flow_run_id and row["id"] == first["run_id"]
        assert first["actual_cost_usd"] == pytest.approx(float(row["actual_cost_usd"]))

        services = _services(cli_env, tmp_path)
        worker, prefect = services["worker"], services["prefect"]
        assert worker["state"] == "running" and worker["pid"] == started["pid"]
        assert worker["address"] == prefect["address"]  # it serves the state dir's server
        run = _final_flow_run(prefect["address"], flow_run_id)
        assert run["deployment_id"] is not None  # a deployment run, not the CLI's own
        # Its process was the worker's child, not the CLI's (which has exited).
        assert psutil.Process(worker["pid"]).is_running()

        # A refusal waited on: exit 3, the recorded rejection's id to acknowledge.
        bad = ["submit", "v1", "--frames-version", "f2", "--pairs", "[[5, 5]]", "--json"]
        done = _cli(*bad, env=cli_env, cwd=tmp_path)
        assert done.returncode == 3, done.stdout + done.stderr
        refused = json.loads(done.stdout)
        assert (refused["status"], refused["rejection_type"]) == ("rejected", "validation_failed")
        (rejection,) = env.ledger.list_rejections(limit=10)
        assert refused["details"]["rejection_id"] == str(rejection["id"])

        # The same key again: one worker serves it (no second daemon), and dedup skips it.
        done = _cli("submit", "v1", "--no-wait", "--json", env=cli_env, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        again = json.loads(done.stdout)
        assert again["deployment"] == "boundary-inference/default"
        assert again["flow_run_url"].endswith(f"/runs/flow-run/{again['flow_run_id']}")
        assert again["worker_pid"] == worker["pid"]
        second = _final_flow_run(prefect["address"], again["flow_run_id"])
        assert second["state"]["type"] == "COMPLETED"
        assert "skipped" in second["tags"]
        assert len(env.ledger.list_runs(limit=10)) == 1
    finally:
        stopped = _cli("services", "stop", env=cli_env, cwd=tmp_path, timeout_s=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "worker: stopped" in stopped.stdout
    assert not psutil.pid_exists(worker["pid"]) or (
        psutil.Process(worker["pid"]).status() == psutil.STATUS_ZOMBIE
    )


def _blocked_submit(
    env: Any, cli_env: dict[str, str], cwd: Path, frames_version: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A waiting ``submit`` whose job blocks (its video a FIFO nobody writes) once the job has
    started: the process and the job's pid."""
    proc = subprocess.Popen(
        [sys.executable, *CLI, "submit", "v1", "--frames-version", frames_version, "--json"],
        env=cli_env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    before = set(env.jobs_dir.glob("local-*/pid")) if env.jobs_dir.exists() else set()
    deadline = time.monotonic() + 300  # bounds the test; the loop ends on the job's pid file
    while True:
        found = [p for p in env.jobs_dir.glob("local-*/pid") if p not in before and p.read_text()]
        if found:
            return proc, int(found[0].read_text())
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            pytest.fail(f"no job started: {proc.returncode}\n{out.decode()}\n{err.decode()}")
        time.sleep(0.05)


def _until(check: Any, bound_s: float = 300) -> Any:
    deadline = time.monotonic() + bound_s
    while not (value := check()):
        assert time.monotonic() < deadline, "not within the test's bound"
        time.sleep(0.1)
    return value


@pytest.mark.slow  # a Prefect server, a worker, two blocked jobs: about a minute
def test_ctrl_c_cancels_the_job_and_a_killed_worker_ends_the_wait_in_one_line(
    make_env: MakeEnv, tmp_path: Path, prefect_template: Path
) -> None:
    """Ctrl-C on a waiting ``submit`` cancels its deployment run as the UI does: the call is
    cancelled and charged the seconds used, not its worst case. A worker killed under a job ends
    the wait with one line and exit 2 (never a hang on a run nothing will finish)."""
    fifo = tmp_path / "blocks.mp4"
    os.mkfifo(fifo)  # no writer: the job's decoder blocks in open() until it is stopped
    env = make_env(video_cooldown_s="0")  # two jobs of one video, one after the other
    seed_prefect_cluster(prefect_dir(env.state_dir), prefect_template)  # migrated already
    env.register("v1", fifo, 60, None)
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    jobs: list[int] = []
    try:
        proc, job_pid = _blocked_submit(env, cli_env, tmp_path, "f1")
        jobs.append(job_pid)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, (out.decode(), err.decode())
        assert "Traceback" not in err.decode() and "cancel requested" in err.decode()
        run = _until(
            lambda: next(
                (r for r in env.ledger.list_runs(limit=5) if r["status"] == "cancelled"), None
            )
        )
        assert float(run["actual_cost_usd"]) < float(run["worst_case_cost_usd"]), run
        # The reservation is settled to the same figure (a write after the run row's: waited for).
        actual = float(run["actual_cost_usd"])
        _until(
            lambda: abs(float(env.ledger.spend_summary()["daily_committed_usd"]) - actual) < 1e-9
        )
        _until(lambda: not psutil.pid_exists(job_pid) or _zombie(job_pid))  # the call stopped

        worker = _services(cli_env, tmp_path)["worker"]
        proc, job_pid = _blocked_submit(env, cli_env, tmp_path, "f2")
        jobs.append(job_pid)
        os.killpg(worker["pid"], signal.SIGKILL)  # the worker and its flow runs, at once
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, (out.decode(), err.decode())
        (line,) = [line for line in err.decode().splitlines() if line.strip()]
        assert line.startswith("error: the local worker stopped while flow run"), line
        assert "Traceback" not in err.decode()
    finally:
        for pid in jobs:
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)
        _cli("services", "stop", env=cli_env, cwd=tmp_path, timeout_s=120)


def _zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow  # a Prefect server started and killed under a waiting submit: about a minute
def test_a_killed_prefect_server_ends_the_wait_in_one_line(
    make_env: MakeEnv, tmp_path: Path, prefect_template: Path
) -> None:
    """The embedded Prefect server killed (``kill -9``) while ``submit`` waits on its run: exit 2
    with one line that says where the outcome is, never a traceback or a hang."""
    from boundary_inference.local.prefect_server import prefect_status

    fifo = tmp_path / "blocks.mp4"
    os.mkfifo(fifo)
    env = make_env()
    seed_prefect_cluster(prefect_dir(env.state_dir), prefect_template)  # migrated already
    env.register("v1", fifo, 60, None)
    cli_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    cli_env["PREFECT_CLIENT_MAX_RETRIES"] = "1"  # the bounded give-up is the claim, not backoff
    job_pid = None
    try:
        proc, job_pid = _blocked_submit(env, cli_env, tmp_path, "f1")
        server = prefect_status(env.state_dir)
        assert server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 2, (out.decode(), err.decode())
        (line,) = [line for line in err.decode().splitlines() if line.strip()]
        assert line.startswith("error: cannot reach the Prefect API"), line
        assert line.endswith(
            "(the ledger holds what was decided: boundary-inference runs --video v1)"
        )
    finally:
        if job_pid is not None and psutil.pid_exists(job_pid):
            os.kill(job_pid, signal.SIGKILL)
        _cli("services", "stop", env=cli_env, cwd=tmp_path, timeout_s=120)
