"""Supabase transport: the same SQL functions through PostgREST (``POST /rest/v1/rpc/<fn>``).

Private module. Uses supabase-py with our own ``httpx.Client`` (an ``httpx.Timeout`` from
``timeout_s``): passing ``postgrest_client_timeout`` as a float is truncated by ``int()`` in
supabase-py, and leaving out ``httpx_client`` raises a DeprecationWarning on first use.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx

from boundary_inference.ledger.errors import LedgerError, LedgerUnavailable, error_for_code
from boundary_inference.ledger.time_bounds import (
    GUARD_STATEMENT_TIMEOUT_S,
    LONG_FUNCTIONS,
    LONG_STATEMENT_TIMEOUT_S,
    RESPONSE_MARGIN_S,
)
from boundary_inference.ledger.transport import reject_non_finite

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class SupabaseTransport:
    """Call ledger functions as Supabase RPCs with the service-role key.

    Args:
        url: Supabase project URL (``https://<ref>.supabase.co``); ignored when ``client`` is given.
        key: Service-role key (server side only); ignored when ``client`` is given.
        schema: The ledger schema; it must be listed in the project's exposed schemas.
        timeout_s: Whole-request timeout; a slower answer raises ``LedgerUnavailable``. Never
            below the function's server-side ``statement_timeout`` plus a margin
            (:mod:`~boundary_inference.ledger.time_bounds`): PostgREST cannot cancel a call the
            client gave up on, so the client waits until the server has stopped.
        client: An existing ``supabase.Client`` to use instead (its own schema option is
            overridden per call by ``schema``).

    Example:
        >>> t = SupabaseTransport(url="https://x.supabase.co", key="...", schema="boundary_inference")
        >>> t.call("queue_depth", {})  # doctest: +SKIP
    """

    def __init__(
        self,
        url: str | None = None,
        key: str | None = None,
        schema: str = "boundary_inference",
        *,
        timeout_s: float = 5.0,
        client: Any | None = None,
    ) -> None:
        if not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"schema {schema!r} is not a lower-case SQL identifier")
        self.schema = schema
        self.timeout_s = float(timeout_s)
        self._lock = threading.Lock()
        # Two HTTP clients: guards wait for the guard bound, scans for the long one. A passed-in
        # client keeps its own timeout (then it is the caller's to keep above the server's bound).
        self._https: list[httpx.Client] = []
        self.clients: dict[bool, Any] = {}
        for long in (False, True):
            if client is not None:
                self.clients[long] = client
                continue
            if not url or not key:
                raise ValueError("SupabaseTransport needs url and key, or client")
            from supabase import ClientOptions, create_client

            http = httpx.Client(timeout=httpx.Timeout(self.http_timeout_s(long=long)))
            self._https.append(http)
            self.clients[long] = create_client(
                url, key, options=ClientOptions(schema=schema, httpx_client=http)
            )
        self.client = self.clients[False]
        self._rest_clients: dict[bool, Any] = {}
        # postgrest-py's APIError keeps the body's code but not the HTTP status; a gateway's JSON
        # without a code is told apart (5xx: maybe committed, 4xx: refused) by the status alone.
        self._status = threading.local()

    def http_timeout_s(self, *, long: bool) -> float:
        """The client's wait: ``timeout_s``, but never before the server has stopped."""
        bound = LONG_STATEMENT_TIMEOUT_S if long else GUARD_STATEMENT_TIMEOUT_S
        return max(self.timeout_s, bound + RESPONSE_MARGIN_S)

    def __repr__(self) -> str:
        return f"SupabaseTransport(schema={self.schema!r}, timeout_s={self.timeout_s})"

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        """``POST {url}/rest/v1/rpc/{fn}`` with ``params`` as the JSON body; return the JSON."""
        from postgrest.exceptions import APIError

        if not _IDENTIFIER.fullmatch(fn):
            raise ValueError(f"function {fn!r} is not a lower-case SQL identifier")
        reject_non_finite(fn, params)
        long = fn in LONG_FUNCTIONS
        self._status.code = None
        try:
            return self._rest(long).rpc(fn, params).execute().data
        except APIError as exc:
            message = exc.message or str(exc)
            if exc.details and str(exc.details) not in message:
                message = f"{message} ({str(exc.details)[:200]})"
            code: str | None = exc.code
            status: int | None = self._status.code
            if code is not None and code.isdigit() and len(code) == 3:
                # Not PostgREST's JSON: postgrest-py put the HTTP status there.
                status = int(code)
                code = None
            raise error_for_code(code, message, http_status=status) from exc
        except httpx.TimeoutException as exc:
            # The server stops by its statement_timeout before this fires, but the answer
            # (commit or rollback) is lost: the outcome is unknown.
            raise LedgerUnavailable(
                f"ledger RPC {fn} timed out after {self.http_timeout_s(long=long):g} s: {exc}",
                code="timeout",
                maybe_committed=True,
            ) from exc
        except httpx.HTTPError as exc:
            raise LedgerUnavailable(
                f"ledger RPC {fn} failed: {type(exc).__name__}: {exc}",
                code="unavailable",
                maybe_committed=not isinstance(exc, httpx.ConnectError),
            ) from exc
        except ValueError as exc:  # an unparseable body
            raise LedgerError(f"ledger RPC {fn}: bad response: {exc}", code="bad_response") from exc

    def _record_status(self, response: httpx.Response) -> None:
        self._status.code = response.status_code

    def _rest(self, long: bool) -> Any:
        # schema() pins Accept-Profile/Content-Profile even on a client made for another schema;
        # it builds a new PostgREST client sharing the HTTP session, so do it once per client.
        rest = self._rest_clients.get(long)
        if rest is None:
            with self._lock:
                rest = self._rest_clients.get(long)
                if rest is None:
                    rest = self.clients[long].schema(self.schema)
                    hooks = rest.session.event_hooks.setdefault("response", [])
                    if self._record_status not in hooks:
                        hooks.append(self._record_status)
                    self._rest_clients[long] = rest
        return rest

    def close(self) -> None:
        """Close the HTTP clients this transport created (a passed-in client is left alone)."""
        with self._lock:
            https, self._https = self._https, []
        for http in https:
            http.close()
