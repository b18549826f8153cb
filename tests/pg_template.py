"""A migrated template database, copied per test: a test's ledger schema costs a
``CREATE DATABASE ... TEMPLATE`` (~0.06 s on the embedded server) instead of every migration
(~0.45 s).

The template is migrated once per session (per xdist worker: each has its own server) under
:data:`LEDGER_SCHEMA`. The migrations name their schema in function bodies, so a copy keeps that
name: isolation comes from the database, one per test, dropped at teardown whatever the outcome.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from boundary_inference.ledger import apply_migrations

LEDGER_SCHEMA = "bi_test"  # the ledger's schema in every copy
_TEMPLATE_LOCK_KEY = 0x62692D746D706C  # "bi-tmpl"; released when its connection closes


def database_dsn(dsn: str, database: str) -> str:
    """``dsn`` naming ``database`` instead; a URL stays a URL (settings and the CLI read it)."""
    if "://" in dsn:
        return urlunsplit(urlsplit(dsn)._replace(path="/" + database))
    return make_conninfo(dsn, dbname=database)


class LedgerTemplate:
    """The session's template database on the server ``server_dsn`` names."""

    def __init__(self, server_dsn: str) -> None:
        self.server_dsn = server_dsn
        self.name = f"bi_tmpl_{uuid.uuid4().hex[:10]}"

    def _admin(self, statement: sql.Composed) -> None:
        # On the server's own database: never on the template (a copy needs it unconnected) nor
        # on the database being dropped.
        with psycopg.connect(self.server_dsn, autocommit=True) as conn:
            conn.execute(statement)

    def create(self) -> None:
        """Create and migrate the template, then close it to connections: no test, flow or
        leftover process can hold one open while a copy is made."""
        name = sql.Identifier(self.name)
        self._admin(sql.SQL("CREATE DATABASE {}").format(name))
        try:
            # Roles are the server's, not a database's: on a shared server
            # (BOUNDARY_INFERENCE_TEST_DATABASE_URL) xdist workers migrating their templates at
            # once would race to create them; apply_migrations' own lock is per database.
            with psycopg.connect(self.server_dsn, autocommit=True) as lock:
                lock.execute("SELECT pg_advisory_lock(%s)", (_TEMPLATE_LOCK_KEY,))
                apply_migrations(database_dsn(self.server_dsn, self.name), LEDGER_SCHEMA)
        except BaseException:
            self.drop()
            raise
        self._admin(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(name)
        )

    def drop(self) -> None:
        name = sql.Identifier(self.name)
        self._admin(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(name))
        self._admin(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))

    @contextmanager
    def copy(self) -> Iterator[str]:
        """A fresh database copied from the template: its DSN. Dropped on exit (``FORCE``: a
        flow's, a worker's or a killed child's connections with it)."""
        copy = f"bi_db_{uuid.uuid4().hex[:12]}"
        self._admin(
            sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY WAL_LOG").format(
                sql.Identifier(copy), sql.Identifier(self.name)
            )
        )
        try:
            yield database_dsn(self.server_dsn, copy)
        finally:
            self._admin(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(copy))
            )


@contextmanager
def ledger_template(server_dsn: str) -> Iterator[LedgerTemplate]:
    template = LedgerTemplate(server_dsn)
    template.create()
    try:
        yield template
    finally:
        template.drop()
