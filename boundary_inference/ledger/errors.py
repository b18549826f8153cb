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


class LedgerError(Exception):
    """The ledger refused or failed a call.

    Attributes:
        code: SQLSTATE (``BI409``...), PostgREST code (``PGRST202``...) or a transport tag
            (``unavailable``, ``timeout``).
        message: Human-readable reason from the server or the transport.
    """

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(f"[{code}] {message}" if code else message)
        self.code = code
        self.message = message


class LedgerUnavailable(LedgerError):
    """The ledger could not be reached or did not answer in time: its answer is unknown."""


class IllegalTransition(LedgerError):
    """A run state change that the state machine forbids (SQLSTATE ``BI409``)."""


class RunNotFound(LedgerError):
    """The run (or the video a claim names) does not exist (SQLSTATE ``BI404``)."""


class MigrationError(LedgerError):
    """A migration cannot be applied (e.g. an applied file was edited afterwards)."""


# SQLSTATEs that mean "the server could not do the work", not "the server said no".
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "53", "57", "58", "40")


def error_for_code(code: str | None, message: str) -> LedgerError:
    """The :class:`LedgerError` subclass for a SQLSTATE / PostgREST error code."""
    if code == "BI409":
        return IllegalTransition(message, code=code)
    if code == "BI404":
        return RunNotFound(message, code=code)
    if code and (
        code.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
        # PostgREST: PGRST000-003 = cannot reach / connect to / get a connection from Postgres.
        or code in {"PGRST000", "PGRST001", "PGRST002", "PGRST003"}
    ):
        return LedgerUnavailable(message, code=code)
    return LedgerError(message, code=code)
