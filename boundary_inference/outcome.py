"""What a submission ends as: the rejection vocabulary and the outcome record.

These names and fields are a public contract: the CLI prints them (``submit --json``), tools script
against them, and the ledger stores ``RejectionType`` values. Add, never rename.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from boundary_inference.errors import BoundaryInferenceError


class RejectionType(StrEnum):
    VALIDATION_FAILED = "validation_failed"
    FRAME_COUNT_EXCEEDED = "frame_count_exceeded"
    COST_EXCEEDED = "cost_exceeded"
    BUDGET_EXCEEDED = "budget_exceeded"
    COOLDOWN = "cooldown"
    RATE_LIMITED = "rate_limited"
    QUEUE_FULL = "queue_full"
    CIRCUIT_OPEN = "circuit_open"
    GUARD_UNAVAILABLE = "guard_unavailable"


class Rejected:
    """A safeguard refused the job: a value the guard tasks *return* (a refusal is an outcome, not
    an error), which the flow records before it stops. Never raised."""

    def __init__(
        self,
        rejection_type: RejectionType,
        message: str,
        *,
        retry_after_s: float | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        self.rejection_type = rejection_type
        self.message = message
        self.retry_after_s = retry_after_s
        self.details = dict(details or {})

    def __repr__(self) -> str:
        return f"Rejected({str(self.rejection_type)!r}, {self.message!r})"


class OutcomeStatus(StrEnum):
    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


# CLI exit codes (documented in the README): scripts branch on these.
EXIT_CODES: dict[OutcomeStatus, int] = {
    OutcomeStatus.SUCCEEDED: 0,
    OutcomeStatus.SKIPPED: 0,
    OutcomeStatus.REJECTED: 3,
    OutcomeStatus.FAILED: 1,
    OutcomeStatus.CANCELLED: 1,
    OutcomeStatus.TIMED_OUT: 1,
}


@dataclass
class JobOutcome:
    """The result of one ``boundary_inference_flow`` run, JSON-serialisable."""

    status: OutcomeStatus
    video_id: str
    message: str
    run_id: str | None = None
    rejection_type: RejectionType | None = None
    rejection_id: str | None = None
    retry_after_s: float | None = None
    estimated_cost_usd: float | None = None
    worst_case_cost_usd: float | None = None
    actual_cost_usd: float | None = None
    pairs: int | None = None
    boundaries: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    # Pairs the request repeated, dropped before the estimate (pairs are a set); None before
    # validation got that far.
    duplicate_pairs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = str(self.status)
        data["rejection_type"] = str(self.rejection_type) if self.rejection_type else None
        return data

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]


class JobFailed(BoundaryInferenceError):
    """A failed job, as the data of its ``Failed`` flow state; ``outcome`` is its JobOutcome dict.

    Prefect turns a failed state's data into an exception whenever the state's result is read
    (a deployment run reads it as it ends): a plain dict there was ``TypeError: Unexpected result
    for failed state`` in the worker's log. Its text is the job's readable message.
    """

    def __init__(self, outcome: dict[str, Any]) -> None:
        super().__init__(outcome)
        self.outcome = outcome

    def __str__(self) -> str:
        return f"{self.outcome.get('status')}: {self.outcome.get('message')}"


class BackfillStopped(BoundaryInferenceError):
    """A backfill stopped by an outage, as the data of its ``Failed`` state (a failed state's
    data must be an exception, as for :class:`JobFailed`); ``summary`` is the backfill's."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


def outcome_of(state: Any) -> dict[str, Any] | None:
    """The JobOutcome dict a ``boundary_inference_flow`` state carries, whatever it ended as;
    None when the run ended before producing one (crashed, cancelled by Prefect)."""
    from prefect.exceptions import MissingResult

    try:
        data = state.result(raise_on_failure=False)
    except MissingResult:  # the state came back from the API without its data
        return _outcome_from_state_name(state)
    outcome = outcome_in(data)
    if outcome is not None:
        return outcome
    if state.is_failed() and state.data is None:
        # A Failed state without its data reads as a FailedRun built from its message.
        return _outcome_from_state_name(state)
    return None


# The description of the table artifact that carries a job's JobOutcome on its flow run
# (flows.run.states.publish_outcome writes it, one row). A deployment run's final state comes back
# from the API without its data (results are not persisted: to_state_create drops unpersisted
# data), so a CLI waiting on a deployment run reads the outcome from here, on any host that can
# reach the Prefect API.
OUTCOME_ARTIFACT = "boundary-inference job outcome"


def outcome_from_table(data: Any) -> dict[str, Any] | None:
    """The JobOutcome dict in an outcome artifact's data (a JSON list of one row), or None when
    the data is not one."""
    import json

    try:
        rows = json.loads(data) if isinstance(data, str) else data
    except ValueError:
        return None
    if isinstance(rows, list) and len(rows) == 1 and isinstance(rows[0], dict):
        row = rows[0]
        if isinstance(row.get("status"), str):
            return dict(row)
    return None


def outcome_in(data: Any) -> dict[str, Any] | None:
    """The JobOutcome dict a job's state data holds (a Failed state's :class:`JobFailed`, else
    the dict itself), or None when it holds none."""
    if isinstance(data, JobFailed):
        return data.outcome
    if isinstance(data, dict) and "status" in data:
        return data
    return None


# What a state's message starts with when the standard state name alone cannot tell the outcome
# (flows.run.states writes them; _outcome_from_state_name reads them back).
REFUSAL_PREFIX = "rejected: "
SKIP_PREFIX = "skipped: "


def refusal_message(rejection_type: RejectionType | str, message: str) -> str:
    """``rejected: <type>: <message>``, the message of a refused run's state."""
    return f"{REFUSAL_PREFIX}{rejection_type}: {message}"


def skip_message(message: str) -> str:
    return f"{SKIP_PREFIX}{message}"


def _outcome_from_state_name(state: Any) -> dict[str, Any] | None:
    """The outcome as far as a final state's type and message tell it, when its data is gone: a
    state the client got back from the API (a state change the client retried after its request
    timed out while the server still committed it) carries no result. The status and, for a
    refusal, its type. (``Rejected``/``Skipped`` are the state names runs ended in before the
    standard names; still read for runs recorded then.)

    Not solved by persisting the flow's result: measured, ``persist_result=True`` made the
    backfill's per-video subflows run one after another instead of at once."""
    if not state.is_final():
        return None
    message = str(state.message or "")
    note = "the flow run's outcome data was not returned; read from its state"
    if message.startswith(REFUSAL_PREFIX) and (state.is_completed() or state.is_failed()):
        kind, _, text = message.removeprefix(REFUSAL_PREFIX).partition(": ")
        return {"status": "rejected", "rejection_type": kind, "message": text, "note": note}
    if state.is_completed():
        if state.name == "Rejected":
            kind, _, text = message.partition(": ")
            return {"status": "rejected", "rejection_type": kind, "message": text, "note": note}
        if message.startswith(SKIP_PREFIX) or state.name == "Skipped":
            return {"status": "skipped", "message": message.removeprefix(SKIP_PREFIX), "note": note}
        return {"status": "succeeded", "message": message, "note": note}
    if state.is_failed():
        return {"status": "failed", "message": message, "note": note}
    return None
