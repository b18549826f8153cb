"""``boundary_inference_flow``: every safeguard before any GPU second, then the job, then the bill.

Order (cheap reads first, quota consumed only at admission, each step one atomic call):

1. validate the request (video, tenant, versions, every frame pair, size limit), then the
   registries: the checkpoint is registered, the video's source is still what was registered;
2. dedup claim of (video, frames version, model version) -- a duplicate is a skip;
3. circuit breaker (read), queue depth, cost estimate against the per-job cap;
4. admission: cooldown + global rate (one Redis script), budget reservation of the worst case (one
   SQL function), breaker probe slot; a later refusal refunds the earlier admissions;
5. spawn, watch, and settle: actual cost from measured seconds, the unused reservation released.

Any refusal is recorded (ledger row, Prefect event, markdown artifact) and ends the flow run in a
``Completed`` state named ``Rejected``; a duplicate ends as ``Skipped``. If the ledger or Redis cannot
be reached, nothing is spawned: ``guard_unavailable`` (fail closed).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime
from prefect.artifacts import create_markdown_artifact
from prefect.states import Completed, Failed, State
from pydantic import ValidationError

from boundary_inference.executor import ExecutorUnavailable
from boundary_inference.ledger import LedgerError
from boundary_inference.limiter import LimiterUnavailable
from boundary_inference.outcome import JobFailed, JobOutcome, OutcomeStatus, Rejected, RejectionType
from boundary_inference.services import EmbeddedNotAllowed, Services, get_services
from config import Settings, get_settings
from config.identifiers import coerce_identifier, display_identifier
from config.settings import configuration_problems, settings_for_recording
from flows.parameters import bind_leniently
from modal_app.types import InferenceRequest
from tasks import (
    breaker,
    budget,
    cost,
    dedup,
    limits,
    model_registry,
    queue,
    rejections,
    source_check,
    validate,
)
from tasks._common import GUARD, artifact_key, guard_task
from tasks.execute import run_job
from tasks.lease import LeaseKeeper, LeaseLost, lease_owner
from tasks.reaper import reap_stale_runs
from tasks.settlement import settle_call

# A guard whose backing service fails raises one of these; the flow turns it into guard_unavailable.
GUARD_ERRORS: tuple[type[BaseException], ...] = (LedgerError, LimiterUnavailable)
PRIORITIES = ("high", "normal", "low")
# Expired leases examined at each flow start (the reaper deployment takes care of a backlog).
REAP_AT_START = 5


@guard_task(name="load-video", tags=GUARD)
def load_video(ledger: Any, video_id: str) -> dict[str, Any] | None:
    found = ledger.get_video(id=video_id)
    return dict(found) if found else None


def _known_model(model_version: str) -> bool:
    from modal_app.models import is_known_model_version

    return bool(is_known_model_version(model_version))


def _estimate_markdown(
    video_id: str, est: cost.CostEstimate, probe: bool, duplicate_pairs: int = 0
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


class _Job:
    """The state of one submission as it moves through the guards. Private to this module."""

    def __init__(
        self, services: Services | None, settings: Settings, video_id: str, tenant_id: str
    ):
        self.services = services
        self.settings = settings
        self.video_id = video_id
        self.tenant_id = tenant_id
        self.run_id: str | None = None
        self.frame_count: int | None = None
        self.estimate: cost.CostEstimate | None = None
        self.admitted_limiter = False
        self.reserved_budget = False
        # Set just before the spawn. From then on nothing is refunded or released: the call may
        # run (and bill) whatever happens to this process, so a store error is a failure that
        # keeps the worst case charged, never a "rejection, nothing spawned".
        self.spawned = False
        self.finished_unwatched = False
        # Where to record a refusal when there are no services (the settings were refused).
        self.recording_ledger: Any | None = None
        # Distinct pairs, and the copies the request repeated (dropped before the estimate).
        self.duplicate_pairs: int | None = None
        # Renews the run's lease while this flow watches it (tasks.lease); stopped at the end.
        self.lease: LeaseKeeper | None = None

    def hold_lease(self, run_id: str, owner: str) -> None:
        assert self.services is not None
        self.lease = LeaseKeeper(
            self.services.ledger,
            run_id,
            owner,
            lease_s=self.settings.run_lease_s,
            renew_every_s=self.settings.lease_renew_s,
        ).start()

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.stop(release=True)

    def reject(self, rejected: Rejected) -> State:
        """Record the refusal everywhere, undo what this job had taken, and end the run."""
        ledger = self.services.ledger if self.services else self.recording_ledger
        if rejected.rejection_type is RejectionType.GUARD_UNAVAILABLE:
            ledger = self._ledger_if_reachable()
        self.undo_admissions()
        if ledger is not None and self.run_id is not None:
            try:
                ledger.transition_run(
                    run_id=self.run_id,
                    to_status="rejected",
                    fields={"error": f"{rejected.rejection_type}: {rejected.message}"[:1000]},
                )
            except Exception as error:  # recorded below regardless
                get_run_logger().error("could not mark run %s rejected: %s", self.run_id, error)
        estimate = self.estimate.to_dict() if self.estimate else None
        rejection_id = rejections.record_rejection(
            ledger,
            rejected,
            video_id=self.video_id,
            tenant_id=self.tenant_id,
            frame_count=self.frame_count,
            run_id=self.run_id,
            estimate=estimate,
        )
        outcome = JobOutcome(
            status=OutcomeStatus.REJECTED,
            video_id=self.video_id,
            message=rejected.message,
            run_id=self.run_id,
            rejection_type=rejected.rejection_type,
            rejection_id=rejection_id,
            retry_after_s=rejected.retry_after_s,
            estimated_cost_usd=estimate["estimated_cost_usd"] if estimate else None,
            worst_case_cost_usd=estimate["worst_case_cost_usd"] if estimate else None,
            duplicate_pairs=self.duplicate_pairs,
        )
        return Completed(
            name="Rejected",
            message=f"{rejected.rejection_type}: {rejected.message}",
            data=outcome.to_dict(),
        )

    def _ledger_if_reachable(self) -> Any | None:
        ledger = self.services.ledger if self.services else self.recording_ledger
        if ledger is None:
            return None
        try:
            ledger.ping()
        except Exception:
            return None
        return ledger

    def undo_admissions(self) -> None:
        """Give back quota this job took but will not use. Best effort; bounded if it fails."""
        if self.spawned:  # it may be running: what it took, it uses
            return
        assert self.services is not None or not (self.admitted_limiter or self.reserved_budget)
        if self.admitted_limiter and self.services and self.run_id:
            try:
                limits.refund_admission(
                    self.services.limiter, video_id=self.video_id, run_id=self.run_id
                )
                self.admitted_limiter = False
            except Exception as error:
                get_run_logger().error("refund failed (expires with its window): %s", error)
        if self.reserved_budget and self.services and self.run_id:
            try:
                budget.release(self.services.ledger, run_id=self.run_id)
                self.reserved_budget = False
            except Exception as error:
                get_run_logger().error("budget release failed: %s", error)


def _run_name() -> str:
    """``<video>-<frames>-<model>-<first 8 of the flow run id>``: runs of one video told apart,
    and findable in the UI's search by any of the parts."""
    parameters = runtime.flow_run.parameters or {}
    parts = [
        str(parameters.get(key) or "?")[:48]
        for key in ("video_id", "frames_version", "model_version")
    ]
    return "-".join([*parts, str(runtime.flow_run.id or "")[:8]])


