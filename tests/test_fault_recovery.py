"""State that survives faults, tested by causing them on the real servers (issue 11):

* Redis ``kill -9`` between two submissions of one video: the cooldown holds;
* Redis restarted empty: nothing is admitted past the rate limit or inside a cooldown;
* Redis frozen (``SIGSTOP``): ``guard_unavailable``, and never a second server;
* PostgreSQL killed mid-admission: the run blocks its video no longer than its lease;
* the watcher (a ``boundary-inference submit`` process) killed after the spawn: the run is settled
  from the call's real result, predictions saved, no worst-case charge; or a new submission of the
  same video takes the call over.

Waits are on conditions (a row appears, a lease runs out in the database's clock, a lock is
waited on), never on how fast this machine is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from boundary_inference.ledger import Ledger, PsycopgTransport
from boundary_inference.local.embedded import redis_status, start_postgres, start_redis, stop_redis
from boundary_inference.local.processes import pid_alive
from boundary_inference.services import reset_services
from flows.lease_reaper import lease_reaper_flow
from tests.flow_support import FlowEnv, MakeEnv, clip_fixture, freeze
from tests.flow_support import flow_outcome as run
from tests.flow_support import job as base

FRAMES = 60


video = clip_fixture("video", seed=7, frames=FRAMES)


def redis_servers(socket_path: Path) -> list[int]:
    """Live redis-server processes serving ``socket_path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "redis-server" in cmdline and str(socket_path) in cmdline and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


# --- Redis -------------------------------------------------------------------------------------


def test_redis_kill_9_between_two_submissions_keeps_the_cooldown(
    make_env: MakeEnv, tmp_path: Path, video: Any
) -> None:
    private = start_redis(tmp_path / "r")
    env = make_env(redis_url=private.url)
    env.register_clip(video, "v1")
    try:
        assert run(**base())["status"] == "succeeded"
        private.stop()  # kill -9 of the daemon
        start_redis(tmp_path / "r")
        # A forced re-run: only the cooldown can refuse it.
        second = run(**base(skip_if_exists=False))
        assert second["rejection_type"] == "cooldown", second
        assert 0 < second["retry_after_s"] <= env.settings.video_cooldown_s
        assert env.executor_calls() == 1
    finally:
        private.stop()


def test_redis_restarted_empty_admits_nothing_past_the_rate_limit(
    make_env: MakeEnv, tmp_path: Path, video: Any
) -> None:
    private = start_redis(tmp_path / "r")
    env = make_env(
        redis_url=private.url,
        global_rate_limit_jobs="2",
        # At 2 jobs an hour at most 4 can fail inside one breaker window: a threshold of 5 could
        # never open the circuit, and is refused at start.
        breaker_failure_threshold="4",
    )
    env.register_clip(video, "v1", "v2", "v3")
    try:
        assert run(**base(video_id="v1"))["status"] == "succeeded"
        assert run(**base(video_id="v2"))["status"] == "succeeded"
        # A production Redis restarted without its data (or a failover to an empty replica).
        private.stop()
        for name in ("appendonly.aof", "dump.rdb"):
            (private.directory / name).unlink(missing_ok=True)
        start_redis(tmp_path / "r")
        third = run(**base(video_id="v3"))
        assert third["rejection_type"] == "rate_limited", third
        again = run(**base(video_id="v1", skip_if_exists=False))
        assert again["rejection_type"] == "cooldown", again
        assert env.executor_calls() == 2
    finally:
        private.stop()


def test_a_frozen_redis_is_unavailable_and_never_gets_a_second_server(
    make_env: MakeEnv, video: Any
) -> None:
    # 3 s: the ledger shares the timeout, and its calls must not hit it on a loaded machine.
    env = make_env(redis_url=None, guard_timeout_s="3")
    env.register_clip(video, "v1", "v2")
    assert run(**base(video_id="v1"))["status"] == "succeeded"  # starts the embedded Redis
    status = redis_status(env.state_dir)
    assert status.state == "running" and status.pid is not None
    socket_path = env.state_dir.resolve() / "redis" / "redis.sock"
    assert redis_servers(socket_path) == [status.pid]
    freeze(status.pid)
    try:
        reset_services()  # as a new process would: no cached client
        refused = run(**base(video_id="v2"))
        assert refused["rejection_type"] == "guard_unavailable", refused
        assert "Timeout" in refused["message"]
        # Three more processes start up meanwhile (the CLI, workers): none starts another server.
        code = "import sys; from pathlib import Path; from boundary_inference.local.embedded import"
        code += " start_redis; print(start_redis(Path(sys.argv[1])).url)"
        for _ in range(3):
            out = subprocess.run(
                [sys.executable, "-c", code, str(env.state_dir)],
                check=True,
                capture_output=True,
                timeout=120,
            )
            assert out.stdout.decode().strip() == f"unix://{socket_path}"
        assert redis_servers(socket_path) == [status.pid]
        assert redis_status(env.state_dir).state == "frozen"
    finally:
        os.kill(status.pid, signal.SIGCONT)
    # Resumed, it still owns its socket and pidfile; nothing was deleted under it.
    after = redis_status(env.state_dir)
    assert (after.state, after.pid) == ("running", status.pid)
    assert socket_path.exists()
    try:
        assert run(**base(video_id="v2"))["status"] == "succeeded"
        assert redis_servers(socket_path) == [status.pid]
    finally:
        stop_redis(env.state_dir)


