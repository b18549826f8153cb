"""SupabaseTransport contract: the real HTTP requests supabase-py sends, and the error mapping.

respx intercepts httpx inside supabase-py, so what is asserted is the request PostgREST would get.
The last tests answer those requests by running the RPC on the real Postgres (as service_role,
like PostgREST), so the SQL is exercised through the Supabase path end to end.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import respx

from boundary_inference.ledger import (
    IllegalTransition,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    RunNotFound,
    SupabaseTransport,
)
from tests.postgrest_double import PostgrestDouble
from tests.support import try_reserve

URL = "https://project-ref.supabase.co"
# Shape of a service-role JWT (not a real one).
KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"
SCHEMA = "bi_contract"
RUN = "7d8c3c1e-6c57-4f3e-9a57-2a7c4f1b9e01"
NOW = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
NOW_S = NOW.isoformat()
# What claim_run sends for the key (v1, t1, f, m) and no options of its own.
CLAIM_PARAMS: dict[str, Any] = {
    "p_video_id": "v1",
    "p_tenant_id": "t1",
    "p_frames_version": "f",
    "p_model_version": "m",
    "p_priority": "normal",
    "p_force": False,
}

# (method, kwargs, expected JSON body). Every Ledger method appears at least once.
CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("ping", {}, {}),
    (
        "upsert_video",
        {
            "id": "v1",
            "tenant_id": "t1",
            "frame_count": 10,
            "fps": 25.0,
            "source_uri": "s3://x",
            "crop_box": {"x": 1, "y": 2, "width": 3, "height": 4},
        },
        {
            "p_id": "v1",
            "p_tenant_id": "t1",
            "p_frame_count": 10,
            "p_fps": 25.0,
            "p_source_uri": "s3://x",
            "p_crop_box": {"x": 1, "y": 2, "width": 3, "height": 4},
        },
    ),
    ("get_video", {"id": "v1"}, {"p_id": "v1"}),
    (
        "upsert_video",
        {
            "id": "v2",
            "tenant_id": "t1",
            "frame_count": 10,
            "fps": 25.0,
            "source_uri": "s3://bucket/v2.mp4",
            "width": 320,
            "height": 180,
            "codec": "h264",
            "size_bytes": 12345,
            "content_hash": "sha256:" + "ab" * 32,
            "etag": '"e1"',
            "version_id": "v7",
        },
        {
            "p_id": "v2",
            "p_tenant_id": "t1",
            "p_frame_count": 10,
            "p_fps": 25.0,
            "p_source_uri": "s3://bucket/v2.mp4",
            "p_width": 320,
            "p_height": 180,
            "p_codec": "h264",
            "p_size_bytes": 12345,
            "p_content_hash": "sha256:" + "ab" * 32,
            "p_etag": '"e1"',
            "p_version_id": "v7",
        },
    ),
    ("list_videos", {"tenant_id": "t1", "limit": 5}, {"p_tenant_id": "t1", "p_limit": 5}),
    (
        "register_model",
        {
            "model_version": "ckpt:tiny",
            "format": "boundary-logistic-v1",
            "size_bytes": 900,
            "sha256": "cd" * 32,
            "file_name": "tiny.npz",
            "location": "local:/models",
            "now": NOW,
        },
        {
            "p_model_version": "ckpt:tiny",
            "p_format": "boundary-logistic-v1",
            "p_size_bytes": 900,
            "p_sha256": "cd" * 32,
            "p_file_name": "tiny.npz",
            "p_location": "local:/models",
            "p_now": NOW_S,
        },
    ),
    ("get_model", {"model_version": "ckpt:tiny"}, {"p_model_version": "ckpt:tiny"}),
    ("list_models", {"limit": 7}, {"p_limit": 7}),
    (
        "claim_run",
        {
            "video_id": "v1",
            "tenant_id": "t1",
            "frames_version": "f",
            "model_version": "m",
            "pairs": 9,
            "priority": "high",
            "force": True,
            "flow_run_id": "fr",
        },
        {
            "p_video_id": "v1",
            "p_tenant_id": "t1",
            "p_frames_version": "f",
            "p_model_version": "m",
            "p_pairs": 9,
            "p_priority": "high",
            "p_force": True,
            "p_flow_run_id": "fr",
        },
    ),
    (
        "claim_run",
        {"video_id": "v1", "tenant_id": "t1", "frames_version": "f", "model_version": "m"},
        CLAIM_PARAMS,
    ),
    (
        "transition_run",
        {
            "run_id": uuid.UUID(RUN),
            "to_status": "succeeded",
            "actual_cost_usd": 0.5,
            "fields": {"gpu_seconds": 12.5},
            "now": NOW,
        },
        {
            "p_run_id": RUN,
            "p_to_status": "succeeded",
            "p_fields": {"gpu_seconds": 12.5, "actual_cost_usd": 0.5},
            "p_now": NOW_S,
        },
    ),
    ("set_call_id", {"run_id": RUN, "call_id": "fc-1"}, {"p_run_id": RUN, "p_call_id": "fc-1"}),
    ("get_run", {"run_id": RUN}, {"p_run_id": RUN}),
    ("list_runs", {"limit": 5, "status": "queued"}, {"p_limit": 5, "p_status": "queued"}),
    (
        "run_counts",
        {"finished_since": NOW, "created_since": NOW},
        {
            "p_finished_since": "2030-01-15T12:00:00+00:00",
            "p_created_since": "2030-01-15T12:00:00+00:00",
        },
    ),
    (
        "runs_finished_between",
        {"start": NOW, "end": NOW + dt.timedelta(days=1)},
        {
            "p_start": "2030-01-15T12:00:00+00:00",
            "p_end": "2030-01-16T12:00:00+00:00",
            "p_limit": 1_000_000,
        },
    ),
    ("queue_depth", {}, {}),
    ("recent_throughput", {"model_version": "m", "runs": 3}, {"p_model_version": "m", "p_runs": 3}),
    (
        "recent_throughput",
        {"model_version": "m", "executor": "modal", "gpu_type": "A10G", "percentile": 0.2},
        {
            "p_model_version": "m",
            "p_runs": 20,
            "p_executor": "modal",
            "p_gpu_type": "A10G",
            "p_percentile": 0.2,
        },
    ),
    (
        "reserve_budget",
        {
            "run_id": RUN,
            "tenant_id": "t1",
            "amount_usd": 0.5,
            "daily_cap_usd": 20.0,
            "monthly_cap_usd": 100.0,
            "tenant_daily_cap_usd": 5.0,
            "now": NOW,
        },
        {
            "p_run_id": RUN,
            "p_tenant_id": "t1",
            "p_amount_usd": 0.5,
            "p_daily_cap_usd": 20.0,
            "p_monthly_cap_usd": 100.0,
            "p_tenant_daily_cap_usd": 5.0,
            "p_now": NOW_S,
        },
    ),
    ("settle_budget", {"run_id": RUN, "actual_usd": 0.1}, {"p_run_id": RUN, "p_actual_usd": 0.1}),
    (
        "orphan_reservations",
        {"limit": 10, "min_age_s": 60, "now": NOW},
        {"p_limit": 10, "p_min_age_s": 60, "p_now": NOW_S},
    ),
    ("release_budget", {"run_id": RUN}, {"p_run_id": RUN}),
    ("spend_summary", {"tenant_id": "t1", "now": NOW}, {"p_tenant_id": "t1", "p_now": NOW_S}),
    ("spend_by_day", {"days": 7}, {"p_days": 7}),
    (
        "breaker_check",
        {"name": "modal", "threshold": 5, "window_s": 3600, "open_s": 600, "acquire_probe": False},
        {
            "p_name": "modal",
            "p_threshold": 5,
            "p_window_s": 3600,
            "p_open_s": 600,
            "p_acquire_probe": False,
        },
    ),
    (
        "breaker_record",
        {"name": "modal", "ok": False, "kind": "oom", "threshold": 5, "window_s": 3600, "now": NOW},
        {
            "p_name": "modal",
            "p_ok": False,
            "p_kind": "oom",
            "p_threshold": 5,
            "p_window_s": 3600,
            "p_now": NOW_S,
        },
    ),
    (
        "breaker_record",
        {"name": "modal", "ok": True, "threshold": 5, "window_s": 3600, "probe": True},
        {"p_name": "modal", "p_ok": True, "p_threshold": 5, "p_window_s": 3600, "p_probe": True},
    ),
    ("breaker_reset", {"name": "modal"}, {"p_name": "modal"}),
    ("breaker_status", {"name": "modal", "window_s": 60}, {"p_name": "modal", "p_window_s": 60}),
    (
        "log_rejection",
        {
            "rejection_type": "cost_exceeded",
            "message": "too dear",
            "video_id": "v1",
            "tenant_id": "t1",
            "frame_count": 10,
            "estimated_cost_usd": 1.5,
            "run_id": RUN,
            "details": {"cap_usd": 1.0},
        },
        {
            "p_rejection_type": "cost_exceeded",
            "p_message": "too dear",
            "p_video_id": "v1",
            "p_tenant_id": "t1",
            "p_frame_count": 10,
            "p_estimated_cost_usd": 1.5,
            "p_run_id": RUN,
            "p_details": {"cap_usd": 1.0},
        },
    ),
    ("acknowledge_rejection", {"id": RUN, "by": "ops"}, {"p_id": RUN, "p_by": "ops"}),
    (
        "list_rejections",
        {"unacknowledged_only": True, "limit": 3},
        {"p_unacknowledged_only": True, "p_limit": 3},
    ),
    (
        "find_rejections_by_prefix",
        {"prefix": "3f2a9c1b", "limit": 10},
        {"p_prefix": "3f2a9c1b", "p_limit": 10},
    ),
    (
        "save_predictions",
        {
            "run_id": RUN,
            "rows": [
                {"frame1": 0, "frame2": 1, "probability": 0.25, "is_boundary": False},
                {"frame1": 1, "frame2": 2, "probability": 0.75, "is_boundary": True},
            ],
            "chunk": 3,
        },
        {
            "p_run_id": RUN,
            # Columns, not one object per pair: a quarter of the JSON through PostgREST.
            "p_rows": {
                "frame1": [0, 1],
                "frame2": [1, 2],
                "probability": [0.25, 0.75],
                "is_boundary": [False, True],
            },
            "p_chunk": 3,
        },
    ),
    ("get_predictions", {"run_id": RUN}, {"p_run_id": RUN}),
    (
        "claim_run",
        {
            "video_id": "v1",
            "tenant_id": "t1",
            "frames_version": "f",
            "model_version": "m",
            "lease_s": 60.0,
            "lease_owner": "fr",
        },
        {**CLAIM_PARAMS, "p_lease_s": 60.0, "p_lease_owner": "fr"},
    ),
    (
        "renew_lease",
        {"run_id": RUN, "owner": "fr", "lease_s": 60.0},
        {"p_run_id": RUN, "p_owner": "fr", "p_lease_s": 60.0},
    ),
    (
        "expired_leases",
        {"limit": 5, "legacy_queued_s": 3600, "legacy_running_s": 12000},
        {"p_limit": 5, "p_legacy_queued_s": 3600, "p_legacy_running_s": 12000},
    ),
    (
        "take_expired_lease",
        {"run_id": RUN, "owner": "reaper:1", "lease_s": 60.0},
        {"p_run_id": RUN, "p_owner": "reaper:1", "p_lease_s": 60.0},
    ),
    (
        "end_abandoned_run",
        {"run_id": RUN, "owner": "reaper:1", "reason": "no watcher"},
        {"p_run_id": RUN, "p_owner": "reaper:1", "p_reason": "no watcher"},
    ),
    ("record_admission", {"run_id": RUN}, {"p_run_id": RUN}),
    (
        "recent_admissions",
        {"window_s": 3600, "limit": 50},
        {"p_window_s": 3600, "p_limit": 50},
    ),
    ("get_predictions_packed", {"run_id": RUN}, {"p_run_id": RUN}),
    (
        "prune_predictions",
        {"keep_days": 30, "limit": 10, "now": NOW},
        {"p_keep_days": 30, "p_limit": 10, "p_now": NOW_S},
    ),
    (
        "budget_totals_drift",
        {"since": dt.date(2030, 1, 1), "limit": 5},
        {"p_since": "2030-01-01", "p_limit": 5},
    ),
    ("budget_totals_rebuild", {}, {}),
    ("ledger_size", {}, {}),
]

LIST_RESULTS = {
    "list_videos",
    "runs_finished_between",
    "list_models",
    "list_runs",
    "spend_by_day",
    "list_rejections",
    "find_rejections_by_prefix",
    "get_predictions",
    "orphan_reservations",
    "expired_leases",
    "recent_admissions",
    "ledger_size",
}


def fn_of(method: str) -> str:
    return method  # Ledger method names are the SQL function names


@pytest.fixture
def supa() -> Iterator[Ledger]:
    transport = SupabaseTransport(url=URL, key=KEY, schema=SCHEMA, timeout_s=2.5)
    yield Ledger(transport)
    transport.close()


def test_every_ledger_method_is_covered() -> None:
    public = {
        name
        for name in dir(Ledger)
        if not name.startswith("_")
        and callable(getattr(Ledger, name))
        and name not in {"close", "schema"}
    }
    assert public == {method for method, _, _ in CASES}


@pytest.mark.parametrize(
    ("method", "kwargs", "body"), CASES, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(CASES)]
)
def test_request_shape(supa: Ledger, method: str, kwargs: dict, body: dict) -> None:
    answer: Any = [] if method in LIST_RESULTS else {"ok": True}
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(f"{URL}/rest/v1/rpc/{fn_of(method)}").mock(
            return_value=httpx.Response(200, json=answer)
        )
        result = getattr(supa, method)(**kwargs)
    assert result == answer
    request = route.calls.last.request
    assert request.method == "POST"
    assert str(request.url) == f"{URL}/rest/v1/rpc/{method}"
    assert json.loads(request.content) == body
    assert request.headers["apikey"] == KEY
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["accept-profile"] == SCHEMA
    assert request.headers["content-profile"] == SCHEMA
    assert request.headers["content-type"].startswith("application/json")


def test_timeout_waits_for_the_servers_bound(supa: Ledger) -> None:
    # 2.5 s asked, but the server may run a guard for 4 s and a scan for 50 s: the client waits
    # until the server has stopped (+1 s), so a call it gives up on has committed nothing since.
    guard, scan = supa.transport._https  # type: ignore[attr-defined]
    assert guard.timeout == httpx.Timeout(5.0)
    assert scan.timeout == httpx.Timeout(51.0)


def error(status: int, code: str, message: str = "m") -> httpx.Response:
    return httpx.Response(
        status, json={"code": code, "message": message, "details": None, "hint": None}
    )


@pytest.mark.parametrize(
    ("response", "exc", "code"),
    [
        (
            error(400, "BI409", "illegal transition succeeded -> running"),
            IllegalTransition,
            "BI409",
        ),
        (error(400, "BI404", "unknown run"), RunNotFound, "BI404"),
        (error(400, "BI400"), LedgerError, "BI400"),
        (error(404, "PGRST202", "Could not find the function"), LedgerError, "PGRST202"),
        (
            error(500, "57014", "canceling statement due to statement timeout"),
            LedgerUnavailable,
            "57014",
        ),
        (error(503, "PGRST001", "Database client error"), LedgerUnavailable, "PGRST001"),
        (httpx.Response(502, text="<html>Bad gateway</html>"), LedgerUnavailable, "502"),
    ],
)
def test_api_errors_are_mapped(
    supa: Ledger, response: httpx.Response, exc: type[LedgerError], code: str
) -> None:
    with respx.mock() as mock:
        mock.post(f"{URL}/rest/v1/rpc/transition_run").mock(return_value=response)
        with pytest.raises(exc) as info:
            supa.transition_run(run_id=RUN, to_status="running")
    assert type(info.value) is exc
    assert info.value.code == code


@pytest.mark.parametrize(
    ("failure", "code"),
    [
        (httpx.ConnectError("refused"), "unavailable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
        (httpx.RemoteProtocolError("eof"), "unavailable"),
    ],
)
def test_transport_failures_are_unavailable(supa: Ledger, failure: Exception, code: str) -> None:
    with respx.mock() as mock:
        mock.post(f"{URL}/rest/v1/rpc/reserve_budget").mock(side_effect=failure)
        with pytest.raises(LedgerUnavailable) as info:
            supa.reserve_budget(
                run_id=RUN, tenant_id="t", amount_usd=1, daily_cap_usd=2, monthly_cap_usd=3
            )
    assert info.value.code == code


def test_null_result_is_none(supa: Ledger) -> None:
    with respx.mock() as mock:
        mock.post(f"{URL}/rest/v1/rpc/get_run").mock(
            return_value=httpx.Response(
                200, content=b"null", headers={"content-type": "application/json"}
            )
        )
        assert supa.get_run(run_id=RUN) is None


def test_an_existing_client_is_pinned_to_the_schema() -> None:
    from supabase import ClientOptions, create_client

    with httpx.Client() as http:
        client = create_client(URL, KEY, options=ClientOptions(schema="public", httpx_client=http))
        ledger = Ledger(SupabaseTransport(client=client, schema=SCHEMA))
        with respx.mock() as mock:
            route = mock.post(f"{URL}/rest/v1/rpc/queue_depth").mock(
                return_value=httpx.Response(200, json={"queued": 0, "running": 0, "total": 0})
            )
            ledger.queue_depth()
        assert route.calls.last.request.headers["content-profile"] == SCHEMA


# --- the same JSON, executed on the real server ----------------------------------------------


@pytest.fixture
def postgrest(ledger_dsn: str, ledger_schema: str) -> Iterator[PostgrestDouble]:
    """A PostgREST-shaped server over the real ledger SQL (tests/postgrest_double.py)."""
    with PostgrestDouble(ledger_dsn, [ledger_schema], key=KEY).running() as server:
        yield server


@pytest.fixture
def supa_on_postgres(postgrest: PostgrestDouble, ledger_schema: str) -> Iterator[Ledger]:
    """Supabase transport (supabase-py's real HTTP requests) answered by ``postgrest``."""
    transport = SupabaseTransport(url=postgrest.url, key=KEY, schema=ledger_schema, timeout_s=10)
    yield Ledger(transport)
    transport.close()


def test_guard_lifecycle_through_supabase_path(supa_on_postgres: Ledger) -> None:
    lg = supa_on_postgres
    assert lg.ping()["ok"] is True
    assert lg.get_video(id="v1") is None
    lg.upsert_video(
        id="v1",
        tenant_id="t1",
        frame_count=100,
        fps=25.0,
        crop_box={"x": 0, "y": 0, "width": 8, "height": 8},
    )
    claim = lg.claim_run(
        video_id="v1", tenant_id="t1", frames_version="f", model_version="m", pairs=99
    )
    assert claim["created"] is True
    assert (
        lg.claim_run(video_id="v1", tenant_id="t1", frames_version="f", model_version="m")[
            "created"
        ]
        is False
    )
    run_id = claim["run_id"]
    assert lg.queue_depth() == {"queued": 1, "running": 0, "total": 1}
    caps = {"daily_cap_usd": 0.75, "monthly_cap_usd": 10}
    budget = try_reserve(lg, 0.5, caps=caps, now=NOW, run_id=run_id)
    assert budget["ok"] is True
    refused = try_reserve(lg, 0.5, caps=caps, now=NOW, run_id=uuid.uuid4())
    assert refused["reason"] == "daily_cap"
    assert lg.breaker_check(name="modal", threshold=5, window_s=60, open_s=60)["allowed"]
    lg.set_call_id(run_id=run_id, call_id="fc-1")
    lg.transition_run(
        run_id=run_id,
        to_status="running",
        attempts=1,
        executor="modal",
        gpu_type="A10G",
        unique_pairs=99,
        duplicate_pairs=0,
    )
    lg.save_predictions(
        run_id=run_id, rows=[{"frame1": 0, "frame2": 1, "probability": 0.75, "is_boundary": True}]
    )
    done = lg.transition_run(
        run_id=run_id,
        to_status="succeeded",
        actual_cost_usd=0.01,
        pairs_per_s=120.0,
        gpu_seconds=0.5,
    )
    assert done["status"] == "succeeded" and done["executor_call_id"] == "fc-1"
    assert lg.settle_budget(run_id=run_id, actual_usd=0.01, now=NOW)["freed_usd"] == 0.49
    assert lg.spend_summary(now=NOW)["daily_committed_usd"] == 0.01
    assert lg.get_predictions(run_id=run_id)[0]["is_boundary"] is True
    packed = lg.get_predictions_packed(run_id=run_id)
    assert packed["frame1"] == [0] and packed["probability"] == [0.75] and packed["pairs"] == 1
    assert lg.budget_totals_drift(now=NOW)["ok"] is True
    # Calibration reads distinct pairs over GPU seconds (99 / 0.5), for its own key only.
    keyed = lg.recent_throughput(model_version="m", executor="modal", gpu_type="A10G")
    assert (keyed["pairs_per_s"], keyed["runs"], keyed["samples"]) == (198.0, 1, [198.0])
    assert lg.recent_throughput(model_version="m", executor="local", gpu_type="cpu")["runs"] == 0
    assert lg.breaker_record(name="modal", ok=True, threshold=5, window_s=60)["state"] == "closed"
    rejection = lg.log_rejection(
        rejection_type="cooldown", message="wait", video_id="v1", tenant_id="t1"
    )
    assert lg.acknowledge_rejection(id=rejection["id"], by="ops")["acknowledged"] is True
    assert lg.list_rejections(unacknowledged_only=True) == []
    assert [r["id"] for r in lg.list_runs()] == [run_id]


def test_sql_errors_map_through_supabase_path(supa_on_postgres: Ledger) -> None:
    lg = supa_on_postgres
    with pytest.raises(RunNotFound):
        lg.transition_run(run_id=uuid.uuid4(), to_status="running")
    lg.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)
    run_id = lg.claim_run(video_id="v1", tenant_id="t1", frames_version="f", model_version="m")[
        "run_id"
    ]
    with pytest.raises(IllegalTransition):
        lg.transition_run(run_id=run_id, to_status="succeeded")
    with pytest.raises(LedgerError) as info:
        lg.upsert_video(id="v1", tenant_id="t2", frame_count=100, fps=25.0)
    assert info.value.code == "BI403"
