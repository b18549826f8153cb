"""A cancel from the Prefect UI stops the spending: the watched call is cancelled and settled.

Prefect delivers a cancel (the flow run set to ``Cancelling``) only to a process a runner or
worker started, and only to its main thread; a flow run that ``submit`` runs in the CLI process,
or a backfill's per-video subflow in a worker thread, never hears of it. So the flow watching a
call asks for itself: :class:`boundary_inference.cancel_watch.CancelWatch` reads, every
``cancel_check_s``, the state of its own flow run and of the runs above it (a backfill); on
``Cancelling``/``Cancelled`` the watch loop cancels the call (Modal: containers terminated;
local: the child killed) and the run is settled at the seconds it used, not its worst case, and
ends ``Cancelled``.

The second layer, for a flow process that died or was killed before it could do that (the
runner's SIGTERM, a crash): :func:`stop_flow_run_calls`, which the flows' ``on_cancellation`` and
``on_crashed`` hooks call, finds the live runs a flow run spawned, cancels their calls and settles
them the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from boundary_inference.cancel_watch import cancelled_status
from boundary_inference.executor import CallState, Executor
from boundary_inference.lease import lease_owner
from boundary_inference.ledger import Ledger
from config import Settings
from flows.run.settlement import Settlement, settle_call

logger = logging.getLogger(__name__)


def stop_flow_run_calls(
    ledger: Ledger,
    executor: Executor,
    settings: Settings,
    flow_runs: Iterable[tuple[Any, str | None]],
    reason: str,
) -> list[Settlement]:
    """Cancel and settle every live run spawned by one of ``flow_runs`` (flow run id, video id).

    For a flow run whose process died or was killed before it settled its call. The run is taken
    under the flow run's own lease owner, so a watcher still alive keeps it (it settles it).
    """
    settled: list[Settlement] = []
    for flow_run_id, video_id in flow_runs:
        if not video_id:
            continue
        for row in ledger.list_runs(limit=20, video_id=video_id, status="running"):
            call_id = row.get("executor_call_id")
            if str(row.get("flow_run_id")) != str(flow_run_id) or not call_id:
                continue
            renewal = ledger.renew_lease(
                run_id=str(row["id"]), owner=lease_owner(flow_run_id), lease_s=settings.run_lease_s
            )
            if not renewal.get("renewed"):
                continue  # ended meanwhile, or another watcher holds it
            settled.append(
                _cancel_and_settle(ledger, executor, settings, row, str(call_id), reason)
            )
    return settled


def _cancel_and_settle(
    ledger: Ledger, executor: Executor, settings: Settings, row: Any, call_id: str, reason: str
) -> Settlement:
    executor.cancel(call_id)
    try:
        status = executor.poll(call_id, timeout_s=settings.poll_interval_s)
    except Exception as error:  # unknown: the worst case below
        logger.warning("call %s not asked after its cancel: %s", call_id, error)
        status = None
    worst = float(row.get("worst_case_cost_usd") or row.get("reserved_cost_usd") or 0.0)
    if status is None or status.state is CallState.PENDING:
        status = cancelled_status(status, reason, elapsed_s=None)
    elif status.state is CallState.FAILED and status.failure is not None:
        status = cancelled_status(status, reason, elapsed_s=status.failure.elapsed_s)
    return settle_call(
        ledger, settings, run_id=str(row["id"]), status=status, worst_case_usd=worst, probe=False
    )


def _hook_settle(flow_runs: list[tuple[Any, str | None]], state: Any) -> None:
    """Best effort: a hook never raises (the runner only logs it), and a job left unsettled
    here is still settled by the lease reaper after its lease."""
    from boundary_inference.services import get_services
    from config import get_settings

    try:
        settings = get_settings()
        services = get_services(settings)
        settled = stop_flow_run_calls(
            services.ledger,
            services.executor,
            settings,
            flow_runs,
            f"cancelled: its flow run ended {state.name}",
        )
    except Exception as error:
        logger.error("calls of %d flow run(s) not stopped: %s", len(flow_runs), error)
        return
    for done in settled:
        logger.warning("stopped a call left running: %s, $%.4f", done.status, done.actual_cost_usd)


def stop_spending(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_cancellation``/``on_crashed`` of the per-video flow: its call, if its process could
    not settle it (killed by the runner's cancel, crashed), is cancelled and settled."""
    _hook_settle([(flow_run.id, (flow_run.parameters or {}).get("video_id"))], state)


def stop_backfill_spending(flow: Any, flow_run: Any, state: Any) -> None:
    """The backfill's hooks. Its videos' deployment runs (their own processes, each watching and
    settling its own call) are asked to cancel when the backfill was cancelled, as the UI asks
    (``Cancelling``); a crashed backfill leaves them to finish. Videos run as subflows in its
    process died with it: their calls are cancelled and settled here."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.states import Cancelling

    try:
        with get_client(sync_client=True) as client:
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run.id])
                ),
                limit=200,
            )
            cancel = state.is_cancelled() or state.is_cancelling()
            for child in children:
                if child.deployment_id is None or not cancel:
                    continue
                if child.state is None or not child.state.is_final():
                    client.set_flow_run_state(
                        child.id, Cancelling(message=f"its backfill {flow_run.id} was cancelled")
                    )
    except Exception as error:
        logger.error("videos of backfill %s not stopped: %s", flow_run.id, error)
        return
    in_process = [c for c in children if c.deployment_id is None]
    if in_process:
        _hook_settle(
            [(child.id, (child.parameters or {}).get("video_id")) for child in in_process], state
        )
