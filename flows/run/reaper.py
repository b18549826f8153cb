"""Safeguard: runs nobody watches. A live run whose watcher died is ended, or its call is asked.

Every live run carries a lease its watching flow renews every few seconds (:mod:`boundary_inference.lease`).
When the flow dies (``kill -9``, a lost machine, a frozen process), the lease runs out after
``run_lease_s`` and this reaper takes the run over (one atomic ``take_expired_lease``: of any
number of reapers and claimers exactly one gets it) and does what its watcher would have done:

* ``queued`` (no call: it died between the dedup claim and the spawn): the run is **cancelled** and
  its reservation **released**; its key is free again.
* a call exists: the executor is **asked** (``poll`` of the local job directory, or Modal's
  ``FunctionCall.from_id``):

  - finished: the run is **settled from its real result** (:func:`flows.run.settlement.settle_call`,
    the flow's own arithmetic): predictions saved, the measured seconds charged;
  - still running: left running, asked again at the next pass; at its **watch limit** (every
    attempt to its limit, what its admission priced) it is cancelled and charged its worst case;
  - unknowable (a lost job, an expired result): charged its worst case, as a failure with
    unknown seconds always is.

* ``running`` without a call id (it died between ``running`` and recording the call, or while
  looking for the call of a spawn whose answer was lost): the run is **fenced** and its call looked
  up by run id (a started call records its id there first thing, :meth:`Executor.fence`); found,
  it is recorded and asked like any call; not found, the run is **cancelled** and charged its
  **worst case** (a call that starts later refuses to run).

Third, a reservation left open by a run that already ended (its settle or release was lost) is
settled at what was reserved when the run was spawned, released when it never was.

Every age is measured by the database (``now()``), never by this host's clock: a monitor on a host
whose clock is hours off ends nothing that is alive. Runs claimed without a lease (before the lease
migration) keep the age rule: queued longer than ``stale_queued_s``, running longer than the
longest possible watch plus ``stale_margin_s``.

Who runs it: each flow start (a few runs, one indexed read when there are none), the monitor, and
the ``lease-reaper`` deployment every two minutes; so a dead watcher's run is settled within
``run_lease_s`` + two minutes.
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect import get_run_logger

from boundary_inference.executor import CallState, CallStatus, Executor
from boundary_inference.ledger import LeasedRun, Ledger, RunRow
from config import Settings
from flows.run import row
from flows.run.settlement import settle_call
from tasks._common import LEDGER, guard_task
from tasks.execute import watch_limit_exceeded

# Rows examined in one pass; a backlog larger than this is reaped over several passes.
SCAN_LIMIT = 1000


def stale_after_s(settings: Settings, status: str) -> float:
    """Age (seconds) past which a live run *without a lease* cannot have a live flow behind it."""
    if status == "queued":
        return float(settings.stale_queued_s)
    return (
        settings.cost_model.watch_limit_s(float(settings.gpu_timeout_s)) + settings.stale_margin_s
    )


def watch_limit_of(run: RunRow, settings: Settings) -> float:
    """The longest its admission allowed this run's call to be watched: every attempt to its
    limit. Recovered from the worst case reserved for it (worst case = watch limit + idle tail,
    at the GPU price), so a run admitted with a short deadline is not watched for an hour."""
    worst = run.get("worst_case_cost_usd") or run.get("reserved_cost_usd")
    if worst is None:
        return settings.cost_model.watch_limit_s(float(settings.gpu_timeout_s))
    return max(
        float(worst) / settings.cost_model.price_usd_per_s - settings.scaledown_window_s,
        0.0,
    )


@guard_task(name="reap-stale-runs", tags=LEDGER)
def reap_stale_runs(
    ledger: Ledger,
    executor: Executor,
    settings: Settings,
    *,
    limit: int = SCAN_LIMIT,
    orphans: bool = True,
) -> list[dict[str, Any]]:
    """Take over every live run nobody watches and end or settle it; then (``orphans``) close
    reservations left open by ended runs. Returns one record per run acted on."""
    logger = get_run_logger()
    owner = f"reaper:{uuid.uuid4().hex[:12]}"
    legacy = {
        "legacy_queued_s": stale_after_s(settings, "queued"),
        "legacy_running_s": stale_after_s(settings, "running"),
    }
    reaped: list[dict[str, Any]] = []
    for candidate in ledger.expired_leases(limit=limit, **legacy):
        taken = ledger.take_expired_lease(
            run_id=candidate["id"], owner=owner, lease_s=settings.run_lease_s, **legacy
        )
        if not taken.get("taken"):
            continue  # renewed, ended or taken by someone else meanwhile
        run = taken["run"]
        record = _reap(ledger, executor, settings, run, owner)
        logger.warning(
            "run %s of video %s (%s, no watcher): %s",
            record["run_id"],
            record["video_id"],
            record["status"],
            record["action"],
        )
        reaped.append(record)
    if orphans:
        reaped.extend(_close_orphan_reservations(ledger, settings))
    return reaped


def _reap(
    ledger: Ledger, executor: Executor, settings: Settings, run: LeasedRun, owner: str
) -> dict[str, Any]:
    run_id, call_id, status = str(run["id"]), run.get("executor_call_id"), str(run["status"])
    record: dict[str, Any] = {
        "run_id": run_id,
        "video_id": run.get("video_id"),
        "status": status,
        "age_s": round(float(run.get("age_s") or 0.0), 1),
        "executor_call_id": call_id,
        "action": "",
        "cancel_error": None,
    }
    if not call_id and status == "running":
        call_id = _fence(executor, run_id, record)
        if call_id:
            ledger.set_call_id(run_id=run_id, call_id=call_id)
            record["executor_call_id"] = call_id
    if not call_id:
        ended = ledger.end_abandoned_run(
            run_id=run_id,
            owner=owner,
            reason=f"reaped: {status} with no watcher (its lease expired) and no call",
        )
        amount = float(ended.get("amount_usd") or 0)
        record["action"] = (
            f"cancelled; reservation released (${amount:.4f})"
            if ended.get("action") == "released"
            else f"cancelled; no call id recorded, charged its worst case ${amount:.4f}"
        )
        return record

    asked = _ask(executor, str(call_id))
    worst = float(run.get("worst_case_cost_usd") or run.get("reserved_cost_usd") or 0.0)
    if asked is None or asked.state is CallState.PENDING:
        # Still running, or the executor did not answer now: its watch limit decides.
        running_for_s = float(run.get("running_for_s") or run.get("age_s") or 0.0)
        limit_s = watch_limit_of(run, settings)
        if running_for_s < limit_s:
            ledger.renew_lease(run_id=run_id, owner=owner, lease_s=0)  # the next pass asks again
            state = "still running" if asked is not None else "could not be asked"
            record["action"] = (
                f"call {call_id} {state} ({running_for_s:.0f} s of its {limit_s:.0f} s watch"
                " limit): asked again at the next pass"
            )
            return record
        try:
            executor.cancel(str(call_id))
        except Exception as error:  # charged its worst case below either way
            record["cancel_error"] = f"{type(error).__name__}: {error}"
        asked = watch_limit_exceeded(asked or CallStatus(CallState.PENDING), limit_s, settings)

    if status == "queued":  # a call on a queued run: only a hand-edited row; settle it all the same
        row.mark_running(ledger, run_id)
    settled = settle_call(
        ledger, settings, run_id=run_id, status=asked, worst_case_usd=worst, probe=False
    )
    record["action"] = (
        f"call {call_id} asked: {settled.status}, settled at ${settled.actual_cost_usd:.4f}"
        f" (worst case ${worst:.4f}); {settled.message}"
    )
    record["settled_status"] = str(settled.status)
    record["actual_cost_usd"] = settled.actual_cost_usd
    return record


def _fence(executor: Executor, run_id: str, record: dict[str, Any]) -> str | None:
    """The call of a run whose spawn answer may have been lost, after fencing the run."""
    try:
        return executor.fence(run_id)
    except Exception as error:  # charged its worst case below either way
        record["cancel_error"] = f"fence failed: {type(error).__name__}: {error}"
        get_run_logger().warning("could not fence run %s: %s", run_id, error)
        return None


def _ask(executor: Executor, call_id: str) -> CallStatus | None:
    """The call's state now, or None when the executor could not be asked."""
    try:
        status = executor.poll(call_id, timeout_s=0)
    except Exception as error:
        get_run_logger().warning("could not ask call %s: %s", call_id, error)
        return None
    return status if isinstance(status, CallStatus) else None


