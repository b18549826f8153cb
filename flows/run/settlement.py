"""Settle a finished call: its predictions saved, its run ended, its reservation replaced by what it
cost, the circuit breaker told. One place for that arithmetic, used by the flow that watched the
call and by the reaper that found it finished after its watcher died.

* Succeeded: charged its measured GPU seconds (every attempt's, when Modal retried) plus the
  start-up and idle tail Modal bills around them, never above the reservation.
* Failed with known seconds: charged those the same way. Failed with unknown seconds (a crash, a
  hard timeout, a lost or cancelled call): charged the whole reservation (its worst case).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from boundary_inference.executor import CallState, CallStatus, ExecutorFailure, FailureKind
from boundary_inference.ledger import Ledger
from boundary_inference.ledger.predictions import DEFAULT_BATCH_PAIRS, save_in_batches
from boundary_inference.outcome import OutcomeStatus
from config import Settings
from flows.run import row
from flows.run.row import RunStatus
from modal_app.types import InferenceResult
from tasks import breaker
from tasks._common import LEDGER, guard_task, run_logger

FAILURE_STATUS = {
    FailureKind.TIMEOUT: OutcomeStatus.TIMED_OUT,
    FailureKind.CANCELLED: OutcomeStatus.CANCELLED,
    FailureKind.INFRASTRUCTURE: OutcomeStatus.FAILED,
    FailureKind.USER_CODE: OutcomeStatus.FAILED,
}


@dataclass(frozen=True)
class Settlement:
    """What settling a call did, for the flow's outcome or the reaper's report."""

    status: OutcomeStatus
    actual_cost_usd: float
    message: str
    gpu_seconds: float | None = None
    pairs: int = 0
    boundaries: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


@guard_task(name="persist-predictions", tags=LEDGER)
def persist_predictions(
    ledger: Ledger, run_id: str, predictions: list[Any], batch_pairs: int = DEFAULT_BATCH_PAIRS
) -> int:
    """Packed chunks of ``batch_pairs`` pairs, batch i as chunk i: a retried flow (or the reaper
    after it) rewrites the same chunks, harmlessly."""
    return save_in_batches(ledger, run_id, predictions, batch_pairs=batch_pairs)


def settle_call(
    ledger: Ledger,
    settings: Settings,
    *,
    run_id: str,
    status: CallStatus,
    worst_case_usd: float,
    probe: bool,
) -> Settlement:
    """End the running run ``run_id`` from its finished call's ``status`` (a ``CallStatus``)."""
    if status.state is CallState.SUCCEEDED and status.result is not None:
        return _settle_success(ledger, settings, run_id, status.result, worst_case_usd, probe)
    # A status that says neither what it produced nor why it failed: what ran is unknown, so
    # the whole reservation is charged (elapsed_s None), as for a crash.
    failure = status.failure or ExecutorFailure(
        FailureKind.INFRASTRUCTURE, f"call ended {status.state} with no result", "NoResult"
    )
    return _settle_failure(ledger, settings, run_id, failure, worst_case_usd, probe)


def _settle_success(
    ledger: Ledger,
    settings: Settings,
    run_id: str,
    result: InferenceResult,
    worst_case_usd: float,
    probe: bool,
) -> Settlement:
    """Predictions saved, the measured seconds charged (never above the reservation)."""
    metrics = result.metrics
    saved = persist_predictions(
        ledger, run_id, result.predictions, settings.predictions_batch_pairs
    )
    # Every attempt's seconds (Modal reports them when it retried), not only the last one's.
    gpu_s = float(result.extra.get("billed_s") or metrics.elapsed_s)
    # Never above the reservation: the worst case bounds every billed second already.
    actual = min(settings.cost_model.billed_cost_usd(gpu_s), worst_case_usd)
    row.end(
        ledger,
        run_id,
        RunStatus.SUCCEEDED,
        {
            "gpu_seconds": gpu_s,
            "pairs_per_s": metrics.pairs_per_s,
            "actual_cost_usd": actual,
            "attempts": int(result.extra.get("attempts", 1)),
        },
    )
    row.settle_budget(ledger, run_id, actual)
    breaker.record_outcome(ledger, settings, ok=True, kind="success", probe=probe)
    boundaries = sum(1 for p in result.predictions if p.is_boundary)
    run_logger().info(
        "run %s succeeded: %d pairs, %d boundaries, %.1f pairs/s, $%.4f",
        run_id,
        saved,
        boundaries,
        metrics.pairs_per_s,
        actual,
    )
    return Settlement(
        OutcomeStatus.SUCCEEDED,
        actual,
        f"{saved} pairs, {boundaries} boundaries",
        gpu_seconds=gpu_s,
        pairs=saved,
        boundaries=boundaries,
        metrics=dict(vars(metrics)),
    )


def _settle_failure(
    ledger: Ledger,
    settings: Settings,
    run_id: str,
    failure: ExecutorFailure,
    worst_case_usd: float,
    probe: bool,
) -> Settlement:
    """The seconds it used when known, else the whole reservation; the breaker told."""
    outcome_status = FAILURE_STATUS[failure.kind]
    if failure.elapsed_s is None:
        # After a crash, a hard timeout, a lost or cancelled call, how many attempts ran and for
        # how long is unknown: charge what was reserved, never less.
        elapsed, actual = None, worst_case_usd
    else:
        elapsed = failure.elapsed_s
        actual = min(settings.cost_model.billed_cost_usd(failure.elapsed_s), worst_case_usd)
    row.end(
        ledger,
        run_id,
        RunStatus.of_outcome(outcome_status),
        {
            "error": f"{failure.error_type}: {failure.message}",
            "failure_kind": str(failure.kind),
            "gpu_seconds": elapsed,
            "actual_cost_usd": actual,
        },
    )
    row.settle_budget(ledger, run_id, actual)
    if failure.kind.counts_for_breaker:
        breaker.record_outcome(ledger, settings, ok=False, kind=str(failure.kind), probe=probe)
    elif probe and failure.kind is not FailureKind.CANCELLED:
        # The service answered (the input was bad): the probe succeeded. A cancelled probe says
        # nothing; unrecorded, its slot is handed out again after breaker_open_s.
        breaker.record_outcome(ledger, settings, ok=True, kind=f"probe:{failure.kind}", probe=True)
    return Settlement(
        outcome_status, actual, f"{failure.kind}: {failure.message}", gpu_seconds=elapsed
    )
