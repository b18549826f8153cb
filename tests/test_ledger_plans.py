"""At a million runs, no ledger call of an admission or of a monitor pass scans history.

One schema is filled with a million runs of realistic history (``generate_series``, see
``benches.history``: 24 months, 50 tenants, 300k rejections, about a million
reservations and breaker events, packed predictions), then every call of
``benches.ledger_calls.CATALOGUE`` runs once in a rolled-back transaction with
``EXPLAIN (ANALYZE, BUFFERS)`` and the transaction's statistics counters. A call fails when it
sequentially scans a table of 10,000 rows or more, when its generic plan (SQL functions) has a
``Seq Scan`` on one, when any table or index hands it more rows than its own work needs
(``max_rows_read``), or when it touches more buffer pages than ``max_pages``. Nothing here is
timed: the counts do not depend on this machine's speed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from benches.history import HistoryShape, build_history
from benches.ledger_calls import (
    CATALOGUE,
    LedgerCall,
    Subjects,
    find_subjects,
    table_rows,
)
from benches.plans import full_scans, measure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

# Predictions for 10,000 runs (50 pairs each): enough rows that the planner must use the index.
HISTORY = HistoryShape(runs=1_000_000, prediction_runs=10_000, pairs_per_prediction_run=50)

# Full scans known and accepted, each with why (strict xfail: when one is fixed, its entry must go).
# None today: list_rejections' open case was one until 20261130700000_open_rejections_plan.sql.
KNOWN_FULL_SCANS: dict[str, str] = {}


@pytest.fixture(scope="module")
def history(pg_dsn: str) -> Iterator[str]:
    schema = f"bi_plans_{uuid.uuid4().hex[:8]}"
    try:
        build_history(pg_dsn, schema, HISTORY)
        yield schema
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture(scope="module")
def conn(pg_dsn: str, history: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(pg_dsn) as connection:  # not autocommit: every call is rolled back
        yield connection


@pytest.fixture(scope="module")
def subjects(conn: psycopg.Connection, history: str) -> Subjects:
    return find_subjects(conn, history)


@pytest.fixture(scope="module")
def rows(conn: psycopg.Connection, history: str) -> dict[str, int]:
    return table_rows(conn, history)


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


def test_the_history_has_production_size(rows: dict[str, int], subjects: Subjects) -> None:
    assert rows["boundary_inference_runs"] >= 990_000
    assert rows["budget_reservations"] >= 900_000
    assert rows["boundary_inference_rejections"] >= 250_000
    assert rows["circuit_breaker_events"] >= 900_000
    assert rows["boundary_prediction_chunks"] >= 9_000
    assert subjects.predictions_run is not None


def _params(call: LedgerCall) -> object:
    marks = []
    if call.name in KNOWN_FULL_SCANS:
        marks.append(pytest.mark.xfail(strict=True, reason=KNOWN_FULL_SCANS[call.name]))
    return pytest.param(call, id=call.name, marks=marks)


@pytest.mark.parametrize("call", [_params(c) for c in CATALOGUE])
def test_no_call_scans_history(
    call: LedgerCall,
    conn: psycopg.Connection,
    history: str,
    subjects: Subjects,
    rows: dict[str, int],
) -> None:
    cost = measure(conn, history, call.name, call.fn, call.params(subjects))
    problems = full_scans(cost, rows)
    problems += [
        f"{relation} handed over {n:,} rows (at most {call.max_rows_read:,})"
        for relation, n in cost.rows_read.items()
        if n > call.max_rows_read
    ]
    if cost.pages > call.max_pages:
        problems.append(f"{cost.pages:,} buffer pages (at most {call.max_pages:,})")
    detail = "\n".join(cost.plans)
    assert not problems, f"{call.name} ({call.path}): {problems}\n{cost.rows_read}\n{detail}"


def test_the_check_itself_catches_a_scan(conn: psycopg.Connection, history: str) -> None:
    """The same measurement sees a scan of history: the sums over every reservation."""
    cost = measure(conn, history, "expected totals, all history", "_budget_totals_expected", {})
    assert cost.rows_read.get("budget_reservations", 0) >= 900_000
    assert "budget_reservations" in cost.seq_scans
