"""``backfill_flow``: many registered videos, in waves no larger than the warm GPU capacity.

Every video is a job like any other: a run of the ``boundary-inference/default`` deployment
(:func:`flows.boundary_inference.boundary_inference_flow`), linked under the backfill's run, so
each one gets every safeguard (validation, dedup, breaker, queue depth, cost cap, cooldown, rate,
budget), leaves the same records (run row, rejection row, event, artifacts), runs where the
deployment's runs run, is counted by its concurrency limit, and is cancelled with the backfill (its
hooks, and Prefect's own cancellation of a cancelled run's subflows). A worker with a run limit
needs a slot for the backfill and one for each video of a wave. With
``BOUNDARY_INFERENCE_BACKFILL_VIDEO_RUNS=subflow`` the videos are subflows in the backfill's own
process instead (``backfill_flow`` called as a Python function, with no worker). The backfill adds
only the orchestration around them:

* **Bounded fan-out.** Videos are sent in waves of at most ``wave_size`` concurrent jobs, and
  ``wave_size`` is clamped to ``settings.max_containers``: a burst larger than the autoscaler
  ceiling only queues inputs behind cold containers (the cold-start storm) while their deadlines
  run. A wave is finished before the next one starts.
* **Stop the line.** Before every wave the breaker (the per-video flow's own read,
  :func:`tasks.breaker.check_breaker`) and the committed spend (``spend_summary``) are read from the
  ledger; the backfill stops when the circuit is open or when the budget left is below the
  smallest worst case any job can reserve (then nothing more could be admitted). It also stops
  after a wave in which a video was refused for a reason that is not about that video
  (:data:`STOP_REJECTIONS`: ``circuit_open``, ``budget_exceeded``, and likewise ``rate_limited``,
  ``queue_full``, ``guard_unavailable``). Refusals about one video (``validation_failed``,
  ``cooldown``, ``cost_exceeded``, ...) are recorded for that video and the others go on.
  Videos not submitted are reported with the reason.
* **Progress.** A progress artifact (``backfill-progress``) moves as each video finishes; a table
  artifact (``backfill-outcomes``) lists every video's outcome, and a markdown summary
  (``backfill-summary``) says why the backfill stopped, if it did.

Re-running a backfill is safe: dedup turns the videos already done into ``skipped`` (no quota).

Batching small videos into one call is **not** done, on purpose. An ``InferenceRequest`` carries one
``video_uri`` and one ``run_id``; the run, its dedup key, its budget reservation and settlement, its
breaker outcome and its predictions are all per video. One call for several videos would either
skip those per-video safeguards or need a new request/result type and a split settlement. It would
also save little: the GPU function loads its model once per container (``@modal.enter``) and a warm
container takes the next call without a cold start, so what one batched call saves is the cold
start and idle tail of every *extra container*, and ``wave_size`` already controls that: with
``wave_size=1`` all videos run back to back on one warm container, the container time of one
batched call, with every safeguard per video. The summary artifact computes this trade (container
minutes of overhead at the chosen wave size vs. one container) so the operator can choose.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import FlowRun, State
from prefect.futures import as_completed
from prefect.states import Cancelled, Completed
from pydantic import Field

from boundary_inference.cancel_watch import CancelWatch
from boundary_inference.errors import StoreUnavailable
from boundary_inference.job_runs import DEPLOYMENT, read_outcome
from boundary_inference.ledger import Ledger, SpendSummary
from boundary_inference.outcome import JobOutcome, OutcomeStatus, RejectionType, outcome_in
from boundary_inference.services import get_services
from config import Settings, get_settings
from flows.boundary_inference import boundary_inference_flow
from flows.run import states as run_states
from flows.run.cancellation import stop_backfill_spending
from tasks import breaker
from tasks._common import GUARD, guard_task

# One backfill is one Prefect flow run with a job per video; beyond this, split it (the global
# rate limit, 20 jobs per hour by default, stops a larger backfill long before anyway).
MAX_VIDEOS_PER_BACKFILL = 200
NOT_SUBMITTED = "not_submitted"
# A video's run is polled this often until final (one small API read); a wave ends at most this
# long after its last video.
POLL_S = 2.0
# A video's run still Scheduled/Pending after this long: say that nothing has picked it up.
NOTICE_AFTER_S = 60.0
CANCELLED = "cancelled"  # the stop reason of a backfill cancelled from Prefect
# Refusals that say nothing about the video itself: the next video would be refused the same way.
STOP_REJECTIONS = frozenset(
    {
        RejectionType.CIRCUIT_OPEN,
        RejectionType.BUDGET_EXCEEDED,
        RejectionType.RATE_LIMITED,
        RejectionType.QUEUE_FULL,
        RejectionType.GUARD_UNAVAILABLE,
    }
)


@dataclass
class StopReason:
    """Why the backfill submits no further videos."""

    kind: str  # a RejectionType value
    message: str


@dataclass
class _Backfill:
    """Rows of the outcome table as the backfill goes. Private to this module."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    stop: StopReason | None = None

    def add_outcome(self, wave: int, outcome: dict[str, Any]) -> None:
        self.rows.append({"wave": wave, **outcome})

    def add_unsubmitted(self, video_id: str, reason: str, message: str) -> None:
        self.rows.append(
            {
                "wave": None,
                "video_id": video_id,
                "status": NOT_SUBMITTED,
                "rejection_type": reason,
                "message": message,
            }
        )

    def table(self) -> list[dict[str, Any]]:
        columns = (
            "video_id",
            "wave",
            "status",
            "rejection_type",
            "run_id",
            "estimated_cost_usd",
            "actual_cost_usd",
            "pairs",
            "boundaries",
            "message",
            "flow_run_id",
        )
        return [{c: row.get(c) for c in columns} for row in self.rows]

    def counts(self) -> dict[str, int]:
        found: dict[str, int] = {}
        for row in self.rows:
            found[str(row["status"])] = found.get(str(row["status"]), 0) + 1
        return found


