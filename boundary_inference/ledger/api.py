"""The ledger's Python face: one typed method per SQL function, over either transport.

Private module; use :class:`boundary_inference.ledger.Ledger`.

Conventions:
    * Method names are the SQL function names; keyword arguments are the SQL parameters without
      their ``p_`` prefix. Every method is keyword-only.
    * ``None`` means "not given": the parameter is left out and the SQL default applies (``NULL``,
      or ``now()`` for ``now``). ``now`` exists so tests and replays can move the clock; it must
      be timezone-aware.
    * Results are the functions' JSON: dicts (or lists of dicts), typed by the ``TypedDict``s of
      :mod:`boundary_inference.ledger.results`; money is a float in USD.
    * Every failure is a :class:`~boundary_inference.ledger.errors.LedgerError`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any, TypeVar, cast

from boundary_inference.ledger.errors import LedgerError
from boundary_inference.ledger.predictions import pack
from boundary_inference.ledger.results import (
    AbandonedRunResult,
    Acknowledgement,
    Admission,
    BreakerCheck,
    BreakerRecord,
    BreakerReset,
    BreakerStatus,
    BudgetRelease,
    BudgetReservation,
    BudgetSettlement,
    BudgetTotalsDrift,
    BudgetTotalsRebuild,
    ClaimResult,
    ExpiredLease,
    LeaseRenewal,
    LeaseTake,
    ModelRegistration,
    ModelRow,
    OrphanReservation,
    PackedPredictions,
    Ping,
    PredictionRow,
    PredictionsPruned,
    PredictionsSaved,
    QueueCounts,
    RecentAdmission,
    RejectionId,
    RejectionMatch,
    RejectionRow,
    RunCounts,
    RunRow,
    SpendDay,
    SpendSummary,
    TableSize,
    Throughput,
    VideoRow,
)
from boundary_inference.ledger.transport import JSON, Transport

RunId = str | uuid.UUID
# A result shape of results.py (a TypedDict): what _obj, _maybe_obj and _list hand back.
R = TypeVar("R")

_RUN_FIELDS = (
    "executor_call_id",
    "attempts",
    "estimated_cost_usd",
    "worst_case_cost_usd",
    "reserved_cost_usd",
    "actual_cost_usd",
    "gpu_seconds",
    "pairs_per_s",
    "error",
    "failure_kind",
    # Migration 20261130200000: where the run ran and how many distinct pairs it computed.
    "executor",
    "gpu_type",
    "unique_pairs",
    "duplicate_pairs",
)


def _json_value(value: Any) -> Any:
    """Python value -> what both transports can send as JSON."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"datetime {value!r} must be timezone-aware")
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    # numpy scalars and friends
    item = getattr(value, "item", None)
    if callable(item):
        return _json_value(item())
    raise TypeError(f"cannot send {type(value).__name__} to the ledger")


