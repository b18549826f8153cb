"""``boundary_inference_flow``: every safeguard before any GPU second, then the job, then the bill.

Order (cheap reads first, quota consumed only at admission, each step one atomic call):

1. validate the request (video, tenant, versions, every frame pair, size limit), then the
   registries: the checkpoint is registered, the video's source is still what was registered;
2. dedup claim of (video, frames version, model version) -- a duplicate is a skip;
3. circuit breaker (read), queue depth, cost estimate against the per-job cap;
4. admission: cooldown + global rate (one Redis script), budget reservation of the worst case (one
   SQL function), breaker probe slot; a later refusal refunds the earlier admissions;
5. spawn, watch, and settle: actual cost from measured seconds, the unused reservation released.

Any refusal is recorded (ledger row, Prefect event, markdown artifact) and ends the flow run
``Completed`` with the message ``rejected: <type>: ...`` and the tags ``rejected`` and
``rejected:<type>``; a duplicate ends ``Completed`` tagged ``skipped`` (flows.run.states: standard
state names only, so the UI lists them). If the ledger or Redis cannot be reached, nothing is
spawned: ``guard_unavailable`` (fail closed), which ends ``Failed``: an outage shows red.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prefect import flow, get_run_logger, runtime
from prefect.client.schemas.objects import State
from pydantic import ValidationError

from boundary_inference.errors import StoreUnavailable
from boundary_inference.executor import ExecutorUnavailable
from boundary_inference.lease import LeaseLost, lease_owner
from boundary_inference.ledger import ModelRow
from boundary_inference.outcome import Rejected, RejectionType
from boundary_inference.services import Services
from config import Settings, get_settings
from config.identifiers import coerce_identifier
from flows.parameters import bind_leniently
from flows.run import early_refusals, retry_audit
from flows.run import lifecycle as run_lifecycle
from flows.run import states as run_states
from flows.run.cancellation import stop_spending
from flows.run.job import Job
from tasks import (
    breaker,
    budget,
    cost,
    dedup,
    limits,
    model_registry,
    queue,
    source_check,
    validate,
)

# A guard whose backing service fails raises one of these; the flow turns it into guard_unavailable.


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
    # Pinned: a fleet-wide PREFECT_FLOWS_DEFAULT_RETRIES would re-run a job (a second admission,
    # refused as a duplicate or spending twice) and re-run an outage's Failed refusal.
    retries=0,
    # Second layer behind the watch's own cancel check (flows.run.cancellation): a flow process
    # killed by its runner's cancel, or crashed, leaves its call running and unsettled.
    on_cancellation=[stop_spending],
    on_crashed=[stop_spending],
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
    # The outcome goes on the flow run too: a deployment run's waiter reads it there.
    return run_states.publish_outcome(
        _decide(
            video_id,
            frames_version,
            model_version,
            frame_pairs,
            skip_if_exists,
            priority,
            tenant_id,
        )
    )


def _decide(
    video_id: str,
    frames_version: str,
    model_version: str,
    frame_pairs: list[list[int]] | dict[str, int] | None,
    skip_if_exists: bool,
    priority: Literal["high", "normal", "low"],
    tenant_id: str | None,
) -> State:
    try:
        settings = get_settings()
    except ValidationError as error:
        return early_refusals.refuse_configuration(error, video_id, tenant_id)
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
    job = early_refusals.start_job(settings, ids)
    if not isinstance(job, Job):
        return job  # the services could not be reached: refused
    refused = validate.identifier_rejection(**ids)
    if refused is not None:
        return job.reject(refused)
    request = _Request(
        ids["frames_version"], ids["model_version"], frame_pairs, skip_if_exists, priority
    )
    return _run_job(job, request)


@dataclass(frozen=True)
class _Request:
    """What was asked beyond the video, as given: the guards check every value (a bad one is a
    recorded refusal), so nothing here is trusted yet."""

    frames_version: str
    model_version: str
    frame_pairs: Any
    skip_if_exists: Any
    priority: Any


def _run_job(job: Job, request: _Request) -> State:
    """The guards and the run; a store lost on the way refuses (before the spawn) or leaves the
    run to whoever watches it next (after)."""
    assert job.services is not None  # early_refusals.start_job connected them
    try:
        return _guarded_run(job, job.services, job.settings, request)
    except LeaseLost as error:
        return run_lifecycle.taken_over(job, error)
    except StoreUnavailable as error:
        if job.spawned:
            run_lifecycle.finish_unwatched(job, error)
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


def _guarded_run(job: Job, services: Services, settings: Settings, request: _Request) -> State:
    """The guards in the README's order; the first refusal ends the job (recorded, undone)."""
    model_version = request.model_version
    refused = validate.flag_rejection(request.skip_if_exists, request.priority)
    if refused is not None:
        return job.reject(refused)

    # 1. Validation and the registries: reads only.
    checked = _check_request(job, services, settings, request)
    if isinstance(checked, Rejected):
        return job.reject(checked)
    verdict, model, source = checked

    # 2. Dedup: one atomic claim, with a lease this flow renews while it watches the run.
    ended = _claim(job, services, settings, verdict, request)
    if ended is not None:
        return ended

    # 3. Cheap refusals before any quota is taken.
    refused = _cheap_refusals(job, services, settings, model_version, len(verdict.frame_pairs))
    if refused is not None:
        return job.reject(refused)

    # 4. Admission: each step atomic; a later refusal gives back what earlier steps took.
    refused, probe = _admit(job, services, settings)
    if refused is not None:
        return job.reject(refused)

    # 5. Spend: the admitted worst case is reserved; run, watch, settle (flows.run.lifecycle).
    return run_lifecycle.spawn_and_settle(
        job, verdict, model_version, probe=probe, model_sha256=model.get("sha256"), source=source
    )