def _outcome_dict(video_id: str, state: State, data: Any) -> dict[str, Any]:
    outcome = outcome_in(data)  # a failed job's outcome rides in its Failed state's data
    if outcome is not None:
        return outcome
    # The video's job (or its task) crashed or was cancelled before it produced an outcome.
    message = f"subflow ended {state.name}: {type(data).__name__}: {data}"[:1000]
    return JobOutcome(OutcomeStatus.FAILED, video_id, message).to_dict()


@task(
    name="backfill-video",
    task_run_name="video-{video_id}",
    cache_policy=NO_CACHE,
    # Never retried here: a retry is a second admission; the GPU's retries live in Modal only.
    retries=0,
)
def backfill_video(
    video_id: str,
    frames_version: str,
    model_version: str,
    skip_if_exists: bool,
    priority: str,
    tenant_id: str | None,
) -> dict[str, Any]:
    """One video through the full per-video flow; its JobOutcome as a dict, whatever happened."""
    parameters: dict[str, Any] = {
        "video_id": video_id,
        "frames_version": frames_version,
        "model_version": model_version,
        "skip_if_exists": skip_if_exists,
        "priority": priority,  # the per-video flow validates it
        "tenant_id": tenant_id,
    }
    if get_settings().backfill_video_runs == "subflow":
        state = boundary_inference_flow(**parameters, return_state=True)
        outcome = _outcome_dict(video_id, state, state.result(raise_on_failure=False))
        return {**outcome, "flow_run_id": str(state.state_details.flow_run_id)}
    return _deployment_run_outcome(parameters)


