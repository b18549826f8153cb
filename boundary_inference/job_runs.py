"""Runs of the ``boundary-inference/default`` deployment: what ``submit``, the demo and a
backfill's videos are. Its name, and the outcome a finished run left behind.

The outcome is read from the run's outcome artifact (``flows.run.states.publish_outcome``): the
API returns a final state without its data. A run that ended before writing one (cancelled or
crashed underneath, an old worker) is read from its state's type, name and message.
"""

from __future__ import annotations

from typing import Any

from boundary_inference.outcome import OUTCOME_ARTIFACT, outcome_from_table, outcome_of

DEPLOYMENT = "boundary-inference/default"


def read_outcome(client: Any, flow_run: Any) -> dict[str, Any]:
    """The JobOutcome (as a dict) of a final ``flow_run``, read with a sync Prefect client."""
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterId,
    )

    artifacts = client.read_artifacts(
        artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["table"])),
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])),
    )
    for artifact in artifacts:
        if artifact.description == OUTCOME_ARTIFACT:
            outcome = outcome_from_table(artifact.data)
            if outcome is not None:
                return outcome
    state = flow_run.state
    outcome = outcome_of(state)
    if outcome is not None:
        return outcome
    status = "cancelled" if state.is_cancelled() else "failed"
    return {"status": status, "message": state.message or state.name, "run_id": None}
