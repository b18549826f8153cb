"""Ledger errors: one family, so a caller decides fail-open/fail-closed in exactly one place.

Every transport wraps every server, driver and network error into :class:`LedgerError` or one of
its subclasses; nothing else escapes a :class:`~boundary_inference.ledger.Ledger` call.

SQLSTATE codes raised by the ledger's SQL functions (see ``migrations/``):

* ``BI400`` bad argument (:class:`LedgerError`)
* ``BI403`` a video id used with another tenant (:class:`LedgerError`)
* ``BI404`` unknown run or video (:class:`RunNotFound`)
* ``BI409`` illegal state transition (:class:`IllegalTransition`)
"""

from __future__ import annotations

from boundary_inference.errors import OperatorError, StoreUnavailable


class LedgerError(StoreUnavailable):
    """The ledger refused or failed a call: to a safeguard, its store failed (fails closed).

    Attributes:
        code: SQLSTATE (``BI409``...), PostgREST code (``PGRST202``...) or a transport tag
            (``unavailable``, ``timeout``).
        message: Human-readable reason from the server or the transport.
        maybe_committed: The answer was lost (timeout, connection lost, a gateway's 5xx): the
            call may have committed on the server. False whenever the database answered with an
            error (its transaction was rolled back).
    """

    def __init__(
        self, message: str, *, code: str | None = None, maybe_committed: bool = False
    ) -> None:
        super().__init__(f"[{code}] {message}" if code else message)
        self.code = code
        self.message = message
        self.maybe_committed = maybe_committed


class LedgerUnavailable(LedgerError):
    """The ledger could not do the call now (unreachable, too slow, busy): fail closed.

    ``maybe_committed`` tells the two cases apart: the server gave up and rolled back (a statement
    or lock timeout, a deadlock: nothing was committed), or the answer was lost (it may have
    committed: undo by an idempotent call, e.g. release the reservation by run id).
    """


class IllegalTransition(LedgerError):
    """A run state change that the state machine forbids (SQLSTATE ``BI409``)."""


class RunNotFound(LedgerError):
    """The run (or the video a claim names) does not exist (SQLSTATE ``BI404``)."""


class MigrationError(LedgerError, OperatorError):
    """A migration cannot be applied (e.g. an applied file was edited afterwards)."""


# --- the one error table, shared by both transports -----------------------------------------
#
# A SQLSTATE (psycopg's ``sqlstate``; through PostgREST the JSON body's ``code``, which postgrest-py
# puts in ``APIError.code``) decides the class. A database error always means the transaction was
# rolled back: nothing was committed. Only when no SQLSTATE came back (a timeout, a lost connection,
# a gateway's page) is the outcome unknown: ``maybe_committed``.

#: SQLSTATE classes (first two characters) and codes: "the server could not do the work now"
#: (connection, serialization/deadlock, resources, lock timeout, statement timeout/cancel, system).
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_UNAVAILABLE_CODES = frozenset({"55P03"})  # lock_not_available: lock_timeout (Supabase's API roles)
#: PostgREST's own codes for "cannot reach / connect to / get a pooled connection to Postgres"
#: (PGRST000-003, answered 503/504). PGRST001 is an unexpected client error: maybe mid-call.
_UNAVAILABLE_PGRST = frozenset({"PGRST000", "PGRST001", "PGRST002", "PGRST003"})
_MAYBE_COMMITTED_PGRST = frozenset({"PGRST001"})


def error_for_code(
    code: str | None, message: str, *, http_status: int | None = None
) -> LedgerError:
    """The :class:`LedgerError` for a SQLSTATE or PostgREST code, else for an HTTP status.

    Args:
        code: SQLSTATE (``23505``, ``BI409``), PostgREST code (``PGRST202``), or None.
        message: The server's message.
        http_status: The HTTP status, when the call went through PostgREST. Used only when no
            code came back (a gateway or proxy answer): 5xx is unavailable with an unknown outcome,
            4xx is a refusal (a bad key, a missing route).
    """
    if code == "BI409":
        return IllegalTransition(message, code=code)
    if code == "BI404":
        return RunNotFound(message, code=code)
    if code:
        if code in _UNAVAILABLE_PGRST:
            return LedgerUnavailable(
                message, code=code, maybe_committed=code in _MAYBE_COMMITTED_PGRST
            )
        if code[:2] in _UNAVAILABLE_CLASSES or code in _UNAVAILABLE_CODES:
            return LedgerUnavailable(message, code=code)
        # Integrity (23), data (22), privilege (42501), undefined function (42883), BI400/BI403,
        # PostgREST's schema-cache/JWT/request codes: the server said no; retrying will not help.
        return LedgerError(message, code=code)
    if http_status is not None and http_status >= 500:
        # A gateway/proxy answered, not PostgREST: the call may have run and committed.
        return LedgerUnavailable(message, code=str(http_status), maybe_committed=True)
    if http_status is not None:
        return LedgerError(message, code=str(http_status))
    return LedgerUnavailable(message, code="unavailable", maybe_committed=True)
