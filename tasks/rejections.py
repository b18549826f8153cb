"""Every refusal is recorded three ways: a ledger row (for the monitor, ``ack`` and dashboards), a
Prefect event (for automations), and a markdown artifact on the flow run (for the UI)."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.events import emit_event

from boundary_inference.ledger import Ledger
from boundary_inference.outcome import Rejected
from tasks._common import LEDGER, artifact_key, guard_task

REJECTION_EVENT = "boundary-inference.job.rejected"
# The resource label the shipped automation groups by: one notification window per tenant.
TENANT_LABEL = "boundary-inference.tenant"


def rejection_resource(video_id: str, tenant_id: str) -> dict[str, str]:
    """The event's resource: the video, labelled with its tenant."""
    return {
        "prefect.resource.id": f"boundary-inference.video.{video_id}",
        "prefect.resource.name": video_id,
        TENANT_LABEL: tenant_id,
    }


def _markdown(
    rejected: Rejected,
    video_id: str,
    estimate: dict[str, Any] | None,
    rejection_id: str | None = None,
) -> str:
    lines = [
        f"# Rejected: `{rejected.rejection_type}`",
        "",
        f"**Video:** `{video_id}`  ",
        f"**Reason:** {rejected.message}",
    ]
    if rejected.retry_after_s:
        lines.append(f"**Retry after:** {rejected.retry_after_s:.0f} s")
    if estimate:
        lines += [
            "",
            "| estimate | value |",
            "|---|---|",
            f"| pairs | {estimate['pairs']} |",
            f"| throughput (pairs/s) | {estimate['throughput_pairs_per_s']:.1f}"
            f" ({estimate['throughput_source']}) |",
            f"| expected cost | ${estimate['estimated_cost_usd']:.4f} |",
            f"| worst case | ${estimate['worst_case_cost_usd']:.4f} |",
            f"| per-job cap | ${estimate['cap_usd']:.2f} |",
        ]
    lines += ["", "No GPU was started."]
    if rejection_id:
        lines.append(f"Acknowledge with `boundary-inference ack {rejection_id}`.")
    else:
        lines.append(
            "Not recorded in the ledger (it could not be reached): nothing to acknowledge."
        )
    return "\n".join(lines)


@guard_task(name="record-rejection", tags=LEDGER)
def record_rejection(
    ledger: Ledger | None,
    rejected: Rejected,
    *,
    video_id: str,
    tenant_id: str,
    frame_count: int | None,
    run_id: str | None,
    estimate: dict[str, Any] | None,
) -> str | None:
    """Returns the rejection id, or None when the ledger itself is what is unavailable."""
    logger = get_run_logger()
    logger.warning("rejected (%s): %s", rejected.rejection_type, rejected.message)
    rejection_id: str | None = None
    if ledger is not None:
        try:
            row = ledger.log_rejection(
                rejection_type=str(rejected.rejection_type),
                message=rejected.message,
                video_id=video_id,
                tenant_id=tenant_id,
                frame_count=frame_count,
                estimated_cost_usd=estimate["estimated_cost_usd"] if estimate else None,
                run_id=run_id,
                details={**rejected.details, "retry_after_s": rejected.retry_after_s},
            )
            rejection_id = str(row["id"])
        except Exception as error:  # the event and artifact below must still go out
            logger.error("could not record the rejection in the ledger: %s", error)
    emit_event(
        REJECTION_EVENT,
        resource=rejection_resource(video_id, tenant_id),
        payload={
            "rejection_type": str(rejected.rejection_type),
            "message": rejected.message,
            "rejection_id": rejection_id,
            "run_id": run_id,
            "tenant_id": tenant_id,
            "estimated_cost_usd": estimate["estimated_cost_usd"] if estimate else None,
        },
    )
    create_markdown_artifact(
        markdown=_markdown(rejected, video_id, estimate, rejection_id),
        key=artifact_key("rejection", video_id),
        description=f"{rejected.rejection_type}: {rejected.message}"[:500],
    )
    return rejection_id
