"""Every write of a run's row and of its budget reservation, in one module.

The run row moves ``queued -> running -> succeeded | failed | timed_out | cancelled`` or ends
``rejected`` (the SQL function ``transition_run`` refuses any other move, atomically); its
reservation is either released (nothing ran, nothing is charged) or settled at what the call cost.
The flow, the settlement, the cancel hooks and the reaper all write through here, so "who ends a
run, and at what price" has one answer to read.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from boundary_inference.ledger import Ledger
from boundary_inference.outcome import OutcomeStatus
from tasks import budget

ERROR_CHARS = 1000  # the ledger keeps this much of an error message


class RunStatus(StrEnum):
    """A run row's status, as the ledger's ``runs.status`` column holds it."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    REJECTED = "rejected"

    @classmethod
    def of_outcome(cls, status: OutcomeStatus) -> RunStatus:
        """The row status a settled call's outcome ends at."""
        return cls(str(status))


def mark_running(ledger: Ledger, run_id: str, fields: dict[str, Any] | None = None) -> None:
    """Admitted (with the estimate in ``fields``), or a queued row a reaper found with a call."""
    ledger.transition_run(run_id=run_id, to_status=str(RunStatus.RUNNING), fields=fields or {})


def mark_rejected(ledger: Ledger, run_id: str, error: str) -> None:
    ledger.transition_run(
        run_id=run_id, to_status=str(RunStatus.REJECTED), fields={"error": error[:ERROR_CHARS]}
    )


def end(ledger: Ledger, run_id: str, status: RunStatus, fields: dict[str, Any]) -> None:
    """A terminal status with what is known of the call (seconds, cost, error)."""
    if status in (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.REJECTED):
        raise ValueError(f"{status} is not how a spawned or refused-at-spawn run ends")
    if isinstance(fields.get("error"), str):
        fields = {**fields, "error": fields["error"][:ERROR_CHARS]}
    ledger.transition_run(run_id=run_id, to_status=str(status), fields=fields)


def settle_budget(ledger: Ledger, run_id: str, actual_usd: float, *, as_task: bool = True) -> None:
    """Replace the run's reservation by what it cost. ``as_task=False`` outside a flow's normal
    path (a run ended unwatched, the reaper's orphans), where a Prefect task may not be run."""
    if as_task:
        budget.settle(ledger, run_id=run_id, actual_usd=actual_usd)
    else:
        ledger.settle_budget(run_id=run_id, actual_usd=actual_usd)


def release_budget(ledger: Ledger, run_id: str, *, as_task: bool = True) -> None:
    """Give the reservation back: nothing ran, nothing is charged."""
    if as_task:
        budget.release(ledger, run_id=run_id)
    else:
        ledger.release_budget(run_id=run_id)
