"""Budget totals: kept in step with every reservation change, back-filled by the migration, checked
for drift, rebuilt on demand, and exact under concurrent reserve, settle and release."""

from __future__ import annotations

import datetime as dt
import functools
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from benches.ledger import race
from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
from tests.support import T0, schema_migrated_before, try_reserve

ALL_HISTORY = dt.date(2000, 1, 1)
CAPS: dict[str, Any] = {"daily_cap_usd": 100.0, "monthly_cap_usd": 1000.0}


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


reserve = functools.partial(try_reserve, caps=CAPS)


def totals(dsn: str, schema: str) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, int]]:
    """Every non-zero totals row: (scope, period, tenant) -> (committed, actual, reservations)."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            sql.SQL(
                "SELECT scope, period::text, tenant_id, committed_usd, actual_usd, reservations"
                " FROM {} WHERE committed_usd <> 0 OR actual_usd <> 0 OR reservations <> 0"
            ).format(sql.Identifier(schema, "budget_totals"))
        ).fetchall()
    return {(r[0], r[1], r[2]): (r[3], r[4], r[5]) for r in rows}


def sums(dsn: str, schema: str) -> dict[tuple[str, str, str], tuple[Decimal, Decimal, int]]:
    """The same, summed from the reservations in Python: what the totals must say."""
    with psycopg.connect(dsn) as conn:
        reservations = conn.execute(
            sql.SQL(
                "SELECT day::text, month::text, tenant_id, status, reserved_usd, actual_usd FROM {}"
            ).format(sql.Identifier(schema, "budget_reservations"))
        ).fetchall()
    out: dict[tuple[str, str, str], list[Any]] = {}
    for day, month, tenant, status, reserved, actual in reservations:
        committed = {"reserved": reserved, "settled": actual or 0}.get(status, Decimal(0))
        settled = (actual or 0) if status == "settled" else Decimal(0)
        for key in (
            ("day", day, ""),
            ("month", month, ""),
            ("tenant_day", day, tenant),
            ("tenant_month", month, tenant),
        ):
            row = out.setdefault(key, [Decimal(0), Decimal(0), 0])
            row[0] += committed
            row[1] += settled
            row[2] += 1
    return {k: (v[0], v[1], v[2]) for k, v in out.items() if any(v)}


def test_totals_follow_every_reservation_change(ledger: Ledger, ledger_dsn: str) -> None:
    schema = ledger.schema
    a, b, c = (str(uuid.uuid4()) for _ in range(3))
    steps = [
        lambda: reserve(ledger, 1.5, run_id=a),
        lambda: reserve(ledger, 0.5, run_id=b, tenant="t2"),
        lambda: reserve(ledger, 0.25, run_id=c, now=T0 - dt.timedelta(days=20)),  # December
        lambda: ledger.settle_budget(run_id=a, actual_usd=0.4, now=T0),
        lambda: ledger.settle_budget(run_id=a, actual_usd=0.6, now=T0),  # the last actual wins
        lambda: ledger.release_budget(run_id=b, now=T0),
        # A released reservation taken again, on another day and by another tenant.
        lambda: reserve(ledger, 0.75, run_id=b, tenant="t3", now=T0 + dt.timedelta(days=20)),
        lambda: ledger.settle_budget(run_id=c, actual_usd=0.0, now=T0),
        lambda: reserve(ledger, 0.1, run_id=a),  # idempotent: nothing changes
    ]
    for step in steps:
        step()
        assert totals(ledger_dsn, schema) == sums(ledger_dsn, schema)
        assert ledger.budget_totals_drift(since=ALL_HISTORY)["ok"] is True
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 0.6
    assert ledger.spend_summary(now=T0)["monthly_actual_usd"] == 0.6
    assert ledger.spend_summary(now=T0 + dt.timedelta(days=20))["monthly_committed_usd"] == 0.75
    assert ledger.spend_summary(tenant_id="t2", now=T0)["monthly_committed_usd"] == 0
    assert (
        ledger.spend_summary(tenant_id="t3", now=T0 + dt.timedelta(days=20))["daily_committed_usd"]
        == 0.75
    )
    december = ledger.spend_summary(now=T0 - dt.timedelta(days=20))
    assert december["month"] == "2029-12-01" and december["monthly_committed_usd"] == 0
    assert december["monthly_actual_usd"] == 0


def test_a_write_around_the_trigger_is_drift_and_rebuild_repairs_it(
    ledger: Ledger, ledger_dsn: str
) -> None:
    run = str(uuid.uuid4())
    reserve(ledger, 2.0, run_id=run)
    reserve(ledger, 1.0, tenant="t2")
    assert ledger.budget_totals_drift(now=T0) == {
        **ledger.budget_totals_drift(now=T0),
        "ok": True,
        "drift_rows": 0,
        "drift": [],
        "since": "2030-01-01",
    }
    table = sql.Identifier(ledger.schema, "budget_reservations")
    with psycopg.connect(ledger_dsn, autocommit=True) as conn, conn.transaction():
        # What a restore or a hand edit with triggers off does.
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER budget_totals_follow").format(table))
        conn.execute(
            sql.SQL("UPDATE {} SET reserved_usd = 5 WHERE run_id = %s").format(table), (run,)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER budget_totals_follow").format(table))
    drift = ledger.budget_totals_drift(now=T0)
    assert drift["ok"] is False and drift["drift_rows"] == 4
    assert {(d["scope"], d["tenant_id"]) for d in drift["drift"]} == {
        ("day", ""),
        ("month", ""),
        ("tenant_day", "t1"),
        ("tenant_month", "t1"),
    }
    month = next(d for d in drift["drift"] if d["scope"] == "month")
    assert month["totals_committed_usd"] == 3.0 and month["reservations_committed_usd"] == 6.0
    # The drift is reported, not hidden: the guard still reads the stale total until repaired.
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 3.0
    assert ledger.budget_totals_drift(now=T0 + dt.timedelta(days=40))["ok"] is True  # March

    rebuilt = ledger.budget_totals_rebuild()
    assert rebuilt["written"] >= 6
    assert ledger.budget_totals_drift(now=T0)["ok"] is True
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 6.0
    assert totals(ledger_dsn, ledger.schema) == sums(ledger_dsn, ledger.schema)


def test_rebuild_from_a_month_leaves_earlier_months_alone(ledger: Ledger, ledger_dsn: str) -> None:
    reserve(ledger, 1.0, now=T0 - dt.timedelta(days=31))  # December
    reserve(ledger, 2.0, now=T0)
    result = ledger.budget_totals_rebuild(since=dt.date(2030, 1, 20))
    assert result["since"] == "2030-01-01"
    assert result["written"] == 4  # January's four rows only
    assert totals(ledger_dsn, ledger.schema) == sums(ledger_dsn, ledger.schema)


@pytest.fixture
def old_schema(pg_dsn: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A schema migrated only up to the migrations before the totals (as production was)."""
    with schema_migrated_before(pg_dsn, tmp_path, "20261130400000") as made:
        yield made


