"""Direct PostgreSQL transport (psycopg 3): local/embedded Postgres, or Supabase's pooler/direct.

Private module. One autocommit connection per thread (``threading.local``): each call is one
statement, so each SQL function runs in its own transaction and its advisory/row locks are released
when it returns. A broken connection is dropped and reopened on the next call; the failed call is
*not* retried here (its effect is unknown, the caller decides), it raises
:class:`~boundary_inference.ledger.errors.LedgerUnavailable`.
"""

from __future__ import annotations

import math
import re
import threading
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from boundary_inference.ledger.errors import LedgerError, LedgerUnavailable, error_for_code
from boundary_inference.ledger.transport import reject_non_finite

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _identifier(value: str, what: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{what} {value!r} is not a lower-case SQL identifier")
    return value


class PsycopgTransport:
    """Call ledger functions over a psycopg connection per thread.

    Args:
        dsn: libpq connection string or URI.
        schema: Schema holding the migrated ledger.
        timeout_s: Connect timeout and server-side ``statement_timeout``: a call that waits longer
            (for a lock, a slow server) fails with ``LedgerUnavailable`` instead of hanging a guard.
        prepare_threshold: psycopg's; ``None`` (default) never prepares, which Supabase's
            transaction pooler (port 6543) requires.
        role: ``SET ROLE`` to this role after connecting (e.g. ``service_role``: call the ledger
            with exactly the privileges a Supabase service-role request has).

    Example:
        >>> t = PsycopgTransport("postgresql:///postgres", "boundary_inference", timeout_s=5)
        >>> t.call("queue_depth", {})  # doctest: +SKIP
        {'queued': 0, 'running': 0, 'total': 0}
    """

    def __init__(
        self,
        dsn: str,
        schema: str,
        *,
        timeout_s: float = 5.0,
        prepare_threshold: int | None = None,
        role: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.schema = _identifier(schema, "schema")
        self.timeout_s = float(timeout_s)
        self.prepare_threshold = prepare_threshold
        self.role = None if role is None else _identifier(role, "role")
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[psycopg.Connection[Any]] = []
        self._queries: dict[tuple[str, tuple[str, ...]], sql.Composed] = {}

    def __repr__(self) -> str:
        # Never show the DSN: it may hold a password.
        return f"PsycopgTransport(schema={self.schema!r}, timeout_s={self.timeout_s})"

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> psycopg.Connection[Any]:
        # libpq wants whole seconds and treats 1 as 2; statement_timeout carries the precision.
        connect_timeout = max(2, math.ceil(self.timeout_s))
        statement_timeout_ms = max(1, int(self.timeout_s * 1000))
        conn: psycopg.Connection[Any] | None = None
        try:
            conn = psycopg.connect(
                self.dsn,
                autocommit=True,
                connect_timeout=connect_timeout,
                prepare_threshold=self.prepare_threshold,
                application_name="boundary_inference.ledger",
            )
            conn.execute(
                sql.SQL("SET statement_timeout = {}").format(sql.Literal(statement_timeout_ms))
            )
            if self.role is not None:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
        except psycopg.Error as exc:
            if conn is not None:
                conn.close()
            raise LedgerUnavailable(
                f"cannot connect to the ledger database: {exc}",
                code=_sqlstate(exc) or "unavailable",
            ) from exc
        with self._lock:
            self._connections.append(conn)
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed or conn.broken:
            if conn is not None:
                self._discard(conn)
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        try:
            conn.close()
        except psycopg.Error:  # pragma: no cover - closing a dead socket
            pass
        with self._lock:
            if conn in self._connections:
                self._connections.remove(conn)
        if getattr(self._local, "conn", None) is conn:
            self._local.conn = None

    def close_thread_connection(self) -> None:
        """Close the calling thread's connection, if any: a helper thread that ends (the flow's
        lease keeper) must not leave one open per flow run in a long-lived worker."""
        conn: psycopg.Connection[Any] | None = getattr(self._local, "conn", None)
        if conn is not None:
            self._discard(conn)

    def close(self) -> None:
        """Close every connection this transport opened (all threads)."""
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            try:
                conn.close()
            except psycopg.Error:  # pragma: no cover
                pass
        self._local = threading.local()

    # -- calls --------------------------------------------------------------------------------

    def _query(self, fn: str, names: tuple[str, ...]) -> sql.Composed:
        key = (fn, names)
        query = self._queries.get(key)
        if query is None:
            args = sql.SQL(", ").join(
                sql.SQL("{} => {}").format(sql.Identifier(name), sql.Placeholder(name))
                for name in names
            )
            query = sql.SQL("SELECT {}.{}({})").format(
                sql.Identifier(self.schema), sql.Identifier(fn), args
            )
            self._queries[key] = query
        return query

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        """Run ``schema.fn(p_a => %(p_a)s, ...)``; return its jsonb result as Python."""
        _identifier(fn, "function")
        for name in params:
            _identifier(name, "parameter")
        reject_non_finite(fn, params)
        names = tuple(sorted(params))
        values = {name: _adapt(params[name]) for name in names}
        conn = self._connection()
        try:
            row = conn.execute(self._query(fn, names), values).fetchone()
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                self._discard(conn)
            raise _wrap(exc) from exc
        return None if row is None else row[0]


def _adapt(value: Any) -> Any:
    """JSON value -> query parameter. Scalars go as untyped text, as PostgREST's JSON does, so
    Postgres casts them to each parameter's declared type (a float to numeric, a string to uuid or
    timestamptz) and overload resolution never trips on int8-vs-int4 or float8-vs-numeric."""
    if value is None:
        return None
    if isinstance(value, dict | list):
        return Jsonb(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise LedgerError(f"not a finite number: {value!r}", code="BI400")
        return repr(value)
    return str(value)


def _sqlstate(exc: BaseException) -> str | None:
    return getattr(exc, "sqlstate", None)


def _wrap(exc: psycopg.Error) -> LedgerError:
    code = _sqlstate(exc)
    diag = getattr(exc, "diag", None)
    message = (diag.message_primary if diag is not None else None) or str(exc).strip()
    # No SQLSTATE: the driver lost the server mid-call (socket closed...): the outcome is unknown,
    # which error_for_code says with maybe_committed.
    return error_for_code(code, message)
