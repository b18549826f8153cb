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
