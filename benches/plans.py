"""What a ledger call really reads: its plan, the pages it touches, the rows each relation gives.

A call's cost must follow what it returns, not how much history the ledger holds. Three views of
one call, all taken inside a transaction that is rolled back (a call that writes leaves nothing):

* ``pages``: shared buffers hit or read by the whole call, from ``EXPLAIN (ANALYZE, BUFFERS)`` of
  ``SELECT schema.fn(...)``. Buffer accounting covers the statements the function runs inside, so
  this is everything the call touched, whatever its language.
* ``seq_scans`` and ``rows_read``: the transaction's own statistics counters
  (``pg_stat_get_xact_*``) per table and index: a sequential scan, or an index that handed over
  most of its entries, shows here even when it hides inside PL/pgSQL. Parallel query is off for
  the measurement, since workers count their reads in their own backends.
* ``plans``: for a ``LANGUAGE sql`` function, ``EXPLAIN (GENERIC_PLAN)`` of its body as stored in
  the database (parameters as ``$n``): SQL functions are planned without their arguments' values,
  so this is the plan they run.

:func:`measure` returns all three; :func:`full_scans` names the relations a call scanned whole.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from boundary_inference.ledger.psycopg_transport import _adapt


@dataclass
class CallCost:
    """What one call read. Counts are for the call only (before/after difference)."""

    name: str
    pages: int
    seq_scans: dict[str, int] = field(default_factory=dict)  # table -> sequential scans
    rows_read: dict[str, int] = field(default_factory=dict)  # table or index -> rows handed over
    plans: list[str] = field(default_factory=list)  # generic plans of a SQL function's body
    ms: float = 0.0


def call_statement(
    schema: str, fn: str, params: dict[str, Any]
) -> tuple[sql.Composed, dict[str, Any]]:
    """``SELECT schema.fn(p_a => %(p_a)s, ...)`` and its values, as the psycopg transport sends."""
    names = sorted(params)
    args = sql.SQL(", ").join(
        sql.SQL("{} => {}").format(sql.Identifier(n), sql.Placeholder(n)) for n in names
    )
    statement = sql.SQL("SELECT {}.{}({})").format(sql.Identifier(schema), sql.Identifier(fn), args)
    return statement, {n: _adapt(params[n]) for n in names}


def _counters(conn: psycopg.Connection[Any], schema: str) -> dict[str, tuple[str, int, int, int]]:
    """relation -> (kind, seq scans or index scans, rows returned, rows fetched), this transaction."""
    rows = conn.execute(
        "SELECT c.relname, c.relkind::text, pg_stat_get_xact_numscans(c.oid),"
        " pg_stat_get_xact_tuples_returned(c.oid), pg_stat_get_xact_tuples_fetched(c.oid)"
        " FROM pg_class c WHERE c.relnamespace = %s::regnamespace AND c.relkind IN ('r', 'i')",
        (schema,),
    ).fetchall()
    return {r[0]: (r[1], int(r[2]), int(r[3]), int(r[4])) for r in rows}


def _pages(node: dict[str, Any]) -> int:
    return int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0))


def measure(
    conn: psycopg.Connection[Any],
    schema: str,
    name: str,
    fn: str,
    params: dict[str, Any],
    *,
    warm_up: bool = True,
) -> CallCost:
    """Run ``fn`` in a rolled-back transaction and report what it read.

    ``warm_up`` runs it once first (rolled back too): the first call of a function in a session
    reads the catalogs to compile and plan it, which has nothing to do with the ledger's size.
    ``conn`` must not be in autocommit mode, and should be a superuser or the schema's owner
    (the statistics functions and EXPLAIN need no more than that).
    """
    statement, values = call_statement(schema, fn, params)
    if warm_up:
        try:
            conn.execute(statement, values)
        finally:
            conn.rollback()
    try:
        # Parallel workers count what they read in their own backends: without them, this
        # transaction's counters see every row the call reads.
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        before = _counters(conn, schema)
        explain = sql.SQL("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) ") + statement
        row = conn.execute(explain, values).fetchone()
        after = _counters(conn, schema)
    finally:
        conn.rollback()
    assert row is not None
    plan = row[0] if isinstance(row[0], list) else json.loads(row[0])
    top = plan[0]
    cost = CallCost(
        name=name,
        pages=_pages(top["Plan"]) + _pages(top.get("Planning", {})),
        ms=float(top.get("Execution Time", 0.0)),
    )
    for relation, (kind, scans, returned, _) in after.items():
        old = before.get(relation, (kind, 0, 0, 0))
        if kind == "r" and scans > old[1]:
            cost.seq_scans[relation] = scans - old[1]
        if returned > old[2]:
            cost.rows_read[relation] = returned - old[2]
    cost.plans = generic_plans(conn, schema, fn)
    return cost


_PARAM = re.compile(r"(?<![A-Za-z0-9_$.])(p_[a-z0-9_]+)(?![A-Za-z0-9_$])")


def generic_plans(conn: psycopg.Connection[Any], schema: str, fn: str) -> list[str]:
    """Generic plans (text) of the bodies of every ``LANGUAGE sql`` overload of ``fn``."""
    rows = conn.execute(
        "SELECT p.prosrc, p.proargnames, ARRAY(SELECT format_type(t, NULL)"
        "   FROM unnest(p.proargtypes) WITH ORDINALITY AS a(t, i) ORDER BY i)"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = %s::regnamespace AND p.proname = %s AND l.lanname = 'sql'",
        (schema, fn),
    ).fetchall()
    plans = []
    try:
        conn.execute(sql.SQL("SET LOCAL search_path = {}, pg_temp").format(sql.Identifier(schema)))
        for body, names, types in rows:
            position = {n: i for i, n in enumerate(names or [], start=1)}

            def as_param(
                match: re.Match[str], position: dict[str, int] = position, types: list[str] = types
            ) -> str:
                i = position.get(match.group(1))
                if i is None:
                    return match.group(0)
                return f"(${i}::{types[i - 1]})"

            text = _PARAM.sub(as_param, body)
            lines = conn.execute(sql.SQL("EXPLAIN (GENERIC_PLAN) ") + sql.SQL(text)).fetchall()
            plans.append("\n".join(r[0] for r in lines))
    finally:
        conn.rollback()
    return plans


def full_scans(cost: CallCost, table_rows: dict[str, int], *, min_rows: int = 10_000) -> list[str]:
    """Why ``cost`` is not flat: sequential scans of tables holding at least ``min_rows`` rows,
    and ``Seq Scan`` nodes on them in a generic plan."""
    found = [
        f"sequential scan of {t} ({table_rows.get(t, 0):,} rows)"
        for t in cost.seq_scans
        if table_rows.get(t, 0) >= min_rows
    ]
    for plan in cost.plans:
        for table, rows in table_rows.items():
            if rows >= min_rows and re.search(rf"Seq Scan on {re.escape(table)}\b", plan):
                found.append(f"Seq Scan on {table} in the generic plan")
    return found
