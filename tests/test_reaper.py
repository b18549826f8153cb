"""Runs nobody watches: a live run whose watcher died is ended, or its call is asked and settled.

Real ledger (fresh schema), real local executor with real child processes. Time passing is the
database's: a lease or a start moved into the past with SQL. The host clock is never read, which
the skewed-clock test proves by moving it four hours ahead.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import time_machine
from prefect import flow

from boundary_inference.executor import CallState, LocalExecutor
from boundary_inference.ledger import Ledger
from config import Settings, get_settings
from flows import rejection_monitor as monitor
from flows.run.reaper import reap_stale_runs, watch_limit_of
from modal_app.synthetic import make_video
from modal_app.types import InferenceRequest
from tests.flow_support import MODEL, MakeEnv
from tests.support import reserve


def _claim(ledger: Ledger, frames_version: str, *, lease_s: float | None = 60.0) -> str:
    claim = ledger.claim_run(
        video_id="v1",
        tenant_id="demo",
        frames_version=frames_version,
        model_version=MODEL,
        lease_s=lease_s,
        lease_owner=f"flow-{frames_version}" if lease_s else None,
    )
    assert claim["created"]
    return str(claim["run_id"])


def _start(ledger: Ledger, run_id: str, worst_usd: float) -> None:
    reserve(ledger, run_id, worst_usd, tenant_id="demo")
    ledger.transition_run(
        run_id=run_id,
        to_status="running",
        fields={"reserved_cost_usd": worst_usd, "worst_case_cost_usd": worst_usd},
    )


def _sql(ledger: Ledger, dsn: str, statement: str, *args: Any) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement.replace("RUNS", f'"{ledger.schema}".boundary_inference_runs'), args)


def _watcher_died(ledger: Ledger, dsn: str, run_id: str) -> None:
    """Its flow stopped renewing: the lease ran out a second ago, by the database's clock."""
    _sql(
        ledger,
        dsn,
        "UPDATE RUNS SET lease_expires_at = now() - interval '1 s' WHERE id = %s",
        run_id,
    )


def _reap(ledger: Ledger, executor: Any, settings: Settings) -> dict[str, dict[str, Any]]:
    @flow
    def once() -> list[Any]:
        return reap_stale_runs(ledger, executor, settings)

    return {r["run_id"]: r for r in once()}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _request(run_id: str, source: Path, *, pairs: int, deadline_s: float) -> InferenceRequest:
    return InferenceRequest(
        run_id=run_id,
        video_uri=str(source),
        frame_pairs=[(i, i + 1) for i in range(pairs)],
        model_version=MODEL,
        deadline_s=deadline_s,
        heartbeat_timeout_s=300.0,
    )


def _finished(executor: LocalExecutor, call_id: str) -> Any:
    while True:  # the job ends on its own (a real decode); bounded by the test timeout
        status = executor.poll(call_id, timeout_s=1.0)
        if status.state is not CallState.PENDING:
            return status


