"""A PostgREST-shaped HTTP server for tests: RPC over the real SQL functions on real PostgreSQL.

No PostgREST binary can be installed here (FIELD_NOTES), so this stands in for Supabase's Data API
with the behaviour PostgREST documents, which is all the ledger's Supabase transport may rely on:

* ``POST /rest/v1/rpc/<fn>`` with ``Content-Profile: <schema>`` (406 ``PGRST106`` when the schema
  is not exposed; 404 ``PGRST202`` when no such function), the JSON body's keys as named arguments;
* one transaction per request, as the impersonated role (``service_role``), with the role's
  settings (Supabase: ``statement_timeout``/``lock_timeout`` 8 s) and then the function's own
  ``statement_timeout`` hoisted into the transaction (PostgREST 12.2 "hoisted function settings");
* errors as JSON ``{code, message, details, hint}`` with the HTTP status PostgREST derives from
  the SQLSTATE (docs "Errors", table "HTTP Status Codes");
* what a gateway in front of it answers (``faults``): a 502 page, a 503 JSON without ``code``, a
  connection dropped after the transaction committed (the answer is lost).

Each request runs in a thread of the server (``ThreadingHTTPServer`` on 127.0.0.1).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

# Kong answers a bad key with JSON that has no "code"; PostgREST never does.
INVALID_KEY_BODY = {"message": "Invalid API key"}

#: Faults a test can queue for the next call of a function.
DROP_AFTER_COMMIT = "drop_after_commit"  # commit, then close the socket with no answer
GATEWAY_502_HTML = "gateway_502_html"  # a proxy's HTML error page; nothing ran
GATEWAY_503_JSON = "gateway_503_json"  # a gateway's JSON without a code; nothing ran
GATEWAY_504_AFTER_COMMIT = "gateway_504_after_commit"  # the gateway gave up; the call committed


def postgrest_status(sqlstate: str) -> int:
    """HTTP status for a SQLSTATE, per PostgREST's documented table (v12-v14)."""
    exact = {
        "23503": 409,
        "23505": 409,
        "25006": 405,
        "53400": 500,
        "P0001": 400,
        "42883": 404,
        "42P01": 404,
        "42P17": 500,
        "42501": 403,  # 401 for the anonymous role; these requests carry the service-role JWT
    }
    if sqlstate in exact:
        return exact[sqlstate]
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])
    by_class = {
        "08": 503,
        "09": 500,
        "0L": 403,
        "0P": 403,
        "25": 500,
        "28": 403,
        "2D": 500,
        "38": 500,
        "39": 500,
        "3B": 500,
        "40": 500,
        "53": 503,
        "54": 500,
        "55": 500,
        "57": 500,
        "58": 500,
        "F0": 500,
        "HV": 500,
        "P0": 500,
        "XX": 500,
    }
    return by_class.get(sqlstate[:2], 400)