@flow(
    name="boundary-inference",
    flow_run_name=_run_name,
    # Bad parameters must reach our validation (recorded, typed rejection) rather than fail in
    # Prefect's parameter validation, which records nothing in the ledger (see bind_leniently).
    validate_parameters=False,
    # The outcome is persisted (a small file in Prefect's local result storage), so a state the
    # client got back from the API rather than from the run itself (a state change retried after a
    # busy server's 503 whose first try had landed) still carries it: without it, `submit` saw
    # "State data is missing" although the ledger had recorded the run.
    persist_result=True,
)
def boundary_inference_flow(
    video_id: str,
    frames_version: str,
    model_version: str,
    frame_pairs: list[list[int]] | dict[str, int] | None = None,
    skip_if_exists: bool = True,
    priority: Literal["high", "normal", "low"] = "high",
    tenant_id: str | None = None,
) -> State:
    """Detect caption boundaries on frame pairs of a registered video, within every safeguard.

    Args:
        video_id: A video registered with ``boundary-inference videos add``.
        frames_version: Version of the extracted frames (part of the dedup key).
        model_version: ``builtin-textdiff-v1`` or ``ckpt:<name>`` (part of the dedup key).
        frame_pairs: ``[[f1, f2], ...]`` with ``0 <= f1 < f2 < frame_count``, or for large jobs
            a range ``{"start": 0, "stop": N, "step": 1, "gap": 1}`` meaning pairs ``(f, f + gap)``
            for ``f`` in ``range(start, stop, step)`` (Prefect refuses parameters over 512 KB).
            Default: every consecutive pair of the video.
        skip_if_exists: Return the existing run for the same key instead of running again. False
            is an explicit, recorded re-run (still subject to every other safeguard).
        priority: ``high``, ``normal`` or ``low``; recorded on the run.
        tenant_id: Owner of the video; default from configuration.
    """
    try:
        settings = get_settings()
    except ValidationError as error:
        return _refuse_configuration(error, video_id, tenant_id)
    # Identifiers as given (an all-digit id may arrive as a JSON int); checked against the one
    # grammar before any store is read with them.
    ids: dict[str, Any] = {
        "video_id": coerce_identifier(video_id),
        "tenant_id": settings.default_tenant_id
        if tenant_id is None
        else coerce_identifier(tenant_id),
        "frames_version": coerce_identifier(frames_version),
        "model_version": coerce_identifier(model_version),
    }
    # Recorded with a refusal (row, event, artifact): the id itself when valid, else a short
    # escaped stand-in, so a bad id never reaches a store or an event resource as it is.
    video_id = display_identifier(ids["video_id"])
    shown_tenant = display_identifier(ids["tenant_id"])
    try:
        services = get_services(settings)
    except EmbeddedNotAllowed as error:
        return _Job(None, settings, video_id, shown_tenant).reject(
            Rejected(RejectionType.GUARD_UNAVAILABLE, str(error))
        )
    except Exception as error:
        job = _Job(None, settings, video_id, shown_tenant)
        return job.reject(
            Rejected(RejectionType.GUARD_UNAVAILABLE, f"cannot reach the ledger or Redis: {error}")
        )
    job = _Job(services, settings, video_id, shown_tenant)
    refused = validate.identifier_rejection(**ids)
    if refused is not None:
        return job.reject(refused)
    try:
        return _guarded_run(
            job,
            services,
            settings,
            frames_version=ids["frames_version"],
            model_version=ids["model_version"],
            frame_pairs=frame_pairs,
            skip_if_exists=skip_if_exists,
            priority=priority,
        )
    except LeaseLost as error:
        return _taken_over(job, error)
    except GUARD_ERRORS as error:
        if job.spawned:
            _finish_unwatched(job, error)
            raise
        return job.reject(
            Rejected(
                RejectionType.GUARD_UNAVAILABLE,
                f"a safeguard could not reach its store ({type(error).__name__}: {error});"
                " nothing was spawned",
            )
        )
    finally:
        # Whatever happened, this flow watches nothing any more: a run still live (the ledger
        # was unreachable when it should have ended it) is left to the next claim or the reaper
        # at once instead of after its lease.
        job.release_lease()