def _deployment_run_outcome(parameters: dict[str, Any]) -> dict[str, Any]:
    """The video as a run of ``boundary-inference/default``, linked under this task (the UI
    nests it, a cancel of the backfill reaches it), waited on until final; its outcome."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    video_id = str(parameters["video_id"])
    logger = get_run_logger()
    created = run_deployment(
        DEPLOYMENT, parameters=parameters, timeout=0, as_subflow=True, tags=["backfill"]
    )
    assert isinstance(created, FlowRun)  # sync context: the run, not a coroutine
    started = time.monotonic()
    waiting_noted = False
    with get_client(sync_client=True) as client:
        while True:
            try:
                flow_run = client.read_flow_run(created.id)
            except Exception as error:  # the client retried already; the run goes on without us
                message = (
                    f"lost sight of its flow run {created.id}: {type(error).__name__}: {error}"
                )
                outcome = JobOutcome(OutcomeStatus.FAILED, video_id, message[:1000]).to_dict()
                return {**outcome, "flow_run_id": str(created.id)}
            state = flow_run.state
            if state is not None and state.is_final():
                outcome = read_outcome(client, flow_run)
                return {**outcome, "video_id": video_id, "flow_run_id": str(flow_run.id)}
            waiting = state is None or state.is_scheduled() or state.is_pending()
            if waiting and not waiting_noted and time.monotonic() - started > NOTICE_AFTER_S:
                logger.warning(
                    "video %s: its run %s is still %s after %.0f s: is a worker serving %s, with a"
                    " slot free beside this backfill's own?",
                    video_id,
                    flow_run.id,
                    state.name if state else "?",
                    NOTICE_AFTER_S,
                    DEPLOYMENT,
                )
                waiting_noted = True
            time.sleep(POLL_S)


@guard_task(name="backfill-gate", tags=GUARD)
def check_gate(ledger: Ledger, settings: Settings, tenant_id: str) -> StopReason | None:
    """Between waves: may another wave be sent? Reads the breaker and the committed spend."""
    refusal = breaker.check_breaker(ledger, settings)
    if refusal is not None:
        return StopReason(str(refusal.rejection_type), refusal.message)
    # The least any job can reserve: a job of 0 pairs (every attempt at the deadline floor + tail).
    smallest_usd = settings.cost_model.worst_case_cost_usd(
        0, settings.default_throughput_pairs_per_s
    )
    caps: list[tuple[str, str | None, float]] = [
        ("daily", None, settings.daily_budget_usd),
        ("monthly", None, settings.monthly_budget_usd),
    ]
    if settings.tenant_daily_budget_usd is not None:
        caps.append(("tenant daily", tenant_id, settings.tenant_daily_budget_usd))
    if settings.tenant_monthly_budget_usd is not None:
        caps.append(("tenant monthly", tenant_id, settings.tenant_monthly_budget_usd))
    summaries: dict[str | None, SpendSummary] = {}
    for label, tenant, cap_usd in caps:
        if tenant not in summaries:
            summaries[tenant] = ledger.spend_summary(tenant_id=tenant)
        summary = summaries[tenant]
        committed_usd = float(
            (
                summary["daily_committed_usd"]
                if label.endswith("daily")
                else summary["monthly_committed_usd"]
            )
            or 0.0
        )
        if cap_usd - committed_usd < smallest_usd:
            return StopReason(
                str(RejectionType.BUDGET_EXCEEDED),
                f"{label} budget spent: ${committed_usd:.4f} of ${cap_usd:.2f} committed, less than"
                f" the ${smallest_usd:.4f} the smallest job reserves is left",
            )
    return None


def _container_note(settings: Settings, videos: int, wave_size: int) -> str:
    """Container overhead (cold start + idle tail per container used) at this wave size vs. one."""
    if videos == 0:
        return "No video was submitted: no container time."
    per_container_s = settings.cold_start_s + settings.scaledown_window_s
    used = min(videos, wave_size)
    overhead_min = used * per_container_s / 60.0
    single_min = per_container_s / 60.0
    saved_min = overhead_min - single_min
    return (
        f"Container overhead (cold start {settings.cold_start_s:.0f} s + idle tail"
        f" {settings.scaledown_window_s} s per container): {used} container(s) ="
        f" {overhead_min:.1f} container-min (${overhead_min * 60 * settings.cost_model.price_usd_per_s:.2f})."
        f" With wave_size=1 (one warm container, the container time of one batched call):"
        f" {single_min:.1f} container-min, {saved_min:.1f} fewer, at the cost of running the"
        " videos one after another."
    )


def _summary_markdown(
    bf: _Backfill, settings: Settings, submitted: int, total: int, wave_size: int, waves: int
) -> str:
    lines = [
        "# Backfill",
        "",
        f"{submitted} of {total} videos submitted in {waves} wave(s) of at most {wave_size}.",
        "",
        "| status | videos |",
        "|---|---|",
        *(f"| {status} | {count} |" for status, count in sorted(bf.counts().items())),
        "",
    ]
    if bf.stop is not None:
        lines += [f"**Stopped: `{bf.stop.kind}`** - {bf.stop.message}", ""]
        unsubmitted = [r["video_id"] for r in bf.rows if r["status"] == NOT_SUBMITTED]
        if unsubmitted:
            lines += [f"Not submitted ({len(unsubmitted)}): " + ", ".join(unsubmitted), ""]
    lines.append(_container_note(settings, submitted, wave_size))
    return "\n".join(lines)


@flow(
    name="backfill",
    flow_run_name="backfill-{frames_version}-{model_version}",
    # Second layer: a backfill killed by its runner (cancelled from the UI) cancels its videos'
    # runs; one whose videos ran in its own process (subflows) settles their calls.
    on_cancellation=[stop_backfill_spending],
    on_crashed=[stop_backfill_spending],
    # Pinned against a fleet-wide PREFECT_FLOWS_DEFAULT_RETRIES: a re-run backfill re-admits.
    retries=0,
)
def backfill_flow(
    video_ids: Annotated[list[str], Field(min_length=1, max_length=MAX_VIDEOS_PER_BACKFILL)],
    frames_version: Annotated[str, Field(min_length=1)],
    model_version: Annotated[str, Field(min_length=1)],
    wave_size: Annotated[int | None, Field(ge=1)] = None,
    skip_if_exists: bool = True,
    priority: Literal["high", "normal", "low"] = "low",
    tenant_id: str | None = None,
) -> State:
    """Run caption-boundary inference on many registered videos, in bounded waves, each video
    behind every safeguard; stop when the breaker opens or the budget is spent.

    Args:
        video_ids: Registered video ids, 1 to 200 (duplicates are sent once). Each video is
            processed whole (every consecutive frame pair) by the boundary-inference flow.
        frames_version: Version of the extracted frames, the same for every video (dedup key).
        model_version: ``builtin-textdiff-v1`` or ``ckpt:<name>``, the same for every video.
        wave_size: Videos run at once; default and maximum: the GPU autoscaler ceiling
            (``max_containers``). A wave finishes before the next starts. 1 runs every video on
            one warm container (least container time, longest wall time).
        skip_if_exists: Videos already done for these versions are skipped (no quota used), so a
            stopped backfill can simply be run again. False forces re-runs (cooldown applies).
        priority: ``high``, ``normal`` or ``low`` (default), recorded on each run.
        tenant_id: Owner of the videos; default from configuration.
    """
    settings = get_settings()
    logger = get_run_logger()
    tenant = tenant_id or settings.default_tenant_id
    unique, size, waves = _plan_waves(settings, video_ids, wave_size)
    bf = _Backfill()
    progress_id = create_progress_artifact(
        progress=0.0,
        key="backfill-progress",
        description=f"{len(unique)} videos in {len(waves)} wave(s) of at most {size}",
    )
    assert isinstance(progress_id, uuid.UUID)  # sync context: the id, not a coroutine
    submitted = waves_sent = 0
    bf.stop = _not_deployed(settings)
    for number, wave in enumerate(waves, start=1):
        bf.stop = bf.stop or _cancelled(settings) or _gate(settings, tenant)
        if bf.stop is not None:
            _record_stop(bf, waves, number)
            break
        waves_sent += 1
        submitted += len(wave)
        logger.info("wave %d/%d: %s", number, len(waves), ", ".join(wave))
        _run_wave(
            bf,
            number,
            wave,
            progress_id,
            len(unique),
            video_args=(frames_version, model_version, bool(skip_if_exists), priority, tenant_id),
        )
    update_progress_artifact(progress_id, 100.0)
    # A cancel during the last wave: the server accepts no other end than Cancelled now.
    bf.stop = _cancelled(settings) or bf.stop
    return _report(bf, settings, submitted, len(unique), size, waves_sent)


def _record_stop(bf: _Backfill, waves: list[list[str]], number: int) -> None:
    """The gate refused wave ``number``: its videos and every later wave's are not submitted."""
    assert bf.stop is not None
    for video_id in (v for later in waves[number - 1 :] for v in later):
        bf.add_unsubmitted(video_id, bf.stop.kind, bf.stop.message)
    get_run_logger().warning(
        "backfill stopped before wave %d/%d (%s): %s",
        number,
        len(waves),
        bf.stop.kind,
        bf.stop.message,
    )


