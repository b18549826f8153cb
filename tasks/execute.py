"""Run the admitted job on the executor and watch it.

This task never retries (``retries=0``): GPU retries live in exactly one layer, Modal's retry policy,
so the worst case admitted by the cost guard is the worst case paid. The call id is stored on the
run *before* waiting, so a crashed flow can be reattached or cancelled from its run row; any exit
other than a finished call (flow timeout, cancellation, crash of this process while it can still
run code) cancels the call.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from boundary_inference.executor import CallState, CallStatus, ExecutorFailure, FailureKind
from config import Settings
from modal_app.types import InferenceRequest
from tasks._common import artifact_key, guard_task


@guard_task(name="run-inference-job", tags=["gpu", "executor"])
def run_job(
    executor: Any,
    ledger: Any,
    settings: Settings,
    request: InferenceRequest,
    *,
    existing_call_id: str | None = None,
) -> tuple[str, CallStatus]:
    """Spawn (or reattach to ``existing_call_id``) and poll until the call ends."""
    logger = get_run_logger()
    if existing_call_id:
        call_id = existing_call_id
        logger.info("reattaching to call %s instead of spawning again", call_id)
    else:
        call_id = executor.submit(request)
        ledger.set_call_id(run_id=request.run_id, call_id=call_id)
        logger.info("spawned %s call %s for run %s", executor.name, call_id, request.run_id)
    progress_id = create_progress_artifact(  # sync context: returns the id, not a coroutine
        progress=0.0,
        key=artifact_key("progress", request.run_id),
        description=f"{len(request.frame_pairs)} frame pairs on {executor.name}",
    )
    assert isinstance(progress_id, uuid.UUID)
    finished = False
    last_reported = -1.0
    watch_limit_s = settings.watch_limit_s(request.deadline_s)
    give_up_at = time.monotonic() + watch_limit_s
    try:
        while True:
            status = executor.poll(call_id, timeout_s=settings.poll_interval_s)
            percent = round(100.0 * status.progress, 1)
            if status.state is CallState.SUCCEEDED:
                percent = 100.0
            if percent != last_reported:
                update_progress_artifact(progress_id, percent)
                last_reported = percent
            if status.state is not CallState.PENDING:
                finished = True
                return call_id, status
            if time.monotonic() >= give_up_at:
                # Every attempt would have ended by now: the call is stuck (a container that
                # crash-loops before the attempt counter runs, a start-up that never ends).
                executor.cancel(call_id)
                finished = True
                return call_id, _watch_limit_exceeded(status, watch_limit_s, settings)
            time.sleep(0)  # poll() already waited; yield to cancellation
    finally:
        if not finished:
            # Flow timeout, cancellation or an error while watching: stop paying for it.
            logger.warning("stopping call %s: the flow is no longer watching it", call_id)
            executor.cancel(call_id)


def _watch_limit_exceeded(last: CallStatus, watch_limit_s: float, settings: Settings) -> CallStatus:
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
