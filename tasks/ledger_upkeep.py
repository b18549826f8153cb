"""Ledger upkeep, run by the monitor: the budget totals still agree with the reservations, and
predictions older than the retention are deleted.

The budget guard reads maintained totals (``budget_totals``), not sums over every reservation; a
trigger keeps them in step with each reservation change. Only a write that goes around the trigger
(a ``TRUNCATE``, a restore, a hand edit with triggers off) can make them drift, and then a cap could
let through more than it should, or refuse what it should not. So each monitor pass compares the
current month's totals with the reservations (``budget_totals_drift``) and, on any difference,
emits :data:`BUDGET_DRIFT_EVENT` for a human: ``boundary-inference ledger rebuild-totals`` repairs
it. Nothing is repaired automatically: drift means something unexpected wrote money state.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from prefect import get_run_logger
from prefect.events import emit_event

from boundary_inference.ledger import Ledger
from config import Settings
from tasks._common import LEDGER, guard_task

BUDGET_DRIFT_EVENT = "boundary-inference.alert.budget-drift"
# The monitor's resource (flows.rejection_monitor.MONITOR_RESOURCE_ID): the shipped automations
# match on it.
MONITOR_RESOURCE_ID = "boundary-inference.monitor"
# Prune calls per monitor pass (each deletes at most PRUNE_RUNS_PER_CALL runs' predictions): a
# backlog after turning retention on is worked off over several passes, never in one long lock.
PRUNE_CALLS_PER_PASS = 20
PRUNE_RUNS_PER_CALL = 500


@guard_task(name="ledger-upkeep", tags=LEDGER)
def ledger_upkeep(
    ledger: Ledger, settings: Settings, *, now: dt.datetime | None = None
) -> list[str]:
    """Check the budget totals (event on drift) and apply prediction retention.

    Returns the names of the events emitted. A failure of either step is logged, not raised:
    the monitor's report must still go out.
    """
    logger = get_run_logger()
    events: list[str] = []
    try:
        drift = ledger.budget_totals_drift(now=now)
    except Exception as error:
        logger.error("budget totals not checked: %s", error)
    else:
        if drift.get("ok"):
            logger.info("budget totals agree with the reservations since %s", drift.get("since"))
        else:
            logger.error(
                "budget totals drifted: %s rows differ since %s; repair with"
                " `boundary-inference ledger rebuild-totals`",
                drift.get("drift_rows"),
                drift.get("since"),
            )
            emit_event(
                BUDGET_DRIFT_EVENT,
                resource={
                    "prefect.resource.id": MONITOR_RESOURCE_ID,
                    "prefect.resource.name": "boundary-inference monitor",
                },
                payload={"alert": "budget_drift", **drift},
            )
            events.append(BUDGET_DRIFT_EVENT)
    if settings.predictions_retention_days is not None:
        try:
            pruned = prune_predictions(
                ledger, keep_days=settings.predictions_retention_days, now=now
            )
            logger.info("predictions pruned: %s", pruned)
        except Exception as error:
            logger.error("predictions not pruned: %s", error)
    return events


def run_upkeep(settings: Settings) -> list[str]:
    """:func:`ledger_upkeep` on a ledger of its own (what the monitor flow calls)."""
    from boundary_inference.services import open_ledger

    try:
        ledger = open_ledger(settings)
    except Exception as error:
        get_run_logger().error("ledger upkeep skipped (ledger unavailable): %s", error)
        return []
    try:
        return ledger_upkeep(ledger, settings)
    finally:
        ledger.close()


def prune_predictions(
    ledger: Ledger,
    *,
    keep_days: int,
    max_calls: int = PRUNE_CALLS_PER_PASS,
    runs_per_call: int = PRUNE_RUNS_PER_CALL,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Delete predictions saved more than ``keep_days`` ago, ``runs_per_call`` runs per call, at
    most ``max_calls`` calls: ``{runs, chunks, calls, more}``."""
    runs = chunks = calls = 0
    more = True
    while more and calls < max_calls:
        result = ledger.prune_predictions(keep_days=keep_days, limit=runs_per_call, now=now)
        calls += 1
        runs += int(result.get("runs") or 0)
        chunks += int(result.get("chunks") or 0)
        more = bool(result.get("more"))
    return {"runs": runs, "chunks": chunks, "calls": calls, "more": more}
