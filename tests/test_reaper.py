"""Stale runs: a live run whose flow died is ended, its call cancelled, its money accounted.

Real ledger (fresh schema), real local executor with a real child process; "later" is an injected
clock for the task, and an aged row for the scheduled flow.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect import flow

from boundary_inference.executor import LocalExecutor
from boundary_inference.ledger import Ledger
from config import Settings, get_settings
from flows import rejection_monitor as monitor
from modal_app.types import InferenceRequest
from tasks.reaper import reap_stale_runs, stale_after_s
from tests.flow_support import configure

MODEL = "builtin-textdiff-v1"


def _claim(ledger: Ledger, frames_version: str) -> str:
    claim = ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version=frames_version, model_version=MODEL
    )
    assert claim["created"]
    return str(claim["run_id"])


def _reserve(ledger: Ledger, run_id: str, amount_usd: float) -> None:
    done = ledger.reserve_budget(
        run_id=run_id,
        tenant_id="demo",
        amount_usd=amount_usd,
        daily_cap_usd=100.0,
        monthly_cap_usd=1000.0,
    )
    assert done["ok"], done


def _reap(ledger: Ledger, executor: Any, settings: Settings, now: dt.datetime) -> list[Any]:
    @flow
    def once() -> list[Any]:
        return reap_stale_runs(ledger, executor, settings, now=now)

    return once()


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_stale_queued_and_running_runs_are_ended_and_accounted(
    ledger: Ledger, tmp_path: Path
) -> None:
    settings = get_settings()
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    executor = LocalExecutor(tmp_path / "jobs")

    # A flow that died between its claim and its spawn, holding a reservation.
    queued = _claim(ledger, "f-queued")
    _reserve(ledger, queued, 0.30)
    # A flow that died while watching: its call (a real child, hung on a FIFO) lives on.
    running = _claim(ledger, "f-running")
    _reserve(ledger, running, 0.50)
    ledger.transition_run(
        run_id=running,
        to_status="running",
        fields={"reserved_cost_usd": 0.50, "worst_case_cost_usd": 0.50},
    )
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    call_id = executor.submit(
        InferenceRequest(
            run_id=running,
            video_uri=str(fifo),
            frame_pairs=[(0, 1)],
            model_version=MODEL,
            deadline_s=600.0,
            heartbeat_timeout_s=300.0,
        )
    )
    ledger.set_call_id(run_id=running, call_id=call_id)
    pid = int((tmp_path / "jobs" / call_id / "pid").read_text())
    # A young live run that must be left alone.
    young = _claim(ledger, "f-young")

    now = dt.datetime.now(dt.UTC)
    assert _reap(ledger, executor, settings, now) == []  # nothing is stale yet

    later = now + dt.timedelta(seconds=stale_after_s(settings, "running") + 60)
    reaped = {r["status"]: r for r in _reap(ledger, executor, settings, later)}
    assert set(reaped) == {"queued", "running"}
    assert reaped["queued"]["run_id"] == queued
    assert reaped["running"]["run_id"] == running
    assert young not in {r["run_id"] for r in reaped.values()}

    # The hung call is gone, not merely forgotten.
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert ledger.get_run(run_id=queued)["status"] == "cancelled"
    ended = ledger.get_run(run_id=running)
    assert ended["status"] == "cancelled" and "reaped" in ended["error"]
    # Released what never ran; charged the worst case of what may have.
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(0.50)
    assert float(spend["daily_actual_usd"]) == pytest.approx(0.50)
    # The dead queued run no longer blocks its key: a new submission is a new run, not a skip.
    again = ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version="f-queued", model_version=MODEL
    )
    assert again["created"]


def test_the_scheduled_monitor_reaps_and_alerts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str, redis_url: str
) -> None:
    env = configure(monkeypatch, tmp_path, dsn=pg_dsn, redis_url=redis_url, stale_queued_s="60")
    env.ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    run_id = _claim(env.ledger, "f1")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # two minutes pass for this row
        conn.execute(
            f'UPDATE "{env.schema}".boundary_inference_runs'
            " SET created_at = now() - interval '2 minutes' WHERE id = %s",
            (run_id,),
        )

    summary = monitor.rejection_monitor_flow()

    assert "boundary-inference.alert.stale-runs" in summary["events"]
    (reaped,) = summary["stale_runs_reaped"]
    assert reaped["run_id"] == run_id and reaped["status"] == "queued"
    assert summary["queue_depth"] == 0  # measured after the reaping
    assert env.ledger.get_run(run_id=run_id)["status"] == "cancelled"


def test_open_reservations_of_ended_runs_are_closed(ledger: Ledger, tmp_path: Path) -> None:
    """A run ended but its settle or release was lost: the reservation would hold its share of
    the caps for the rest of the day and month."""
    settings = get_settings()
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    spawned = _claim(ledger, "f-spawned")
    _reserve(ledger, spawned, 0.40)
    ledger.transition_run(run_id=spawned, to_status="running")
    ledger.set_call_id(run_id=spawned, call_id="local-0123456789abcdef")
    ledger.transition_run(run_id=spawned, to_status="failed")  # ...and its settle was lost
    refused = _claim(ledger, "f-refused")
    _reserve(ledger, refused, 0.25)
    ledger.transition_run(run_id=refused, to_status="rejected")  # ...and its release was lost
    executor = LocalExecutor(tmp_path / "jobs")

    now = dt.datetime.now(dt.UTC)
    assert _reap(ledger, executor, settings, now) == []  # just ended: their flows may be settling
    assert float(ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(0.65)

    later = now + dt.timedelta(seconds=settings.stale_margin_s + 60)
    closed = {r["run_id"]: r for r in _reap(ledger, executor, settings, later)}
    assert set(closed) == {spawned, refused}
    assert "settled" in closed[spawned]["action"] and "released" in closed[refused]["action"]
    spend = ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(0.40)  # the spawned one, in full
    assert float(spend["daily_actual_usd"]) == pytest.approx(0.40)
    assert _reap(ledger, executor, settings, later) == []  # closed once
