"""Which ledger the configuration names, and what `migrate` does with it.

The Supabase URL/key pair serves two things (supabase:// videos and the ledger's PostgREST
transport); ``ledger_backend`` says which ledger is meant, ``auto`` keeping the earlier rule.
"""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from pydantic import ValidationError

from boundary_inference.ledger import PsycopgTransport, SupabaseTransport, apply_migrations
from boundary_inference.services import open_ledger
from config import Settings
from tests.support import run_python

SUPABASE = {
    "supabase_url": "https://project-ref.supabase.co",
    "supabase_service_role_key": "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2ln",
}


def _env(tmp_path: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNDARY_INFERENCE_")}
    env["BOUNDARY_INFERENCE_STATE_DIR"] = str(tmp_path / "state")
    env.update({f"BOUNDARY_INFERENCE_{k.upper()}": v for k, v in values.items()})
    return env


def test_migrate_without_dsn_refuses_a_supabase_ledger(tmp_path: Path) -> None:
    done = run_python(
        ["-m", "boundary_inference.cli.app", "migrate"],
        env=_env(tmp_path, **SUPABASE),
        cwd=tmp_path,
        timeout_s=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--dsn" in lines[0], done.stderr
    assert "BOUNDARY_INFERENCE_DATABASE_URL" in lines[0]
    assert not (tmp_path / "state").exists()  # the embedded database was not migrated instead


def test_migrate_with_dsn_applies_to_that_database(
    tmp_path: Path, pg_dsn: str, schema_name: str
) -> None:
    env = _env(tmp_path, **SUPABASE, db_schema=schema_name)
    try:
        done = run_python(
            ["-m", "boundary_inference.cli.app", "migrate", "--dsn", pg_dsn],
            env=env,
            cwd=tmp_path,
            timeout_s=120,
        )
        assert done.returncode == 0, done.stderr
        assert f"schema {schema_name}:" in done.stdout
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema_name))
            )


@pytest.mark.parametrize("schema", ["public", "auth", "storage", "pg_temp_1"])
def test_a_schema_the_project_owns_is_refused(pg_dsn: str, schema: str) -> None:
    with pytest.raises(ValidationError, match="not the ledger's own"):
        Settings(db_schema=schema)
    with pytest.raises(ValueError, match="not the ledger's own"):
        apply_migrations(pg_dsn, schema)


def test_ledger_backend_separates_the_ledger_from_supabase_videos(pg_dsn: str) -> None:
    # auto: the rule existing environments rely on.
    assert Settings(**SUPABASE).ledger_target == "supabase"  # type: ignore[arg-type]
    assert Settings(**SUPABASE, database_url=pg_dsn).ledger_target == "postgres"  # type: ignore[arg-type]
    # Supabase Storage for videos, the ledger elsewhere.
    embedded = Settings(**SUPABASE, ledger_backend="embedded")  # type: ignore[arg-type]
    assert embedded.ledger_target == "embedded"
    direct = Settings(**SUPABASE, ledger_backend="postgres", database_url=pg_dsn)  # type: ignore[arg-type]
    ledger = open_ledger(direct)
    assert isinstance(ledger.transport, PsycopgTransport)
    ledger.close()
    ledger = open_ledger(Settings(**SUPABASE, ledger_backend="supabase"))  # type: ignore[arg-type]
    assert isinstance(ledger.transport, SupabaseTransport)
    ledger.close()
    with pytest.raises(ValidationError, match="ledger_backend=postgres needs database_url"):
        Settings(ledger_backend="postgres")
    with pytest.raises(ValidationError, match="ledger_backend=supabase needs supabase_url"):
        Settings(ledger_backend="supabase")