def test_runs_without_a_watcher_are_ended_or_their_call_asked(
    ledger: Ledger, ledger_dsn: str, tmp_path: Path
) -> None:
    settings = get_settings()
    clip = tmp_path / "clip.mp4"
    make_video(clip, seed=4, frame_count=30)
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=30, fps=25.0, source_uri=str(clip))
    executor = LocalExecutor(tmp_path / "jobs")

    # A flow that died between its claim and its spawn, holding a reservation.
    queued = _claim(ledger, "f-queued")
    reserve(ledger, queued, 0.30, tenant_id="demo")
    # A flow that died while watching a call that then finished on its own.
    done = _claim(ledger, "f-done")
    _start(ledger, done, 0.50)
    done_call = executor.submit(_request(done, clip, pairs=29, deadline_s=600.0))
    ledger.set_call_id(run_id=done, call_id=done_call)
    assert _finished(executor, done_call).state is CallState.SUCCEEDED
    # A flow that died while watching a call that still runs (a decoder hung on a FIFO).
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    hung = _claim(ledger, "f-hung")
    _start(ledger, hung, 0.50)
    hung_call = executor.submit(_request(hung, fifo, pairs=1, deadline_s=600.0))
    ledger.set_call_id(run_id=hung, call_id=hung_call)
    hung_pid = int((tmp_path / "jobs" / hung_call / "pid").read_text())
    # A live run whose flow still renews its lease.
    young = _claim(ledger, "f-young")

    assert _reap(ledger, executor, settings) == {}  # every lease still holds
    for run_id in (queued, done, hung):
        _watcher_died(ledger, ledger_dsn, run_id)

    reaped = _reap(ledger, executor, settings)
    assert set(reaped) == {queued, done, hung}
    assert ledger.get_run(run_id=young)["status"] == "queued"

    assert ledger.get_run(run_id=queued)["status"] == "cancelled"
    assert "released" in reaped[queued]["action"]

    # Settled from the call's real result: predictions saved, measured seconds charged.
    settled = ledger.get_run(run_id=done)
    assert settled["status"] == "succeeded"
    assert len(ledger.get_predictions(run_id=done)) == 29
    actual = float(settled["actual_cost_usd"])
    assert actual == pytest.approx(
        settings.cost_model.billed_cost_usd(float(settled["gpu_seconds"]))
    )
    assert 0 < actual < 0.50  # not the worst case

    # Still running, well within its watch limit: left alone, asked again at the next pass.
    assert "still running" in reaped[hung]["action"]
    assert ledger.get_run(run_id=hung)["status"] == "running" and _alive(hung_pid)
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(actual + 0.50)

    # Its watch limit passes (its start moved back past it): cancelled, charged its worst case.
    limit_s = watch_limit_of(ledger.get_run(run_id=hung), settings)
    _sql(
        ledger,
        ledger_dsn,
        "UPDATE RUNS SET started_at = now() - make_interval(secs => %s) WHERE id = %s",
        limit_s + 1,
        hung,
    )
    again = _reap(ledger, executor, settings)
    assert set(again) == {hung}
    ended = ledger.get_run(run_id=hung)
    assert ended["status"] == "timed_out" and "WatchLimitExceeded" in ended["error"]
    while _alive(hung_pid):  # killed by the cancel; bounded by the test timeout
        time.sleep(0.05)
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(actual + 0.50)
    assert float(spend["daily_actual_usd"]) == pytest.approx(actual + 0.50)
    assert _reap(ledger, executor, settings) == {}  # handled once
    assert ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version="f-queued", model_version=MODEL
    )["created"]


def test_a_run_claimed_without_a_lease_keeps_the_age_rule(
    ledger: Ledger, ledger_dsn: str, tmp_path: Path
) -> None:
    settings = get_settings()
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    old = _claim(ledger, "f-old", lease_s=None)
    reserve(ledger, old, 0.3, tenant_id="demo")
    recent = _claim(ledger, "f-recent", lease_s=None)
    _sql(
        ledger,
        ledger_dsn,
        "UPDATE RUNS SET created_at = now() - make_interval(secs => %s) WHERE id = %s",
        settings.stale_queued_s + 1,
        old,
    )
    reaped = _reap(ledger, LocalExecutor(tmp_path / "jobs"), settings)
    assert set(reaped) == {old}
    assert ledger.get_run(run_id=recent)["status"] == "queued"


def test_watch_limit_is_what_the_admission_priced(tmp_path: Path) -> None:
    settings = get_settings()
    for pairs in (10, 5_000, 25_000):
        deadline = settings.cost_model.deadline_s(pairs, 100.0)
        worst = settings.cost_model.worst_case_cost_usd(pairs, 100.0)
        run = {"worst_case_cost_usd": worst}
        assert watch_limit_of(run, settings) == pytest.approx(
            settings.cost_model.watch_limit_s(deadline)
        )
    assert watch_limit_of({}, settings) == settings.cost_model.watch_limit_s(
        float(settings.gpu_timeout_s)
    )


