"""One submission's state across the guards and its run, and how a refusal ends it.

The flow creates a :class:`Job` per submission. Its :class:`Phase` moves one way only
(``guarding -> claimed -> spawned -> settled``, or ``closed`` before any spawn; a flow that
takes over a live call goes from ``guarding`` straight to ``spawned``), and each guard that
takes something (a limiter slot, a budget reservation) writes it in the job's
:class:`Admissions`, so the first refusal can give back exactly what was taken. From the spawn on
nothing is given back: the call may run, and bill, whatever happens to this process.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.client.schemas.objects import State

from boundary_inference.errors import BoundaryInferenceError
from boundary_inference.lease import LeaseKeeper
from boundary_inference.ledger import Ledger
from boundary_inference.outcome import JobOutcome, OutcomeStatus, Rejected, RejectionType
from config import Settings
from flows.run import row
from flows.run import states as run_states
from tasks import limits, rejections
from tasks.cost import CostEstimate

if TYPE_CHECKING:
    from boundary_inference.cancel_watch import CancelWatch
    from boundary_inference.services import Services


class Phase(StrEnum):
    """Where a submission stands; it only moves forward (:data:`NEXT`)."""

    GUARDING = "guarding"  # no run row of its own yet: a refusal records, nothing to give back
    CLAIMED = "claimed"  # it created the run row and holds its lease; admissions may be taken
    SPAWNED = "spawned"  # a call may run (and bill): nothing is given back from here
    CLOSED = "closed"  # ended before any spawn (refused): nothing ran, what it took is given back
    SETTLED = "settled"  # ended after the spawn: settled from the call, or its worst case kept


NEXT: dict[Phase, frozenset[Phase]] = {
    Phase.GUARDING: frozenset({Phase.CLAIMED, Phase.SPAWNED, Phase.CLOSED}),
    Phase.CLAIMED: frozenset({Phase.SPAWNED, Phase.CLOSED}),
    Phase.SPAWNED: frozenset({Phase.SETTLED}),
    Phase.CLOSED: frozenset(),
    Phase.SETTLED: frozenset(),
}


class IllegalTransition(BoundaryInferenceError, RuntimeError):
    """A job asked to move backwards or twice to an end: a bug in the flow, never an outcome."""


@dataclass
class Admissions:
    """The quota a job took that a later refusal before the spawn gives back."""

    limiter_slot: bool = False
    # Marked before the reserve call: if its answer is lost after the server committed, the
    # refusal still releases it (a release touches only an open reservation of this run).
    budget_reservation: bool = False


class Job:
    """The state of one submission as it moves through the guards and its run: what it took
    (to give back if a later guard refuses), and how a refusal is recorded."""

    def __init__(
        self, services: Services | None, settings: Settings, video_id: str, tenant_id: str
    ):
        self.services = services
        self.settings = settings
        self.video_id = video_id
        self.tenant_id = tenant_id
        self.run_id: str | None = None
        self.frame_count: int | None = None
        self.estimate: CostEstimate | None = None
        self.phase = Phase.GUARDING
        self.admissions = Admissions()
        # Where to record a refusal when there are no services (the settings were refused).
        self.recording_ledger: Ledger | None = None
        # Distinct pairs, and the copies the request repeated (dropped before the estimate).
        self.duplicate_pairs: int | None = None
        # Renews the run's lease while this flow watches it (boundary_inference.lease); stopped at the end.
        self.lease: LeaseKeeper | None = None
        # Asks Prefect whether this flow run was cancelled while it watches the call.
        self.cancel: CancelWatch | None = None

    def move(self, to: Phase) -> None:
        """Move to ``to``; :class:`IllegalTransition` if the phase does not allow it."""
        if to not in NEXT[self.phase]:
            raise IllegalTransition(f"job of {self.video_id!r}: {self.phase} -> {to}")
        self.phase = to

    @property
    def spawned(self) -> bool:
        """A call may run (and bill) whatever happens to this process: a store error from here on
        is a failure that keeps the worst case charged, never a "rejection, nothing spawned"."""
        return self.phase in (Phase.SPAWNED, Phase.SETTLED)

    def settled(self) -> bool:
        """The spawned job ends here: False when it had ended already (the caller then writes
        nothing: the first ending, settled from the call or unwatched, stands)."""
        if self.phase is Phase.SETTLED:
            return False
        self.move(Phase.SETTLED)
        return True

    def hold_lease(self, run_id: str, owner: str) -> None:
        assert self.services is not None
        self.lease = LeaseKeeper(
            self.services.ledger,
            run_id,
            owner,
            lease_s=self.settings.run_lease_s,
            renew_every_s=self.settings.lease_renew_s,
        ).start()

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.stop(release=True)

    def reject(self, rejected: Rejected) -> State:
        """Record the refusal everywhere, undo what this job had taken, and end the run."""
        ledger = self.services.ledger if self.services else self.recording_ledger
        if rejected.rejection_type is RejectionType.GUARD_UNAVAILABLE:
            ledger = self._ledger_if_reachable()
        self.undo_admissions()
        self.move(Phase.CLOSED)
        if ledger is not None and self.run_id is not None:
            try:
                row.mark_rejected(
                    ledger, self.run_id, f"{rejected.rejection_type}: {rejected.message}"
                )
            except Exception as error:  # recorded below regardless
                get_run_logger().error("could not mark run %s rejected: %s", self.run_id, error)
        estimate = self.estimate.to_dict() if self.estimate else None
        rejection_id = rejections.record_rejection(
            ledger,
            rejected,
            video_id=self.video_id,
            tenant_id=self.tenant_id,
            frame_count=self.frame_count,
            run_id=self.run_id,
            estimate=estimate,
        )
        outcome = JobOutcome(
            status=OutcomeStatus.REJECTED,
            video_id=self.video_id,
            message=rejected.message,
            run_id=self.run_id,
            rejection_type=rejected.rejection_type,
            rejection_id=rejection_id,
            retry_after_s=rejected.retry_after_s,
            estimated_cost_usd=estimate["estimated_cost_usd"] if estimate else None,
            worst_case_cost_usd=estimate["worst_case_cost_usd"] if estimate else None,
            duplicate_pairs=self.duplicate_pairs,
        )
        return run_states.refused(outcome)

    def _ledger_if_reachable(self) -> Any | None:
        ledger = self.services.ledger if self.services else self.recording_ledger
        if ledger is None:
            return None
        try:
            ledger.ping()
        except Exception:
            return None
        return ledger

    def undo_admissions(self) -> None:
        """Give back quota this job took but will not use. Best effort; bounded if it fails."""
        if self.spawned:  # it may be running: what it took, it uses
            return
        taken = self.admissions
        assert self.services is not None or not (taken.limiter_slot or taken.budget_reservation)
        if taken.limiter_slot and self.services and self.run_id:
            try:
                limits.refund_admission(
                    self.services.limiter, video_id=self.video_id, run_id=self.run_id
                )
                taken.limiter_slot = False
            except Exception as error:
                get_run_logger().error("refund failed (expires with its window): %s", error)
        if taken.budget_reservation and self.services and self.run_id:
            try:
                row.release_budget(self.services.ledger, self.run_id)
                taken.budget_reservation = False
            except Exception as error:
                get_run_logger().error("budget release failed: %s", error)
