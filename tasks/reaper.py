"""Safeguard: stale runs. A run whose flow died is ended, its call cancelled, its budget settled.

A flow run that dies (SIGKILL, lost machine) and is never retried leaves its run row live:

* ``queued``: it died between the dedup claim and the spawn. The live row blocks every later
  submission of the same (video, frames, model) as a "duplicate", counts towards the queue-depth
  guard, and may hold a budget reservation. Nothing was spawned (the spawn follows ``running``), so
  the reservation is **released**.
* ``running``: it died while watching. Its call may be crash-looping before the function body runs
  (deployed Modal apps retry that without end), which only a watcher bounds. It is **cancelled**,
  and the reservation is **settled at the reserved worst case**: what ran is unknown, so the
  ledger never under-counts.

Third, a reservation left open by a run that already ended (its settle or release was lost) keeps
counting against the caps: it is settled at what was reserved when the run was spawned, released
when it never was.

Thresholds are chosen so that no live flow can be mistaken for a dead one: a flow moves a run from
``queued`` to ``running`` within its guards (seconds; ``stale_queued_s`` defaults to an hour), and
watches a call for at most ``watch_limit_s(gpu_timeout_s)`` (the longest any call may take), so a
``running`` row older than that plus ``stale_margin_s`` has no watcher.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger

from boundary_inference.timefmt import parse_utc
from config import Settings
from tasks._common import LEDGER, guard_task

# Rows examined per state in one pass; a backlog larger than this is reaped over several passes.
SCAN_LIMIT = 1000


def stale_after_s(settings: Settings, status: str) -> float:
    """Age (seconds) past which a live run in ``status`` cannot have a live flow behind it."""
    if status == "queued":
        return float(settings.stale_queued_s)
    return settings.watch_limit_s(float(settings.gpu_timeout_s)) + settings.stale_margin_s


@guard_task(name="reap-stale-runs", tags=LEDGER)
def reap_stale_runs(
    ledger: Any, executor: Any, settings: Settings, *, now: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """End every stale live run; return one record per run reaped."""
    logger = get_run_logger()
    now = now or dt.datetime.now(dt.UTC)
    reaped: list[dict[str, Any]] = []
    for status, since_field in (("queued", "created_at"), ("running", "started_at")):
        limit_s = stale_after_s(settings, status)
        for run in ledger.list_runs(limit=SCAN_LIMIT, status=status):
            since = parse_utc(run.get(since_field)) or parse_utc(run.get("created_at"))
            if since is None or (now - since).total_seconds() <= limit_s:
                continue
            age_s = (now - since).total_seconds()
            record = _reap(ledger, executor, run, status, age_s, limit_s)
            if record is not None:
                logger.warning(
                    "reaped %s run %s of video %s: %s",
                    status,
                    record["run_id"],
                    record["video_id"],
                    record["action"],
                )
                reaped.append(record)
    reaped.extend(_close_orphan_reservations(ledger, settings, now))
    return reaped


def _close_orphan_reservations(
    ledger: Any, settings: Settings, now: dt.datetime
) -> list[dict[str, Any]]:
    """Reservations left open by a run that ended (its settle or release call was lost)."""
    closed = []
    for orphan in ledger.orphan_reservations(
        limit=SCAN_LIMIT, min_age_s=settings.stale_margin_s, now=now
    ):
        run_id, reserved = str(orphan["run_id"]), float(orphan["reserved_usd"])
        if orphan.get("executor_call_id"):
            # It was spawned: what it billed is unknown, so what was reserved is what it cost.
            ledger.settle_budget(run_id=run_id, actual_usd=reserved, now=now)
            action = f"open reservation settled at ${reserved:.4f} (run was spawned)"
        else:
            ledger.release_budget(run_id=run_id, now=now)
            action = f"open reservation of ${reserved:.4f} released (run never spawned)"
        get_run_logger().warning("run %s (%s): %s", run_id, orphan.get("run_status"), action)
        closed.append(
            {
                "run_id": run_id,
                "video_id": orphan.get("video_id"),
                "status": f"{orphan.get('run_status')}, reservation open",
                "age_s": round(
                    (now - (parse_utc(orphan.get("reserved_at")) or now)).total_seconds(), 1
                ),
                "executor_call_id": orphan.get("executor_call_id"),
                "action": action,
                "cancel_error": None,
            }
        )
    return closed


def _reap(
    ledger: Any, executor: Any, run: dict[str, Any], status: str, age_s: float, limit_s: float
) -> dict[str, Any] | None:
    run_id = str(run["id"])
    call_id = run.get("executor_call_id")
    cancel_error = None
    if status == "running" and call_id:
        try:
            executor.cancel(str(call_id))
        except Exception as error:  # the row is still ended: nobody watches the call anyway
            cancel_error = f"{type(error).__name__}: {error}"
    reason = (
        f"reaped: {status} for {age_s:.0f} s (limit {limit_s:.0f} s) with no flow run"
        " behind it" + (f"; cancel failed ({cancel_error})" if cancel_error else "")
    )
    try:
        ledger.transition_run(run_id=run_id, to_status="cancelled", fields={"error": reason})
    except Exception as error:
        # Its flow moved it in the meantime (BI409): not stale after all.
        get_run_logger().info("run %s not reaped: %s", run_id, error)
        return None
    if status == "queued":
        money = ledger.release_budget(run_id=run_id)
        action = f"cancelled; reservation released (${float(money.get('freed_usd') or 0):.4f})"
    else:
        reserved = float(run.get("reserved_cost_usd") or run.get("worst_case_cost_usd") or 0)
        ledger.settle_budget(run_id=run_id, actual_usd=reserved)
        action = f"call {call_id or '(none)'} cancelled; charged its worst case ${reserved:.4f}"
    return {
        "run_id": run_id,
        "video_id": run.get("video_id"),
        "status": status,
        "age_s": round(age_s, 1),
        "executor_call_id": call_id,
        "action": action,
        "cancel_error": cancel_error,
    }
