"""Whether a cancel was asked from Prefect for this flow run or the runs above it (a backfill).

Prefect delivers a cancel (``Cancelling``) only to a process a runner or worker started, and only
to its main thread, so the watch loop asks for itself (see :mod:`flows.run.cancellation` for what
is done with the answer). An adapter on Prefect's API: it reads flow run states and nothing else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from prefect.client.schemas.objects import StateType

from boundary_inference.executor import CallState, CallStatus
from config import Settings

logger = logging.getLogger(__name__)

CANCEL_STATES = frozenset({StateType.CANCELLING, StateType.CANCELLED})
# How far up the flow run tree a watch looks (a subflow of a backfill: 2 levels).
MAX_ANCESTORS = 3

StateReader = Callable[[list[uuid.UUID]], dict[uuid.UUID, Any]]


def read_states(flow_run_ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    """The state type of each flow run, in one request to the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=flow_run_ids))
        )
    return {run.id: run.state_type for run in runs}


def flow_run_lineage(flow_run_id: uuid.UUID) -> list[uuid.UUID]:
    """This flow run and the flow runs above it (a subflow's parent is its task run's flow run)."""
    from prefect.client.orchestration import get_client

    lineage = [flow_run_id]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        while run.parent_task_run_id is not None and len(lineage) < MAX_ANCESTORS:
            parent_id = client.read_task_run(run.parent_task_run_id).flow_run_id
            if parent_id is None:
                break
            lineage.append(parent_id)
            run = client.read_flow_run(parent_id)
    return lineage


class CancelWatch:
    """Whether a cancel was asked for this flow run or one above it; asked at most every
    ``check_every_s`` of ``clock``. Once seen, a cancel stays requested (``reason``).

    The Prefect API being unreachable is not a cancel: the call goes on, bounded by its own
    deadline and watch limit, as it would be without this check.
    """

    def __init__(
        self,
        flow_run_id: uuid.UUID,
        *,
        check_every_s: float,
        clock: Callable[[], float] = time.monotonic,
        read: StateReader = read_states,
        lineage: Callable[[uuid.UUID], list[uuid.UUID]] = flow_run_lineage,
    ) -> None:
        self.flow_run_id = flow_run_id
        self.check_every_s = check_every_s
        self.reason: str | None = None
        self._clock = clock
        self._read = read
        self._lineage = lineage
        self._ids: list[uuid.UUID] | None = None
        self._next_check = clock()

    @classmethod
    def for_this_flow_run(
        cls, settings: Settings, clock: Callable[[], float] = time.monotonic
    ) -> CancelWatch | None:
        """A watch of the flow run this code runs in; None outside a flow run."""
        from prefect import runtime

        flow_run_id = runtime.flow_run.id
        if not flow_run_id:
            return None
        return cls(uuid.UUID(str(flow_run_id)), check_every_s=settings.cancel_check_s, clock=clock)

    def requested(self) -> str | None:
        """The cancel's reason once a run of the lineage is Cancelling or Cancelled, else None."""
        if self.reason is not None or self._clock() < self._next_check:
            return self.reason
        self._next_check = self._clock() + self.check_every_s
        try:
            if self._ids is None:
                self._ids = self._lineage(self.flow_run_id)
            states = self._read(self._ids)
        except Exception as error:
            logger.warning("could not ask Prefect whether this run was cancelled: %s", error)
            return None
        for flow_run_id in self._ids:
            if states.get(flow_run_id) in CANCEL_STATES:
                whose = "this flow run" if flow_run_id == self.flow_run_id else "its parent"
                self.reason = (
                    f"cancelled from Prefect: {whose} ({flow_run_id}) is"
                    f" {str(states[flow_run_id].value).title()}"
                )
                break
        return self.reason


def cancelled_status(
    last: CallStatus | None, reason: str, *, elapsed_s: float | None
) -> CallStatus:
    """A call ended by a cancel from Prefect: ``elapsed_s`` its measured seconds (None: unknown,
    charged its worst case)."""
    from boundary_inference.executor import ExecutorFailure, FailureKind

    last = last or CallStatus(CallState.PENDING)
    failure = ExecutorFailure(FailureKind.CANCELLED, reason, "Cancelled", elapsed_s=elapsed_s)
    return CallStatus(CallState.FAILED, last.pairs_done, last.pairs_total, failure=failure)
