"""SQL migrations for the ledger, in Supabase CLI naming (``<14-digit UTC timestamp>_<name>.sql``).

The files name the schema literally ``boundary_inference``. They can be applied unchanged with
``supabase db push`` (which creates that schema), or with
:func:`boundary_inference.ledger.apply_migrations`, which applies them to any configured schema by
replacing the identifier token ``boundary_inference`` (and only that token: ``boundary_inference_runs``
or the NOTIFY channel ``'boundary_inference_rejections'`` are left alone). See
:func:`substitute_schema`.
"""

from __future__ import annotations

import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent
SOURCE_SCHEMA = "boundary_inference"

#: Schemas the ledger must never be migrated into. The migrations REVOKE on their whole schema
#: (``ALTER DEFAULT PRIVILEGES``, ``REVOKE ALL ON ALL ... FROM anon, authenticated``): in ``public``
#: that strips a Supabase project's own Data API grants; the others belong to PostgreSQL or Supabase.
RESERVED_SCHEMAS = frozenset(
    {
        "public",
        "auth",
        "storage",
        "extensions",
        "graphql",
        "graphql_public",
        "realtime",
        "supabase_functions",
        "supabase_migrations",
        "vault",
        "pgsodium",
        "net",
        "cron",
        "information_schema",
        "pg_catalog",
    }
)


def reserved_schema_problem(schema: str) -> str | None:
    """Why ``schema`` cannot hold the ledger, or None."""
    if schema in RESERVED_SCHEMAS or schema.startswith("pg_"):
        return (
            f"schema {schema!r} is not the ledger's own: the migrations revoke privileges on their"
            " whole schema, which would strip the grants others rely on there (in public: the"
            " project's Data API grants); use a schema of its own (default boundary_inference)"
        )
    return None


_NAME = re.compile(r"^\d{14}_[a-z0-9_]+\.sql$")
_TOKEN = re.compile(r"(?<![A-Za-z0-9_$])boundary_inference(?![A-Za-z0-9_$])")


def migration_files(directory: Path | None = None) -> list[Path]:
    """The migration files in apply order (their timestamps sort lexically)."""
    root = MIGRATIONS_DIR if directory is None else Path(directory)
    return sorted(p for p in root.glob("*.sql") if _NAME.match(p.name))


def substitute_schema(sql: str, schema: str) -> str:
    """Replace the identifier token ``boundary_inference`` by ``schema`` (a validated identifier)."""
    if schema == SOURCE_SCHEMA:
        return sql
    return _TOKEN.sub(schema, sql)