def _plan_waves(
    settings: Settings, video_ids: list[str], wave_size: int | None
) -> tuple[list[str], int, list[list[str]]]:
    """(distinct ids in order, the wave size, the waves), with warnings for what was lowered."""
    logger = get_run_logger()
    unique = list(dict.fromkeys(str(v) for v in video_ids))
    if len(unique) < len(video_ids):
        logger.info("%d duplicate video ids sent once", len(video_ids) - len(unique))
    size = min(wave_size or settings.max_containers, settings.max_containers)
    if wave_size is not None and wave_size > settings.max_containers:
        logger.warning(
            "wave_size %d lowered to max_containers=%d", wave_size, settings.max_containers
        )
    if len(unique) > settings.global_rate_limit_jobs:
        logger.warning(
            "%d videos but %d jobs per %d s are admitted: expect a rate_limited stop; run again"
            " later (done videos are skipped)",
            len(unique),
            settings.global_rate_limit_jobs,
            settings.global_rate_window_s,
        )
    return unique, size, [unique[i : i + size] for i in range(0, len(unique), size)]


def _run_wave(
    bf: _Backfill,
    number: int,
    wave: list[str],
    progress_id: uuid.UUID,
    total: int,
    *,
    video_args: tuple[str, str, bool, str, str | None],
) -> None:
    """Run one wave's videos at once and record each outcome as it ends; a refusal that stops
    the backfill (breaker open, budget spent) is noted for the next wave's gate."""
    futures = {backfill_video.submit(video_id, *video_args): video_id for video_id in wave}
    for future in as_completed(list(futures)):
        data = future.result(raise_on_failure=False)
        outcome = _outcome_dict(futures[future], future.state, data)
        bf.add_outcome(number, outcome)
        finished = sum(1 for r in bf.rows if r["status"] != NOT_SUBMITTED)
        update_progress_artifact(progress_id, round(100.0 * finished / total, 1))
        kind = outcome.get("rejection_type")
        if bf.stop is None and kind in STOP_REJECTIONS:
            bf.stop = StopReason(
                str(kind), f"video {outcome['video_id']} was refused: {outcome['message']}"
            )


