"""Operator problems end as one line and exit 2, never a traceback; anything else is a bug and
keeps its traceback."""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from rich.console import Console
from typer.core import TyperGroup
from typer.exceptions import TyperException

from boundary_inference.errors import OperatorError, StoreUnavailable


class SubmissionCutShort(OperatorError):
    """The flow run ended on an operator problem (most often Prefect's API lost mid-run): the
    ledger, not Prefect, holds what was decided for the job."""


class OneLineErrors(TyperGroup):
    """Usage, configuration and connection problems end as one line and exit 2, never a
    traceback; anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException):
            # The normal ends of a command (Exit is how every command sets its exit code) and
            # usage errors: never classified, so no store's driver is imported to rule them out.
            raise
        except Exception as error:
            reason = operator_problem(error)
            if reason is None:
                raise
            from rich.markup import escape

            Console(stderr=True, soft_wrap=True).print(
                f"[red]error[/red]: {escape(reason)}", highlight=False
            )
            if prefect_api_lost(error):
                _exit_now(2)
            raise typer.Exit(2) from None


def prefect_api_lost(error: BaseException) -> bool:
    """The error, or one it was raised from, is the Prefect API not answering (a transport
    error, or a 5xx after the client's own retries)."""
    seen: BaseException | None = error
    for _ in range(16):  # a chain, bounded: chains can loop
        if seen is None:
            return False
        if _prefect_problem(seen) is not None:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _exit_now(code: int) -> NoReturn:
    """Exit without Prefect's interpreter-exit drains. An in-process flow engine leaves events
    and logs queued for the API, and at exit Prefect waits for every one of them with no time
    limit, each retrying the dead API for seconds: measured here, 40 of the 59 s between a
    killed server and this process's exit. What we own is written already (the ledger commits
    synchronously); what is dropped is what the dead API could not take anyway."""
    import os
    import sys

    # Not logging.shutdown(): Prefect's API log handler's flush waits on that same dead API.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def operator_problem(error: BaseException) -> str | None:
    """One line for an error the operator can fix (a store or server unreachable, a bad setting),
    None for a bug. Ours by the error tree (boundary_inference.errors); a driver's error that
    reached the CLI without an adapter in between (the Prefect client the CLI calls itself, a
    server probed directly) by its real class, imported only when there is an error to classify."""
    from boundary_inference.ledger import LedgerError
    from boundary_inference.limiter import LimiterUnavailable

    first_line = " ".join(str(error).split())[:400] or type(error).__name__
    if isinstance(error, LedgerError):
        return f"the ledger (PostgreSQL) failed: {first_line}"
    if isinstance(error, LimiterUnavailable):
        return f"Redis failed: {first_line}"
    if isinstance(error, SubmissionCutShort):
        return " ".join(str(error).split())  # its reason is clipped already; keep the hint whole
    if isinstance(error, (OperatorError, StoreUnavailable)):
        return first_line
    return _driver_problem(error, first_line)


def _driver_problem(error: BaseException, first_line: str) -> str | None:
    import psycopg
    import redis

    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        return f"cannot reach PostgreSQL: {first_line}"
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError)):
        return f"cannot reach Redis: {first_line}"
    prefect = _prefect_problem(error)
    if prefect is not None:
        return f"{prefect}: {first_line}"
    if isinstance(error, (ConnectionError, TimeoutError)):
        return f"connection failed: {first_line}"
    return None


def _prefect_problem(error: BaseException) -> str | None:
    """What is wrong with the Prefect API, if this error says it is not answering; else None."""
    import httpx

    if isinstance(error, httpx.TransportError) or " ".join(str(error).split()).startswith(
        "Failed to reach API"
    ):
        return "cannot reach the Prefect API"
    if isinstance(error, httpx.HTTPStatusError) and _server_side(error):
        # A 5xx after the client's own retries: the server's problem, not a bug here. An
        # admitted run's lease lets the reaper settle it.
        return "the Prefect API failed"
    return None


def _server_side(error: BaseException) -> bool:
    response = getattr(error, "response", None)
    return getattr(response, "status_code", 0) >= 500