def test_the_migration_back_fills_existing_reservations(
    old_schema: tuple[str, Path], pg_dsn: str
) -> None:
    schema, _ = old_schema
    old = Ledger(PsycopgTransport(pg_dsn, schema, timeout_s=30))
    try:
        runs = [str(uuid.uuid4()) for _ in range(6)]
        for i, run in enumerate(runs):
            reserve(
                old,
                0.5 + i / 10,
                run_id=run,
                tenant=f"t{i % 2}",
                now=T0 - dt.timedelta(days=10 * i),
            )
        old.settle_budget(run_id=runs[0], actual_usd=0.2, now=T0)
        old.release_budget(run_id=runs[1], now=T0)
        before = [old.spend_summary(now=T0 - dt.timedelta(days=10 * i)) for i in range(6)]
        by_day = old.spend_by_day(days=60, now=T0)

        applied = apply_migrations(pg_dsn, schema)
        assert "20261130400000_budget_totals.sql" in applied
        assert totals(pg_dsn, schema) == sums(pg_dsn, schema)
        assert old.budget_totals_drift(since=ALL_HISTORY)["ok"] is True
        # The same answers as the sums gave before the migration.
        assert [old.spend_summary(now=T0 - dt.timedelta(days=10 * i)) for i in range(6)] == before
        assert old.spend_by_day(days=60, now=T0) == by_day
        # And the guard goes on from there.
        assert reserve(old, 99.0, daily_cap_usd=99.1, now=T0)["reason"] == "daily_cap"
    finally:
        old.close()


@pytest.mark.slow
def test_concurrent_reserve_settle_release_keep_totals_exact(
    ledger: Ledger, ledger_dsn: str
) -> None:
    """Separate processes: 40 of 100 reservations fit a $20 cap; then, in one race, 20 are
    settled at $0.10, 20 released and 60 new ones compete for what that frees. Whatever the
    interleaving, the cap holds and the totals equal the sums of the reservations."""
    cap = {"daily_cap_usd": 20.0, "monthly_cap_usd": 1000.0, "now": T0}

    def reservations(n: int) -> list[dict]:
        return [
            {"run_id": str(uuid.uuid4()), "tenant_id": f"t{i % 3}", "amount_usd": 0.5, **cap}
            for i in range(n)
        ]

    (first,) = race(
        ledger_dsn, ledger.schema, [("reserve_budget", reservations(100))], processes=4, threads=10
    )
    admitted = [r for r in first["results"] if r.get("ok")]
    assert len(admitted) == 40 and not [r for r in first["results"] if "error" in r]
    with psycopg.connect(ledger_dsn) as conn:
        ids = [
            str(r[0])
            for r in conn.execute(
                sql.SQL("SELECT run_id FROM {} WHERE status = 'reserved' ORDER BY run_id").format(
                    sql.Identifier(ledger.schema, "budget_reservations")
                )
            ).fetchall()
        ]
    assert len(ids) == 40
    settle = [
        {"_method": "settle_budget", "run_id": r, "actual_usd": 0.1, "now": T0} for r in ids[:20]
    ]
    release = [{"_method": "release_budget", "run_id": r, "now": T0} for r in ids[20:]]
    fresh = reservations(60)
    # One phase, the three kinds of call dealt round-robin: they race inside the server.
    mixed = [call for group in zip(fresh[:40], settle + release, strict=True) for call in group]
    (phase,) = race(
        ledger_dsn, ledger.schema, [("reserve_budget", mixed + fresh[40:])], processes=4, threads=10
    )
    assert not [r for r in phase["results"] if "error" in r]
    new_ok = sum(1 for r in phase["results"] if r.get("ok") is True)
    # However they interleaved: never past the cap, and exactly what was admitted is committed.
    assert new_ok <= 36  # ($20 - 20 x $0.10) / $0.50
    summary = ledger.spend_summary(now=T0)
    assert summary["daily_committed_usd"] == pytest.approx(2.0 + 0.5 * new_ok)
    assert summary["daily_committed_usd"] <= 20.0
    assert totals(ledger_dsn, ledger.schema) == sums(ledger_dsn, ledger.schema)
    assert ledger.budget_totals_drift(now=T0)["ok"] is True
