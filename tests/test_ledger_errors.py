"""One error table for both ledger transports, and calls that cannot commit after the client gave up.

Every error here is caused for real: a SQL function on the embedded PostgreSQL raises the SQLSTATE,
reached once directly (psycopg) and once through supabase-py's real HTTP requests to a
PostgREST-shaped server (tests/postgrest_double.py) that answers as PostgREST documents.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from boundary_inference.ledger import (
    IllegalTransition,
    Ledger,
    LedgerError,
    LedgerUnavailable,
    PsycopgTransport,
    RunNotFound,
    SupabaseTransport,
)
from boundary_inference.ledger.time_bounds import RESPONSE_MARGIN_S, server_timeout_s
from config import Settings
from tasks import budget, dedup
from tests.postgrest_double import (
    DROP_AFTER_COMMIT,
    GATEWAY_502_HTML,
    GATEWAY_503_JSON,
    GATEWAY_504_AFTER_COMMIT,
    PostgrestDouble,
)

KEY = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"


@pytest.fixture
def postgrest(ledger_dsn: str, ledger_schema: str) -> Iterator[PostgrestDouble]:
    # Supabase's API roles: 8 s statement and lock timeouts; lock waits here are cut at 200 ms so
    # a test that holds a lock stays fast.
    settings = {"statement_timeout": "8s", "lock_timeout": "200ms"}
    with PostgrestDouble(
        ledger_dsn, [ledger_schema], key=KEY, role_settings=settings
    ).running() as s:
        yield s


@pytest.fixture
def both(
    ledger_dsn: str, ledger_schema: str, postgrest: PostgrestDouble
) -> Iterator[dict[str, Ledger]]:
    """The same schema through both transports, with a helper that raises any SQLSTATE."""
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "CREATE FUNCTION {}.raise_sqlstate(p_code text) RETURNS jsonb LANGUAGE plpgsql"
                " AS $$ BEGIN RAISE EXCEPTION 'raised %', p_code USING ERRCODE = p_code; END $$"
            ).format(sql.Identifier(ledger_schema))
        )
    direct = PsycopgTransport(ledger_dsn, ledger_schema, timeout_s=10, role="service_role")
    rest = SupabaseTransport(url=postgrest.url, key=KEY, schema=ledger_schema, timeout_s=10)
    yield {"psycopg": Ledger(direct), "supabase": Ledger(rest)}
    direct.close()
    rest.close()


# (SQLSTATE, the error both transports raise). Database errors roll back: never maybe_committed.
TABLE: list[tuple[str, type[LedgerError]]] = [
    ("23505", LedgerError),  # unique violation (PostgREST: 409)
    ("23503", LedgerError),  # foreign key (409)
    ("23514", LedgerError),  # check (400)
    ("22003", LedgerError),  # numeric out of range (400)
    ("42501", LedgerError),  # insufficient privilege (403)
    ("42883", LedgerError),  # undefined function (404)
    ("P0001", LedgerError),  # raise_exception (400)
    ("BI400", LedgerError),
    ("BI403", LedgerError),
    ("BI404", RunNotFound),
    ("BI409", IllegalTransition),
    ("55P03", LedgerUnavailable),  # lock timeout (500): nothing committed
    ("57014", LedgerUnavailable),  # statement timeout (500): nothing committed
    ("40001", LedgerUnavailable),  # serialization failure (500)
    ("40P01", LedgerUnavailable),  # deadlock (500)
    ("53300", LedgerUnavailable),  # too many connections (503)
    ("08006", LedgerUnavailable),  # connection failure (503)
]


@pytest.mark.parametrize(("sqlstate", "expected"), TABLE, ids=[c for c, _ in TABLE])
def test_one_sqlstate_one_error_on_both_transports(
    both: dict[str, Ledger], sqlstate: str, expected: type[LedgerError]
) -> None:
    seen = {}
    for name, ledger in both.items():
        with pytest.raises(LedgerError) as info:
            ledger.transport.call("raise_sqlstate", {"p_code": sqlstate})
        seen[name] = (type(info.value), info.value.code, info.value.maybe_committed)
    assert seen["psycopg"] == seen["supabase"] == (expected, sqlstate, False)


def test_real_sql_errors_map_alike(both: dict[str, Ledger]) -> None:
    for ledger in both.values():
        with pytest.raises(LedgerError) as info:  # int column: 22003 from the real function
            ledger.upsert_video(id="v1", tenant_id="t1", frame_count=2**40, fps=25.0)
        assert (type(info.value), info.value.code) == (LedgerError, "22003")
        with pytest.raises(RunNotFound):
            ledger.transition_run(run_id=uuid.uuid4(), to_status="running")


def test_nan_is_refused_alike_before_sending(
    both: dict[str, Ledger], postgrest: PostgrestDouble
) -> None:
    for ledger in both.values():
        for value in (math.nan, math.inf):
            with pytest.raises(LedgerError) as info:
                ledger.reserve_budget(
                    run_id=uuid.uuid4(),
                    tenant_id="t",
                    amount_usd=value,
                    daily_cap_usd=1,
                    monthly_cap_usd=2,
                )
            assert (type(info.value), info.value.code) == (LedgerError, "BI400")
    assert postgrest.committed == []


def test_lock_timeout_commits_nothing_on_both(
    both: dict[str, Ledger], ledger_dsn: str, ledger_schema: str
) -> None:
    direct = PsycopgTransport(ledger_dsn, ledger_schema, timeout_s=0.3, role="service_role")
    ledgers = {**both, "psycopg": Ledger(direct)}
    run_id = uuid.uuid4()
    with psycopg.connect(ledger_dsn) as holder:  # holds the budget lock every reservation takes
        holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{ledger_schema}.budget",)
        )
        for ledger in ledgers.values():
            with pytest.raises(LedgerUnavailable) as info:
                ledger.reserve_budget(
                    run_id=run_id, tenant_id="t", amount_usd=1, daily_cap_usd=9, monthly_cap_usd=9
                )
            assert info.value.code in {"55P03", "57014"} and not info.value.maybe_committed
    direct.close()
    assert both["psycopg"].spend_summary()["daily_committed_usd"] == 0


@pytest.mark.parametrize(
    ("fault", "code", "maybe_committed"),
    [
        (GATEWAY_502_HTML, "502", True),
        (GATEWAY_503_JSON, "503", True),  # JSON without a code: only the status says 5xx
        (GATEWAY_504_AFTER_COMMIT, "504", True),
        (DROP_AFTER_COMMIT, "unavailable", True),
    ],
)
def test_gateway_answers_are_unavailable_with_an_unknown_outcome(
    both: dict[str, Ledger],
    postgrest: PostgrestDouble,
    fault: str,
    code: str,
    maybe_committed: bool,
) -> None:
    postgrest.fault("queue_depth", fault)
    with pytest.raises(LedgerUnavailable) as info:
        both["supabase"].queue_depth()
    assert (info.value.code, info.value.maybe_committed) == (code, maybe_committed)


def test_refusals_by_postgrest_or_gateway_are_errors(
    both: dict[str, Ledger], postgrest: PostgrestDouble, ledger_schema: str
) -> None:
    with pytest.raises(LedgerError) as info:
        both["supabase"].transport.call("no_such_function", {})
    assert (type(info.value), info.value.code) == (LedgerError, "PGRST202")
    bad_key = SupabaseTransport(url=postgrest.url, key=KEY + "x", schema=ledger_schema)
    with pytest.raises(LedgerError) as info:  # Kong's JSON without a code: the status decides
        bad_key.call("queue_depth", {})
    bad_key.close()
    assert (type(info.value), info.value.code) == (LedgerError, "401")
    hidden = SupabaseTransport(url=postgrest.url, key=KEY, schema="not_exposed")
    with pytest.raises(LedgerError) as info:
        hidden.call("queue_depth", {})
    hidden.close()
    assert (type(info.value), info.value.code) == (LedgerError, "PGRST106")


# --- time bounds on the server's side --------------------------------------------------------


def test_every_rpc_carries_a_statement_timeout_below_the_clients_wait(
    ledger_dsn: str, ledger_schema: str
) -> None:
    functions = {
        name for name in dir(Ledger) if not name.startswith("_") and callable(getattr(Ledger, name))
    } - {"close", "schema"}
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT p.proname, p.proconfig FROM pg_proc p"
            " WHERE p.pronamespace = %s::regnamespace AND p.proname = ANY(%s)",
            (ledger_schema, sorted(functions)),
        ).fetchall()
    assert {name for name, _ in rows} == functions
    transport = SupabaseTransport(url="http://127.0.0.1:9", key=KEY, schema=ledger_schema)
    for name, config in rows:
        settings = dict(item.split("=", 1) for item in config or [])
        assert "statement_timeout" in settings, f"{name} has no server-side bound"
        bound_s = float(settings["statement_timeout"].removesuffix("s"))
        assert bound_s == server_timeout_s(name), name
        wait_s = transport.http_timeout_s(long=bound_s > 5)
        assert wait_s >= bound_s + RESPONSE_MARGIN_S, name
    transport.close()


def test_a_call_past_its_bound_is_cancelled_on_the_server(
    both: dict[str, Ledger], ledger_dsn: str, ledger_schema: str, postgrest: PostgrestDouble
) -> None:
    # The bound as the migration sets it, made short: PostgREST hoists it into the transaction.
    postgrest.role_settings = {"statement_timeout": "8s", "lock_timeout": "8s"}
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER FUNCTION {}.reserve_budget SET statement_timeout = '150ms'").format(
                sql.Identifier(ledger_schema)
            )
        )
    run_id = uuid.uuid4()
    with psycopg.connect(ledger_dsn) as holder:
        holder.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"{ledger_schema}.budget",)
        )
        with pytest.raises(LedgerUnavailable) as info:
            both["supabase"].reserve_budget(
                run_id=run_id, tenant_id="t", amount_usd=1, daily_cap_usd=9, monthly_cap_usd=9
            )
    assert (info.value.code, info.value.maybe_committed) == ("57014", False)
    assert both["psycopg"].spend_summary()["daily_committed_usd"] == 0
    assert postgrest.committed == []


def test_a_reservation_whose_answer_was_lost_is_released(
    both: dict[str, Ledger], postgrest: PostgrestDouble
) -> None:
    ledger = both["supabase"]
    run_id = str(uuid.uuid4())
    postgrest.fault("reserve_budget", DROP_AFTER_COMMIT)
    with pytest.raises(LedgerUnavailable) as info:
        budget.reserve.fn(ledger, Settings(), run_id=run_id, tenant_id="t", amount_usd=0.5)
    assert info.value.maybe_committed
    assert postgrest.committed[:2] == ["reserve_budget", "release_budget"]
    assert ledger.spend_summary()["daily_committed_usd"] == 0


def test_a_claim_whose_answer_was_lost_holds_no_queue_slot(
    both: dict[str, Ledger], postgrest: PostgrestDouble
) -> None:
    ledger = both["supabase"]
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)
    postgrest.fault("claim_run", DROP_AFTER_COMMIT)
    claim = dedup.claim_run.fn(
        ledger,
        video_id="v1",
        tenant_id="t1",
        frames_version="f",
        model_version="m",
        pairs=99,
        priority="normal",
        skip_if_exists=True,
        flow_run_id="fr-1",
        lease_s=60.0,
        lease_owner="flow:fr-1",
    )
    assert claim["created"] is True
    assert postgrest.committed[-2:] == ["claim_run", "claim_run"]
    assert ledger.queue_depth()["total"] == 1  # the lost claim's run was ended by the second
