"""A job as a run of the ``boundary-inference/default`` deployment: created, waited on, and its
outcome read back. What ``submit`` and the demo do by default, so every job runs where the
deployment's runs run (the state dir's worker locally, your workers in production): a cancel in
the UI reaches it, the deployment's concurrency limit counts it, the queue guard sees it waiting,
and this process only polls the API (no flow engine here).

The outcome comes from the run's outcome artifact (:func:`boundary_inference.job_runs.read_outcome`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

from boundary_inference.cli.context import flow_run_link
from boundary_inference.cli.errors import SubmissionCutShort
from boundary_inference.errors import BoundaryInferenceError, OperatorError
from boundary_inference.job_runs import DEPLOYMENT, read_outcome
from boundary_inference.local.worker import WorkerStatus, start_worker, worker_status

# One small API read per poll, from every waiting CLI: 50 waiters polling twice a second kept a
# 2-core machine's Prefect server busy. First polls quick (refusals end in seconds), then slower
# (a GPU job runs minutes): its end shows within POLL_MAX_S.
POLL_FIRST_S = 0.5
POLL_GROWTH = 1.25
POLL_MAX_S = 3.0
# After this long still Scheduled/Late/Pending, say once that nothing has picked it up (a server
# of your own with no worker serving the deployment waits for one forever, as Prefect does).
NOTICE_AFTER_S = 30.0


class NotDeployed(OperatorError):
    """The Prefect server has no ``boundary-inference/default`` to create the job's run of."""


class JobInterrupted(BoundaryInferenceError):
    """Ctrl-C while waiting: the run was asked to cancel (``Cancelling``, as the UI does)."""

    def __init__(self, flow_run_id: UUID) -> None:
        super().__init__(f"cancel requested for flow run {flow_run_id}")
        self.flow_run_id = flow_run_id


@dataclass(frozen=True)
class StartedJob:
    flow_run_id: UUID
    url: str | None
    state_name: str | None
    # The state dir's worker when it runs the job: waiting ends if it dies under the job.
    worker: WorkerStatus | None
    state_dir: Path


@dataclass(frozen=True)
class FinishedJob:
    flow_run_id: UUID
    url: str | None
    state_name: str
    outcome: dict[str, Any]


def create_job(settings: Any, server: Any, parameters: dict[str, Any]) -> StartedJob:
    """Create a run of the deployment. On the state dir's embedded server the state dir's worker
    (started here if it is not running) runs it; on a server of your own (PREFECT_API_URL),
    whatever serves the deployment there does."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    from boundary_inference.local.prefect_server import is_embedded_api

    state_dir = Path(settings.state_dir).resolve()
    api_url = str(get_current_settings().api.url or "")
    worker = None
    if server is not None or is_embedded_api(state_dir, api_url):
        worker = start_worker(
            state_dir, api_url, executor=settings.executor, models_dir=settings.models_dir
        )
    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(DEPLOYMENT)
        except ObjectNotFound:
            raise NotDeployed(
                f"{DEPLOYMENT} is not deployed on {api_url}: deploy it (`prefect deploy`, see"
                " prefect.yaml) and start a worker, or serve it (`python -m flows.serve`); or run"
                " the job in this process with --in-process"
            ) from None
        flow_run = client.create_flow_run_from_deployment(deployment.id, parameters=parameters)
    state_name = flow_run.state.name if flow_run.state else None
    return StartedJob(flow_run.id, flow_run_link(flow_run.id), state_name, worker, state_dir)


def wait_for_job(job: StartedJob, *, notice: Callable[[str], None]) -> FinishedJob:
    """Poll until the run is final and read its outcome. Ctrl-C asks the run to cancel (its
    watch cancels the call and settles at the seconds used) and raises :class:`JobInterrupted`."""
    from prefect.client.orchestration import get_client

    started = time.monotonic()
    noticed = False
    poll_s = POLL_FIRST_S
    with get_client(sync_client=True) as client:
        try:
            while True:
                flow_run = client.read_flow_run(job.flow_run_id)
                state = flow_run.state
                if state is not None and state.is_final():
                    return FinishedJob(
                        job.flow_run_id, job.url, state.name or "", read_outcome(client, flow_run)
                    )
                if job.worker is not None and not worker_status(job.state_dir).alive:
                    raise SubmissionCutShort(
                        f"the local worker stopped while flow run {job.flow_run_id} was"
                        f" {state.name if state else 'unknown'} (its log:"
                        f" {job.worker.directory / 'worker.log'}); a run it admitted is settled"
                        " by the lease reaper"
                    )
                waiting = state is None or state.is_scheduled() or state.is_pending()
                if not noticed and waiting and time.monotonic() - started > NOTICE_AFTER_S:
                    notice(
                        f"flow run {job.flow_run_id} is still {state.name if state else '?'}:"
                        f" nothing serving {DEPLOYMENT} has picked it up yet (still waiting)"
                    )
                    noticed = True
                time.sleep(poll_s)
                poll_s = min(POLL_MAX_S, poll_s * POLL_GROWTH)
        except KeyboardInterrupt:
            _request_cancel(client, job.flow_run_id)
            raise JobInterrupted(job.flow_run_id) from None


def _request_cancel(client: Any, flow_run_id: UUID) -> None:
    from prefect.states import Cancelling

    client.set_flow_run_state(flow_run_id, Cancelling(), force=True)