def _close_orphan_reservations(ledger: Ledger, settings: Settings) -> list[dict[str, Any]]:
    """Reservations left open by a run that ended (its settle or release call was lost)."""
    closed = []
    # min_age_s is measured by the database against its own now(): no host clock involved.
    for orphan in ledger.orphan_reservations(limit=SCAN_LIMIT, min_age_s=settings.stale_margin_s):
        run_id, reserved = str(orphan["run_id"]), float(orphan["reserved_usd"])
        if orphan.get("executor_call_id"):
            # It was spawned: what it billed is unknown, so what was reserved is what it cost.
            row.settle_budget(ledger, run_id, reserved, as_task=False)
            action = f"open reservation settled at ${reserved:.4f} (run was spawned)"
        else:
            row.release_budget(ledger, run_id, as_task=False)
            action = f"open reservation of ${reserved:.4f} released (run never spawned)"
        get_run_logger().warning("run %s (%s): %s", run_id, orphan.get("run_status"), action)
        closed.append(
            {
                "run_id": run_id,
                "video_id": orphan.get("video_id"),
                "status": f"{orphan.get('run_status')}, reservation open",
                "age_s": None,
                "executor_call_id": orphan.get("executor_call_id"),
                "action": action,
                "cancel_error": None,
            }
        )
    return closed