def _taken_over(job: _Job, error: LeaseLost) -> State:
    """This flow stalled past its lease and another watcher took the run and its call over: that
    watcher settles it; this one neither cancels nor charges anything."""
    message = f"stopped watching: {error}"
    get_run_logger().error(message)
    outcome = JobOutcome(OutcomeStatus.FAILED, job.video_id, message, run_id=job.run_id)
    return Failed(name="TakenOver", message=message, data=JobFailed(outcome.to_dict()))


def _reap_at_start(services: Services, settings: Settings) -> None:
    """The cheap check at every flow start: end or settle a few runs whose watcher died (one
    indexed read when there are none). Best effort: the guards below decide this submission."""
    try:
        reap_stale_runs(
            services.ledger, services.executor, settings, limit=REAP_AT_START, orphans=False
        )
    except Exception as error:
        get_run_logger().warning("expired leases not checked at start: %s", error)


def _refuse_configuration(error: ValidationError, video_id: Any, tenant_id: Any) -> State:
    """The settings were refused at start: nothing can be admitted. Record why (one line per
    problem) in the ledger, when the connection settings alone are readable."""
    problems = configuration_problems(error)
    logger = get_run_logger()
    ledger = None
    try:
        recording = settings_for_recording()
    except ValidationError as bad:
        recording = Settings.model_construct()
        logger.error("configuration refused, connection settings too: %s", bad)
    else:
        try:
            from boundary_inference.services import open_ledger

            ledger = open_ledger(recording)
        except Exception as unreachable:
            logger.error("configuration refused; the ledger is not reachable: %s", unreachable)
    tenant = "" if tenant_id is None else display_identifier(coerce_identifier(tenant_id))
    job = _Job(None, recording, display_identifier(coerce_identifier(video_id)), tenant)
    job.recording_ledger = ledger
    try:
        return job.reject(
            Rejected(
                RejectionType.GUARD_UNAVAILABLE,
                "configuration refused at start, nothing can be admitted: " + "; ".join(problems),
                details={"configuration_problems": problems},
            )
        )
    finally:
        if ledger is not None:
            ledger.close()


