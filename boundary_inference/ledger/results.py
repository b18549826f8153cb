"""What each ledger call returns: the SQL functions' JSON, one ``TypedDict`` per shape.

The keys are those the latest definition of each function in ``migrations/`` builds (a later file
redefines an earlier one). They are ``TypedDict``s, not dataclasses, because a result *is* the
function's JSON object: it is read by key (``claim["created"]``, ``result.get("reason")``),
compared with plain dicts in tests and put into logs and artifacts as it is.

JSON types, as both transports decode them: a ``uuid``, ``date`` or ``timestamptz`` is its ISO
text (``str``); a ``numeric`` is a number (``float``; an ``int`` when whole, which mypy accepts as
a ``float``); a nullable column is ``... | None``. A key that only some branches of a function
build is ``NotRequired``: read it with ``.get()``. (No ``from __future__ import annotations``
here: the annotations are evaluated, so ``__required_keys__`` and ``__optional_keys__`` are right
at run time too.)
"""

from typing import Any, Literal, NotRequired, TypedDict

RunStatus = Literal[
    "queued", "running", "succeeded", "failed", "cancelled", "timed_out", "rejected"
]
BreakerState = Literal["closed", "open", "half_open"]
ReservationStatus = Literal["reserved", "settled", "released"]
BudgetRefusal = Literal["daily_cap", "monthly_cap", "tenant_daily_cap", "tenant_monthly_cap"]

# -- health ---------------------------------------------------------------------------------------


class Ping(TypedDict):
    """``ping``."""

    ok: bool
    now: str
    schema: str


# -- videos and models ----------------------------------------------------------------------------


class CropBox(TypedDict):
    """A video's crop box, pixels (the ``videos.crop_box`` check: all four keys)."""

    x: int
    y: int
    width: int
    height: int


class VideoRow(TypedDict):
    """A ``videos`` row: ``upsert_video``, ``get_video``, ``list_videos``."""

    id: str
    tenant_id: str
    frame_count: int
    fps: float
    source_uri: str | None
    crop_box: CropBox | None
    created_at: str
    updated_at: str
    # Migration 20261130300000: what registration measured (None for a video added before).
    width: int | None
    height: int | None
    codec: str | None
    size_bytes: int | None
    content_hash: str | None
    etag: str | None
    version_id: str | None
    modified: str | None


class ModelRow(TypedDict):
    """A ``models`` row: ``get_model``, ``list_models``."""

    model_version: str
    format: str
    size_bytes: int
    sha256: str
    file_name: str
    locations: list[str]
    details: dict[str, Any]  # free JSON given at registration (the checkpoint's own metadata)
    created_at: str
    updated_at: str


class ModelRegistration(ModelRow):
    """``register_model``: the row, and whether this call created it."""

    created: bool


# -- runs -----------------------------------------------------------------------------------------


class RunRow(TypedDict):
    """A ``boundary_inference_runs`` row: ``transition_run``, ``set_call_id``, ``get_run``,
    ``list_runs``, ``runs_finished_between``."""

    id: str
    video_id: str
    tenant_id: str
    frames_version: str
    model_version: str
    status: RunStatus
    priority: str
    pairs: int | None
    executor_call_id: str | None
    attempts: int
    estimated_cost_usd: float | None
    worst_case_cost_usd: float | None
    reserved_cost_usd: float | None
    actual_cost_usd: float | None
    gpu_seconds: float | None
    pairs_per_s: float | None
    error: str | None
    failure_kind: str | None
    rerun_of: str | None
    flow_run_id: str | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    updated_at: str
    # Migration 20261130100000: the watcher's lease, and when the limiter admitted the run.
    lease_expires_at: str | None
    lease_owner: str | None
    admitted_at: str | None
    # Migration 20261130200000: where it ran and how many distinct pairs it computed.
    executor: str | None
    gpu_type: str | None
    unique_pairs: int | None
    duplicate_pairs: int | None


class AbandonedRunEnd(TypedDict):
    """How a run nobody watches and with no call to ask was ended (``_end_abandoned_run``)."""

    run_id: str
    was: RunStatus  # its status before: queued (released) or running (charged)
    action: Literal["released", "charged_worst_case"]
    amount_usd: float


class ClaimResult(TypedDict):
    """``claim_run``: the run for the key, and whether this call created or took it over."""

    run_id: str
    created: bool
    status: RunStatus
    rerun_of: str | None
    taken_over: bool
    ended_run: AbandonedRunEnd | None
    executor_call_id: NotRequired[str]  # only when taken_over: the call to reattach to