def test_the_scheduled_monitor_reaps_and_alerts(make_env: MakeEnv, ledger_dsn: str) -> None:
    env = make_env()
    env.ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    run_id = _claim(env.ledger, "f1")
    _watcher_died(env.ledger, ledger_dsn, run_id)

    summary = monitor.rejection_monitor_flow()

    assert "boundary-inference.alert.stale-runs" in summary["events"]
    (reaped,) = summary["stale_runs_reaped"]
    assert reaped["run_id"] == run_id and reaped["status"] == "queued"
    assert summary["queue_depth"] == 0  # measured after the reaping
    assert env.ledger.get_run(run_id=run_id)["status"] == "cancelled"


def test_a_monitor_whose_host_clock_is_hours_ahead_ends_nothing_alive(
    make_env: MakeEnv, tmp_path: Path, ledger_dsn: str
) -> None:
    """The monitor (and the local executor it asks) runs with this process's wall clock four hours
    ahead of the database's. A run started seconds ago, its worker alive, and a run just claimed
    must both be left alone: every age is the database's, every elapsed time the machine's
    monotonic clock."""
    env = make_env()
    env.ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    running = _claim(env.ledger, "f-running")
    _start(env.ledger, running, 0.5)
    executor = LocalExecutor(env.jobs_dir)  # the same jobs the monitor's executor reads
    call_id = executor.submit(_request(running, fifo, pairs=1, deadline_s=600.0))
    env.ledger.set_call_id(run_id=running, call_id=call_id)
    pid = int((env.jobs_dir / call_id / "pid").read_text())
    queued = _claim(env.ledger, "f-queued")
    reserve(env.ledger, queued, 0.3, tenant_id="demo")
    # Someone else's run, whose lease really did expire by the database's clock: ended anyway.
    dead = _claim(env.ledger, "f-dead")
    _watcher_died(env.ledger, ledger_dsn, dead)

    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=4)
    with time_machine.travel(ahead, tick=True):
        assert dt.datetime.now(dt.UTC) > ahead - dt.timedelta(minutes=1)  # really skewed
        summary = monitor.rejection_monitor_flow()

    assert [r["run_id"] for r in summary["stale_runs_reaped"]] == [dead]
    assert env.ledger.get_run(run_id=running)["status"] == "running"
    assert env.ledger.get_run(run_id=queued)["status"] == "queued"
    assert _alive(pid)
    assert executor.poll(call_id, timeout_s=0).state is CallState.PENDING
    assert float(env.ledger.spend_summary()["daily_actual_usd"]) == 0.0  # nothing charged
    executor.cancel(call_id)


def test_open_reservations_of_ended_runs_are_closed(
    ledger: Ledger, ledger_dsn: str, tmp_path: Path
) -> None:
    """A run ended but its settle or release was lost: the reservation would hold its share of
    the caps for the rest of the day and month."""
    settings = get_settings()
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    spawned = _claim(ledger, "f-spawned")
    reserve(ledger, spawned, 0.40, tenant_id="demo")
    ledger.transition_run(run_id=spawned, to_status="running")
    ledger.set_call_id(run_id=spawned, call_id="local-0123456789abcdef")
    ledger.transition_run(run_id=spawned, to_status="failed")  # ...and its settle was lost
    refused = _claim(ledger, "f-refused")
    reserve(ledger, refused, 0.25, tenant_id="demo")
    ledger.transition_run(run_id=refused, to_status="rejected")  # ...and its release was lost
    executor = LocalExecutor(tmp_path / "jobs")

    assert _reap(ledger, executor, settings) == {}  # just ended: their flows may be settling
    assert float(ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(0.65)

    _sql(  # they ended longer ago than the margin, by the database's clock
        ledger,
        ledger_dsn,
        "UPDATE RUNS SET finished_at = now() - make_interval(secs => %s) WHERE id IN (%s, %s)",
        settings.stale_margin_s + 60,
        spawned,
        refused,
    )
    closed = _reap(ledger, executor, settings)
    assert set(closed) == {spawned, refused}
    assert "settled" in closed[spawned]["action"] and "released" in closed[refused]["action"]
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(0.40)  # the spawned one, in full
    assert float(spend["daily_actual_usd"]) == pytest.approx(0.40)
    assert _reap(ledger, executor, settings) == {}  # closed once


def _started_modal_run(
    ledger: Ledger, tmp_path: Path, frames_version: str
) -> tuple[Settings, Path, str, float]:
    """A registered 40-pair clip and a run claimed and started for it on the Modal executor:
    its settings, clip, run id and reserved worst case."""
    settings = get_settings(executor="modal")
    clip = tmp_path / "clip.mp4"
    make_video(clip, seed=6, frame_count=41)
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=41, fps=25.0, source_uri=str(clip))
    run_id = _claim(ledger, frames_version)
    worst = settings.cost_model.worst_case_cost_usd(40, settings.default_throughput_pairs_per_s)
    _start(ledger, run_id, worst)
    return settings, clip, run_id, worst


