"""Faults caused for real: stores killed, a decoder that hangs, a flow that times out, and many
submissions of one video at once (threads and separate processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client

from boundary_inference.executor import LocalExecutor
from boundary_inference.local.embedded import start_postgres, start_redis
from boundary_inference.local.processes import pid_alive
from boundary_inference.outcome import outcome_of
from flows.boundary_inference import boundary_inference_flow
from tests.flow_support import MODEL, FlowEnv, MakeEnv, clip_fixture
from tests.flow_support import job as base
from tests.flow_support import run_flow as run

FRAMES = 60


video = clip_fixture("video", seed=5, frames=FRAMES)


def refused_while_down(server: Any) -> dict[str, Any]:
    """Stop ``server`` (a store the flow needs), then submit v1: refused, ``guard_unavailable``."""
    server.stop()
    state, outcome = run(**base())
    # An outage is red: Failed by its standard name, the refusal's type in its message.
    assert (state.type.value, state.name) == ("FAILED", "Failed"), state
    assert state.message.startswith("rejected: guard_unavailable: ")
    assert outcome["rejection_type"] == "guard_unavailable"
    with get_client(sync_client=True) as client:  # as the server (and its UI) holds it
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert (flow_run.state.type.value, flow_run.state.name) == ("FAILED", "Failed")
    assert {"rejected", "rejected:guard_unavailable"} <= set(flow_run.tags)
    return outcome


def test_redis_down_fails_closed_and_is_recorded(
    make_env: MakeEnv, tmp_path: Path, video: Any
) -> None:
    private = start_redis(tmp_path / "r")
    env = make_env(redis_url=private.url, guard_timeout_s="1")
    env.register_clip(video)
    refused_while_down(private)
    assert env.executor_calls() == 0
    (row,) = env.ledger.list_rejections(unacknowledged_only=True, limit=10)
    assert row["rejection_type"] == "guard_unavailable"
    # Nothing stays reserved for a job that never ran.
    assert float(env.ledger.spend_summary()["daily_committed_usd"]) == 0.0


def test_postgres_down_fails_closed(make_env: MakeEnv, server_dir: Path, video: Any) -> None:
    private = start_postgres(server_dir, stop_at_exit=True)
    env = make_env(dsn=private.dsn, guard_timeout_s="2")
    env.register_clip(video)
    outcome = refused_while_down(private)
    assert outcome["rejection_id"] is None  # the ledger was what was down: reported, not recorded
    assert env.executor_calls() == 0


def test_hung_decoder_is_killed_at_the_deadline(make_env: MakeEnv, tmp_path: Path) -> None:
    # A FIFO with no writer: opening it blocks forever inside the native decoder.
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    env = make_env(
        min_deadline_s="2",
        deadline_factor="1",
        cold_start_s="0",
    )
    env.register("v1", fifo, FRAMES, None)
    state, outcome = run(**base())
    assert state.is_failed()
    assert outcome["status"] == "timed_out", outcome
    run_row = env.ledger.get_run(run_id=outcome["run_id"])
    assert run_row["status"] == "timed_out" and run_row["failure_kind"] == "timeout"
    # A timeout says something about the service: it counts towards the breaker.
    status = env.ledger.breaker_status(name="gpu-inference", window_s=3600)
    assert int(status["failures_in_window"]) == 1


class TimesOutWhileWatching(LocalExecutor):
    """A flow timeout as the watch sees it: Prefect raises ``TimeoutError`` inside the running
    flow. Raised at the first poll, so always after the spawn and its recorded call id, however
    long the guards before it took (a real ``timeout_seconds`` races them on a slow machine)."""

    def poll(self, call_id: str, *, timeout_s: float) -> Any:
        raise TimeoutError("Flow run exceeded timeout")


def test_flow_timeout_cancels_the_call(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import boundary_inference.services as services

    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    env = make_env()
    env.register("v1", fifo, FRAMES, None)
    monkeypatch.setattr(
        services, "open_executor", lambda settings: TimesOutWhileWatching(env.jobs_dir)
    )
    state = boundary_inference_flow(**base(), return_state=True)
    assert state.is_failed()
    (job_dir,) = env.jobs_dir.glob("local-*")
    pid = int((job_dir / "pid").read_text())
    while pid_alive(pid):  # killed by the cancel; bounded by the test timeout
        time.sleep(0.05)
    (run_row,) = env.ledger.list_runs(limit=5, video_id="v1")
    assert run_row["status"] == "cancelled" and "TimeoutError" in run_row["error"]
    # Spawned, so nothing is refunded: the worst case stays charged.
    assert float(env.ledger.spend_summary()["daily_actual_usd"]) == pytest.approx(
        float(run_row["worst_case_cost_usd"])
    )


def test_concurrent_submissions_threads_spawn_once(env_threads: FlowEnv) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda _: run(**base())[1], range(8)))
    statuses = sorted(o["status"] for o in outcomes)
    others = [o for o in outcomes if o["status"] not in ("succeeded", "skipped")]
    assert statuses.count("succeeded") == 1, (statuses, others)
    assert statuses.count("skipped") == 7, (statuses, others)
    assert len({o["run_id"] for o in outcomes}) == 1
    assert env_threads.executor_calls() == 1


@pytest.fixture
def env_threads(make_env: MakeEnv, video: Any) -> FlowEnv:
    env = make_env()
    env.register_clip(video)
    return env


def test_concurrent_submissions_processes_spawn_once(env_threads: FlowEnv) -> None:
    from prefect.settings import PREFECT_API_URL

    child_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    cmd = [
        sys.executable,
        "-m",
        "boundary_inference.cli.app",
        "submit",
        "--in-process",
        "v1",
        "--frames-version",
        "f1",
        "--json",
    ]
    procs = [
        subprocess.Popen(cmd, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    outcomes = []
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()[-2000:]
        outcomes.append(json.loads(out))
    statuses = sorted(o["status"] for o in outcomes)
    assert statuses == ["skipped", "skipped", "succeeded"], statuses
    assert env_threads.executor_calls() == 1
    with psycopg.connect(env_threads.settings.database_url.get_secret_value()) as conn:  # type: ignore[union-attr]
        count = conn.execute(
            f'SELECT count(*) FROM "{env_threads.schema}".boundary_inference_runs'
        ).fetchone()
    assert count == (1,)


_FLOW_IN_A_CHILD = """
import sys
from flows.boundary_inference import boundary_inference_flow
boundary_inference_flow(video_id="v1", frames_version="f1", model_version=sys.argv[1])
"""


def test_retried_flow_run_reattaches_to_its_call_instead_of_spawning_again(
    make_env: MakeEnv, video: Any
) -> None:
    """The flow process is SIGKILLed after the spawn (no chance to cancel anything); the call
    lives on. Retrying that flow run (same id, as the UI's Retry does) watches the same call and
    settles it: one executor call in all, one cooldown and one reservation."""
    import signal

    from prefect.client.orchestration import get_client
    from prefect.flow_engine import run_flow
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Scheduled

    env = make_env()
    env.register_clip(video)
    child_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    flow_proc = subprocess.Popen(
        [sys.executable, "-c", _FLOW_IN_A_CHILD, MODEL], env=child_env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        row: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            rows = env.ledger.list_runs(limit=5, video_id="v1")
            if rows and rows[0].get("executor_call_id"):
                row = rows[0]
                break
            assert flow_proc.poll() is None, "the flow process ended before spawning"
            time.sleep(0.05)
        assert row is not None, "no call id was recorded within 120 s"
        worker_pid = int((env.jobs_dir / row["executor_call_id"] / "pid").read_text())
        # Hold the job so it cannot finish before its watcher dies, then kill the watcher hard.
        os.kill(worker_pid, signal.SIGSTOP)
        os.killpg(flow_proc.pid, signal.SIGKILL)
        flow_proc.wait(timeout=10)
    finally:
        if flow_proc.poll() is None:
            os.killpg(flow_proc.pid, signal.SIGKILL)
    os.kill(worker_pid, signal.SIGCONT)
    assert env.ledger.get_run(run_id=row["id"])["status"] == "running"

    flow_run_id = row["flow_run_id"]
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
        flow_run = client.read_flow_run(flow_run_id)
    state = run_flow(
        boundary_inference_flow,
        flow_run=flow_run,
        parameters={"video_id": "v1", "frames_version": "f1", "model_version": MODEL},
        return_type="state",
    )
    outcome = outcome_of(state)
    assert outcome["status"] == "succeeded", outcome
    assert outcome["run_id"] == str(row["id"])
    assert env.executor_calls() == 1
    settled = env.ledger.get_run(run_id=row["id"])
    assert settled["status"] == "succeeded"
    assert settled["executor_call_id"] == row["executor_call_id"]
    assert float(settled["actual_cost_usd"]) > 0
    # The reservation was settled to the actual cost, not left reserved.
    spend = env.ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(
        float(settled["actual_cost_usd"]), rel=1e-6
    )


def test_ledger_lost_after_the_spawn_is_a_failure_that_keeps_the_money_and_quota(
    make_env: MakeEnv, tmp_path: Path, server_dir: Path, redis_url: str, video: Any
) -> None:
    """PostgreSQL dies while the job runs; settling then fails. The job was spawned, so this is
    no "rejection, nothing spawned": the reservation stays at the worst case, the cooldown is
    not refunded, and the run stays live for the stale-run reaper."""
    import threading

    from boundary_inference.ledger import Ledger, PsycopgTransport
    from boundary_inference.limiter import Limiter, open_redis_client

    private = start_postgres(server_dir)
    env = make_env(
        dsn=private.dsn,
        guard_timeout_s="2",
        min_deadline_s="3",
        deadline_factor="1",
        cold_start_s="0",
    )
    env.register_clip(video)
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    env.register("v2", fifo, FRAMES, None)  # hangs until its 3 s deadline: time to kill the DB
    result: dict[str, Any] = {}

    def submit() -> None:
        result["state"] = boundary_inference_flow(**base(video_id="v2"), return_state=True)

    thread = threading.Thread(target=submit)
    thread.start()
    deadline = time.monotonic() + 120
    run_row: dict[str, Any] | None = None
    while time.monotonic() < deadline and run_row is None:
        rows = env.ledger.list_runs(limit=5, video_id="v2")
        run_row = rows[0] if rows and rows[0].get("executor_call_id") else None
        time.sleep(0.05)
    assert run_row is not None, "no call was spawned"
    private.stop()
    thread.join(timeout=120)
    state = result["state"]
    assert state.is_failed() and not state.message.startswith("rejected: "), state

    start_postgres(server_dir)
    ledger = Ledger(PsycopgTransport(private.dsn, env.schema, timeout_s=5.0))  # a new connection
    row = ledger.get_run(run_id=run_row["id"])
    assert row["status"] == "running"  # for the reaper: nobody knows what the call billed
    assert float(ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(
        float(row["worst_case_cost_usd"])
    )
    assert ledger.list_rejections(unacknowledged_only=False, limit=10) == []
    limiter = Limiter(open_redis_client(redis_url, timeout_s=5), prefix=env.redis_prefix)
    # The cooldown still holds: quota a spawned job took is not given back.
    assert limiter.cooldown_remaining_s("v2") > 0
