"""Apply ``migrations/*.sql`` to a schema: idempotent, checksummed, safe to run concurrently.

Private module; use :func:`boundary_inference.ledger.apply_migrations`.

* The files name the schema ``boundary_inference``; another schema is obtained by replacing that
  identifier token only (:func:`migrations.substitute_schema`).
* ``<schema>.schema_migrations`` records each applied file's name and the SHA-256 of its text as
  written (before substitution). An applied file whose text has changed is refused: write a new
  migration instead of editing an old one.
* A session advisory lock (one key for all schemas: role creation and grants touch shared
  catalogs) serializes concurrent migrators; each file runs in one transaction with its record.
* The Supabase CLI (`supabase db push`, reading ``supabase/migrations``, a link to these files)
  keeps its own record, ``supabase_migrations.schema_migrations`` (version = the file's 14-digit
  prefix). On the source schema, where both apply the same text, the two records are kept in step:
  a file the CLI applied is recorded here without running it again, and a file applied here is
  recorded there when that table exists, so neither tool re-runs what the other applied.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from boundary_inference.ledger.errors import LedgerUnavailable, MigrationError
from migrations import (
    SOURCE_SCHEMA,
    migration_files,
    reserved_schema_problem,
    substitute_schema,
)

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# Arbitrary constant: "bi-migrate" as an int8 advisory lock key.
_MIGRATE_LOCK_KEY = 0x62692D6D6967
_LOCK_TIMEOUT_S = 120


def checksum(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def apply_migrations(
    dsn: str,
    schema: str = "boundary_inference",
    *,
    directory: Path | None = None,
    connect_timeout_s: int = 10,
) -> list[str]:
    """Apply pending migrations to ``schema``; return the names applied now (oldest first).

    Raises:
        ValueError: ``schema`` is not a lower-case identifier, or is ``public`` (or another schema
            PostgreSQL or Supabase owns).
        MigrationError: an applied file changed, or a migration failed (rolled back).
        LedgerUnavailable: the database cannot be reached.
    """
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"schema {schema!r} is not a lower-case SQL identifier")
    problem = reserved_schema_problem(schema)
    if problem:
        raise ValueError(problem)
    files = migration_files(directory)
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=connect_timeout_s)
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(
            f"cannot connect to run migrations: {exc}", code="unavailable"
        ) from exc
    applied_now: list[str] = []
    with conn:
        conn.execute(sql.SQL("SET lock_timeout = {}").format(sql.Literal(_LOCK_TIMEOUT_S * 1000)))
        conn.execute("SELECT pg_advisory_lock(%s)", (_MIGRATE_LOCK_KEY,))
        try:
            _ensure_table(conn, schema)
            table = sql.Identifier(schema, "schema_migrations")
            applied: dict[str, str] = dict(
                conn.execute(sql.SQL("SELECT name, checksum FROM {}").format(table)).fetchall()
            )
            # Another schema gets rewritten text, which the CLI never applies: no shared record.
            pushed = _supabase_versions(conn) if schema == SOURCE_SCHEMA else None
            for path in files:
                text = path.read_text(encoding="utf-8")
                digest = checksum(text)
                if path.name in applied:
                    if applied[path.name] != digest:
                        raise MigrationError(
                            f"migration {path.name} was applied to schema {schema!r} with checksum"
                            f" {applied[path.name][:12]}…, but the file now has {digest[:12]}…."
                            " Applied migrations must not be edited: revert the file and add a"
                            " new migration.",
                            code="checksum_mismatch",
                        )
                    continue
                record = sql.SQL("INSERT INTO {} (name, checksum) VALUES (%s, %s)").format(table)
                if pushed is not None and _version(path.name) in pushed:
                    conn.execute(record, (path.name, digest))  # applied by `supabase db push`
                    continue
                try:
                    with conn.transaction():
                        conn.execute(substitute_schema(text, schema).encode("utf-8"))
                        conn.execute(record, (path.name, digest))
                        if pushed is not None:
                            _record_for_supabase(conn, path.name, text)
                except psycopg.Error as exc:
                    raise MigrationError(
                        f"migration {path.name} failed on schema {schema!r} (rolled back): {exc}",
                        code=getattr(exc, "sqlstate", None) or "migration_failed",
                    ) from exc
                applied_now.append(path.name)
        finally:
            if not conn.closed and not conn.broken:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_MIGRATE_LOCK_KEY,))
    return applied_now


def _version(name: str) -> str:
    return name.split("_", 1)[0]


def _supabase_versions(conn: psycopg.Connection[object]) -> set[str] | None:
    """Versions the Supabase CLI recorded as applied, or None where it never ran."""
    with conn.cursor(row_factory=tuple_row) as cur:
        found = cur.execute(
            "SELECT to_regclass('supabase_migrations.schema_migrations') IS NOT NULL"
        ).fetchone()
        if not found or not found[0]:
            return None
        rows = cur.execute("SELECT version FROM supabase_migrations.schema_migrations").fetchall()
    return {str(row[0]) for row in rows}


def _record_for_supabase(conn: psycopg.Connection[object], name: str, text: str) -> None:
    # The CLI's own columns (supabase 2.x: version, statements, name); it compares versions only.
    conn.execute(
        "INSERT INTO supabase_migrations.schema_migrations (version, statements, name)"
        " VALUES (%s, ARRAY[%s], %s) ON CONFLICT (version) DO NOTHING",
        (_version(name), text, name.removesuffix(".sql").split("_", 1)[1]),
    )


def _ensure_table(conn: psycopg.Connection[object], schema: str) -> None:
    with conn.transaction():
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " name text PRIMARY KEY,"
                " checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema, "schema_migrations"))
        )
        conn.execute(
            sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(
                sql.Identifier(schema, "schema_migrations")
            )
        )


def applied_migrations(dsn: str, schema: str) -> list[dict[str, object]]:
    """Rows of ``schema.schema_migrations`` (name, checksum, applied_at), oldest first."""
    if not _IDENTIFIER.fullmatch(schema):
        raise ValueError(f"schema {schema!r} is not a lower-case SQL identifier")
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(
            sql.SQL("SELECT name, checksum, applied_at FROM {} ORDER BY name").format(
                sql.Identifier(schema, "schema_migrations")
            )
        )
        cols = [c.name for c in cur.description or []]
        return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