class QueueCounts(TypedDict):
    """``queue_depth``: live runs now."""

    queued: int
    running: int
    total: int


class RunCounts(TypedDict):
    """``run_counts``: runs ended since one instant (and how many failed), created since another."""

    finished: int
    failed: int
    created: int


class Throughput(TypedDict):
    """``recent_throughput``: the calibration percentile of recent succeeded runs."""

    pairs_per_s: float | None  # None when there are no samples
    runs: int
    samples: list[float]  # oldest first
    percentile: float
    executor: str | None
    gpu_type: str | None


# -- leases and admissions ------------------------------------------------------------------------


class LeaseRenewal(TypedDict):
    """``renew_lease``: ``renewed`` False when the run ended or another owner took it over."""

    renewed: bool
    run_id: str
    status: RunStatus
    lease_expires_at: str | None
    owner: str | None


class ExpiredLease(RunRow):
    """``expired_leases``: a live run nobody watches, with its ages in the database's clock."""

    expired_for_s: float | None  # None for a legacy run without a lease
    running_for_s: float | None  # None while queued
    age_s: float


class LeasedRun(RunRow):
    """The run of ``take_expired_lease``; the ages only when it was taken."""

    running_for_s: NotRequired[float | None]
    age_s: NotRequired[float]


class LeaseTake(TypedDict):
    """``take_expired_lease``: exactly one caller gets ``taken`` True."""

    taken: bool
    run: LeasedRun


class AbandonedRunResult(TypedDict):
    """``end_abandoned_run``: ``ended`` False (with the run's ``status``) when it is not the
    caller's to end; otherwise how it was ended."""

    ended: bool
    run_id: str
    status: NotRequired[RunStatus]
    was: NotRequired[RunStatus]
    action: NotRequired[Literal["released", "charged_worst_case"]]
    amount_usd: NotRequired[float]


class Admission(TypedDict):
    """``record_admission``."""

    run_id: str
    admitted_at: str | None


class RecentAdmission(TypedDict):
    """One row of ``recent_admissions``."""

    run_id: str
    video_id: str
    age_s: float


# -- budget ---------------------------------------------------------------------------------------


class BudgetReservation(TypedDict):
    """``reserve_budget``: ``ok`` False with ``reason`` when a cap would be passed."""

    ok: bool
    reason: BudgetRefusal | None
    idempotent: bool  # the run already held (or settled) a reservation: nothing charged again
    reserved_usd: float
    daily_committed_usd: float
    monthly_committed_usd: float
    # Absent on an idempotent repeat (the tenant's totals are not read then).
    tenant_daily_committed_usd: NotRequired[float]
    tenant_monthly_committed_usd: NotRequired[float]
    lock_wait_ms: float


class BudgetSettlement(TypedDict):
    """``settle_budget``: ``settled`` False (and only the first three keys) without a
    reservation."""

    settled: bool
    run_id: str
    status: ReservationStatus | None
    reserved_usd: NotRequired[float]
    actual_usd: NotRequired[float]
    freed_usd: NotRequired[float]


class BudgetRelease(TypedDict):
    """``release_budget``: ``released`` False when the reservation was not open."""

    released: bool
    run_id: str
    status: ReservationStatus | None  # None: the run never reserved
    freed_usd: float


class OrphanReservation(TypedDict):
    """One row of ``orphan_reservations``: an open reservation of a run that has ended."""

    run_id: str
    reserved_usd: float
    reserved_at: str
    run_status: RunStatus
    executor_call_id: str | None
    video_id: str


class SpendSummary(TypedDict):
    """``spend_summary``: committed and actual spend of a UTC day and month."""

    tenant_id: str | None
    day: str
    month: str
    daily_committed_usd: float
    monthly_committed_usd: float
    daily_actual_usd: float
    monthly_actual_usd: float


class SpendDay(TypedDict):
    """One row of ``spend_by_day``."""

    day: str
    committed_usd: float
    actual_usd: float
    reservations: int


# -- circuit breaker ------------------------------------------------------------------------------


class BreakerCheck(TypedDict):
    """``breaker_check``: at most one caller gets ``probe`` while half-open."""

    allowed: bool
    state: BreakerState
    retry_after_s: float | None
    probe: bool


