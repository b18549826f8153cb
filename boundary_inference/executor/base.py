"""The executor protocol: submit, poll, cancel, by call id. Private module."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from boundary_inference.errors import BoundaryInferenceError, StoreUnavailable
from modal_app.types import InferenceRequest, InferenceResult


class FailureKind(StrEnum):
    """Why a call failed; the circuit breaker counts only what says something about the service."""

    INFRASTRUCTURE = "infrastructure"  # lost worker, crash, preemption, OOM, result expired
    USER_CODE = "user_code"  # the inference code raised on this input
    TIMEOUT = "timeout"  # per-job deadline, hard timeout, or hang (no heartbeat)
    CANCELLED = "cancelled"

    @property
    def counts_for_breaker(self) -> bool:
        return self in (FailureKind.INFRASTRUCTURE, FailureKind.TIMEOUT)


class CallState(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True)
class ExecutorFailure:
    kind: FailureKind
    message: str
    error_type: str = ""
    # GPU seconds the failed call consumed (billed even though it failed), when known.
    elapsed_s: float | None = None


@dataclass(frozen=True)
class CallStatus:
    state: CallState
    pairs_done: int = 0
    pairs_total: int = 0
    result: InferenceResult | None = None
    failure: ExecutorFailure | None = None

    @property
    def progress(self) -> float:
        return self.pairs_done / self.pairs_total if self.pairs_total else 0.0


class ExecutorUnavailable(StoreUnavailable):
    """The executor cannot take work (no credentials, app not deployed). Raised before any spend."""


class SpawnUncertain(BoundaryInferenceError):
    """The spawn failed in a way that does not prove nothing runs (a timeout after sending).

    Never treated as "nothing ran": the watcher looks for the call by its run id
    (:meth:`Executor.find_call`) and watches it when it shows up; when it does not, it fences the
    run (:meth:`Executor.fence`) and keeps the worst case charged.
    """


class SpawnUnconfirmed(SpawnUncertain):
    """A spawn whose answer was lost and whose call never showed up within ``spawn_confirm_s``.

    The run is fenced (a call of it that starts later refuses to run), and its worst case stays
    charged: Modal offers no way to prove that an input it may hold in its queue never started.
    """


class Executor(Protocol):
    name: str

    def preflight(self) -> None:
        """Raise :class:`ExecutorUnavailable` if a submit could not possibly work."""

    def submit(self, request: InferenceRequest) -> str:
        """Start the job; return a call id that :meth:`poll` and :meth:`cancel` accept."""

    def poll(self, call_id: str, *, timeout_s: float) -> CallStatus:
        """Wait up to ``timeout_s`` for the call to finish; report where it is."""

    def cancel(self, call_id: str) -> None:
        """Stop the call and its billing. Idempotent."""

    def find_call(self, run_id: str) -> str | None:
        """The call id a started call of ``run_id`` recorded, if one has (after a lost spawn)."""

    def fence(self, run_id: str) -> str | None:
        """From now on no call of ``run_id`` may start its work; return the id of one that
        already recorded itself (it must then be watched or cancelled), else None."""