def test_a_modal_call_is_asked_by_its_id_from_another_process(
    ledger: Ledger, ledger_dsn: str, tmp_path: Path
) -> None:
    """The Modal side: the watcher spawned a call and died; the reaper, a fresh executor that knows
    only the call id (``FunctionCall.from_id`` on the signature-checked double of
    test_modal_executor, the function body real), settles it from its result, at the seconds the
    function recorded over its attempts."""
    from tests.modal_double import FakeCloud, executor_for, make_request

    settings, clip, run_id, worst = _started_modal_run(ledger, tmp_path, "f-modal")
    cloud = FakeCloud(settings)
    call_id = executor_for(cloud).submit(make_request(clip, run_id=run_id))
    ledger.set_call_id(run_id=run_id, call_id=call_id)
    cloud.join()  # the call finished; its watcher is gone
    _watcher_died(ledger, ledger_dsn, run_id)

    reaped = _reap(ledger, executor_for(cloud), settings)

    assert reaped[run_id]["settled_status"] == "succeeded"
    row = ledger.get_run(run_id=run_id)
    assert row["status"] == "succeeded" and len(ledger.get_predictions(run_id=run_id)) == 40
    assert float(row["actual_cost_usd"]) == pytest.approx(
        settings.cost_model.billed_cost_usd(float(row["gpu_seconds"]))
    )
    assert float(row["actual_cost_usd"]) < worst


def test_a_call_whose_spawn_answer_was_lost_is_found_by_its_run_id(
    ledger: Ledger, ledger_dsn: str, tmp_path: Path
) -> None:
    """The watcher's spawn raised modal's real ``ConnectionError`` after the server had accepted
    the call, and the watcher died before it found the call: the run is ``running`` with no call
    id. The reaper fences the run, finds the call the function recorded under the run id, and
    settles it from its result (it used to cancel the run and charge its worst case while the
    call ran on, unwatched)."""
    import modal.exception as modal_exc

    from tests.modal_double import FakeCloud, executor_for, make_request

    settings, clip, run_id, worst = _started_modal_run(ledger, tmp_path, "f-lost")
    cloud = FakeCloud(settings)
    cloud.answer_lost = modal_exc.ConnectionError("Deadline exceeded")
    with pytest.raises(Exception, match="a call may be running"):
        executor_for(cloud).submit(make_request(clip, run_id=run_id))
    cloud.join()
    _watcher_died(ledger, ledger_dsn, run_id)

    reaped = _reap(ledger, executor_for(cloud), settings)

    (call,) = cloud.calls.values()
    assert reaped[run_id]["executor_call_id"] == call.object_id
    assert reaped[run_id]["settled_status"] == "succeeded"
    row = ledger.get_run(run_id=run_id)
    assert row["status"] == "succeeded" and row["executor_call_id"] == call.object_id
    assert float(row["actual_cost_usd"]) < worst