def _check_request(
    job: Job, services: Services, settings: Settings, request: _Request
) -> tuple[validate.ValidRequest, ModelRow | model_registry.NoModelRow, dict[str, Any]] | Rejected:
    """The request itself, then the registries: (verdict, model, source) or the refusal."""
    ledger = services.ledger
    video = validate.load_video(ledger, job.video_id)
    job.frame_count = int(video["frame_count"]) if video else None
    verdict = validate.validate_request(
        video,
        video_id=job.video_id,
        tenant_id=job.tenant_id,
        frames_version=request.frames_version,
        model_version=request.model_version,
        frame_pairs=request.frame_pairs,
        max_frame_pairs=settings.max_frame_pairs,
        known_model=validate.is_known_model(request.model_version),
        check_source_exists=False,  # tasks.source_check, against the registered fingerprint
    )
    if isinstance(verdict, Rejected):
        return verdict
    job.duplicate_pairs = verdict.duplicate_pairs
    if verdict.duplicate_pairs:
        get_run_logger().info(
            "%d of %d requested pairs were duplicates, dropped: %d distinct pairs",
            verdict.duplicate_pairs,
            verdict.requested_pairs,
            len(verdict.frame_pairs),  # distinct: what is estimated, billed and run
        )
    # The registries, still before any quota: the checkpoint is registered where this executor
    # reads it, and the video's source is still what was registered.
    model = model_registry.check_model(ledger, settings, request.model_version)
    if isinstance(model, Rejected):
        return model
    assert video is not None  # validation refuses an unregistered video
    source = source_check.check_source(video, settings)
    if isinstance(source, Rejected):
        return source
    return verdict, model, source


def _claim(
    job: Job,
    services: Services,
    settings: Settings,
    verdict: validate.ValidRequest,
    request: _Request,
) -> State | None:
    """Claim the run (None: this flow owns a new run now), or end here: a skip, or a call
    this flow watches again (its own after a retry, or one whose watcher's lease expired)."""
    run_lifecycle.reap_at_start(services, settings)
    this_flow_run = runtime.flow_run.id
    owner = lease_owner(this_flow_run)
    claim = dedup.claim_run(
        services.ledger,
        video_id=job.video_id,
        tenant_id=job.tenant_id,
        frames_version=request.frames_version,
        model_version=request.model_version,
        pairs=len(verdict.frame_pairs),
        priority=request.priority,  # checked by validate.flag_rejection
        skip_if_exists=request.skip_if_exists,
        flow_run_id=str(this_flow_run) if this_flow_run else None,
        lease_s=settings.run_lease_s,
        lease_owner=owner,
    )
    return run_lifecycle.end_at_claim(job, settings, verdict, request.model_version, claim, owner)


def _cheap_refusals(
    job: Job, services: Services, settings: Settings, model_version: str, pairs: int
) -> Rejected | None:
    """Breaker, queue depth, cost cap, one retry layer, executor ready: no quota taken yet."""
    ledger, executor = services.ledger, services.executor
    refusal = breaker.check_breaker(ledger, settings) or queue.check_queue_depth(ledger, settings)
    if refusal:
        return refusal
    job.estimate, refusal = cost.estimate_cost(
        ledger, settings, model_version=model_version, pairs=pairs
    )
    if refusal:
        return refusal
    # Exactly one retry layer around GPU work, or the worst case above is not the worst case.
    problems = retry_audit.audit_running_flow(settings)
    if problems:
        return Rejected(
            RejectionType.GUARD_UNAVAILABLE,
            "retries are stacked on GPU work, so the admitted worst case would not bound the"
            " bill: " + "; ".join(problems),
        )
    # The executor must be able to take the job (Modal credentials, app deployed) before any
    # quota is taken; there is no silent fall-back to another executor.
    try:
        executor.preflight()
    except ExecutorUnavailable as error:
        return Rejected(RejectionType.GUARD_UNAVAILABLE, f"executor {executor.name!r}: {error}")
    return None


def _admit(job: Job, services: Services, settings: Settings) -> tuple[Rejected | None, bool]:
    """Cooldown + rate, budget reservation, breaker probe slot: (refusal, is this the probe)."""
    assert job.run_id is not None and job.estimate is not None
    refusal = limits.admit(
        services.limiter, settings, video_id=job.video_id, run_id=job.run_id, ledger=services.ledger
    )
    if refusal:
        return refusal, False
    job.admissions.limiter_slot = True
    job.admissions.budget_reservation = True  # before the call: see Admissions
    refusal = budget.reserve(
        services.ledger,
        settings,
        run_id=job.run_id,
        tenant_id=job.tenant_id,
        amount_usd=job.estimate.worst_case_cost_usd,
    )
    if refusal:
        return refusal, False
    refusal, probe = breaker.admit_breaker(services.ledger, settings)
    return refusal, bool(probe)


# frame_pairs has two shapes (pairs or a range spec) whose checks name the offending pair, and the
# identifiers have one grammar (config.identifiers: an all-digit id given as a JSON int
# is its decimal string, anything else not a string is refused with its type): tasks.validate owns
# them, so their values arrive untouched. Missing ones are still refused here.
bind_leniently(
    boundary_inference_flow,
    early_refusals.reject_parameters,
    unchecked=["frame_pairs", "video_id", "frames_version", "model_version", "tenant_id"],
)
