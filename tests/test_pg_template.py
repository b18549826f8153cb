"""The suite's own ledger databases (``tests/pg_template.py``): each test's is a migrated copy of
the session's template, its own, and gone after it, whatever the test did."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from boundary_inference.ledger import Ledger, PsycopgTransport
from migrations import migration_files
from tests.pg_template import LEDGER_SCHEMA, LedgerTemplate


def _databases(pg_dsn: str) -> set[str]:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database").fetchall()}


def _name(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        found = conn.execute("SELECT current_database()").fetchone()
    assert found is not None
    return str(found[0])


def test_a_copy_is_fully_migrated_and_its_own(
    ledger: Ledger, ledger_dsn: str, ledger_template: LedgerTemplate
) -> None:
    with psycopg.connect(ledger_dsn) as conn:
        applied = conn.execute(
            sql.SQL("SELECT name FROM {} ORDER BY name").format(
                sql.Identifier(LEDGER_SCHEMA, "schema_migrations")
            )
        ).fetchall()
    assert [row[0] for row in applied] == [path.name for path in migration_files()]
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=10, fps=1.0)
    ledger.claim_run(video_id="v1", tenant_id="t1", frames_version="f", model_version="m")
    with ledger_template.copy() as other_dsn:
        assert _name(other_dsn) != _name(ledger_dsn)
        other = Ledger(PsycopgTransport(other_dsn, LEDGER_SCHEMA, timeout_s=30))
        try:
            assert other.list_runs() == []  # the first test database's row is not here
        finally:
            other.close()
    assert len(ledger.list_runs()) == 1


def test_a_copy_is_dropped_on_failure_with_connections_open(
    pg_dsn: str, ledger_template: LedgerTemplate
) -> None:
    with pytest.raises(RuntimeError), ledger_template.copy() as dsn:  # noqa: PT012
        name = _name(dsn)
        left_open = psycopg.connect(dsn)  # a flow's connection that nobody closed
        assert name in _databases(pg_dsn)
        raise RuntimeError("the test failed")
    assert name not in _databases(pg_dsn)
    assert _is_dead(left_open)  # FORCE ended it with its database
    left_open.close()


def _is_dead(conn: psycopg.Connection) -> bool:
    try:
        conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_the_template_takes_no_connections(pg_dsn: str, ledger_template: LedgerTemplate) -> None:
    from tests.pg_template import database_dsn

    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        psycopg.connect(database_dsn(pg_dsn, ledger_template.name)).close()
