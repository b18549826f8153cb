"""Safeguard: queue depth. Jobs waiting or live at ``queue_depth_alert`` raise an alert event and a
log line; at ``queue_depth_block`` new jobs are refused.

What counts: the ledger's live runs (queued + running) **and** the flow runs waiting in Prefect
for the deployment (``queue_prefect_deployment``, default ``boundary-inference/default``: state
types SCHEDULED and PENDING, which take in Scheduled, Late, AwaitingRetry, AwaitingConcurrencySlot
and Pending). The deployment runs at most ``deployment_concurrency_limit`` (5) flow runs at once and
the rate limit admits 20 jobs an hour, so the ledger alone never holds more than a few dozen runs:
a backlog waits inside Prefect, and a guard that looked only at the ledger (the original read
Modal's per-container ``allow_concurrent_inputs``) could never see it.

Prefect API unreachable: **fail closed** (``guard_unavailable``), like every other guard whose store
is down. A refusal costs nothing (no quota is taken before this guard), while admitting blind could
let a backlog of any size through; and the flow run reports its own state through that same API, so
a run that cannot reach it is in trouble anyway. The count is one request with
``guard_timeout_s`` as its timeout and two retries (Prefect's client backs off 2 s, then 4 s): a
busy server's 503 (the embedded SQLite server under a burst; CI saw one refuse a job) is not an
unreachable one, and the refusal still comes within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import get_run_logger
from prefect.events import emit_event

from boundary_inference.errors import StoreUnavailable
from boundary_inference.ledger import Ledger
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, guard_task

QUEUE_ALERT_EVENT = "boundary-inference.queue.depth-alert"


class BacklogUnavailable(StoreUnavailable):
    """The Prefect API could not be asked how many flow runs wait for the deployment."""


@dataclass(frozen=True)
class QueueDepth:
    """Jobs waiting or live right now."""

    queued: int  # ledger: claimed, not yet spawned
    running: int  # ledger: spawned
    prefect_waiting: int  # flow runs of the deployment waiting in Prefect (0 when not counted)

    @property
    def total(self) -> int:
        return self.queued + self.running + self.prefect_waiting

    def as_dict(self) -> dict[str, int]:
        return {
            "queued": self.queued,
            "running": self.running,
            "prefect_waiting": self.prefect_waiting,
            "total": self.total,
        }


BACKLOG_RETRIES = 2


def prefect_backlog(settings: Settings) -> int:
    """Flow runs of ``settings.queue_prefect_deployment`` waiting in Prefect (SCHEDULED or
    PENDING state types). Raises :class:`BacklogUnavailable` when the API does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterName,
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    flow_name, deployment_name = settings.queue_prefect_deployment.split("/", 1)
    try:
        with (
            temporary_settings({PREFECT_CLIENT_MAX_RETRIES: BACKLOG_RETRIES}),
            get_client(
                sync_client=True, httpx_settings={"timeout": settings.guard_timeout_s}
            ) as client,
        ):
            return int(
                client.count_flow_runs(
                    flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                    deployment_filter=DeploymentFilter(
                        name=DeploymentFilterName(any_=[deployment_name])
                    ),
                    flow_run_filter=FlowRunFilter(
                        state=FlowRunFilterState(
                            type=FlowRunFilterStateType(
                                any_=[StateType.SCHEDULED, StateType.PENDING]
                            )
                        )
                    ),
                )
            )
    except Exception as error:
        raise BacklogUnavailable(
            f"cannot count the flow runs waiting for {settings.queue_prefect_deployment!r} in"
            f" Prefect ({type(error).__name__}: {error})"
        ) from error


def measure_queue_depth(ledger: Ledger, settings: Settings) -> QueueDepth:
    """The ledger's live runs plus, when configured, Prefect's backlog for the deployment."""
    depth = ledger.queue_depth()
    waiting = prefect_backlog(settings) if settings.queue_counts_prefect_backlog else 0
    return QueueDepth(
        queued=int(depth.get("queued", 0)),
        running=int(depth.get("running", 0)),
        prefect_waiting=waiting,
    )


@guard_task(name="queue-depth-check", tags=GUARD)
def check_queue_depth(
    ledger: Ledger, settings: Settings, *, exclude_self: int = 1
) -> Rejected | None:
    try:
        depth = measure_queue_depth(ledger, settings)
    except BacklogUnavailable as error:
        return Rejected(
            RejectionType.GUARD_UNAVAILABLE,
            f"queue depth unknown: {error}; refused (fail closed), nothing was spawned",
        )
    others = max(0, depth.total - exclude_self)
    if others >= settings.queue_depth_alert:
        get_run_logger().warning(
            "queue depth %d (%d waiting in Prefect) is at or above the alert level %d",
            others,
            depth.prefect_waiting,
            settings.queue_depth_alert,
        )
        emit_event(
            QUEUE_ALERT_EVENT,
            resource={"prefect.resource.id": "boundary-inference.queue"},
            payload={
                "depth": others,
                "prefect_waiting": depth.prefect_waiting,
                "alert_at": settings.queue_depth_alert,
                "block_at": settings.queue_depth_block,
            },
        )
    if others >= settings.queue_depth_block:
        return Rejected(
            RejectionType.QUEUE_FULL,
            f"{others} jobs are waiting or running ({depth.prefect_waiting} waiting in Prefect for"
            f" {settings.queue_prefect_deployment}, {depth.queued} queued and {depth.running}"
            f" running in the ledger); new jobs are refused at {settings.queue_depth_block}"
            " (queue_depth_block)",
            details={"depth": depth.as_dict()},
        )
    return None
