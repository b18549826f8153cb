"""Safeguard: queue depth. Live runs (queued + running) at ``queue_depth_alert`` raise an alert
event and a log line; at ``queue_depth_block`` new jobs are refused. (The original read Modal's
per-container ``allow_concurrent_inputs`` as a queue depth; this counts runs in the ledger.)"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.events import emit_event

from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, guard_task

QUEUE_ALERT_EVENT = "boundary-inference.queue.depth-alert"


@guard_task(name="queue-depth-check", tags=GUARD)
def check_queue_depth(ledger: Any, settings: Settings, *, exclude_self: int = 1) -> Rejected | None:
    depth = dict(ledger.queue_depth())
    others = max(0, int(depth.get("total", 0)) - exclude_self)
    if others >= settings.queue_depth_alert:
        get_run_logger().warning(
            "queue depth %d is at or above the alert level %d", others, settings.queue_depth_alert
        )
        emit_event(
            QUEUE_ALERT_EVENT,
            resource={"prefect.resource.id": "boundary-inference.queue"},
            payload={
                "depth": others,
                "alert_at": settings.queue_depth_alert,
                "block_at": settings.queue_depth_block,
            },
        )
    if others >= settings.queue_depth_block:
        return Rejected(
            RejectionType.QUEUE_FULL,
            f"{others} jobs are queued or running; new jobs are refused at"
            f" {settings.queue_depth_block} (queue_depth_block)",
            details={"depth": depth},
        )
    return None
