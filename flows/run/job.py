"""One submission's state across the guards and its run, and how a refusal ends it.

The flow creates a :class:`Job` per submission; each guard that takes something (a limiter
admission, a budget reservation) marks it here, so the first refusal can give back exactly what
was taken. From the spawn on nothing is given back: the call may run, and bill, whatever happens
to this process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger
from prefect.client.schemas.objects import State

from boundary_inference.lease import LeaseKeeper
from boundary_inference.ledger import Ledger
from boundary_inference.outcome import JobOutcome, OutcomeStatus, Rejected, RejectionType
from config import Settings
from flows.run import states as run_states
from tasks import budget, limits, rejections
from tasks.cost import CostEstimate

if TYPE_CHECKING:
    from boundary_inference.cancel_watch import CancelWatch
    from boundary_inference.services import Services


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
        self.admitted_limiter = False
        self.reserved_budget = False
        # Set just before the spawn. From then on nothing is refunded or released: the call may
        # run (and bill) whatever happens to this process, so a store error is a failure that
        # keeps the worst case charged, never a "rejection, nothing spawned".
        self.spawned = False
        self.finished_unwatched = False
        # Where to record a refusal when there are no services (the settings were refused).
        self.recording_ledger: Ledger | None = None
        # Distinct pairs, and the copies the request repeated (dropped before the estimate).
        self.duplicate_pairs: int | None = None
        # Renews the run's lease while this flow watches it (boundary_inference.lease); stopped at the end.
        self.lease: LeaseKeeper | None = None
        # Asks Prefect whether this flow run was cancelled while it watches the call.
        self.cancel: CancelWatch | None = None

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
        if ledger is not None and self.run_id is not None:
            try:
                ledger.transition_run(
                    run_id=self.run_id,
                    to_status="rejected",
                    fields={"error": f"{rejected.rejection_type}: {rejected.message}"[:1000]},
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
        assert self.services is not None or not (self.admitted_limiter or self.reserved_budget)
        if self.admitted_limiter and self.services and self.run_id:
            try:
                limits.refund_admission(
                    self.services.limiter, video_id=self.video_id, run_id=self.run_id
                )
                self.admitted_limiter = False
            except Exception as error:
                get_run_logger().error("refund failed (expires with its window): %s", error)
        if self.reserved_budget and self.services and self.run_id:
            try:
                budget.release(self.services.ledger, run_id=self.run_id)
                self.reserved_budget = False
            except Exception as error:
                get_run_logger().error("budget release failed: %s", error)