class BreakerRecord(TypedDict):
    """``breaker_record``."""

    state: BreakerState
    failures_in_window: int


class BreakerReset(TypedDict):
    """``breaker_reset``."""

    name: str
    state: BreakerState


class BreakerStatus(TypedDict):
    """``breaker_status``."""

    name: str
    state: BreakerState
    opened_at: str | None
    closed_at: str | None
    probe_granted_at: str | None
    failures_in_window: int


# -- rejections -----------------------------------------------------------------------------------


class RejectionId(TypedDict):
    """``log_rejection``."""

    id: str


class Acknowledgement(TypedDict):
    """``acknowledge_rejection``: False when unknown or already acknowledged."""

    id: str
    acknowledged: bool


class RejectionRow(TypedDict):
    """A ``boundary_inference_rejections`` row: ``list_rejections``."""

    id: str
    rejection_type: str
    message: str
    video_id: str | None
    tenant_id: str | None
    frame_count: int | None
    estimated_cost_usd: float | None
    run_id: str | None
    details: dict[str, Any]  # free JSON: what the refusing guard measured
    created_at: str
    acknowledged: bool
    acknowledged_at: str | None
    acknowledged_by: str | None


class RejectionMatch(TypedDict):
    """One row of ``find_rejections_by_prefix``."""

    id: str
    rejection_type: str
    video_id: str | None
    created_at: str
    acknowledged: bool


# -- predictions ----------------------------------------------------------------------------------


class PredictionRow(TypedDict):
    """One pair of ``get_predictions``."""

    frame1: int
    frame2: int
    probability: float
    is_boundary: bool


class PredictionsSaved(TypedDict):
    """``save_predictions``: ``chunk`` None when there was nothing to save."""

    run_id: str
    saved: int
    chunk: int | None


class PackedPredictions(TypedDict):
    """``get_predictions_packed``: the pairs as columns, ordered by (frame1, frame2)."""

    run_id: str
    pairs: int
    frame1: list[int]
    frame2: list[int]
    probability: list[float]
    is_boundary: list[bool]


class PredictionsPruned(TypedDict):
    """``prune_predictions``: call again while ``more``."""

    cutoff: str
    runs: int
    chunks: int
    more: bool


# -- ledger upkeep --------------------------------------------------------------------------------


class BudgetTotalsDriftRow(TypedDict):
    """One kept total that disagrees with the reservations it sums."""

    scope: Literal["day", "month", "tenant_day", "tenant_month"]
    period: str
    tenant_id: str
    totals_committed_usd: float
    reservations_committed_usd: float
    totals_actual_usd: float
    reservations_actual_usd: float
    totals_reservations: int
    reservations_count: int


class BudgetTotalsDrift(TypedDict):
    """``budget_totals_drift``."""

    ok: bool
    since: str
    checked_rows: int
    drift_rows: int
    drift: list[BudgetTotalsDriftRow]


class BudgetTotalsRebuild(TypedDict):
    """``budget_totals_rebuild``."""

    since: str | None
    deleted: int
    written: int


class TableSize(TypedDict):
    """One row of ``ledger_size``."""

    table: str
    rows: int
    total_bytes: int
    table_bytes: int
    index_bytes: int


__all__ = [
    "AbandonedRunEnd",
    "AbandonedRunResult",
    "Acknowledgement",
    "Admission",
    "BreakerCheck",
    "BreakerRecord",
    "BreakerReset",
    "BreakerState",
    "BreakerStatus",
    "BudgetRefusal",
    "BudgetRelease",
    "BudgetReservation",
    "BudgetSettlement",
    "BudgetTotalsDrift",
    "BudgetTotalsDriftRow",
    "BudgetTotalsRebuild",
    "ClaimResult",
    "CropBox",
    "ExpiredLease",
    "LeaseRenewal",
    "LeaseTake",
    "LeasedRun",
    "ModelRegistration",
    "ModelRow",
    "OrphanReservation",
    "PackedPredictions",
    "Ping",
    "PredictionRow",
    "PredictionsPruned",
    "PredictionsSaved",
    "QueueCounts",
    "RecentAdmission",
    "RejectionId",
    "RejectionMatch",
    "RejectionRow",
    "ReservationStatus",
    "RunCounts",
    "RunRow",
    "RunStatus",
    "SpendDay",
    "SpendSummary",
    "TableSize",
    "Throughput",
    "VideoRow",
]
