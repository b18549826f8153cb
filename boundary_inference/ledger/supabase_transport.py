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

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


class SupabaseTransport:
    """Call ledger functions as Supabase RPCs with the service-role key.

    Args:
        url: Supabase project URL (``https://<ref>.supabase.co``); ignored when ``client`` is given.
        key: Service-role key (server side only); ignored when ``client`` is given.
        schema: The ledger schema; it must be listed in the project's exposed schemas.
        timeout_s: Whole-request timeout; a slower answer raises ``LedgerUnavailable``.
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
        self._http: httpx.Client | None = None
        self._lock = threading.Lock()
        if client is None:
            if not url or not key:
                raise ValueError("SupabaseTransport needs url and key, or client")
            from supabase import ClientOptions, create_client

            self._http = httpx.Client(timeout=httpx.Timeout(self.timeout_s))
            client = create_client(
                url, key, options=ClientOptions(schema=schema, httpx_client=self._http)
            )
        self.client = client
        self._rest_client: Any | None = None

    def __repr__(self) -> str:
        return f"SupabaseTransport(schema={self.schema!r}, timeout_s={self.timeout_s})"

    def call(self, fn: str, params: dict[str, Any]) -> Any:
        """``POST {url}/rest/v1/rpc/{fn}`` with ``params`` as the JSON body; return the JSON."""
        from postgrest.exceptions import APIError

        if not _IDENTIFIER.fullmatch(fn):
            raise ValueError(f"function {fn!r} is not a lower-case SQL identifier")
        try:
            return self._rest().rpc(fn, params).execute().data
        except APIError as exc:
            message = exc.message or str(exc)
            if exc.details and exc.details not in message:
                message = f"{message} ({exc.details})"
            code = exc.code
            if code is not None and code.isdigit() and int(code) >= 500:
                # Not PostgREST JSON (gateway / proxy page): the server side is down.
                return _raise(LedgerUnavailable(message, code=code), exc)
            return _raise(error_for_code(code, message), exc)
        except httpx.TimeoutException as exc:
            raise LedgerUnavailable(f"ledger RPC {fn} timed out: {exc}", code="timeout") from exc
        except httpx.HTTPError as exc:
            raise LedgerUnavailable(
                f"ledger RPC {fn} failed: {type(exc).__name__}: {exc}", code="unavailable"
            ) from exc
        except ValueError as exc:  # an unparseable body
            raise LedgerError(f"ledger RPC {fn}: bad response: {exc}", code="bad_response") from exc

    def _rest(self) -> Any:
        # schema() pins Accept-Profile/Content-Profile even on a client made for another schema;
        # it builds a new PostgREST client sharing the HTTP session, so do it once.
        rest = self._rest_client
        if rest is None:
            with self._lock:
                if self._rest_client is None:
                    self._rest_client = self.client.schema(self.schema)
                rest = self._rest_client
        return rest

    def close(self) -> None:
        """Close the HTTP client this transport created (a passed-in client is left alone)."""
        with self._lock:
            http, self._http = self._http, None
        if http is not None:
            http.close()


def _raise(error: LedgerError, cause: BaseException) -> Any:
    raise error from cause
