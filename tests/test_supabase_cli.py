"""The real Supabase CLI applies the ledger's migrations, and agrees with `migrate` on them.

`supabase db push` reads ``supabase/migrations``, a link to ``migrations/``: the test runs the CLI
that ``./run.sh test`` installs (``npm i -E supabase@2.117.0`` into ``.venv/supabase-cli``) against
a fresh database on the embedded PostgreSQL. The CLI speaks TCP only and pgserver listens on a Unix
socket, so a byte-for-byte TCP relay stands in front of it. Without the CLI the test fails (CI must
never pass it silently).
"""

from __future__ import annotations

import datetime as dt
import re
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
from migrations import MIGRATIONS_DIR, migration_files

ROOT = Path(__file__).resolve().parent.parent
CLI = ROOT / ".venv" / "supabase-cli" / "node_modules" / ".bin" / "supabase"
CLI_VERSION = "2.117.0"
SUPABASE_ROLES = ("anon", "authenticated", "service_role")


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            try:
                end.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _relay(listener: socket.socket, unix_path: str) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # closed at teardown
        upstream = socket.socket(socket.AF_UNIX)
        upstream.connect(unix_path)
        for pair in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pump, args=pair, daemon=True).start()


@pytest.fixture
def tcp_database(pg_dsn: str) -> Iterator[tuple[str, str]]:
    """A fresh database: (its libpq DSN, a TCP URL for the CLI)."""
    params = conninfo_to_dict(pg_dsn)
    name = f"bi_push_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        # A Supabase project has these roles before any migration runs.
        for role in SUPABASE_ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    host, port = str(params.get("host") or ""), str(params.get("port") or "5432")
    listener: socket.socket | None = None
    if host.startswith("/"):
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        threading.Thread(
            target=_relay, args=(listener, f"{host}/.s.PGSQL.{port}"), daemon=True
        ).start()
        host, port = "127.0.0.1", str(listener.getsockname()[1])
    user = params.get("user") or "postgres"
    url = f"postgresql://{user}@{host}:{port}/{name}?sslmode=disable"
    try:
        yield make_conninfo(pg_dsn, dbname=name), url
    finally:
        if listener is not None:
            listener.close()
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _db_push(url: str) -> str:
    if not CLI.exists():
        pytest.fail(
            f"the Supabase CLI is not installed at {CLI}: `./run.sh test` installs it with npm"
            f" (npm i -E supabase@{CLI_VERSION}); install Node.js/npm and rerun"
        )
    done = subprocess.run(
        [str(CLI), "db", "push", "--db-url", url, "--yes", "--workdir", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def test_supabase_db_push_and_migrate_agree(tcp_database: tuple[str, str]) -> None:
    dsn, url = tcp_database
    files = [path.name for path in migration_files()]
    assert (ROOT / "supabase" / "migrations").resolve() == MIGRATIONS_DIR  # a link, not a copy

    pushed = re.findall(r"Applying migration (\S+\.sql)", _db_push(url))
    assert pushed == files

    # `migrate` runs none of them again, and records them as its own.
    assert apply_migrations(dsn) == []
    with psycopg.connect(dsn, autocommit=True) as conn:
        recorded = conn.execute(
            "SELECT name FROM boundary_inference.schema_migrations ORDER BY name"
        ).fetchall()
        assert [row[0] for row in recorded] == files
        # The grants the README promises: nothing executable for the API roles but service_role.
        open_to_api = conn.execute(
            "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'boundary_inference'"
            " AND (has_function_privilege('anon', p.oid, 'EXECUTE')"
            "      OR has_function_privilege('authenticated', p.oid, 'EXECUTE'))"
        ).fetchall()
        assert open_to_api == []

    # The ledger works on what the CLI built.
    ledger = Ledger(PsycopgTransport(dsn, "boundary_inference", timeout_s=5.0))
    try:
        drift = ledger.budget_totals_drift(
            since=dt.date(2026, 1, 1), now=dt.datetime(2026, 1, 15, tzinfo=dt.UTC)
        )
    finally:
        ledger.close()
    assert drift["ok"] and drift["drift_rows"] == 0

    assert "Remote database is up to date" in _db_push(url)


def test_migrate_first_then_db_push_applies_nothing(tcp_database: tuple[str, str]) -> None:
    dsn, url = tcp_database
    with psycopg.connect(dsn, autocommit=True) as conn:
        # What the CLI creates on a project's first push (supabase 2.x).
        conn.execute("CREATE SCHEMA supabase_migrations")
        conn.execute(
            "CREATE TABLE supabase_migrations.schema_migrations"
            " (version text PRIMARY KEY, statements text[], name text)"
        )
    assert apply_migrations(dsn) == [path.name for path in migration_files()]
    assert "Remote database is up to date" in _db_push(url)