# --- PostgreSQL --------------------------------------------------------------------------------


def test_postgres_killed_mid_admission_blocks_the_video_no_longer_than_its_lease(
    make_env: MakeEnv, server_dir: Path, video: Any
) -> None:
    """The flow is held inside its budget reservation (the test holds the budget lock: a source
    that blocks until told); PostgreSQL is killed there. Its run stays queued, but only until its
    lease runs out: then the same submission is a new run, not a duplicate."""
    private = start_postgres(server_dir)
    env = make_env(
        dsn=private.dsn,
        guard_timeout_s="60",  # the kill, not a statement timeout, must end the wait
        run_lease_s="3",
    )
    env.register_clip(video, "v1")
    holder = psycopg.connect(private.dsn)
    holder.execute(
        "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{env.schema}.budget",)
    )
    result: dict[str, Any] = {}
    flow = threading.Thread(target=lambda: result.update(run(**base())))
    flow.start()
    try:
        with psycopg.connect(private.dsn, autocommit=True) as watch:
            while not watch.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).fetchone()[0]:
                assert flow.is_alive(), result
                time.sleep(0.05)
        private.stop()  # immediate: every connection dies mid-statement
    finally:
        flow.join(timeout=300)
        holder.close()
    try:
        _after_the_kill(env, server_dir, result)
    finally:
        try:
            private.stop()
        except Exception as error:  # already stopped by a failure above
            print(f"private PostgreSQL not stopped: {error}")


def _after_the_kill(env: FlowEnv, server_dir: Path, result: dict[str, Any]) -> None:
    assert result["rejection_type"] == "guard_unavailable", result
    start_postgres(server_dir)
    reset_services()
    dsn = env.settings.database_url.get_secret_value()  # type: ignore[union-attr]
    ledger = Ledger(PsycopgTransport(dsn, env.schema, timeout_s=5.0))  # a new connection
    (dead,) = ledger.list_runs(limit=5, video_id="v1")
    assert dead["status"] == "queued"  # the ledger was gone: nobody could end it
    while not ledger.expired_leases():  # its lease runs out in the database's clock
        time.sleep(0.1)
    second = run(**base())
    assert second["status"] == "succeeded", second
    assert second["run_id"] != dead["id"]
    ended = ledger.get_run(run_id=dead["id"])
    assert ended["status"] == "cancelled" and "lease expired" in ended["error"]
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(float(second["actual_cost_usd"]))
    ledger.close()


# --- The watcher killed after the spawn ------------------------------------------------------------


def _submit_then_kill_the_watcher(env: FlowEnv, *, resume: bool = True) -> dict[str, Any]:
    """``boundary-inference submit`` in its own process; once its call is recorded, the job is held
    (SIGSTOP) and the submit process killed with SIGKILL; then (``resume``) the job resumes and
    finishes with nobody watching. Returns the run row, with the job's ``worker_pid``."""
    from prefect.settings import PREFECT_API_URL

    child_env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    cmd = [sys.executable, "-m", "boundary_inference.cli.app", "submit", "v1", "--in-process"]
    cmd += ["--frames-version"]
    proc = subprocess.Popen(
        [*cmd, "f1", "--json"], env=child_env, start_new_session=True, stdout=subprocess.DEVNULL
    )
    try:
        row: dict[str, Any] | None = None
        while row is None:
            rows = env.ledger.list_runs(limit=5, video_id="v1")
            row = rows[0] if rows and rows[0].get("executor_call_id") else None
            assert proc.poll() is None, "the submit process ended before spawning"
            time.sleep(0.05)
        job_dir = env.jobs_dir / row["executor_call_id"]
        worker = int((job_dir / "pid").read_text())
        os.kill(worker, signal.SIGSTOP)  # it must not finish while its watcher still lives
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if not resume:
        return {**row, "worker_pid": worker}
    os.kill(worker, signal.SIGCONT)
    while not (job_dir / "result.json").exists():  # the job finishes with nobody watching
        assert pid_alive(worker) or (job_dir / "result.json").exists()
        time.sleep(0.05)
    assert env.ledger.get_run(run_id=row["id"])["status"] == "running"
    return row


