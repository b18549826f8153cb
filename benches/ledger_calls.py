"""The ledger calls of one admission and of one monitor pass, with arguments taken from a ledger.

One catalogue for the plan test (``tests/test_ledger_plans.py``: no call scans history) and the
scale benchmark (``bench --scale``: each call's latency at 0, 100k and 1M runs). Each entry names
the SQL function, its arguments (found in the ledger at hand: a queued run, a running one, a run
with predictions...) and how much it may read whatever the history: ``max_rows_read`` rows from
any one table or index, ``max_pages`` buffer pages in all. The bounds are the call's own work
(what it returns, a window it reads) with room to spare; a scan of history is far above them.

Calls that write are meant to be run in a transaction that is rolled back, so the same arguments
can be used again and the history is unchanged.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql

Path = Literal["admission", "monitor", "reaper", "limiter", "predictions"]
# Caps no call reaches: the benchmark measures the work of a reservation, not a refusal.
_NO_CAP = 1e12


@dataclass(frozen=True)
class Subjects:
    """Rows of the ledger the calls act on."""

    video_id: str
    tenant_id: str
    model_version: str
    queued_run: str
    queued_key: tuple[str, str, str]  # its (video_id, frames_version, model_version)
    queued_owner: str | None  # the owner of its lease
    running_run: str
    predictions_run: str | None


@dataclass(frozen=True)
class LedgerCall:
    name: str
    fn: str
    path: Path
    args: Callable[[Subjects], dict[str, Any]]
    max_rows_read: int = 200
    max_pages: int = 300
    owner: str = "scale"  # who owns the SQL function (COMMON.md), for reports

    def params(self, subjects: Subjects) -> dict[str, Any]:
        return self.args(subjects)


def _ago(*, hours: float) -> dt.datetime:
    """An instant before now (the history ends now, when it is built)."""
    return dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)


BREAKER = {"p_name": "gpu-inference", "p_threshold": 5, "p_window_s": 3600, "p_open_s": 3600}
# The flow claims with a lease it renews while it watches the run (faults' run leases).
LEASE = {"p_lease_s": 60, "p_lease_owner": "bench-flow"}

CATALOGUE: tuple[LedgerCall, ...] = (
    # --- one admission, in the flow's order -------------------------------------------------
    LedgerCall(
        "get_video", "get_video", "admission", lambda s: {"p_id": s.video_id}, owner="registries"
    ),
    LedgerCall(
        "claim_run (live key)",
        "claim_run",
        "admission",
        lambda s: {
            "p_video_id": s.queued_key[0],
            "p_tenant_id": s.tenant_id,
            "p_frames_version": s.queued_key[1],
            "p_model_version": s.queued_key[2],
            **LEASE,
        },
        owner="faults",
    ),
    LedgerCall(
        "claim_run (new key)",
        "claim_run",
        "admission",
        lambda s: {
            "p_video_id": s.video_id,
            "p_tenant_id": s.tenant_id,
            "p_frames_version": f"bench-{uuid.uuid4().hex[:12]}",
            "p_model_version": s.model_version,
            "p_pairs": 1000,
            **LEASE,
        },
        owner="faults",
    ),
    LedgerCall(
        "breaker_check (read)",
        "breaker_check",
        "admission",
        lambda s: {**BREAKER, "p_acquire_probe": False},
        owner="-",
    ),
    LedgerCall("queue_depth", "queue_depth", "admission", lambda s: {}, owner="-"),
    LedgerCall(
        "recent_throughput",
        "recent_throughput",
        "admission",
        lambda s: {"p_model_version": s.model_version, "p_runs": 20},
        owner="requests",
    ),
    LedgerCall(
        "record_admission",
        "record_admission",
        "admission",
        lambda s: {"p_run_id": s.queued_run},
        owner="faults",
    ),
    LedgerCall(
        "reserve_budget",
        "reserve_budget",
        "admission",
        lambda s: {
            "p_run_id": str(uuid.uuid4()),
            "p_tenant_id": s.tenant_id,
            "p_amount_usd": 0.35,
            "p_daily_cap_usd": _NO_CAP,
            "p_monthly_cap_usd": _NO_CAP,
            "p_tenant_daily_cap_usd": _NO_CAP,
            "p_tenant_monthly_cap_usd": _NO_CAP,
        },
    ),
    LedgerCall(
        "breaker_check (acquire)",
        "breaker_check",
        "admission",
        lambda s: {**BREAKER, "p_acquire_probe": True},
        owner="-",
    ),
    LedgerCall(
        "transition_run (running)",
        "transition_run",
        "admission",
        lambda s: {
            "p_run_id": s.queued_run,
            "p_to_status": "running",
            "p_fields": {"attempts": 1, "worst_case_cost_usd": 0.35, "reserved_cost_usd": 0.35},
        },
        owner="requests",
    ),
    LedgerCall(
        "set_call_id",
        "set_call_id",
        "admission",
        lambda s: {"p_run_id": s.queued_run, "p_call_id": "fc-bench"},
        owner="-",
    ),
    LedgerCall(
        "log_rejection",
        "log_rejection",
        "admission",
        lambda s: {
            "p_rejection_type": "cooldown",
            "p_message": "bench",
            "p_video_id": s.video_id,
            "p_tenant_id": s.tenant_id,
        },
        owner="-",
    ),
    LedgerCall(
        "release_budget", "release_budget", "admission", lambda s: {"p_run_id": s.queued_run}
    ),
    LedgerCall(
        "settle_budget",
        "settle_budget",
        "admission",
        lambda s: {"p_run_id": s.running_run, "p_actual_usd": 0.1},
    ),
    LedgerCall(
        "breaker_record",
        "breaker_record",
        "admission",
        lambda s: {
            "p_name": "gpu-inference",
            "p_ok": True,
            "p_kind": "success",
            "p_threshold": 5,
            "p_window_s": 3600,
        },
        owner="-",
    ),
    LedgerCall(
        "renew_lease",
        "renew_lease",
        "admission",
        lambda s: {"p_run_id": s.queued_run, "p_owner": s.queued_owner, "p_lease_s": 60},
        owner="faults",
    ),
    # --- the monitor's pass and the CLI's reports ---------------------------------------------
    LedgerCall("spend_summary", "spend_summary", "monitor", lambda s: {}),
    LedgerCall(
        "spend_summary (tenant)",
        "spend_summary",
        "monitor",
        lambda s: {"p_tenant_id": s.tenant_id},
    ),
    LedgerCall("spend_by_day (30 days)", "spend_by_day", "monitor", lambda s: {"p_days": 30}),
    LedgerCall(
        "breaker_status",
        "breaker_status",
        "monitor",
        lambda s: {"p_name": "gpu-inference", "p_window_s": 3600},
        owner="-",
    ),
    LedgerCall(
        "list_rejections (open, 1000)",
        "list_rejections",
        "monitor",
        lambda s: {"p_unacknowledged_only": True, "p_limit": 1000},
        max_rows_read=1100,
        owner="- (unowned)",
    ),
    # Counts the runs of the last 24 h (finished) and hour (created): bounded by what the windows
    # hold (at most 20 admissions an hour by default; the history's density here is higher).
    LedgerCall(
        "run_counts (24 h, 1 h)",
        "run_counts",
        "monitor",
        lambda s: {
            "p_finished_since": _ago(hours=24),
            "p_created_since": _ago(hours=1),
        },
        max_rows_read=5000,
        max_pages=600,
    ),
    # Reads the current month's reservations: one month of history, by design (an audit). How
    # much of the month has passed is the calendar's doing, so the bounds are a whole month's
    # (31 days of this history: 42k reservations), not today's share. Measured on the 1M-run
    # history ended at three instants: Dec 1 00:30 read 12 rows, 20 pages; Dec 7 07:00 8,534
    # rows, 6,060 pages (an index scan: about one buffer hit per row); Dec 31 23:30 42,139 rows,
    # 682 pages (a bitmap scan). A plan that reads history is still caught: by the scan check and
    # by max_rows_read (history holds a million reservations).
    LedgerCall(
        "budget_totals_drift (month)",
        "budget_totals_drift",
        "monitor",
        lambda s: {},
        max_rows_read=100_000,
        max_pages=50_000,
    ),
    # --- the reaper -----------------------------------------------------------------------------
    LedgerCall(
        "expired_leases",
        "expired_leases",
        "reaper",
        lambda s: {"p_limit": 100, "p_legacy_queued_s": 3600, "p_legacy_running_s": 12_000},
        owner="faults",
    ),
    LedgerCall(
        "take_expired_lease (not expired)",
        "take_expired_lease",
        "reaper",
        lambda s: {"p_run_id": s.running_run, "p_owner": "bench-reaper", "p_lease_s": 60},
        owner="faults",
    ),
    LedgerCall(
        "orphan_reservations",
        "orphan_reservations",
        "reaper",
        lambda s: {"p_limit": 1000, "p_min_age_s": 600},
    ),
    # --- the limiter's rebuild from the ledger (Redis lost its state) ---------------------------
    LedgerCall(
        "recent_admissions (1 h)",
        "recent_admissions",
        "limiter",
        lambda s: {"p_window_s": 3600},
        max_rows_read=5000,
        max_pages=1000,
        owner="faults",
    ),
    # --- predictions ----------------------------------------------------------------------------
    LedgerCall(
        "get_predictions_packed",
        "get_predictions_packed",
        "predictions",
        lambda s: {"p_run_id": s.predictions_run or str(uuid.uuid4())},
    ),
    LedgerCall(
        "prune_predictions (nothing due)",
        "prune_predictions",
        "predictions",
        lambda s: {"p_keep_days": 100_000},
    ),
)


def find_subjects(conn: psycopg.Connection[Any], schema: str) -> Subjects:
    """Pick the rows the calls act on: a queued run (its video, tenant and key), a running run, a
    run with predictions. The ledger must hold at least one queued and one running run."""
    table = sql.Identifier(schema, "boundary_inference_runs")
    try:
        queued = conn.execute(
            sql.SQL(
                # Any live run will do; the live-runs index finds one whatever the history.
                "SELECT id::text, video_id, tenant_id, frames_version, model_version, lease_owner"
                " FROM {} WHERE status = 'queued' LIMIT 1"
            ).format(table)
        ).fetchone()
        running = conn.execute(
            sql.SQL("SELECT id::text FROM {} WHERE status = 'running' LIMIT 1").format(table)
        ).fetchone()
        predicted = conn.execute(
            sql.SQL("SELECT run_id::text FROM {} LIMIT 1").format(
                sql.Identifier(schema, "boundary_prediction_chunks")
            )
        ).fetchone()
    finally:
        if not conn.autocommit:
            conn.rollback()
    if queued is None or running is None:
        raise ValueError(f"schema {schema} needs a queued and a running run")
    return Subjects(
        video_id=queued[1],
        tenant_id=queued[2],
        model_version=queued[4],
        queued_run=queued[0],
        queued_key=(queued[1], queued[3], queued[4]),
        queued_owner=queued[5],
        running_run=running[0],
        predictions_run=predicted[0] if predicted else None,
    )


def table_rows(conn: psycopg.Connection[Any], schema: str) -> dict[str, int]:
    """Rows per table of ``schema`` as the planner estimates them (after ANALYZE: close)."""
    try:
        rows = conn.execute(
            "SELECT relname, greatest(reltuples, 0)::bigint FROM pg_class"
            " WHERE relnamespace = %s::regnamespace AND relkind = 'r'",
            (schema,),
        ).fetchall()
    finally:
        if not conn.autocommit:
            conn.rollback()
    return {r[0]: int(r[1]) for r in rows}
