"""Every ledger SQL function, through Ledger + PsycopgTransport, on the real embedded Postgres."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from typing import Any

import psycopg
import pytest

from boundary_inference.ledger import (
    IllegalTransition,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    PsycopgTransport,
    RunNotFound,
)
from tests.support import RUN_KEY as KEY
from tests.support import T0, try_reserve


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


@pytest.fixture
def video(ledger: Ledger) -> dict:
    return ledger.upsert_video(id="v1", tenant_id="t1", frame_count=1000, fps=25.0)


def finish(ledger: Ledger, run_id: str, status: str = "succeeded", **fields: object) -> dict:
    ledger.transition_run(run_id=run_id, to_status="running")
    return ledger.transition_run(run_id=run_id, to_status=status, **fields)  # type: ignore[arg-type]


# --- health, videos -------------------------------------------------------------------------------


def test_ping_names_the_schema(ledger: Ledger) -> None:
    pong = ledger.ping()
    assert pong["ok"] is True
    assert pong["schema"] == ledger.schema


def test_upsert_video_inserts_updates_and_keeps_tenant(ledger: Ledger) -> None:
    crop = {"x": 1, "y": 2, "width": 30, "height": 40}
    row = ledger.upsert_video(
        id="v1", tenant_id="t1", frame_count=10, fps=25.0, source_uri="s3://a", crop_box=crop
    )
    assert row["crop_box"] == crop and row["frame_count"] == 10
    row = ledger.upsert_video(id="v1", tenant_id="t1", frame_count=20, fps=30.0)
    assert row["frame_count"] == 20 and row["crop_box"] is None
    assert ledger.get_video(id="v1")["fps"] == 30.0
    assert ledger.get_video(id="nope") is None
    with pytest.raises(LedgerError) as info:
        ledger.upsert_video(id="v1", tenant_id="t2", frame_count=20, fps=30.0)
    assert info.value.code == "BI403"


@pytest.mark.parametrize(
    ("frame_count", "fps", "crop"),
    [(0, 25.0, None), (10, 0.0, None), (10, 25.0, {"x": 1})],
)
def test_upsert_video_rejects_bad_values(
    ledger: Ledger, frame_count: int, fps: float, crop: dict | None
) -> None:
    with pytest.raises(LedgerError) as info:
        ledger.upsert_video(id="v", tenant_id="t", frame_count=frame_count, fps=fps, crop_box=crop)
    assert info.value.code == "23514"  # check_violation
    assert not isinstance(info.value, LedgerUnavailable)


# --- claim_run ------------------------------------------------------------------------------------


def test_claim_creates_then_returns_live_run(ledger: Ledger, video: dict) -> None:
    first = ledger.claim_run(**KEY, pairs=999, priority="high", flow_run_id="fr-1")
    assert first["created"] is True and first["status"] == "queued"
    assert first["rerun_of"] is None
    again = ledger.claim_run(**KEY, pairs=999)
    assert again == {**first, "created": False}
    forced = ledger.claim_run(**KEY, pairs=999, force=True)
    assert forced["run_id"] == first["run_id"] and forced["created"] is False  # live wins
    run = ledger.get_run(run_id=first["run_id"])
    assert run["priority"] == "high" and run["flow_run_id"] == "fr-1" and run["pairs"] == 999
    ledger.transition_run(run_id=first["run_id"], to_status="running")
    running = ledger.claim_run(**KEY, force=True)
    assert running["created"] is False and running["status"] == "running"


def test_claim_after_success_returns_it_unless_forced(ledger: Ledger, video: dict) -> None:
    first = ledger.claim_run(**KEY)
    finish(ledger, first["run_id"])
    same = ledger.claim_run(**KEY)
    assert same["run_id"] == first["run_id"]
    assert same["created"] is False and same["status"] == "succeeded"
    rerun = ledger.claim_run(**KEY, force=True)
    assert rerun["created"] is True and rerun["rerun_of"] == first["run_id"]
    # Another frames/model version is another key.
    other = ledger.claim_run(**{**KEY, "model_version": "m2"})
    assert other["created"] is True and other["rerun_of"] is None


def test_claim_after_failure_creates_a_new_run(ledger: Ledger, video: dict) -> None:
    first = ledger.claim_run(**KEY)
    finish(ledger, first["run_id"], "failed", error="boom", failure_kind="executor")
    second = ledger.claim_run(**KEY)
    assert second["created"] is True and second["run_id"] != first["run_id"]
    assert second["rerun_of"] is None  # only a succeeded run is "re-run"


def test_claim_unknown_video_or_wrong_tenant(ledger: Ledger, video: dict) -> None:
    with pytest.raises(RunNotFound):
        ledger.claim_run(**{**KEY, "video_id": "missing"})
    with pytest.raises(LedgerError) as info:
        ledger.claim_run(**{**KEY, "tenant_id": "t2"})
    assert info.value.code == "BI403"


def test_partial_unique_index_backstops_the_lock(
    ledger: Ledger, video: dict, ledger_dsn: str
) -> None:
    ledger.claim_run(**KEY)
    with (
        psycopg.connect(ledger_dsn, autocommit=True) as conn,
        pytest.raises(psycopg.errors.UniqueViolation),
    ):
        conn.execute(
            f"INSERT INTO {ledger.schema}.boundary_inference_runs"
            " (video_id, tenant_id, frames_version, model_version, status)"
            " VALUES ('v1', 't1', 'f1', 'm1', 'running')"
        )


# --- transition_run / set_call_id ---------------------------------------------------------------

LEGAL = {
    "queued": {"running", "rejected", "cancelled", "failed"},
    "running": {"succeeded", "failed", "cancelled", "timed_out"},
}
STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "timed_out", "rejected"]


def _run_in(ledger: Ledger, status: str) -> str:
    """A fresh run (own video) brought to ``status`` by legal moves."""
    vid = f"v-{uuid.uuid4().hex[:8]}"
    ledger.upsert_video(id=vid, tenant_id="t1", frame_count=10, fps=1.0)
    run_id = ledger.claim_run(**{**KEY, "video_id": vid})["run_id"]
    if status == "queued":
        return run_id
    if status in LEGAL["queued"]:
        ledger.transition_run(run_id=run_id, to_status=status)
        return run_id
    ledger.transition_run(run_id=run_id, to_status="running")
    ledger.transition_run(run_id=run_id, to_status=status)
    return run_id


def test_state_machine_allows_exactly_the_legal_edges(ledger: Ledger) -> None:
    """All 7 x 7 (from, to) pairs: legal ones succeed, every other one raises BI409."""
    for source in STATUSES:
        for target in STATUSES:
            run_id = _run_in(ledger, source)
            if target in LEGAL.get(source, set()):
                row = ledger.transition_run(run_id=run_id, to_status=target)
                assert row["status"] == target
            else:
                with pytest.raises(IllegalTransition) as info:
                    ledger.transition_run(run_id=run_id, to_status=target)
                assert info.value.code == "BI409"
                assert ledger.get_run(run_id=run_id)["status"] == source


def test_transition_sets_fields_and_timestamps(ledger: Ledger, video: dict) -> None:
    run_id = ledger.claim_run(**KEY)["run_id"]
    running = ledger.transition_run(
        run_id=run_id,
        to_status="running",
        now=at(0),
        executor_call_id="fc-1",
        attempts=1,
        estimated_cost_usd=0.25,
        worst_case_cost_usd=0.9,
        reserved_cost_usd=0.9,
    )
    assert running["started_at"] == at(0).isoformat()
    assert running["finished_at"] is None
    assert running["executor_call_id"] == "fc-1" and running["attempts"] == 1
    assert running["worst_case_cost_usd"] == 0.9
    done = ledger.transition_run(
        run_id=run_id,
        to_status="succeeded",
        now=at(60),
        fields={"actual_cost_usd": 0.02, "gpu_seconds": 55.5, "pairs_per_s": 18.0},
    )
    assert done["started_at"] == at(0).isoformat()
    assert done["finished_at"] == at(60).isoformat()
    assert done["actual_cost_usd"] == 0.02 and done["pairs_per_s"] == 18.0
    assert done["executor_call_id"] == "fc-1"  # untouched fields are kept


def test_transition_refuses_unknown_run_status_and_fields(ledger: Ledger, video: dict) -> None:
    with pytest.raises(RunNotFound) as info:
        ledger.transition_run(run_id=uuid.uuid4(), to_status="running")
    assert info.value.code == "BI404"
    run_id = ledger.claim_run(**KEY)["run_id"]
    with pytest.raises(IllegalTransition):
        ledger.transition_run(run_id=run_id, to_status="exploded")
    with pytest.raises(ValueError, match="unknown run fields"):
        ledger.transition_run(run_id=run_id, to_status="running", fields={"status": "x"})
    with pytest.raises(LedgerError) as bad:  # the SQL refuses too, for other clients
        ledger.transport.call(
            "transition_run",
            {"p_run_id": run_id, "p_to_status": "running", "p_fields": {"video_id": "x"}},
        )
    assert bad.value.code == "BI400"
    assert ledger.get_run(run_id=run_id)["status"] == "queued"


def test_set_call_id_only_while_live(ledger: Ledger, video: dict) -> None:
    run_id = ledger.claim_run(**KEY)["run_id"]
    assert ledger.set_call_id(run_id=run_id, call_id="fc-a")["executor_call_id"] == "fc-a"
    ledger.transition_run(run_id=run_id, to_status="running")
    assert ledger.set_call_id(run_id=run_id, call_id="fc-b")["executor_call_id"] == "fc-b"
    ledger.transition_run(run_id=run_id, to_status="cancelled")
    with pytest.raises(IllegalTransition):
        ledger.set_call_id(run_id=run_id, call_id="fc-c")
    with pytest.raises(RunNotFound):
        ledger.set_call_id(run_id=uuid.uuid4(), call_id="fc-d")


def test_get_and_list_runs(ledger: Ledger, video: dict) -> None:
    assert ledger.get_run(run_id=uuid.uuid4()) is None
    assert ledger.list_runs() == []
    ledger.upsert_video(id="v2", tenant_id="t1", frame_count=10, fps=1.0)
    a = ledger.claim_run(**KEY)["run_id"]
    b = ledger.claim_run(**{**KEY, "video_id": "v2"})["run_id"]
    ledger.transition_run(run_id=b, to_status="running")
    assert [r["id"] for r in ledger.list_runs()] == [b, a]  # newest first
    assert [r["id"] for r in ledger.list_runs(limit=1)] == [b]
    assert [r["id"] for r in ledger.list_runs(video_id="v1")] == [a]
    assert [r["id"] for r in ledger.list_runs(status="running")] == [b]


def test_runs_finished_between_reads_a_window_of_finish_times(ledger: Ledger) -> None:
    first = _run_in(ledger, "succeeded")
    second = _run_in(ledger, "failed")
    _run_in(ledger, "running")  # not finished: in no window
    runs = ledger.list_runs()
    finished = sorted(dt.datetime.fromisoformat(r["finished_at"]) for r in runs if r["finished_at"])
    start, last = finished[0], finished[-1]
    window = ledger.runs_finished_between(start=start - dt.timedelta(hours=1))
    assert [r["id"] for r in window] == [first, second]  # oldest first, the live run left out
    assert ledger.runs_finished_between(start=start, end=start) == []  # [start, end): empty
    after = last + dt.timedelta(microseconds=1)
    assert ledger.runs_finished_between(start=after) == []
    assert [r["id"] for r in ledger.runs_finished_between(start=start, end=after, limit=1)] == [
        first
    ]


def test_run_counts_count_the_windows(ledger: Ledger) -> None:
    for status in ("succeeded", "failed", "timed_out", "cancelled", "running", "queued"):
        _run_in(ledger, status)
    hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    counts = ledger.run_counts(finished_since=hour_ago, created_since=hour_ago)
    # Four ended (the live two have no finish), two of them failed or timed out; six created.
    assert counts == {"finished": 4, "failed": 2, "created": 6}
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    assert ledger.run_counts(finished_since=later, created_since=later) == {
        "finished": 0,
        "failed": 0,
        "created": 0,
    }


def test_queue_depth_counts_live_runs(ledger: Ledger) -> None:
    assert ledger.queue_depth() == {"queued": 0, "running": 0, "total": 0}
    _run_in(ledger, "queued")
    _run_in(ledger, "queued")
    _run_in(ledger, "running")
    _run_in(ledger, "succeeded")
    _run_in(ledger, "rejected")
    assert ledger.queue_depth() == {"queued": 2, "running": 1, "total": 3}


def test_recent_throughput_reads_distinct_pairs_over_gpu_seconds(ledger: Ledger) -> None:
    """Succeeded runs of one (model, executor, GPU type), newest ``runs``, each as
    unique_pairs / gpu_seconds, oldest first, and their percentile (migration 20261130200000;
    the calibration rule on top is tests/test_calibration.py's)."""
    where = {"executor": "local", "gpu_type": "cpu"}
    empty = ledger.recent_throughput(model_version="m1", **where)
    assert (empty["pairs_per_s"], empty["runs"], empty["samples"]) == (None, 0, [])
    for i, gpu_s in enumerate([10.0, 5.0, 2.0]):  # 100 pairs: 10, 20, 50 pairs/s
        vid = f"v{i}"
        ledger.upsert_video(id=vid, tenant_id="t1", frame_count=10, fps=1.0)
        run_id = ledger.claim_run(**{**KEY, "video_id": vid})["run_id"]
        ledger.transition_run(
            run_id=run_id, to_status="running", now=at(i), unique_pairs=100, **where
        )
        ledger.transition_run(
            run_id=run_id, to_status="succeeded", now=at(i + 1), gpu_seconds=gpu_s, pairs_per_s=9e9
        )
    failed = _run_in(ledger, "running")
    ledger.transition_run(run_id=failed, to_status="failed", gpu_seconds=0.001)
    found = ledger.recent_throughput(model_version="m1", runs=20, percentile=0.5, **where)
    assert (found["pairs_per_s"], found["runs"], found["samples"]) == (20.0, 3, [10.0, 20.0, 50.0])
    newest = ledger.recent_throughput(model_version="m1", runs=2, percentile=0.5, **where)
    assert (newest["pairs_per_s"], newest["samples"]) == (35.0, [20.0, 50.0])
    assert ledger.recent_throughput(model_version="other", **where)["runs"] == 0
    assert (
        ledger.recent_throughput(model_version="m1", executor="modal", gpu_type="A10G")["runs"] == 0
    )


# --- budget ---------------------------------------------------------------------------------------

CAPS: dict[str, Any] = {"daily_cap_usd": 2.0, "monthly_cap_usd": 3.0}
reserve = functools.partial(try_reserve, caps=CAPS)


def test_reserve_until_daily_then_monthly_cap(ledger: Ledger) -> None:
    first = reserve(ledger, 1.5)
    assert first["ok"] is True and first["reason"] is None
    assert first["daily_committed_usd"] == 1.5
    assert reserve(ledger, 0.5)["ok"] is True  # exactly at the cap is allowed
    refused = reserve(ledger, 0.01)
    assert refused == {**refused, "ok": False, "reason": "daily_cap", "daily_committed_usd": 2.0}
    # Next UTC day: the daily total restarts, the month does not.
    next_day = T0 + dt.timedelta(days=1)
    assert reserve(ledger, 1.0, now=next_day)["ok"] is True
    assert reserve(ledger, 0.5, now=next_day)["reason"] == "monthly_cap"
    # Next month: both restart.
    assert reserve(ledger, 2.0, now=dt.datetime(2030, 2, 1, tzinfo=dt.UTC))["ok"] is True


def test_reserve_days_are_utc(ledger: Ledger) -> None:
    late = dt.datetime(2030, 1, 15, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    reserve(ledger, 2.0, now=late)  # 04:30 UTC on Jan 16
    assert ledger.spend_summary(now=late)["day"] == "2030-01-16"
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 0


def test_tenant_caps(ledger: Ledger) -> None:
    caps = {
        "daily_cap_usd": 100.0,
        "monthly_cap_usd": 100.0,
        "tenant_daily_cap_usd": 1.0,
        "tenant_monthly_cap_usd": 1.5,
    }
    assert reserve(ledger, 1.0, tenant="a", **caps)["ok"] is True
    assert reserve(ledger, 0.5, tenant="a", **caps)["reason"] == "tenant_daily_cap"
    assert reserve(ledger, 1.0, tenant="b", **caps)["ok"] is True  # another tenant's own cap
    tomorrow = T0 + dt.timedelta(days=1)
    assert reserve(ledger, 0.5, tenant="a", now=tomorrow, **caps)["ok"] is True
    assert reserve(ledger, 0.5, tenant="a", now=tomorrow, **caps)["reason"] == (
        "tenant_monthly_cap"
    )
    # Without tenant caps only the global caps apply.
    assert (
        reserve(ledger, 0.5, tenant="a", now=tomorrow, daily_cap_usd=100.0, monthly_cap_usd=100.0)[
            "ok"
        ]
        is True
    )


def test_reserve_is_idempotent_per_run(ledger: Ledger) -> None:
    run_id = str(uuid.uuid4())
    assert reserve(ledger, 1.5, run_id=run_id)["idempotent"] is False
    again = reserve(ledger, 1.5, run_id=run_id)
    assert again["ok"] is True and again["idempotent"] is True
    assert again["daily_committed_usd"] == 1.5  # charged once
    assert reserve(ledger, 1.0)["reason"] == "daily_cap"


def test_settle_frees_unused_and_release_gives_back(ledger: Ledger) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    reserve(ledger, 1.5, run_id=a)
    reserve(ledger, 0.5, run_id=b)
    assert reserve(ledger, 0.5)["reason"] == "daily_cap"
    settled = ledger.settle_budget(run_id=a, actual_usd=0.25, now=T0)
    assert settled["settled"] is True and settled["freed_usd"] == 1.25
    released = ledger.release_budget(run_id=b, now=T0)
    assert released == {**released, "released": True, "freed_usd": 0.5}
    assert ledger.release_budget(run_id=b)["released"] is False  # once
    assert ledger.release_budget(run_id=a)["released"] is False  # settled stays settled
    assert ledger.settle_budget(run_id=uuid.uuid4(), actual_usd=1.0)["settled"] is False
    summary = ledger.spend_summary(now=T0)
    assert summary["daily_committed_usd"] == 0.25 and summary["daily_actual_usd"] == 0.25
    assert summary["monthly_committed_usd"] == 0.25 and summary["monthly_actual_usd"] == 0.25
    assert reserve(ledger, 1.75)["ok"] is True
    # Settled reservations are not re-charged by a retried reserve.
    assert reserve(ledger, 1.5, run_id=a)["idempotent"] is True
    # A released reservation can be taken again (retried admission).
    assert reserve(ledger, 0.5, run_id=b)["reason"] == "daily_cap"


def test_reserve_refuses_negative_amount(ledger: Ledger) -> None:
    with pytest.raises(LedgerError) as info:
        reserve(ledger, -1.0)
    assert info.value.code == "BI400"


def test_spend_summary_per_tenant_and_by_day(ledger: Ledger) -> None:
    reserve(ledger, 0.5, tenant="a")
    reserve(ledger, 0.25, tenant="b", now=T0 - dt.timedelta(days=2))
    assert ledger.spend_summary(tenant_id="a", now=T0)["daily_committed_usd"] == 0.5
    assert ledger.spend_summary(tenant_id="b", now=T0)["monthly_committed_usd"] == 0.25
    everyone = ledger.spend_summary(now=T0)
    assert everyone["month"] == "2030-01-01" and everyone["monthly_committed_usd"] == 0.75
    days = ledger.spend_by_day(days=3, now=T0)
    assert [d["day"] for d in days] == ["2030-01-13", "2030-01-14", "2030-01-15"]
    assert [d["committed_usd"] for d in days] == [0.25, 0, 0.5]
    assert [d["reservations"] for d in days] == [1, 0, 1]


# --- circuit breaker ------------------------------------------------------------------------------

BREAKER: dict[str, Any] = {"name": "modal", "threshold": 5, "window_s": 600}


def fail(ledger: Ledger, seconds: float, kind: str = "executor") -> dict:
    return ledger.breaker_record(**BREAKER, ok=False, kind=kind, now=at(seconds))


def check(ledger: Ledger, seconds: float, acquire: bool = True) -> dict:
    return ledger.breaker_check(**BREAKER, open_s=300, acquire_probe=acquire, now=at(seconds))


def probe_out(ledger: Ledger) -> None:
    """Open the circuit (five failures), then take its half-open probe once ``open_s`` is over."""
    for i in range(5):
        fail(ledger, i)
    assert check(ledger, 304)["probe"] is True


def test_breaker_opens_after_threshold_failures_in_window(ledger: Ledger) -> None:
    assert check(ledger, 0) == {
        "allowed": True,
        "state": "closed",
        "retry_after_s": None,
        "probe": False,
    }
    for i in range(4):
        assert fail(ledger, i)["state"] == "closed"
    assert ledger.breaker_record(**BREAKER, ok=True, now=at(4))["state"] == "closed"
    tipped = fail(ledger, 5)
    assert tipped == {"state": "open", "failures_in_window": 5}
    denied = check(ledger, 65)
    assert denied["allowed"] is False and denied["state"] == "open"
    assert denied["retry_after_s"] == 240


def test_failures_older_than_window_do_not_count(ledger: Ledger) -> None:
    for i in range(4):
        fail(ledger, i)
    # 4 failures at t=0..3; window 600 s: at t=700 they have all expired.
    result = fail(ledger, 700)
    assert result == {"state": "closed", "failures_in_window": 1}
    assert ledger.breaker_status(name="modal", window_s=600, now=at(700))["failures_in_window"] == 1
    assert ledger.breaker_status(name="modal", window_s=600, now=at(3))["failures_in_window"] == 4


def test_half_open_probe_success_closes_and_old_failures_stop_counting(ledger: Ledger) -> None:
    for i in range(5):
        fail(ledger, i)
    assert check(ledger, 200)["allowed"] is False
    probe = check(ledger, 304)
    assert probe == {"allowed": True, "state": "half_open", "retry_after_s": None, "probe": True}
    second = check(ledger, 305)
    assert second["allowed"] is False and second["state"] == "half_open"
    closed = ledger.breaker_record(**BREAKER, ok=True, kind="probe", now=at(310))
    assert closed["state"] == "closed"
    # The five failures before the close are still inside the window but no longer count.
    assert fail(ledger, 311) == {"state": "closed", "failures_in_window": 1}
    assert check(ledger, 312)["allowed"] is True


def test_half_open_probe_failure_reopens(ledger: Ledger) -> None:
    probe_out(ledger)
    assert fail(ledger, 320)["state"] == "open"
    again = check(ledger, 400)
    assert again["allowed"] is False and again["retry_after_s"] == 220  # opened_at moved to 320


def test_half_open_closes_only_on_the_probes_own_success(ledger: Ledger) -> None:
    probe_out(ledger)
    # A job admitted before the circuit opened finishes late: says nothing about the service now.
    late = ledger.breaker_record(**BREAKER, ok=True, kind="success", probe=False, now=at(306))
    assert late["state"] == "half_open"
    assert check(ledger, 307)["allowed"] is False  # the probe is still out
    closed = ledger.breaker_record(**BREAKER, ok=True, kind="success", probe=True, now=at(310))
    assert closed["state"] == "closed"


def test_half_open_reopens_on_any_failure(ledger: Ledger) -> None:
    probe_out(ledger)
    late = ledger.breaker_record(**BREAKER, ok=False, kind="timeout", probe=False, now=at(306))
    assert late["state"] == "open"


def test_lost_probe_is_replaced_after_open_s(ledger: Ledger) -> None:
    probe_out(ledger)
    assert check(ledger, 500)["allowed"] is False  # probe still out
    replacement = check(ledger, 604)
    assert replacement["allowed"] is True and replacement["probe"] is True


def test_breaker_check_without_acquire_is_a_pure_read(ledger: Ledger) -> None:
    for i in range(5):
        fail(ledger, i)
    for _ in range(3):
        peek = check(ledger, 400, acquire=False)
        assert peek["allowed"] is False and peek["state"] == "open"
        assert peek["retry_after_s"] == 0  # a probe is available
    assert ledger.breaker_status(name="modal", now=at(400))["state"] == "open"
    assert check(ledger, 400)["probe"] is True
    assert check(ledger, 401, acquire=False)["state"] == "half_open"


def test_breaker_reset_and_status(ledger: Ledger) -> None:
    unknown = ledger.breaker_status(name="modal", window_s=600, now=at(0))
    assert unknown["state"] == "closed" and unknown["failures_in_window"] == 0
    for i in range(5):
        fail(ledger, i)
    status = ledger.breaker_status(name="modal", window_s=600, now=at(5))
    assert status["state"] == "open" and status["opened_at"] == at(4).isoformat()
    assert ledger.breaker_reset(name="modal", now=at(6))["state"] == "closed"
    assert check(ledger, 7)["allowed"] is True
    assert ledger.breaker_status(name="modal", window_s=600, now=at(7))["failures_in_window"] == 0
    # Breakers are independent by name.
    assert ledger.breaker_status(name="other", now=at(7))["state"] == "closed"


# --- rejections -----------------------------------------------------------------------------------


def test_log_list_and_acknowledge_rejections(ledger: Ledger) -> None:
    a = ledger.log_rejection(
        rejection_type="cost_exceeded",
        message="too dear",
        video_id="v1",
        tenant_id="t1",
        frame_count=10,
        estimated_cost_usd=1.5,
        run_id=uuid.uuid4(),
        details={"cap_usd": 1.0},
        now=at(0),
    )
    b = ledger.log_rejection(rejection_type="queue_full", message="full", tenant_id="t2", now=at(1))
    rows = ledger.list_rejections()
    assert [r["id"] for r in rows] == [b["id"], a["id"]]
    assert rows[1]["details"] == {"cap_usd": 1.0} and rows[1]["estimated_cost_usd"] == 1.5
    assert rows[0]["details"] == {}
    assert [r["id"] for r in ledger.list_rejections(tenant_id="t1")] == [a["id"]]
    assert len(ledger.list_rejections(limit=1)) == 1
    assert ledger.acknowledge_rejection(id=a["id"], by="ops")["acknowledged"] is True
    assert ledger.acknowledge_rejection(id=a["id"], by="ops")["acknowledged"] is False
    assert ledger.acknowledge_rejection(id=uuid.uuid4())["acknowledged"] is False
    assert [r["id"] for r in ledger.list_rejections(unacknowledged_only=True)] == [b["id"]]
    acked = ledger.list_rejections(tenant_id="t1")[0]
    assert acked["acknowledged"] is True and acked["acknowledged_by"] == "ops"


def test_rejection_insert_notifies(ledger: Ledger, ledger_dsn: str) -> None:
    with psycopg.connect(ledger_dsn, autocommit=True) as listener:
        listener.execute("LISTEN boundary_inference_rejections")
        made = ledger.log_rejection(rejection_type="cooldown", message="wait", video_id="v9")
        notes = list(listener.notifies(timeout=5, stop_after=1))
    assert len(notes) == 1
    import json

    payload = json.loads(notes[0].payload)
    assert payload == {
        "id": made["id"],
        "type": "cooldown",
        "video_id": "v9",
        "schema": ledger.schema,
    }


# --- predictions ----------------------------------------------------------------------------------


def test_save_predictions_is_an_idempotent_upsert(ledger: Ledger, video: dict) -> None:
    run_id = ledger.claim_run(**KEY)["run_id"]
    rows = [
        {"frame1": 0, "frame2": 1, "probability": 0.1, "is_boundary": False},
        {"frame1": 1, "frame2": 2, "probability": 0.9, "is_boundary": True},
    ]
    assert ledger.save_predictions(run_id=run_id, rows=rows)["saved"] == 2
    assert ledger.save_predictions(run_id=run_id, rows=rows)["saved"] == 2
    changed = [
        {**rows[1], "probability": 0.2, "is_boundary": False},
        {"frame1": 2, "frame2": 3, "probability": 0.5, "is_boundary": True},
        {"frame1": 2, "frame2": 3, "probability": 0.75, "is_boundary": True},
    ]
    assert ledger.save_predictions(run_id=run_id, rows=changed)["saved"] == 2
    got = ledger.get_predictions(run_id=run_id)
    assert [(p["frame1"], p["frame2"], p["probability"], p["is_boundary"]) for p in got] == [
        (0, 1, pytest.approx(0.1), False),
        (1, 2, pytest.approx(0.2), False),
        (2, 3, 0.75, True),  # the last of a repeated pair wins
    ]
    assert ledger.save_predictions(run_id=run_id, rows=[])["saved"] == 0
    assert ledger.get_predictions(run_id=uuid.uuid4()) == []
    with pytest.raises(RunNotFound):
        ledger.save_predictions(run_id=uuid.uuid4(), rows=rows)


# --- transport errors -----------------------------------------------------------------------------


def test_unreachable_database_is_ledger_unavailable(tmp_path: object) -> None:
    dead = Ledger(PsycopgTransport(f"postgresql:///x?host={tmp_path}", "bi", timeout_s=1))
    with pytest.raises(LedgerUnavailable):
        dead.ping()


def test_statement_timeout_is_ledger_unavailable(
    ledger: Ledger, ledger_dsn: str, video: dict
) -> None:
    slow = Ledger(PsycopgTransport(ledger_dsn, ledger.schema, timeout_s=0.3))
    try:
        with psycopg.connect(ledger_dsn) as holder:
            # Hold claim_run's advisory lock for the key: the claim must give up, not hang.
            holder.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(concat_ws(chr(31), %s::text,"
                " %s::text, %s::text, %s::text), 0))",
                (f"{ledger.schema}.claim_run", "v1", "f1", "m1"),
            )
            with pytest.raises(LedgerUnavailable) as info:
                slow.claim_run(**KEY)
            assert info.value.code == "57014"
        assert slow.claim_run(**KEY)["created"] is True  # same connection still usable
    finally:
        slow.close()


def test_killed_connection_is_reopened_on_next_call(ledger: Ledger, ledger_dsn: str) -> None:
    ledger.ping()  # this thread's connection is open
    transport = ledger.transport
    assert isinstance(transport, PsycopgTransport)
    pid = transport._connection().info.backend_pid
    with psycopg.connect(ledger_dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(LedgerUnavailable):
        ledger.ping()
    assert ledger.ping()["ok"] is True