def test_a_killed_watcher_s_run_is_settled_from_its_call_s_real_result(
    make_env: MakeEnv, video: Any
) -> None:
    env = make_env(run_lease_s="3")
    env.register_clip(video, "v1")
    row = _submit_then_kill_the_watcher(env)
    while not env.ledger.expired_leases():  # the dead watcher's lease runs out
        time.sleep(0.1)

    # Two passes, as the hourly deployment makes 29: the run is reaped once, by the first.
    result = lease_reaper_flow(passes=2, every_s=0)
    assert result["passes"] == 2
    (reaped,) = result["reaped"]

    assert reaped["run_id"] == row["id"] and reaped["settled_status"] == "succeeded"
    run_row = env.ledger.get_run(run_id=row["id"])
    assert run_row["status"] == "succeeded"
    assert len(env.ledger.get_predictions(run_id=row["id"])) == FRAMES - 1
    actual = float(run_row["actual_cost_usd"])
    assert actual == pytest.approx(
        env.settings.cost_model.billed_cost_usd(float(run_row["gpu_seconds"]))
    )
    assert actual < float(run_row["worst_case_cost_usd"])  # no worst-case charge
    spend = env.ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(actual)
    assert env.executor_calls() == 1


def test_a_new_submission_takes_over_a_killed_watcher_s_call(make_env: MakeEnv, video: Any) -> None:
    """The same video submitted again once the watcher's lease ran out, its call still running:
    not a duplicate "skipped", and no second job: this submission becomes the call's watcher and
    settles it. (The job is held until the takeover, so the flow-start reaper finds it running.)"""
    env = make_env(run_lease_s="3")
    env.register_clip(video, "v1")
    row = _submit_then_kill_the_watcher(env, resume=False)
    while not env.ledger.expired_leases():
        time.sleep(0.1)
    dead_owner = env.ledger.get_run(run_id=row["id"])["lease_owner"]

    def resume_once_taken_over() -> None:
        while True:
            owner = env.ledger.get_run(run_id=row["id"])["lease_owner"]
            if owner != dead_owner and not str(owner).startswith("reaper:"):
                os.kill(row["worker_pid"], signal.SIGCONT)
                return
            time.sleep(0.05)

    resumer = threading.Thread(target=resume_once_taken_over, daemon=True)
    resumer.start()
    try:
        outcome = run(**base())
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have finished and been reaped
            os.kill(row["worker_pid"], signal.SIGCONT)
    resumer.join(timeout=60)

    assert outcome["status"] == "succeeded" and outcome["run_id"] == row["id"], outcome
    assert env.executor_calls() == 1
    run_row = env.ledger.get_run(run_id=row["id"])
    assert run_row["executor_call_id"] == row["executor_call_id"]
    assert float(run_row["actual_cost_usd"]) < float(run_row["worst_case_cost_usd"])
    assert len(env.ledger.get_predictions(run_id=row["id"])) == FRAMES - 1
    assert json.dumps(outcome)  # a plain, serialisable outcome


# --- The bench's faults section measures what these tests claim ------------------------------------


def test_the_bench_fault_figures(pg_dsn: str) -> None:
    from benches.faults import fault_figures

    figures = fault_figures(pg_dsn)
    kill9 = figures["redis_kill9"]
    assert kill9["cooldowns_kept"] == kill9["cooldowns_written"] == kill9["window_kept"] == 50
    empty = figures["redis_restarted_empty"]
    assert empty["admissions_recorded"] == 20 and empty["refused_until_rebuilt"]
    assert empty["allowed_past_limit_after_restart"] == 0
    assert empty["resubmission_in_cooldown"] == "cooldown"
    frozen = figures["redis_frozen"]
    assert frozen["unavailable"] and frozen["servers_after_3_starts"] == 1
    assert frozen["status"] == "frozen"
    pg = figures["postgres_killed"]
    assert pg["ended_run"] == "released" and pg["dead_run_reservation_left_usd"] == 0.0
    watcher = figures["watcher_killed"]
    assert watcher["reaped"] == 1 and watcher["settled_status"] == "succeeded"
    assert watcher["predictions_saved"] == 59
    assert 0 < watcher["charged_usd"] < watcher["worst_case_usd"]
