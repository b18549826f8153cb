"""Run the admitted job on the executor and watch it.

This task never retries (``retries=0``): GPU retries live in exactly one layer, Modal's retry policy,
so the worst case admitted by the cost guard is the worst case paid. The call id is stored on the
run *before* waiting, so a crashed flow can be reattached or cancelled from its run row; any exit
other than a finished call (flow timeout, cancellation, crash of this process while it can still
run code) cancels the call. The one exception is :class:`~boundary_inference.lease.LeaseLost`: another watcher
took the run over while this one was stalled, and that watcher owns the call now.

A cancel from Prefect (this flow run, or the backfill above it, set to ``Cancelling`` from the UI
or the API) is asked for by the watch itself (:class:`boundary_inference.cancel_watch.CancelWatch`):
the call is cancelled and its status says how many seconds it used, so it is settled at those, not its worst
case.

The watch loop's clock and sleep are parameters, so the watch limit is tested by advancing a
clock, not by waiting for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from boundary_inference.cancel_watch import CancelWatch, cancelled_status
from boundary_inference.executor import (
    CallState,
    CallStatus,
    Executor,
    ExecutorFailure,
    FailureKind,
    SpawnUncertain,
    SpawnUnconfirmed,
)
from boundary_inference.lease import LeaseKeeper, LeaseLost
from boundary_inference.ledger import Ledger
from config import Settings
from modal_app.types import InferenceRequest
from tasks._common import GPU, guard_task


@guard_task(name="run-inference-job", tags=GPU)
def run_job(
    executor: Executor,
    ledger: Ledger,
    settings: Settings,
    request: InferenceRequest,
    *,
    existing_call_id: str | None = None,
    lease: LeaseKeeper | None = None,
    cancel: CancelWatch | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[str, CallStatus]:
    """Spawn (or reattach to ``existing_call_id``) and poll until the call ends.

    From the moment a call exists, every way out of this function either returns a finished
    call or cancels it: a failure to record the call id, a Prefect API error, a flow timeout.
    A call that ends FAILED is cancelled too (idempotent): a client-side error can look like a
    failure while the attempt still runs, and nobody would watch it any more.
    """
    logger = get_run_logger()
    cancel = cancel or CancelWatch.for_this_flow_run(settings, clock)
    spawned_at: float | None = None  # unknown for a call another watcher spawned
    if existing_call_id:
        call_id = existing_call_id
        logger.info("reattaching to call %s instead of spawning again", call_id)
    else:
        spawned_at = clock()  # before the submit: an upper bound on what the call has run
        try:
            call_id = executor.submit(request)
        except SpawnUncertain as lost:
            call_id = find_lost_call(executor, settings, request.run_id, lost, lease, clock, sleep)
    finished = False
    try:
        if not existing_call_id:
            ledger.set_call_id(run_id=request.run_id, call_id=call_id)
            logger.info("spawned %s call %s for run %s", executor.name, call_id, request.run_id)
        status = _watch(executor, settings, request, call_id, lease, cancel, clock, sleep)
        if cancel is not None and cancel.reason and status.state is CallState.FAILED:
            status = _cancelled(status, cancel.reason, spawned_at, clock)
        finished = status.state is CallState.SUCCEEDED
        if not finished:
            executor.cancel(call_id)
            finished = True
        return call_id, status
    except LeaseLost:
        finished = True  # not ours to cancel any more: its new watcher watches it
        raise
    finally:
        if not finished:
            # Flow timeout, cancellation or an error while watching: stop paying for it.
            logger.warning("stopping call %s: the flow is no longer watching it", call_id)
            executor.cancel(call_id)


def _cancelled(
    status: CallStatus, reason: str, spawned_at: float | None, clock: Callable[[], float]
) -> CallStatus:
    """A call that ended after this watch cancelled it on Prefect's request: the seconds the
    executor measured; else, for a call this watcher spawned, the time since its spawn (it has
    ended, so it ran no longer: a bound on what it billed); else unknown (its worst case)."""
    elapsed = status.failure.elapsed_s if status.failure is not None else None
    if elapsed is None and spawned_at is not None:
        elapsed = max(0.0, clock() - spawned_at)
    return cancelled_status(status, reason, elapsed_s=elapsed)


def find_lost_call(
    executor: Executor,
    settings: Settings,
    run_id: str,
    lost: SpawnUncertain,
    lease: LeaseKeeper | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> str:
    """The call of a spawn whose answer was lost, found by its run id; else the run is fenced.

    A started call records its id under its run id before anything else, so it shows up here
    within its queueing and start-up. Looked for ``spawn_confirm_s``; then the run is fenced (a
    later start refuses to run) and :class:`SpawnUnconfirmed` raised: the flow charges the worst
    case, because an input Modal may still hold in its queue cannot be proved never to start.
    """
    logger = get_run_logger()
    logger.warning("run %s: spawn answer lost (%s); looking for its call", run_id, lost)
    give_up_at = clock() + settings.spawn_confirm_s
    while True:
        if lease is not None:
            lease.check()
        found = executor.find_call(run_id)
        if found is None and clock() >= give_up_at:
            found = executor.fence(run_id)
            if found is None:
                raise SpawnUnconfirmed(
                    f"no call of run {run_id} showed up within {settings.spawn_confirm_s:g} s"
                    f" after a lost spawn answer ({lost}); fenced, worst case charged"
                ) from lost
        if found is not None:
            logger.warning("run %s: found its call %s after the lost spawn answer", run_id, found)
            return found
        sleep(settings.poll_interval_s)


def _watch(
    executor: Executor,
    settings: Settings,
    request: InferenceRequest,
    call_id: str,
    lease: LeaseKeeper | None,
    cancel: CancelWatch | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> CallStatus:
    progress = _Progress(request, executor.name)
    watch_limit_s = settings.cost_model.watch_limit_s(request.deadline_s)
    give_up_at = clock() + watch_limit_s
    cancel_sent = False
    while True:
        if lease is not None:
            lease.check()
        reason = cancel.requested() if cancel is not None else None
        if reason is not None and not cancel_sent:
            # Watched on until the executor says it ended: that answer carries its seconds.
            get_run_logger().warning("%s: cancelling call %s", reason, call_id)
            executor.cancel(call_id)
            cancel_sent = True
        polled_at = clock()
        status: CallStatus = executor.poll(call_id, timeout_s=settings.poll_interval_s)
        progress.report(100.0 if status.state is CallState.SUCCEEDED else 100.0 * status.progress)
        if status.state is not CallState.PENDING:
            return status
        if clock() >= give_up_at:
            # Every attempt would have ended by now: the call is stuck (a container that
            # crash-loops before the attempt counter runs, a start-up that never ends).
            return watch_limit_exceeded(status, watch_limit_s, settings)
        # A poll that answers at once (the service unreachable) must not become a busy loop.
        sleep(max(0.0, settings.poll_interval_s - (clock() - polled_at)))


class _Progress:
    """The live progress artifact. Advisory: a Prefect API error never stops a paying job."""

    def __init__(self, request: InferenceRequest, executor_name: str) -> None:
        self.artifact_id: uuid.UUID | None = None
        self.last_percent = -1.0
        try:
            # No key: a key per run would fill the Artifacts page with one entry per job; the
            # artifact is still on its flow run's and task run's pages.
            created = create_progress_artifact(  # sync context: returns the id
                progress=0.0,
                description=f"{len(request.frame_pairs)} frame pairs on {executor_name}",
            )
            self.artifact_id = created if isinstance(created, uuid.UUID) else None
        except Exception as error:
            get_run_logger().warning("progress artifact not created: %s", error)

    def report(self, percent: float) -> None:
        percent = round(percent, 1)
        if self.artifact_id is None or percent == self.last_percent:
            return
        try:
            update_progress_artifact(self.artifact_id, percent)
            self.last_percent = percent
        except Exception as error:
            get_run_logger().warning("progress not updated: %s", error)


def watch_limit_exceeded(last: CallStatus, watch_limit_s: float, settings: Settings) -> CallStatus:
    """The status of a call cancelled because it was still pending at its watch limit."""
    message = (
        f"still pending after {watch_limit_s:.0f} s, the longest its"
        f" {settings.gpu_attempts} attempts can take: cancelled as stuck"
    )
    get_run_logger().error(message)
    return CallStatus(
        CallState.FAILED,
        last.pairs_done,
        last.pairs_total,
        failure=ExecutorFailure(
            FailureKind.TIMEOUT,
            message,
            "WatchLimitExceeded",
            # Unknown what ran: charge every attempt to its limit (the reserved worst case).
            elapsed_s=watch_limit_s,
        ),
    )
