"""The Prefect state a job ends in, and the tags that make its outcome findable.

Only Prefect's standard state names (Completed, Failed, Cancelled, Crashed): the UI's deployment
Runs tab and its state filter list a fixed set of names and hide a run whose state is named
otherwise (Prefect issues #12006, #16402, #21566), and state-change events are named after the
state, so a "Completed" automation never fires for a Completed-type state named ``Rejected``.
What the standard name cannot say rides in two places: the state message (``rejected:
cost_exceeded: ...``, :mod:`boundary_inference.outcome` reads it back) and tags on the flow run
(``rejected``, ``rejected:cost_exceeded``, ``skipped``, ...), which the UI filters by.

A refusal is Completed (the system worked: a safeguard said no), except ``guard_unavailable``:
an outage is Failed, red, where an operator looks first.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect import get_run_logger, runtime
from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from boundary_inference.outcome import (
    OUTCOME_ARTIFACT,
    BackfillStopped,
    JobFailed,
    JobOutcome,
    RejectionType,
    outcome_in,
    refusal_message,
    skip_message,
)

REJECTED_TAG = "rejected"
SKIPPED_TAG = "skipped"
TAKEN_OVER_TAG = "taken-over"


def rejection_tags(rejection_type: str) -> list[str]:
    """``rejected`` (every refusal) and ``rejected:<type>`` (one kind)."""
    return [REJECTED_TAG, f"{REJECTED_TAG}:{rejection_type}"]


def tag_flow_run(*tags: str) -> None:
    """Add tags to the current flow run (the server replaces the whole list, so merge). Best
    effort: the outcome is in the ledger, the message and the data whatever happens here."""
    flow_run_id = runtime.flow_run.id
    if not flow_run_id or not tags:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            current = list(client.read_flow_run(UUID(str(flow_run_id))).tags or [])
            merged = current + [t for t in tags if t not in current]
            if merged != current:
                client.update_flow_run(UUID(str(flow_run_id)), tags=merged)
    except Exception as error:  # the API hiccupped: the run ends all the same
        get_run_logger().warning("could not tag flow run %s with %s: %s", flow_run_id, tags, error)


def refused(outcome: JobOutcome) -> State:
    """A refusal's end: Completed, or Failed for an outage (``guard_unavailable``)."""
    rejection_type = RejectionType(str(outcome.rejection_type))
    tag_flow_run(*rejection_tags(rejection_type))
    message = refusal_message(rejection_type, outcome.message)
    if rejection_type is RejectionType.GUARD_UNAVAILABLE and not _retried_if_failed():
        return Failed(message=message, data=JobFailed(outcome.to_dict()))
    return Completed(message=message, data=outcome.to_dict())


def _retried_if_failed() -> bool:
    """Whether this flow run has retries configured (the retry audit refuses it): the server
    reschedules a Failed run that has retries left, so it would re-run, and re-record, the
    refusal. Such a refusal ends Completed (tagged the same). The flows pin ``retries=0``."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    if context is None:
        return False
    flow_run = context.flow_run
    policy_retries = flow_run.empirical_policy.retries if flow_run is not None else None
    flow_retries = context.flow.retries if context.flow is not None else None
    return bool(flow_retries) or bool(policy_retries)


def skipped(outcome: JobOutcome) -> State:
    """A duplicate: Completed, tagged ``skipped``."""
    tag_flow_run(SKIPPED_TAG)
    return Completed(message=skip_message(outcome.message), data=outcome.to_dict())


def failed(outcome: JobOutcome, *tags: str) -> State:
    """A job that failed (or timed out, or lost its watch): Failed, by its standard name."""
    tag_flow_run(*tags)
    return Failed(message=outcome.message, data=JobFailed(outcome.to_dict()))


def stopped_backfill(kind: str, message: str, summary: dict[str, Any]) -> State:
    """A backfill a guard stopped early: Completed, tagged ``stopped:<kind>``; stopped by an
    outage (``guard_unavailable``: a store it could not read) it is Failed, red like every
    outage, with the summary as its data."""
    tag_flow_run("stopped", f"stopped:{kind}")
    text = f"stopped: {kind}: {message}"
    if kind == str(RejectionType.GUARD_UNAVAILABLE):
        return Failed(message=text, data=BackfillStopped(text, summary))
    return Completed(message=text, data=summary)


def publish_outcome(state: State) -> State:
    """Put the job's outcome on its flow run (a keyless table artifact, one row) and return the
    state: whoever waits on a deployment run reads it there (the API returns the final state
    without its data). Best effort: the state's message and the ledger still tell the outcome."""
    from prefect.artifacts import create_table_artifact

    outcome = outcome_in(state.data)
    if outcome is None or not runtime.flow_run.id:
        return state
    try:
        create_table_artifact(table=[outcome], description=OUTCOME_ARTIFACT)
    except Exception as error:
        get_run_logger().warning("outcome artifact not created: %s", error)
    return state