def _param(value: Any) -> Any:
    # Untyped text, so Postgres casts each value to the declared parameter type, as PostgREST's
    # json-to-arguments conversion does.
    if value is None:
        return None
    if isinstance(value, dict | list):
        return Jsonb(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if not isinstance(value, float) else repr(value)


class PostgrestDouble:
    """Answers ``/rest/v1/rpc/<fn>`` as PostgREST over ``dsn``.

    Args:
        dsn: The database (embedded PostgreSQL).
        schemas: The exposed schemas (``db-schemas``).
        key: The only API key accepted.
        role: The impersonated role.
        role_settings: Settings applied per transaction before the function's own (Supabase's API
            roles: ``statement_timeout`` and ``lock_timeout`` 8 s).
    """

    def __init__(
        self,
        dsn: str,
        schemas: list[str],
        *,
        key: str,
        role: str = "service_role",
        role_settings: dict[str, str] | None = None,
    ) -> None:
        self.dsn = dsn
        self.schemas = list(schemas)
        self.key = key
        self.role = role
        self.role_settings = role_settings or {"statement_timeout": "8s", "lock_timeout": "8s"}
        self.faults: dict[str, list[str]] = {}
        self.committed: list[str] = []  # functions whose transaction committed, in order
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def fault(self, fn: str, kind: str) -> None:
        """Make the next call of ``fn`` fail as ``kind`` (one of the module's fault names)."""
        with self._lock:
            self.faults.setdefault(fn, []).append(kind)

    def _next_fault(self, fn: str) -> str | None:
        with self._lock:
            queue = self.faults.get(fn)
            return queue.pop(0) if queue else None

    @contextmanager
    def running(self) -> Iterator[PostgrestDouble]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()

    # -- one request ------------------------------------------------------------------------

    def answer(self, fn: str, headers: dict[str, str], body: bytes) -> tuple[int, Any, str]:
        """(status, body, content type); raises ``ConnectionAbortedError`` to drop the socket."""
        if headers.get("apikey") != self.key:
            return 401, INVALID_KEY_BODY, "application/json"
        fault = self._next_fault(fn)
        if fault == GATEWAY_502_HTML:
            return 502, "<html><body>502 Bad Gateway</body></html>", "text/html"
        if fault == GATEWAY_503_JSON:
            return 503, {"message": "upstream unavailable"}, "application/json"
        schema = headers.get("content-profile", self.schemas[0])
        if schema not in self.schemas:
            return 406, _error("PGRST106", "Invalid schema: " + schema), "application/json"
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            return 400, _error("PGRST102", "Empty or invalid json"), "application/json"
        with psycopg.connect(self.dsn) as conn:
            found = conn.execute(
                "SELECT p.proconfig FROM pg_proc p WHERE p.pronamespace = %s::regnamespace"
                " AND p.proname = %s",
                (schema, fn),
            ).fetchall()
            if not found:
                message = f"Could not find the function {schema}.{fn} in the schema cache"
                return 404, _error("PGRST202", message), "application/json"
            try:
                result = self._run(conn, schema, fn, params, found[0][0] or [])
            except psycopg.Error as exc:
                conn.rollback()
                code = exc.sqlstate or "XX000"
                diag = exc.diag
                return (
                    postgrest_status(code),
                    _error(code, diag.message_primary or str(exc), diag.message_detail),
                    "application/json",
                )
            conn.commit()
        with self._lock:
            self.committed.append(fn)
        if fault == DROP_AFTER_COMMIT:
            raise ConnectionAbortedError(fn)
        if fault == GATEWAY_504_AFTER_COMMIT:
            return 504, "<html>504 Gateway Time-out</html>", "text/html"
        return 200, result, "application/json"

    def _run(
        self,
        conn: psycopg.Connection[Any],
        schema: str,
        fn: str,
        params: dict[str, Any],
        proconfig: list[str],
    ) -> Any:
        conn.execute("SELECT set_config('role', %s, true)", (self.role,))
        for name, value in self.role_settings.items():
            conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        for item in proconfig:  # hoisted function settings (PostgREST 12.2's default list)
            name, _, value = item.partition("=")
            if name == "statement_timeout":
                conn.execute("SELECT set_config(%s, %s, true)", (name, value))
        args = sql.SQL(", ").join(
            sql.SQL("{} => {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in params
        )
        query = sql.SQL("SELECT {}.{}({})").format(sql.Identifier(schema), sql.Identifier(fn), args)
        row = conn.execute(query, {k: _param(v) for k, v in params.items()}).fetchone()
        return None if row is None else row[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                prefix = "/rest/v1/rpc/"
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                if not self.path.startswith(prefix):
                    self._send(404, _error("PGRST125", "Invalid path"), "application/json")
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                try:
                    status, payload, ctype = double.answer(
                        self.path[len(prefix) :].split("?")[0], headers, body
                    )
                except ConnectionAbortedError:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(status, payload, ctype)

            def _send(self, status: int, payload: Any, ctype: str) -> None:
                data = (
                    payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
                )
                self.send_response(status)
                self.send_header("Content-Type", f"{ctype}; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def _error(code: str, message: str, details: str | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details, "hint": None}
