"""The life of a run after admission: spawn, watch, settle; reattach; finish unwatched.

Everything here happens once a job holds its admissions (limiter slot, budget reservation, run
lease). From the spawn on the call may be running and billing whatever happens to this process,
so each path ends with the run settled in the ledger: from the call's real result when it can be
read, else at the reservation's worst case, never above it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.client.schemas.objects import State
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled, Completed, Failed

from boundary_inference.cancel_watch import CancelWatch
from boundary_inference.executor import CallStatus, ExecutorUnavailable, SpawnUnconfirmed
from boundary_inference.lease import LeaseLost
from boundary_inference.ledger import ClaimResult, Ledger
from boundary_inference.outcome import JobFailed, JobOutcome, OutcomeStatus
from config import Settings
from flows.run import row
from flows.run import states as run_states
from flows.run.cancellation import stop_flow_run_calls
from flows.run.job import Job, Phase
from flows.run.reaper import reap_stale_runs
from flows.run.row import RunStatus
from flows.run.settlement import Settlement, settle_call
from modal_app.types import InferenceRequest
from tasks._common import artifact_key
from tasks.cost import CostEstimate, calibration_key, estimate_cost
from tasks.execute import run_job
from tasks.validate import ValidRequest

if TYPE_CHECKING:
    from boundary_inference.services import Services

# Expired leases examined at each flow start (the reaper deployment takes care of a backlog).
REAP_AT_START = 5


def estimate_markdown(
    video_id: str, est: CostEstimate, probe: bool, duplicate_pairs: int = 0
) -> str:
    return "\n".join(
        [
            f"# Admitted: `{video_id}`",
            "",
            "| | value |",
            "|---|---|",
            f"| frame pairs | {est.pairs} distinct ({duplicate_pairs} duplicates dropped) |",
            f"| throughput | {est.throughput_pairs_per_s:.1f} pairs/s ({est.throughput_source}) |",
            f"| expected GPU time | {est.expected_gpu_s:.1f} s (+ {est.billed_s - est.expected_gpu_s:.0f} s"
            " billed idle tail) |",
            f"| expected cost | ${est.estimated_cost_usd:.4f} |",
            f"| per-attempt deadline | {est.deadline_s:.0f} s |",
            f"| attempts at most | {est.attempts} |",
            f"| worst case (reserved) | ${est.worst_case_cost_usd:.4f} |",
            f"| per-job cap | ${est.cap_usd:.2f} |",
            f"| circuit-breaker probe | {'yes' if probe else 'no'} |",
        ]
    )


def spawn_and_settle(
    job: Job,
    verdict: ValidRequest,
    model_version: str,
    *,
    probe: bool,
    model_sha256: str | None = None,
    source: dict[str, Any] | None = None,
) -> State:
    """Run an admitted job: mark it running with its estimate, spawn, watch and settle it.

    Refused at spawn (the executor is unavailable): nothing ran, so nothing is charged and the
    quota is given back. A lost spawn answer is "maybe spawned" (:func:`tasks.execute.find_lost_call`).
    Anything after the spawn keeps the worst case charged unless the call's
    real result says otherwise.
    """
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    settings, run_id, est = job.settings, job.run_id, job.estimate
    ledger, executor = job.services.ledger, job.services.executor
    _mark_running(job, verdict, probe=probe)
    request = build_request(
        settings,
        verdict,
        model_version,
        run_id,
        est,
        model_sha256=model_sha256,
        source=source or None,
    )
    job.cancel = CancelWatch.for_this_flow_run(settings)
    try:
        call_id, status = run_job(
            executor, ledger, settings, request, lease=job.lease, cancel=job.cancel
        )
    except ExecutorUnavailable as error:
        return _refused_at_spawn(job, executor.name, error)
    except SpawnUnconfirmed as error:
        job.move(Phase.SPAWNED)  # maybe: an input Modal holds may still start (fenced: refuses)
        finish_unwatched(job, error)
        return _unconfirmed(job, error)
    except LeaseLost:
        job.move(Phase.SPAWNED)
        raise
    except BaseException as error:
        # Cancelled, timed out or crashed while watching: run_job already cancelled the call.
        job.move(Phase.SPAWNED)
        finish_unwatched(job, error)
        raise
    job.move(Phase.SPAWNED)
    return settle(job, status, call_id, probe)


def _mark_running(job: Job, verdict: ValidRequest, *, probe: bool) -> None:
    """The run is running, with the estimate it was admitted at (and the estimate artifact)."""
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    est = job.estimate
    executor_name, gpu_type = calibration_key(job.settings)
    row.mark_running(
        job.services.ledger,
        job.run_id,
        {
            "estimated_cost_usd": est.estimated_cost_usd,
            "worst_case_cost_usd": est.worst_case_cost_usd,
            "reserved_cost_usd": est.worst_case_cost_usd,
            # What calibration reads back: where it ran, and how many distinct pairs.
            "executor": executor_name,
            "gpu_type": gpu_type,
            "unique_pairs": len(verdict.frame_pairs),
            "duplicate_pairs": verdict.duplicate_pairs,
        },
    )
    create_markdown_artifact(
        markdown=estimate_markdown(job.video_id, est, probe, verdict.duplicate_pairs),
        key=artifact_key("estimate", job.video_id),
        description=f"expected ${est.estimated_cost_usd:.4f}, worst ${est.worst_case_cost_usd:.4f}",
    )


def _refused_at_spawn(job: Job, executor_name: str, error: ExecutorUnavailable) -> State:
    """Refused at spawn: nothing ran, so nothing is charged and the quota is given back."""
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    row.end(
        job.services.ledger,
        job.run_id,
        RunStatus.FAILED,
        {"error": f"executor unavailable: {error}", "failure_kind": "infrastructure"},
    )
    job.undo_admissions()
    job.move(Phase.CLOSED)
    message = f"executor {executor_name!r} unavailable at spawn: {error}"
    outcome = JobOutcome(
        OutcomeStatus.FAILED,
        job.video_id,
        message,
        run_id=job.run_id,
        estimated_cost_usd=job.estimate.estimated_cost_usd,
        actual_cost_usd=0.0,
    )
    return Failed(name="Failed", message=message, data=JobFailed(outcome.to_dict()))


def _unconfirmed(job: Job, error: SpawnUnconfirmed) -> State:
    """A lost spawn answer whose call never showed up: fenced, charged its worst case."""
    assert job.run_id is not None and job.estimate is not None
    message = f"spawn unconfirmed: {error}"
    outcome = JobOutcome(
        OutcomeStatus.FAILED,
        job.video_id,
        message,
        run_id=job.run_id,
        estimated_cost_usd=job.estimate.estimated_cost_usd,
        worst_case_cost_usd=job.estimate.worst_case_cost_usd,
        actual_cost_usd=job.estimate.worst_case_cost_usd,
    )
    return Failed(name="Failed", message=message, data=JobFailed(outcome.to_dict()))


def build_request(
    settings: Settings,
    verdict: ValidRequest,
    model_version: str,
    run_id: str,
    est: CostEstimate,
    *,
    model_sha256: str | None = None,
    source: dict[str, Any] | None = None,
) -> InferenceRequest:
    return InferenceRequest(
        run_id=run_id,
        video_uri=verdict.source_uri,
        frame_pairs=verdict.frame_pairs,
        model_version=model_version,
        crop_box=verdict.crop_box,
        batch_size=settings.batch_size,
        deadline_s=est.deadline_s,
        heartbeat_timeout_s=float(settings.heartbeat_timeout_s),
        model_sha256=model_sha256,
        source=source,
    )


def own_live_call(ledger: Ledger, run_id: str) -> str | None:
    """The call id of a live run that *this* flow run spawned, if any.

    That happens when a flow run whose process died after the spawn (SIGKILL, lost machine) is
    retried: the Prefect UI's Retry keeps the flow run id, so the run row still names it. The call
    may still be running, and paying: watch it again instead of spawning a second one. A live run
    of *another* flow run is an ordinary duplicate (that flow run watches it).
    """
    this_flow_run = runtime.flow_run.id
    row = ledger.get_run(run_id=run_id) if this_flow_run else None
    if (
        row
        and row.get("status") == "running"
        and row.get("executor_call_id")
        and str(row.get("flow_run_id")) == str(this_flow_run)
    ):
        return str(row["executor_call_id"])
    return None


def end_at_claim(
    job: Job,
    settings: Settings,
    verdict: ValidRequest,
    model_version: str,
    claim: ClaimResult,
    owner: str,
) -> State | None:
    """After the dedup claim: None when this flow created the run (it holds its lease now); else
    where this flow ends: watching a call again (one whose watcher's lease expired, or its own
    after a retry) or a skip."""
    assert job.services is not None  # claimed through them
    logger = get_run_logger()
    run_id = str(claim["run_id"])
    if claim.get("taken_over"):
        # Its watcher died (its lease expired) after the spawn: this flow is its watcher now.
        job.hold_lease(run_id, owner)
        logger.warning("run %s had no watcher (lease expired): taking over its call", run_id)
        call_id = claim["executor_call_id"]
        return reattach(job, settings, verdict, model_version, run_id, call_id)
    if not claim["created"]:
        own_call = own_live_call(job.services.ledger, run_id)
        if own_call is not None:
            return reattach(job, settings, verdict, model_version, run_id, own_call)
        message = (
            f"run {run_id} already exists for this video, frames and model ({claim['status']})"
        )
        logger.info("skipped: %s", message)
        outcome = JobOutcome(OutcomeStatus.SKIPPED, job.video_id, message, run_id=run_id)
        return run_states.skipped(outcome)
    job.run_id = run_id
    job.move(Phase.CLAIMED)
    job.hold_lease(run_id, owner)
    return None


def reattach(
    job: Job,
    settings: Settings,
    verdict: ValidRequest,
    model_version: str,
    run_id: str,
    call_id: str,
) -> State:
    """Watch and settle a call this flow run spawned before it died; nothing new is admitted."""
    assert job.services is not None
    ledger, executor = job.services.ledger, job.services.executor
    job.run_id = run_id
    row = ledger.get_run(run_id=run_id)
    est, _ = estimate_cost(
        ledger, settings, model_version=model_version, pairs=len(verdict.frame_pairs)
    )
    # What was admitted and reserved then is what counts, whatever calibration says now.
    est = replace(
        est,
        estimated_cost_usd=float((row and row["estimated_cost_usd"]) or est.estimated_cost_usd),
        worst_case_cost_usd=float((row and row["worst_case_cost_usd"]) or est.worst_case_cost_usd),
    )
    job.estimate = est
    get_run_logger().warning(
        "run %s: reattaching to its call %s (the flow that spawned it died)",
        run_id,
        call_id,
    )
    request = build_request(settings, verdict, model_version, run_id, est)
    job.move(Phase.SPAWNED)
    job.cancel = CancelWatch.for_this_flow_run(settings)
    try:
        call_id, status = run_job(
            executor,
            ledger,
            settings,
            request,
            existing_call_id=call_id,
            lease=job.lease,
            cancel=job.cancel,
        )
    except LeaseLost:
        raise
    except BaseException as error:
        finish_unwatched(job, error)
        raise
    return settle(job, status, call_id, probe=False)


def finish_unwatched(job: Job, error: BaseException) -> None:
    """End a spawned job whose outcome this flow will not see: the worst case stays charged.

    Runs once per job (the inner handler and the flow's store-error handler may both see the
    same error). Best effort: if the ledger is what failed, the run stays ``running`` with its
    reservation at the worst case, and the monitor's stale-run reaper settles it later.
    """
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    if job.lease is not None and job.lease.lost:
        return  # another watcher has it now, and settles it
    if not job.settled():
        return  # ended once already
    ledger, logger = job.services.ledger, get_run_logger()
    if isinstance(error, TerminationSignal) and _settle_terminated(job, error):
        return
    try:
        row.end(
            ledger,
            job.run_id,
            RunStatus.CANCELLED,
            {"error": f"flow stopped watching: {type(error).__name__}: {error}"},
        )
    except Exception as inner:  # e.g. already succeeded, when settling it was what failed
        logger.error("could not end run %s after %s: %s", job.run_id, error, inner)
    try:
        # What ran is unknown: keep the whole worst case charged rather than under-count spend.
        row.settle_budget(ledger, job.run_id, job.estimate.worst_case_cost_usd, as_task=False)
    except Exception as inner:
        logger.error("could not settle run %s after %s: %s", job.run_id, error, inner)


def _settle_terminated(job: Job, error: BaseException) -> bool:
    """The runner's SIGTERM (a cancel from the UI of a run a runner or worker started): the call
    is cancelled already (run_job's ``finally``); settle it at the seconds it used when the
    executor knows them. False when it could not be settled here (the worst case stays)."""
    assert job.services is not None and job.run_id is not None
    from prefect import runtime

    try:
        settled = stop_flow_run_calls(
            job.services.ledger,
            job.services.executor,
            job.settings,
            [(runtime.flow_run.id, job.video_id)],
            f"cancelled: the flow run was stopped ({type(error).__name__})",
        )
    except Exception as inner:
        get_run_logger().error("run %s not settled after %s: %s", job.run_id, error, inner)
        return False
    return bool(settled)


def settle(job: Job, status: CallStatus, call_id: str, probe: bool) -> State:
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    if job.lease is not None:
        job.lease.confirm()  # taken over while this flow stalled: its new watcher settles it
    settled = settle_call(
        job.services.ledger,
        job.settings,
        run_id=job.run_id,
        status=status,
        worst_case_usd=job.estimate.worst_case_cost_usd,
        probe=probe,
    )
    job.move(Phase.SETTLED)
    succeeded = settled.status is OutcomeStatus.SUCCEEDED
    dropped = f"; {job.duplicate_pairs} duplicate pairs dropped" if job.duplicate_pairs else ""
    outcome = JobOutcome(
        settled.status,
        job.video_id,
        settled.message + (dropped if succeeded else ""),
        run_id=job.run_id,
        estimated_cost_usd=job.estimate.estimated_cost_usd,
        worst_case_cost_usd=job.estimate.worst_case_cost_usd,
        actual_cost_usd=settled.actual_cost_usd,
        pairs=settled.pairs if succeeded else None,
        boundaries=settled.boundaries if succeeded else None,
        metrics=settled.metrics if succeeded else {},
        duplicate_pairs=job.duplicate_pairs,
    )
    settlement_artifact(job, settled, call_id)
    if job.cancel is not None and job.cancel.reason:
        # The flow run is Cancelling: the server accepts no other end but Cancelled.
        get_run_logger().warning("run %s %s: %s", job.run_id, settled.status, job.cancel.reason)
        return Cancelled(message=job.cancel.reason, data=JobFailed(outcome.to_dict()))
    if succeeded:
        return Completed(message=outcome.message, data=outcome.to_dict())
    if settled.status is OutcomeStatus.CANCELLED:
        return Cancelled(message=settled.message, data=JobFailed(outcome.to_dict()))
    get_run_logger().error(
        "run %s %s: %s (call %s)", job.run_id, settled.status, settled.message, call_id
    )
    # Failed by its standard name whatever the cause (a timeout too: its tag and data say so).
    return run_states.failed(outcome, str(settled.status).replace("_", "-"))


def settlement_artifact(job: Job, settled: Settlement, call_id: str) -> None:
    """What the run cost against what it was admitted at, on the flow run: the figures an
    operator otherwise assembles from the ledger. Best effort: the ledger holds them regardless."""
    assert job.estimate is not None
    gpu_s = "unknown" if settled.gpu_seconds is None else f"{settled.gpu_seconds:.1f}"
    rows = [
        ("status", str(settled.status)),
        ("actual cost", f"${settled.actual_cost_usd:.4f}"),
        ("estimate", f"${job.estimate.estimated_cost_usd:.4f}"),
        ("worst case (reserved)", f"${job.estimate.worst_case_cost_usd:.4f}"),
        ("GPU seconds", gpu_s),
        ("pairs", str(settled.pairs)),
        ("boundaries found", str(settled.boundaries)),
        ("call id", f"`{call_id}`"),
    ]
    markdown = "\n".join(
        [f"# Settled: `{job.video_id}`", "", "| | |", "|---|---|"]
        + [f"| {name} | {value} |" for name, value in rows]
    )
    try:
        create_markdown_artifact(
            markdown=markdown,
            key=artifact_key("settlement", job.video_id),
            description=f"actual ${settled.actual_cost_usd:.4f}"
            f" of estimate ${job.estimate.estimated_cost_usd:.4f}",
        )
    except Exception as error:
        get_run_logger().warning("settlement artifact not created: %s", error)


def taken_over(job: Job, error: LeaseLost) -> State:
    """This flow stalled past its lease and another watcher took the run and its call over: that
    watcher settles it; this one neither cancels nor charges anything."""
    message = f"stopped watching: {error}"
    get_run_logger().error(message)
    outcome = JobOutcome(OutcomeStatus.FAILED, job.video_id, message, run_id=job.run_id)
    return run_states.failed(outcome, run_states.TAKEN_OVER_TAG)


def reap_at_start(services: Services, settings: Settings) -> None:
    """The cheap check at every flow start: end or settle a few runs whose watcher died (one
    indexed read when there are none). Best effort: the guards below decide this submission."""
    try:
        reap_stale_runs(
            services.ledger, services.executor, settings, limit=REAP_AT_START, orphans=False
        )
    except Exception as error:
        get_run_logger().warning("expired leases not checked at start: %s", error)