class Ledger:
    """Atomic ledger operations behind every safeguard.

    Args:
        transport: :class:`~boundary_inference.ledger.PsycopgTransport` (direct Postgres) or
            :class:`~boundary_inference.ledger.SupabaseTransport` (PostgREST RPC). Both call the
            same SQL functions with the same JSON, so behaviour is identical.

    Example:
        >>> ledger = Ledger(PsycopgTransport(dsn, "boundary_inference"))  # doctest: +SKIP
        >>> ledger.upsert_video(id="v1", tenant_id="t1", frame_count=1000, fps=25.0)  # doctest: +SKIP
        >>> claim = ledger.claim_run(video_id="v1", tenant_id="t1", frames_version="f1",
        ...                          model_version="m1", pairs=999)  # doctest: +SKIP
        >>> claim["created"]  # doctest: +SKIP
        True
    """

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def __repr__(self) -> str:
        return f"Ledger({self.transport!r})"

    @property
    def schema(self) -> str:
        return self.transport.schema

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------------

    def _call(self, fn: str, **params: Any) -> JSON:
        body = {
            f"p_{name}": _json_value(value) for name, value in params.items() if value is not None
        }
        return self.transport.call(fn, body)

    # The one place a result gets its type. The transport hands back decoded JSON, which mypy
    # cannot see into; the SQL function builds the shape that ``results.py`` names (its keys are
    # taken from the function's latest definition). Checked here: an object or a list, as
    # declared; the keys are the migrations' contract, tested against the real functions.

    def _obj(self, shape: type[R], fn: str, **params: Any) -> R:
        result = self._call(fn, **params)
        if not isinstance(result, dict):
            raise LedgerError(
                f"{fn} returned {type(result).__name__}, expected an object", code="bad_response"
            )
        return cast(R, result)

    def _maybe_obj(self, shape: type[R], fn: str, **params: Any) -> R | None:
        result = self._call(fn, **params)
        if result is None or result == []:  # PostgREST may send an empty body for NULL
            return None
        if not isinstance(result, dict):
            raise LedgerError(
                f"{fn} returned {type(result).__name__}, expected an object", code="bad_response"
            )
        return cast(R, result)

    def _list(self, shape: type[R], fn: str, **params: Any) -> list[R]:
        result = self._call(fn, **params)
        if result is None:
            return []
        if not isinstance(result, list):
            raise LedgerError(
                f"{fn} returned {type(result).__name__}, expected a list", code="bad_response"
            )
        return cast(list[R], result)

    # -- health -------------------------------------------------------------------------------

    def ping(self) -> Ping:
        """``{ok: true, now, schema}``; raises ``LedgerUnavailable`` when the ledger is not there."""
        return self._obj(Ping, "ping")

    # -- videos -------------------------------------------------------------------------------

    def upsert_video(
        self,
        *,
        id: str,
        tenant_id: str,
        frame_count: int,
        fps: float,
        source_uri: str | None = None,
        crop_box: Mapping[str, Any] | None = None,
        width: int | None = None,
        height: int | None = None,
        codec: str | None = None,
        size_bytes: int | None = None,
        content_hash: str | None = None,
        etag: str | None = None,
        version_id: str | None = None,
        modified: str | None = None,
    ) -> VideoRow:
        """Insert or update a video; a video id stays with its first tenant (``BI403``).

        ``width``..``modified`` are what registration measured (``videos add``): the frame size
        a crop box must fit in (``BI400`` otherwise) and the source's fingerprint that admission
        compares. An update replaces them all.
        """
        return self._obj(
            VideoRow,
            "upsert_video",
            id=id,
            tenant_id=tenant_id,
            frame_count=frame_count,
            fps=fps,
            source_uri=source_uri,
            crop_box=crop_box,
            width=width,
            height=height,
            codec=codec,
            size_bytes=size_bytes,
            content_hash=content_hash,
            etag=etag,
            version_id=version_id,
            modified=modified,
        )

    def get_video(self, *, id: str) -> VideoRow | None:
        return self._maybe_obj(VideoRow, "get_video", id=id)

    def list_videos(self, *, tenant_id: str | None = None, limit: int = 100) -> list[VideoRow]:
        """Registered videos ordered by id (all tenants when ``tenant_id`` is None)."""
        return self._list(VideoRow, "list_videos", tenant_id=tenant_id, limit=limit)

    # -- models -------------------------------------------------------------------------------

    def register_model(
        self,
        *,
        model_version: str,
        format: str,
        size_bytes: int,
        sha256: str,
        file_name: str,
        location: str | None = None,
        details: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> ModelRegistration:
        """Register a checkpoint by content: the row plus ``created``. The same content again
        adds ``location``; another content under the same name raises ``BI409``."""
        return self._obj(
            ModelRegistration,
            "register_model",
            model_version=model_version,
            format=format,
            size_bytes=size_bytes,
            sha256=sha256,
            file_name=file_name,
            location=location,
            details=details,
            now=now,
        )

    def get_model(self, *, model_version: str) -> ModelRow | None:
        return self._maybe_obj(ModelRow, "get_model", model_version=model_version)

    def list_models(self, *, limit: int = 100) -> list[ModelRow]:
        """Registered checkpoints ordered by model version."""
        return self._list(ModelRow, "list_models", limit=limit)

    # -- runs ---------------------------------------------------------------------------------

    def claim_run(
        self,
        *,
        video_id: str,
        tenant_id: str,
        frames_version: str,
        model_version: str,
        pairs: int | None = None,
        priority: str = "normal",
        force: bool = False,
        flow_run_id: str | None = None,
        lease_s: float | None = None,
        lease_owner: str | None = None,
    ) -> ClaimResult:
        """Atomic insert-or-get: ``{run_id, created, status, rerun_of, taken_over}``.

        A live run for the key whose lease holds is returned (``created=False``) even with
        ``force``; a succeeded run is returned unless ``force``; otherwise a new queued run is
        created, with a lease of ``lease_s`` held by ``lease_owner`` (default ``flow_run_id``).

        A live run whose lease expired (or is held by ``lease_owner`` itself: an earlier attempt
        of the same flow run) is never returned as a duplicate: with a call it is handed over
        (``taken_over=True`` and its ``executor_call_id``: reattach to it); without one it is
        ended (``ended_run`` says how) and the claim goes on.
        """
        return self._obj(
            ClaimResult,
            "claim_run",
            video_id=video_id,
            tenant_id=tenant_id,
            frames_version=frames_version,
            model_version=model_version,
            pairs=pairs,
            priority=priority,
            force=force,
            flow_run_id=flow_run_id,
            lease_s=lease_s,
            lease_owner=lease_owner,
        )

    # -- leases (a live run's watcher renews it; an expired one has no watcher) ----------------

    def renew_lease(self, *, run_id: RunId, owner: str, lease_s: float) -> LeaseRenewal:
        """Extend ``owner``'s lease to now + ``lease_s`` (database clock; 0 lets it expire now).

        ``{renewed, status, lease_expires_at, owner}``; ``renewed=False`` when the run ended or
        another owner took it over: stop watching, and neither cancel nor settle it.
        """
        return self._obj(LeaseRenewal, "renew_lease", run_id=run_id, owner=owner, lease_s=lease_s)

    def expired_leases(
        self,
        *,
        limit: int = 100,
        legacy_queued_s: float | None = None,
        legacy_running_s: float | None = None,
    ) -> list[ExpiredLease]:
        """Live runs nobody watches, oldest lease first: run rows plus ``expired_for_s``,
        ``running_for_s`` and ``age_s``, all measured in the database's clock. Runs without a
        lease count past ``legacy_queued_s`` (queued) / ``legacy_running_s`` (running)."""
        return self._list(
            ExpiredLease,
            "expired_leases",
            limit=limit,
            legacy_queued_s=legacy_queued_s,
            legacy_running_s=legacy_running_s,
        )

    def take_expired_lease(
        self,
        *,
        run_id: RunId,
        owner: str,
        lease_s: float,
        legacy_queued_s: float | None = None,
        legacy_running_s: float | None = None,
    ) -> LeaseTake:
        """Become the watcher of a run nobody watches: ``{taken, run}``; exactly one caller wins."""
        return self._obj(
            LeaseTake,
            "take_expired_lease",
            run_id=run_id,
            owner=owner,
            lease_s=lease_s,
            legacy_queued_s=legacy_queued_s,
            legacy_running_s=legacy_running_s,
        )

    def end_abandoned_run(self, *, run_id: RunId, owner: str, reason: str) -> AbandonedRunResult:
        """End a run ``owner`` took over that has no call to ask: queued -> cancelled and its
        reservation released; running -> cancelled and charged what was reserved.
        ``{ended, action, amount_usd}``."""
        return self._obj(
            AbandonedRunResult, "end_abandoned_run", run_id=run_id, owner=owner, reason=reason
        )

    # -- admissions (the limiter's state, rebuilt from here when Redis lost it) -----------------

    def record_admission(self, *, run_id: RunId) -> Admission:
        """The limiter admitted this live run: ``{run_id, admitted_at}`` (idempotent)."""
        return self._obj(Admission, "record_admission", run_id=run_id)

    def recent_admissions(self, *, window_s: float, limit: int = 10000) -> list[RecentAdmission]:
        """Admissions of the last ``window_s`` seconds, newest first: ``{run_id, video_id, age_s}``
        (ages in the database's clock; refunded admissions of rejected runs left out)."""
        return self._list(RecentAdmission, "recent_admissions", window_s=window_s, limit=limit)

    def transition_run(
        self,
        *,
        run_id: RunId,
        to_status: str,
        fields: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
        executor_call_id: str | None = None,
        attempts: int | None = None,
        estimated_cost_usd: float | None = None,
        worst_case_cost_usd: float | None = None,
        reserved_cost_usd: float | None = None,
        actual_cost_usd: float | None = None,
        gpu_seconds: float | None = None,
        pairs_per_s: float | None = None,
        error: str | None = None,
        failure_kind: str | None = None,
        executor: str | None = None,
        gpu_type: str | None = None,
        unique_pairs: int | None = None,
        duplicate_pairs: int | None = None,
    ) -> RunRow:
        """Move a run along the state machine; returns the updated run row.

        Raises:
            IllegalTransition: the edge is not allowed (``BI409``).
            RunNotFound: no such run (``BI404``).
        """
        given = {
            "executor_call_id": executor_call_id,
            "attempts": attempts,
            "estimated_cost_usd": estimated_cost_usd,
            "worst_case_cost_usd": worst_case_cost_usd,
            "reserved_cost_usd": reserved_cost_usd,
            "actual_cost_usd": actual_cost_usd,
            "gpu_seconds": gpu_seconds,
            "pairs_per_s": pairs_per_s,
            "error": error,
            "failure_kind": failure_kind,
            "executor": executor,
            "gpu_type": gpu_type,
            "unique_pairs": unique_pairs,
            "duplicate_pairs": duplicate_pairs,
        }
        merged = dict(fields or {})
        merged.update({k: v for k, v in given.items() if v is not None})
        unknown = sorted(set(merged) - set(_RUN_FIELDS))
        if unknown:
            raise ValueError(f"unknown run fields: {', '.join(unknown)}")
        return self._obj(
            RunRow, "transition_run", run_id=run_id, to_status=to_status, fields=merged, now=now
        )

    def set_call_id(self, *, run_id: RunId, call_id: str) -> RunRow:
        """Record the executor call id of a live run (``BI409`` once the run has ended)."""
        return self._obj(RunRow, "set_call_id", run_id=run_id, call_id=call_id)

    def get_run(self, *, run_id: RunId) -> RunRow | None:
        return self._maybe_obj(RunRow, "get_run", run_id=run_id)

    def list_runs(
        self, *, limit: int = 50, video_id: str | None = None, status: str | None = None
    ) -> list[RunRow]:
        """Newest first."""
        return self._list(RunRow, "list_runs", limit=limit, video_id=video_id, status=status)

    def runs_finished_between(
        self, *, start: dt.datetime, end: dt.datetime | None = None, limit: int = 1_000_000
    ) -> list[RunRow]:
        """Runs whose ``finished_at`` is in ``[start, end)`` (``end`` None: up to now), oldest
        first: what ``reconcile`` sets against Modal's bill."""
        return self._list(RunRow, "runs_finished_between", start=start, end=end, limit=limit)

    def run_counts(self, *, finished_since: dt.datetime, created_since: dt.datetime) -> RunCounts:
        """``{finished, failed, created}``: runs that ended (succeeded, failed, timed out or
        cancelled) since ``finished_since``, how many of them failed or timed out, and runs created
        since ``created_since``. The monitor's failure rate and burst count."""
        return self._obj(
            RunCounts, "run_counts", finished_since=finished_since, created_since=created_since
        )

    def queue_depth(self) -> QueueCounts:
        """Live runs now: ``{queued, running, total}``."""
        return self._obj(QueueCounts, "queue_depth")

    def recent_throughput(
        self,
        *,
        model_version: str,
        runs: int = 20,
        executor: str | None = None,
        gpu_type: str | None = None,
        percentile: float | None = None,
    ) -> Throughput:
        """Throughput of the last ``runs`` succeeded runs of (model, executor, GPU type), each
        ``unique_pairs / gpu_seconds``: ``{pairs_per_s, runs, samples, percentile, executor,
        gpu_type}``. ``pairs_per_s`` is the ``percentile`` (default 0.2, linear) of ``samples``
        (oldest first), None when there are none. ``executor``/``gpu_type`` None match any."""
        return self._obj(
            Throughput,
            "recent_throughput",
            model_version=model_version,
            runs=runs,
            executor=executor,
            gpu_type=gpu_type,
            percentile=percentile,
        )

    # -- budget -------------------------------------------------------------------------------

    def reserve_budget(
        self,
        *,
        run_id: RunId,
        tenant_id: str,
        amount_usd: float,
        daily_cap_usd: float,
        monthly_cap_usd: float,
        tenant_daily_cap_usd: float | None = None,
        tenant_monthly_cap_usd: float | None = None,
        now: dt.datetime | None = None,
    ) -> BudgetReservation:
        """Reserve money for a run under the caps (UTC day/month), atomically and idempotently.

        Returns ``{ok, reason, daily_committed_usd, monthly_committed_usd, ...}``; ``reason`` is
        ``daily_cap``, ``monthly_cap``, ``tenant_daily_cap``, ``tenant_monthly_cap`` or None.
        """
        return self._obj(
            BudgetReservation,
            "reserve_budget",
            run_id=run_id,
            tenant_id=tenant_id,
            amount_usd=amount_usd,
            daily_cap_usd=daily_cap_usd,
            monthly_cap_usd=monthly_cap_usd,
            tenant_daily_cap_usd=tenant_daily_cap_usd,
            tenant_monthly_cap_usd=tenant_monthly_cap_usd,
            now=now,
        )

    def settle_budget(
        self, *, run_id: RunId, actual_usd: float, now: dt.datetime | None = None
    ) -> BudgetSettlement:
        """Replace the run's reservation by its actual cost: ``{settled, freed_usd, ...}``."""
        return self._obj(
            BudgetSettlement, "settle_budget", run_id=run_id, actual_usd=actual_usd, now=now
        )

    def release_budget(self, *, run_id: RunId, now: dt.datetime | None = None) -> BudgetRelease:
        """Give an open reservation back: ``{released, status, freed_usd}``."""
        return self._obj(BudgetRelease, "release_budget", run_id=run_id, now=now)

    def orphan_reservations(
        self, *, limit: int = 100, min_age_s: int = 600, now: dt.datetime | None = None
    ) -> list[OrphanReservation]:
        """Open reservations of runs that ended at least ``min_age_s`` ago, oldest first:
        ``{run_id, reserved_usd, reserved_at, run_status, executor_call_id, video_id}``."""
        return self._list(
            OrphanReservation, "orphan_reservations", limit=limit, min_age_s=min_age_s, now=now
        )

    def spend_summary(
        self, *, tenant_id: str | None = None, now: dt.datetime | None = None
    ) -> SpendSummary:
        """``{day, month, daily_committed_usd, monthly_committed_usd, daily_actual_usd,
        monthly_actual_usd}`` (all tenants when ``tenant_id`` is None)."""
        return self._obj(SpendSummary, "spend_summary", tenant_id=tenant_id, now=now)

    def spend_by_day(self, *, days: int = 30, now: dt.datetime | None = None) -> list[SpendDay]:
        """One row per UTC day, oldest first: ``{day, committed_usd, actual_usd, reservations}``."""
        return self._list(SpendDay, "spend_by_day", days=days, now=now)

    # -- circuit breaker ----------------------------------------------------------------------

    def breaker_check(
        self,
        *,
        name: str,
        threshold: int,
        window_s: float,
        open_s: float,
        acquire_probe: bool = True,
        now: dt.datetime | None = None,
    ) -> BreakerCheck:
        """``{allowed, state, retry_after_s, probe}``; at most one caller gets the probe."""
        return self._obj(
            BreakerCheck,
            "breaker_check",
            name=name,
            threshold=threshold,
            window_s=window_s,
            open_s=open_s,
            acquire_probe=acquire_probe,
            now=now,
        )

    def breaker_record(
        self,
        *,
        name: str,
        ok: bool,
        kind: str | None = None,
        threshold: int,
        window_s: float,
        now: dt.datetime | None = None,
        probe: bool | None = None,
    ) -> BreakerRecord:
        """Record an outcome: ``{state, failures_in_window}``.

        ``probe``: whether this job held the half-open probe. Half-open closes only on the
        probe's success (None: on any success, the rule before migration 20261126000004).
        """
        return self._obj(
            BreakerRecord,
            "breaker_record",
            name=name,
            ok=ok,
            kind=kind,
            threshold=threshold,
            window_s=window_s,
            now=now,
            probe=probe,
        )

    def breaker_reset(self, *, name: str, now: dt.datetime | None = None) -> BreakerReset:
        return self._obj(BreakerReset, "breaker_reset", name=name, now=now)

    def breaker_status(
        self, *, name: str, window_s: float = 3600, now: dt.datetime | None = None
    ) -> BreakerStatus:
        return self._obj(BreakerStatus, "breaker_status", name=name, window_s=window_s, now=now)

    # -- rejections ---------------------------------------------------------------------------

    def log_rejection(
        self,
        *,
        rejection_type: str,
        message: str,
        video_id: str | None = None,
        tenant_id: str | None = None,
        frame_count: int | None = None,
        estimated_cost_usd: float | None = None,
        run_id: RunId | None = None,
        details: Mapping[str, Any] | None = None,
        now: dt.datetime | None = None,
    ) -> RejectionId:
        """Store a refusal (and NOTIFY ``boundary_inference_rejections``): ``{id}``."""
        return self._obj(
            RejectionId,
            "log_rejection",
            rejection_type=str(rejection_type),
            message=message,
            video_id=video_id,
            tenant_id=tenant_id,
            frame_count=frame_count,
            estimated_cost_usd=estimated_cost_usd,
            run_id=run_id,
            details=details,
            now=now,
        )

    def acknowledge_rejection(
        self, *, id: RunId, by: str | None = None, now: dt.datetime | None = None
    ) -> Acknowledgement:
        """``{acknowledged}``: False when unknown or already acknowledged."""
        return self._obj(Acknowledgement, "acknowledge_rejection", id=id, by=by, now=now)

    def list_rejections(
        self, *, unacknowledged_only: bool = False, limit: int = 50, tenant_id: str | None = None
    ) -> list[RejectionRow]:
        """Newest first."""
        return self._list(
            RejectionRow,
            "list_rejections",
            unacknowledged_only=unacknowledged_only,
            limit=limit,
            tenant_id=tenant_id,
        )

    def find_rejections_by_prefix(self, *, prefix: str, limit: int = 10) -> list[RejectionMatch]:
        """Rejections whose id starts with ``prefix`` (lower-case hex and dashes), newest first:
        ``{id, rejection_type, video_id, created_at, acknowledged}``."""
        return self._list(RejectionMatch, "find_rejections_by_prefix", prefix=prefix, limit=limit)

    # -- predictions --------------------------------------------------------------------------

    def save_predictions(
        self,
        *,
        run_id: RunId,
        rows: Iterable[Any],
        chunk: int | None = None,
        now: dt.datetime | None = None,
    ) -> PredictionsSaved:
        """Store one batch of ``{frame1, frame2, probability, is_boundary}`` pairs (mappings or
        objects with those attributes) as one packed chunk: ``{run_id, saved, chunk}``.

        With ``chunk`` the call is idempotent (that chunk is replaced); without, it is appended.
        A pair saved twice reads back with its last value; ``now`` is when it counts as saved
        (retention). Sent as columns, not one object per pair. For a whole run use
        :func:`boundary_inference.ledger.predictions.save_in_batches`.
        """
        return self._obj(
            PredictionsSaved,
            "save_predictions",
            run_id=run_id,
            rows=pack(rows),
            chunk=chunk,
            now=now,
        )

    def get_predictions(self, *, run_id: RunId) -> list[PredictionRow]:
        """Ordered by (frame1, frame2)."""
        return self._list(PredictionRow, "get_predictions", run_id=run_id)

    def get_predictions_packed(self, *, run_id: RunId) -> PackedPredictions:
        """The same pairs as columns: ``{run_id, pairs, frame1: [...], frame2: [...],
        probability: [...], is_boundary: [...]}`` (a quarter of the JSON for a large run)."""
        return self._obj(PackedPredictions, "get_predictions_packed", run_id=run_id)

    def prune_predictions(
        self, *, keep_days: int, limit: int = 500, now: dt.datetime | None = None
    ) -> PredictionsPruned:
        """Delete the predictions of up to ``limit`` runs saved more than ``keep_days`` ago,
        oldest first: ``{cutoff, runs, chunks, more}`` (call again while ``more``)."""
        return self._obj(
            PredictionsPruned, "prune_predictions", keep_days=keep_days, limit=limit, now=now
        )

    # -- ledger upkeep ------------------------------------------------------------------------

    def budget_totals_drift(
        self, *, since: dt.date | None = None, limit: int = 20, now: dt.datetime | None = None
    ) -> BudgetTotalsDrift:
        """Budget totals that disagree with the reservations from ``since``'s month on (default:
        the current month): ``{ok, since, checked_rows, drift_rows, drift: [...]}``."""
        return self._obj(
            BudgetTotalsDrift, "budget_totals_drift", since=since, limit=limit, now=now
        )

    def budget_totals_rebuild(self, *, since: dt.date | None = None) -> BudgetTotalsRebuild:
        """Recompute the budget totals from the reservations (all of history, or from
        ``since``'s month on), under the budget lock: ``{since, deleted, written}``."""
        return self._obj(BudgetTotalsRebuild, "budget_totals_rebuild", since=since)

    def ledger_size(self) -> list[TableSize]:
        """Every ledger table, largest first: ``{table, rows, total_bytes, table_bytes,
        index_bytes}`` (rows as the planner estimates them)."""
        return self._list(TableSize, "ledger_size")