def _report(
    bf: _Backfill, settings: Settings, submitted: int, videos: int, size: int, waves_sent: int
) -> State:
    """The outcomes table and summary artifacts, and the flow's final state."""
    create_table_artifact(
        table=bf.table(),
        key="backfill-outcomes",
        description=f"{videos} videos: "
        + ", ".join(f"{n} {s}" for s, n in sorted(bf.counts().items())),
    )
    create_markdown_artifact(
        markdown=_summary_markdown(bf, settings, submitted, videos, size, waves_sent),
        key="backfill-summary",
        description="stopped: " + bf.stop.kind if bf.stop else "all videos submitted",
    )
    summary = {
        "videos": videos,
        "submitted": submitted,
        "waves": waves_sent,
        "wave_size": size,
        "counts": bf.counts(),
        "stopped": None if bf.stop is None else {"kind": bf.stop.kind, "message": bf.stop.message},
        "not_submitted": [
            {"video_id": r["video_id"], "reason": r["rejection_type"], "message": r["message"]}
            for r in bf.rows
            if r["status"] == NOT_SUBMITTED
        ],
        "outcomes": [r for r in bf.rows if r["status"] != NOT_SUBMITTED],
    }
    message = f"{submitted}/{videos} videos submitted; " + ", ".join(
        f"{n} {s}" for s, n in sorted(bf.counts().items())
    )
    if bf.stop is not None and bf.stop.kind == CANCELLED:
        return Cancelled(message=f"{bf.stop.message}: {message}", data=summary)
    if bf.stop is not None:
        return run_states.stopped_backfill(bf.stop.kind, message, summary)
    return Completed(message=message, data=summary)


def _not_deployed(settings: Settings) -> StopReason | None:
    """Before the first wave, when videos are deployment runs: is there a deployment to run
    them? Else every video would fail alike: stop red, naming what to do."""
    if settings.backfill_video_runs != "deployment":
        return None
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            client.read_deployment_by_name(DEPLOYMENT)
    except ObjectNotFound:
        return StopReason(
            str(RejectionType.GUARD_UNAVAILABLE),
            f"{DEPLOYMENT} is not deployed on this Prefect server, and the videos run as its"
            " runs: deploy it (prefect.yaml) or serve it (python -m flows.serve), or set"
            " BOUNDARY_INFERENCE_BACKFILL_VIDEO_RUNS=subflow to run them in this process",
        )
    except Exception as error:
        return StopReason(
            str(RejectionType.GUARD_UNAVAILABLE), f"cannot read {DEPLOYMENT}: {error}"
        )
    return None


def _cancelled(settings: Settings) -> StopReason | None:
    """Before each wave: was this backfill cancelled from Prefect? (Its running videos see it
    themselves, each cancelling its own call.)"""
    watch = CancelWatch.for_this_flow_run(settings)  # a new watch asks at once
    reason = watch.requested() if watch is not None else None
    return StopReason(CANCELLED, reason) if reason else None


def _gate(settings: Settings, tenant_id: str) -> StopReason | None:
    """The between-waves check, failing closed: a store that cannot be read stops the backfill."""
    try:
        return check_gate(get_services(settings).ledger, settings, tenant_id)
    except StoreUnavailable as error:
        return StopReason(
            str(RejectionType.GUARD_UNAVAILABLE),
            f"cannot read the breaker or the budget ({type(error).__name__}: {error})",
        )
    except Exception as error:  # get_services: the ledger or Redis is not reachable at all
        return StopReason(str(RejectionType.GUARD_UNAVAILABLE), f"cannot reach the ledger: {error}")


__all__ = ["MAX_VIDEOS_PER_BACKFILL", "STOP_REJECTIONS", "StopReason", "backfill_flow"]