def _guarded_run(
    job: _Job,
    services: Services,
    settings: Settings,
    *,
    frames_version: str,
    model_version: str,
    frame_pairs: Any,
    skip_if_exists: Any,
    priority: Any,
) -> State:
    ledger, limiter, executor = services.ledger, services.limiter, services.executor
    logger = get_run_logger()
    if not isinstance(priority, str) or priority not in PRIORITIES:
        return job.reject(
            Rejected(RejectionType.VALIDATION_FAILED, f"priority must be one of {PRIORITIES}")
        )
    if not isinstance(skip_if_exists, bool):
        # bool("false") is True and bool(0) is False: guess neither, a re-run is a paid decision.
        return job.reject(
            Rejected(
                RejectionType.VALIDATION_FAILED,
                f"skip_if_exists must be true or false; got {type(skip_if_exists).__name__}",
            )
        )

    # 1. Validation: reads only.
    video = load_video(ledger, job.video_id)
    job.frame_count = int(video["frame_count"]) if video else None
    verdict = validate.validate_request(
        video,
        video_id=job.video_id,
        tenant_id=job.tenant_id,
        frames_version=frames_version,
        model_version=model_version,
        frame_pairs=frame_pairs,
        max_frame_pairs=settings.max_frame_pairs,
        known_model=_known_model(model_version) if isinstance(model_version, str) else False,
        check_source_exists=False,  # tasks.source_check, against the registered fingerprint
    )
    if isinstance(verdict, Rejected):
        return job.reject(verdict)
    request_pairs = verdict.frame_pairs  # distinct: what is estimated, billed and run
    job.duplicate_pairs = verdict.duplicate_pairs
    if verdict.duplicate_pairs:
        logger.info(
            "%d of %d requested pairs were duplicates, dropped: %d distinct pairs",
            verdict.duplicate_pairs,
            verdict.requested_pairs,
            len(request_pairs),
        )
    # The registries, still before any quota: the checkpoint is registered where this executor
    # reads it, and the video's source is still what was registered.
    model = model_registry.check_model(ledger, settings, model_version)
    if isinstance(model, Rejected):
        return job.reject(model)
    assert video is not None  # validation refuses an unregistered video
    source = source_check.check_source(video, settings)
    if isinstance(source, Rejected):
        return job.reject(source)

    # 2. Dedup: one atomic claim, with a lease this flow renews while it watches the run.
    _reap_at_start(services, settings)
    this_flow_run = runtime.flow_run.id
    owner = lease_owner(this_flow_run)
    claim = dedup.claim_run(
        ledger,
        video_id=job.video_id,
        tenant_id=job.tenant_id,
        frames_version=frames_version,
        model_version=model_version,
        pairs=len(request_pairs),
        priority=priority,
        skip_if_exists=skip_if_exists,
        flow_run_id=str(this_flow_run) if this_flow_run else None,
        lease_s=settings.run_lease_s,
        lease_owner=owner,
    )
    run_id = str(claim["run_id"])
    if claim.get("taken_over"):
        # Its watcher died (its lease expired) after the spawn: this flow is its watcher now.
        job.hold_lease(run_id, owner)
        logger.warning("run %s had no watcher (lease expired): taking over its call", run_id)
        return _reattach(job, settings, verdict, model_version, run_id, claim["executor_call_id"])
    if not claim["created"]:
        own_call = _own_live_call(ledger, run_id)
        if own_call is not None:
            return _reattach(job, settings, verdict, model_version, run_id, own_call)
        message = (
            f"run {run_id} already exists for this video, frames and model ({claim['status']})"
        )
        logger.info("skipped: %s", message)
        outcome = JobOutcome(OutcomeStatus.SKIPPED, job.video_id, message, run_id=run_id)
        return Completed(name="Skipped", message=message, data=outcome.to_dict())
    job.run_id = run_id
    job.hold_lease(run_id, owner)

    # 3. Cheap refusals before any quota is taken.
    refusal = breaker.check_breaker(ledger, settings)
    if refusal:
        return job.reject(refusal)
    refusal = queue.check_queue_depth(ledger, settings)
    if refusal:
        return job.reject(refusal)
    job.estimate, refusal = cost.estimate_cost(
        ledger, settings, model_version=model_version, pairs=len(request_pairs)
    )
    if refusal:
        return job.reject(refusal)
    est = job.estimate

    # Exactly one retry layer around GPU work, or the worst case above is not the worst case.
    problems = _stacked_retry_layers(settings)
    if problems:
        return job.reject(
            Rejected(
                RejectionType.GUARD_UNAVAILABLE,
                "retries are stacked on GPU work, so the admitted worst case would not bound the"
                " bill: " + "; ".join(problems),
            )
        )

    # The executor must be able to take the job (Modal credentials, app deployed) before any
    # quota is taken; there is no silent fall-back to another executor.
    try:
        executor.preflight()
    except ExecutorUnavailable as error:
        return job.reject(
            Rejected(RejectionType.GUARD_UNAVAILABLE, f"executor {executor.name!r}: {error}")
        )

    # 4. Admission: each step atomic; a later refusal gives back what earlier steps took.
    refusal = limits.admit(limiter, settings, video_id=job.video_id, run_id=run_id, ledger=ledger)
    if refusal:
        return job.reject(refusal)
    job.admitted_limiter = True
    # Marked before the call: if the answer is lost after the server committed, the reject path
    # still releases it (release touches only an open reservation of this run).
    job.reserved_budget = True
    refusal = budget.reserve(
        ledger, settings, run_id=run_id, tenant_id=job.tenant_id, amount_usd=est.worst_case_cost_usd
    )
    if refusal:
        return job.reject(refusal)
    refusal, probe = breaker.admit_breaker(ledger, settings)
    if refusal:
        return job.reject(refusal)

    # 5. Spend: the admitted worst case is reserved; run, watch, settle.
    executor_name, gpu_type = cost.calibration_key(settings)
    ledger.transition_run(
        run_id=run_id,
        to_status="running",
        fields={
            "estimated_cost_usd": est.estimated_cost_usd,
            "worst_case_cost_usd": est.worst_case_cost_usd,
            "reserved_cost_usd": est.worst_case_cost_usd,
            # What calibration reads back: where it ran, and how many distinct pairs.
            "executor": executor_name,
            "gpu_type": gpu_type,
            "unique_pairs": len(request_pairs),
            "duplicate_pairs": verdict.duplicate_pairs,
        },
    )
    create_markdown_artifact(
        markdown=_estimate_markdown(job.video_id, est, probe, verdict.duplicate_pairs),
        key=artifact_key("estimate", job.video_id),
        description=f"expected ${est.estimated_cost_usd:.4f}, worst ${est.worst_case_cost_usd:.4f}",
    )
    request = _request(
        settings,
        verdict,
        model_version,
        run_id,
        est,
        model_sha256=model.get("sha256"),
        source=source or None,
    )
    try:
        call_id, status = run_job(executor, ledger, settings, request, lease=job.lease)
    except ExecutorUnavailable as error:
        # Refused at spawn: nothing ran, so nothing is charged and the quota is given back.
        ledger.transition_run(
            run_id=run_id,
            to_status="failed",
            fields={
                "error": f"executor unavailable: {error}"[:1000],
                "failure_kind": "infrastructure",
            },
        )
        job.undo_admissions()
        message = f"executor {executor.name!r} unavailable at spawn: {error}"
        outcome = JobOutcome(
            OutcomeStatus.FAILED,
            job.video_id,
            message,
            run_id=run_id,
            estimated_cost_usd=est.estimated_cost_usd,
            actual_cost_usd=0.0,
        )
        return Failed(name="Failed", message=message, data=JobFailed(outcome.to_dict()))
    except LeaseLost:
        job.spawned = True
        raise
    except BaseException as error:
        # Cancelled, timed out or crashed while watching: run_job already cancelled the call.
        job.spawned = True
        _finish_unwatched(job, error)
        raise
    job.spawned = True
    return _settle(job, status, call_id, probe)


