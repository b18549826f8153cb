"""Migration files and the runner: naming, schema substitution, idempotence, checksums,
rollback of a failed file, concurrent migrators, and the files applying as written (Supabase CLI).
"""

from __future__ import annotations

import multiprocessing as mp
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from boundary_inference.ledger import MigrationError, apply_migrations
from boundary_inference.ledger.migrate import applied_migrations, checksum
from migrations import MIGRATIONS_DIR, migration_files, substitute_schema


@pytest.fixture
def fresh_schema(pg_dsn: str) -> Iterator[str]:
    name = f"bi_m_{uuid.uuid4().hex[:12]}"
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


def tables(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,)
        ).fetchall()
    return {r[0] for r in rows}


def test_files_use_supabase_cli_names() -> None:
    files = migration_files()
    assert files, "no migrations found"
    assert all(p.parent == MIGRATIONS_DIR for p in files)
    assert all(re.fullmatch(r"\d{14}_[a-z0-9_]+\.sql", p.name) for p in files)
    assert [p.name for p in files] == sorted(p.name for p in files)
    assert sorted(MIGRATIONS_DIR.glob("*.sql")) == files  # nothing misnamed is silently skipped


def test_substitution_replaces_only_the_schema_token() -> None:
    text = (
        "CREATE TABLE boundary_inference.videos (); SET search_path = boundary_inference, pg_temp;"
        " SELECT * FROM boundary_inference.boundary_inference_runs;"
        " pg_notify('boundary_inference_rejections', '');  -- boundary_inference\n"
        ' "boundary_inference".x; xboundary_inference; boundary_inference2'
    )
    out = substitute_schema(text, "tenant_x")
    assert out == (
        "CREATE TABLE tenant_x.videos (); SET search_path = tenant_x, pg_temp;"
        " SELECT * FROM tenant_x.boundary_inference_runs;"
        " pg_notify('boundary_inference_rejections', '');  -- tenant_x\n"
        ' "tenant_x".x; xboundary_inference; boundary_inference2'
    )
    assert substitute_schema(text, "boundary_inference") == text


def test_apply_is_idempotent_and_recorded(pg_dsn: str, fresh_schema: str) -> None:
    names = [p.name for p in migration_files()]
    assert apply_migrations(pg_dsn, fresh_schema) == names
    assert apply_migrations(pg_dsn, fresh_schema) == []
    recorded = applied_migrations(pg_dsn, fresh_schema)
    assert [r["name"] for r in recorded] == names
    assert [r["checksum"] for r in recorded] == [
        checksum(p.read_text(encoding="utf-8")) for p in migration_files()
    ]
    assert {
        "videos",
        "boundary_inference_runs",
        "boundary_inference_rejections",
        "boundary_prediction_chunks",
        "circuit_breakers",
        "circuit_breaker_events",
        "budget_reservations",
        "budget_totals",
        "schema_migrations",
        "daily_cost",
        "expensive_videos",
        "queue_health",
        "rejection_summary",
    } <= tables(pg_dsn, fresh_schema)


def test_substituted_schema_leaves_no_trace_in_default_schema(
    pg_dsn: str, fresh_schema: str
) -> None:
    apply_migrations(pg_dsn, fresh_schema)
    with psycopg.connect(pg_dsn) as conn:
        bodies = conn.execute(
            "SELECT p.proname, p.prosrc, p.proconfig::text FROM pg_proc p"
            " WHERE p.pronamespace = %s::regnamespace",
            (fresh_schema,),
        ).fetchall()
    token = re.compile(r"(?<![A-Za-z0-9_$])boundary_inference(?![A-Za-z0-9_$])")
    for name, body, config in bodies:
        assert not token.search(body), name
        assert f"search_path={fresh_schema}" in (config or "").replace(" ", ""), name


def test_changed_applied_file_is_refused(pg_dsn: str, fresh_schema: str, tmp_path: Path) -> None:
    for p in migration_files():
        shutil.copy(p, tmp_path / p.name)
    apply_migrations(pg_dsn, fresh_schema, directory=tmp_path)
    first = migration_files(tmp_path)[0]
    first.write_text(first.read_text() + "\n-- edited after being applied\n")
    with pytest.raises(MigrationError, match="must not be edited") as info:
        apply_migrations(pg_dsn, fresh_schema, directory=tmp_path)
    assert info.value.code == "checksum_mismatch"


def test_new_file_applies_and_failed_file_rolls_back(
    pg_dsn: str, fresh_schema: str, tmp_path: Path
) -> None:
    for p in migration_files():
        shutil.copy(p, tmp_path / p.name)
    apply_migrations(pg_dsn, fresh_schema, directory=tmp_path)
    (tmp_path / "29990101000000_extra.sql").write_text(
        "CREATE TABLE boundary_inference.extra (id int);"
    )
    assert apply_migrations(pg_dsn, fresh_schema, directory=tmp_path) == [
        "29990101000000_extra.sql"
    ]
    (tmp_path / "29990101000001_broken.sql").write_text(
        "CREATE TABLE boundary_inference.half_done (id int);\nSELECT no_such_function();"
    )
    with pytest.raises(MigrationError, match=r"29990101000001_broken\.sql"):
        apply_migrations(pg_dsn, fresh_schema, directory=tmp_path)
    assert "half_done" not in tables(pg_dsn, fresh_schema)
    assert "29990101000001_broken.sql" not in {
        r["name"] for r in applied_migrations(pg_dsn, fresh_schema)
    }


def test_bad_schema_name_is_refused(pg_dsn: str) -> None:
    with pytest.raises(ValueError, match="identifier"):
        apply_migrations(pg_dsn, 'x"; DROP SCHEMA public; --')


def test_concurrent_migrators_in_threads(pg_dsn: str, fresh_schema: str) -> None:
    barrier = threading.Barrier(4)
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        barrier.wait()
        try:
            results.append(apply_migrations(pg_dsn, fresh_schema))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    applied = [name for names in results for name in names]
    assert sorted(applied) == [p.name for p in migration_files()]  # each file exactly once


@pytest.mark.slow
def test_concurrent_migrators_in_processes(pg_dsn: str, fresh_schema: str) -> None:
    other = f"{fresh_schema}_b"
    try:
        ctx = mp.get_context("spawn")
        with ctx.Pool(3) as pool:
            results = pool.starmap(
                apply_migrations, [(pg_dsn, fresh_schema), (pg_dsn, fresh_schema), (pg_dsn, other)]
            )
        names = [p.name for p in migration_files()]
        assert sorted(results[0] + results[1]) == names
        assert results[2] == names
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(other)))


def test_files_apply_as_written(pg_dsn: str) -> None:
    """What `supabase db push` does: run each file unchanged (schema boundary_inference). Rolled
    back, so the test database keeps no boundary_inference schema from this test."""
    with psycopg.connect(pg_dsn) as conn:
        try:
            for path in migration_files():
                conn.execute(path.read_text(encoding="utf-8").encode())
            # Applying twice is harmless too (IF NOT EXISTS / OR REPLACE throughout).
            for path in migration_files():
                conn.execute(path.read_text(encoding="utf-8").encode())
            row = conn.execute(
                "SELECT boundary_inference.ping() ->> 'schema', boundary_inference.queue_depth()"
            ).fetchone()
            assert row == ("boundary_inference", {"queued": 0, "running": 0, "total": 0})
        finally:
            conn.rollback()
