"""Row-level security and privileges, checked by acting as Supabase's roles on the real server.

``SET LOCAL ROLE`` + ``set_config('request.jwt.claims', ..., true)`` inside a transaction is what
PostgREST does for each request, so these are the rules a Supabase client would meet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from boundary_inference.ledger import Ledger

TENANT_TABLES = [
    "videos",
    "boundary_inference_runs",
    "boundary_inference_rejections",
    "boundary_prediction_chunks",
]
PRIVATE_TABLES = [
    "circuit_breakers",
    "circuit_breaker_events",
    "budget_reservations",
    "budget_totals",
    "schema_migrations",
    "models",
]


@pytest.fixture
def two_tenants(ledger: Ledger) -> Ledger:
    for tenant in ("t1", "t2"):
        video = f"video-{tenant}"
        ledger.upsert_video(id=video, tenant_id=tenant, frame_count=10, fps=1.0)
        run = ledger.claim_run(
            video_id=video, tenant_id=tenant, frames_version="f", model_version="m"
        )["run_id"]
        ledger.save_predictions(
            run_id=run, rows=[{"frame1": 0, "frame2": 1, "probability": 0.5, "is_boundary": True}]
        )
        ledger.log_rejection(
            rejection_type="cooldown", message="m", video_id=video, tenant_id=tenant
        )
        ledger.reserve_budget(
            run_id=run, tenant_id=tenant, amount_usd=0.1, daily_cap_usd=10, monthly_cap_usd=10
        )
        ledger.breaker_record(name="modal", ok=False, threshold=5, window_s=60)
    return ledger


@pytest.fixture
def conn(ledger_dsn: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(ledger_dsn) as c:  # not autocommit: SET LOCAL lives in the transaction
        yield c


def as_role(
    conn: psycopg.Connection, role: str, query: sql.Composable, claims: dict | None = None
) -> list[tuple]:
    """Run ``query`` as ``role`` (with JWT claims) in a transaction that is rolled back."""
    try:
        conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(role)))
        if claims is not None:
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)", (json.dumps(claims),))
        return conn.execute(query).fetchall()
    finally:
        conn.rollback()


def select_tenants(schema: str, table: str) -> sql.Composed:
    if table == "boundary_prediction_chunks":
        return sql.SQL("SELECT run_id::text FROM {}").format(sql.Identifier(schema, table))
    return sql.SQL("SELECT tenant_id FROM {}").format(sql.Identifier(schema, table))


@pytest.mark.parametrize("table", TENANT_TABLES + PRIVATE_TABLES)
def test_anon_is_denied(two_tenants: Ledger, conn: psycopg.Connection, table: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(
            conn,
            "anon",
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(two_tenants.schema, table)),
        )


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_authenticated_reads_only_its_tenant(
    two_tenants: Ledger, conn: psycopg.Connection, table: str
) -> None:
    schema = two_tenants.schema
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
    assert as_role(conn, "authenticated", query, {"tenant_id": "t1"}) == [(1,)]
    assert as_role(conn, "authenticated", query, {"tenant_id": "t3"}) == [(0,)]
    assert as_role(conn, "authenticated", query, {"sub": "no-tenant"}) == [(0,)]
    assert as_role(conn, "authenticated", query) == [(0,)]  # no claims at all
    if table != "boundary_prediction_chunks":
        rows = as_role(conn, "authenticated", select_tenants(schema, table), {"tenant_id": "t2"})
        assert rows == [("t2",)]
    assert as_role(conn, "service_role", query) == [(2,)]


def test_predictions_follow_their_runs_tenant(
    two_tenants: Ledger, conn: psycopg.Connection
) -> None:
    schema = two_tenants.schema
    query = sql.SQL("SELECT r.tenant_id FROM {} p JOIN {} r ON r.id = p.run_id").format(
        sql.Identifier(schema, "boundary_prediction_chunks"),
        sql.Identifier(schema, "boundary_inference_runs"),
    )
    assert as_role(conn, "authenticated", query, {"tenant_id": "t1"}) == [("t1",)]


@pytest.mark.parametrize("table", PRIVATE_TABLES)
def test_authenticated_cannot_read_private_tables(
    two_tenants: Ledger, conn: psycopg.Connection, table: str
) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(
            conn,
            "authenticated",
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(two_tenants.schema, table)),
            {"tenant_id": "t1"},
        )


@pytest.mark.parametrize("role", ["authenticated", "service_role"])
def test_only_service_role_writes(two_tenants: Ledger, conn: psycopg.Connection, role: str) -> None:
    query = sql.SQL("UPDATE {} SET fps = 1 RETURNING id").format(
        sql.Identifier(two_tenants.schema, "videos")
    )
    if role == "authenticated":
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_role(conn, role, query, {"tenant_id": "t1"})
    else:
        assert len(as_role(conn, role, query)) == 2


def test_tenant_dashboard_views_are_filtered(two_tenants: Ledger, conn: psycopg.Connection) -> None:
    schema = two_tenants.schema
    query = sql.SQL("SELECT tenant_id FROM {}").format(sql.Identifier(schema, "expensive_videos"))
    assert as_role(conn, "authenticated", query, {"tenant_id": "t1"}) == [("t1",)]
    assert sorted(as_role(conn, "service_role", query)) == [("t1",), ("t2",)]
    daily = sql.SQL("SELECT reservations FROM {}").format(sql.Identifier(schema, "daily_cost"))
    assert as_role(conn, "service_role", daily) == [(2,)]
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(conn, "authenticated", daily, {"tenant_id": "t1"})
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(conn, "anon", query)


def test_only_service_role_may_execute_functions(ledger: Ledger, conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT p.proname,"
        " has_function_privilege('anon', p.oid, 'EXECUTE'),"
        " has_function_privilege('authenticated', p.oid, 'EXECUTE'),"
        " has_function_privilege('service_role', p.oid, 'EXECUTE'),"
        " has_function_privilege('public', p.oid, 'EXECUTE')"
        " FROM pg_proc p WHERE p.pronamespace = %s::regnamespace",
        (ledger.schema,),
    ).fetchall()
    conn.rollback()
    names = {r[0] for r in rows}
    assert {"claim_run", "reserve_budget", "breaker_check", "transition_run", "ping"} <= names
    for name, anon, authenticated, service, public in rows:
        assert (anon, authenticated, public) == (False, False, False), name
        assert service, name


@pytest.mark.parametrize("role", ["anon", "authenticated"])
def test_api_roles_cannot_call_functions(
    ledger: Ledger, conn: psycopg.Connection, role: str
) -> None:
    query = sql.SQL("SELECT {}.queue_depth()").format(sql.Identifier(ledger.schema))
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        as_role(conn, role, query, {"tenant_id": "t1"})


def test_service_role_can_run_the_guards(ledger: Ledger, conn: psycopg.Connection) -> None:
    schema = sql.Identifier(ledger.schema)
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=10, fps=1.0)
    query = sql.SQL(
        "SELECT {s}.claim_run(p_video_id => 'v1', p_tenant_id => 't1', p_frames_version => 'f',"
        " p_model_version => 'm'), {s}.reserve_budget(p_run_id => {run}, p_tenant_id => 't1',"
        " p_amount_usd => 1, p_daily_cap_usd => 5, p_monthly_cap_usd => 5),"
        " {s}.breaker_record(p_name => 'x', p_ok => false), {s}.log_rejection("
        " p_rejection_type => 'cooldown', p_message => 'm')"
    ).format(s=schema, run=sql.Literal(str(uuid.uuid4())))
    claim, budget, breaker, rejection = as_role(conn, "service_role", query)[0]
    assert claim["created"] is True and budget["ok"] is True
    assert breaker["state"] == "closed" and "id" in rejection


def test_every_table_has_rls(ledger: Ledger, conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT relname, relrowsecurity FROM pg_class"
        " WHERE relnamespace = %s::regnamespace AND relkind = 'r'",
        (ledger.schema,),
    ).fetchall()
    assert {r[0] for r in rows} == set(TENANT_TABLES + PRIVATE_TABLES)
    assert all(enabled for _, enabled in rows), rows


def test_roles_exist_with_supabase_attributes(ledger: Ledger, conn: psycopg.Connection) -> None:
    roles = dict(
        conn.execute(
            "SELECT rolname, rolbypassrls FROM pg_roles"
            " WHERE rolname IN ('anon', 'authenticated', 'service_role')"
        ).fetchall()
    )
    assert roles == {"anon": False, "authenticated": False, "service_role": True}
    usage = conn.execute(
        "SELECT has_schema_privilege('anon', %(s)s, 'USAGE'),"
        " has_schema_privilege('authenticated', %(s)s, 'USAGE'),"
        " has_schema_privilege('service_role', %(s)s, 'USAGE')",
        {"s": ledger.schema},
    ).fetchone()
    assert usage == (False, True, True)