def _stacked_retry_layers(settings: Settings) -> list[str]:
    """The start-up audit, on the flow object actually running (``with_options`` included)."""
    from prefect.context import FlowRunContext

    from tasks.retry_audit import retry_audit

    context = FlowRunContext.get()
    running = [context.flow] if context is not None and context.flow is not None else []
    return retry_audit(settings, run_job, flows=running, modal_class=settings.executor == "modal")


def _request(
    settings: Settings,
    verdict: Any,
    model_version: str,
    run_id: str,
    est: cost.CostEstimate,
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


def _own_live_call(ledger: Any, run_id: str) -> str | None:
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


def _reattach(
    job: _Job, settings: Settings, verdict: Any, model_version: str, run_id: str, call_id: str
) -> State:
    """Watch and settle a call this flow run spawned before it died; nothing new is admitted."""
    assert job.services is not None
    ledger, executor = job.services.ledger, job.services.executor
    job.run_id = run_id
    row = ledger.get_run(run_id=run_id) or {}
    est, _ = cost.estimate_cost(
        ledger, settings, model_version=model_version, pairs=len(verdict.frame_pairs)
    )
    # What was admitted and reserved then is what counts, whatever calibration says now.
    est = replace(
        est,
        estimated_cost_usd=float(row.get("estimated_cost_usd") or est.estimated_cost_usd),
        worst_case_cost_usd=float(row.get("worst_case_cost_usd") or est.worst_case_cost_usd),
    )
    job.estimate = est
    get_run_logger().warning(
        "run %s: reattaching to its call %s (the flow that spawned it died)",
        run_id,
        call_id,
    )
    request = _request(settings, verdict, model_version, run_id, est)
    job.spawned = True
    try:
        call_id, status = run_job(
            executor, ledger, settings, request, existing_call_id=call_id, lease=job.lease
        )
    except LeaseLost:
        raise
    except BaseException as error:
        _finish_unwatched(job, error)
        raise
    return _settle(job, status, call_id, probe=False)


def _finish_unwatched(job: _Job, error: BaseException) -> None:
    """End a spawned job whose outcome this flow will not see: the worst case stays charged.

    Runs once per job (the inner handler and the flow's store-error handler may both see the
    same error). Best effort: if the ledger is what failed, the run stays ``running`` with its
    reservation at the worst case, and the monitor's stale-run reaper settles it later.
    """
    assert job.services is not None and job.run_id is not None and job.estimate is not None
    if job.finished_unwatched or (job.lease is not None and job.lease.lost):
        return  # ...or another watcher has it now, and settles it
    job.finished_unwatched = True
    ledger, logger = job.services.ledger, get_run_logger()
    try:
        ledger.transition_run(
            run_id=job.run_id,
            to_status="cancelled",
            fields={"error": f"flow stopped watching: {type(error).__name__}: {error}"[:1000]},
        )
    except Exception as inner:  # e.g. already succeeded, when settling it was what failed
        logger.error("could not end run %s after %s: %s", job.run_id, error, inner)
    try:
        # What ran is unknown: keep the whole worst case charged rather than under-count spend.
        ledger.settle_budget(run_id=job.run_id, actual_usd=job.estimate.worst_case_cost_usd)
    except Exception as inner:
        logger.error("could not settle run %s after %s: %s", job.run_id, error, inner)


def _settle(job: _Job, status: Any, call_id: str, probe: bool) -> State:
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
    if succeeded:
        return Completed(message=outcome.message, data=outcome.to_dict())
    get_run_logger().error(
        "run %s %s: %s (call %s)", job.run_id, settled.status, settled.message, call_id
    )
    return Failed(
        name=str(settled.status).replace("_", " ").title().replace(" ", ""),
        message=settled.message,
        data=JobFailed(outcome.to_dict()),
    )


def _reject_parameters(parameters: dict[str, Any], problems: list[str]) -> State:
    """Missing or mistyped parameters: recorded like any other refusal, before any guard runs."""
    settings = get_settings()
    video_id = parameters.get("video_id")
    tenant_id = parameters.get("tenant_id")
    # Shown as given when it is a valid id, else a short escaped stand-in (never stored as is).
    job = _Job(
        None,
        settings,
        "(missing)" if video_id is None else display_identifier(coerce_identifier(video_id)),
        settings.default_tenant_id
        if tenant_id is None
        else display_identifier(coerce_identifier(tenant_id)),
    )
    try:
        job.services = get_services(settings)
    except Exception as error:  # recorded as an event and an artifact still
        get_run_logger().error("cannot reach the ledger to record the rejection: %s", error)
    return job.reject(Rejected(RejectionType.VALIDATION_FAILED, "; ".join(problems)))


# frame_pairs has two shapes (pairs or a range spec) whose checks name the offending pair, and the
# identifiers have one grammar (config.identifiers: an all-digit id given as a JSON int
# is its decimal string, anything else not a string is refused with its type): tasks.validate owns
# them, so their values arrive untouched. Missing ones are still refused here.
bind_leniently(
    boundary_inference_flow,
    _reject_parameters,
    unchecked=["frame_pairs", "video_id", "frames_version", "model_version", "tenant_id"],
)
