"""The suite's Prefect API on PostgreSQL, as the embedded server is (``embedded_prefect``).

``prefect.testing.utilities.prefect_test_harness`` hard-codes SQLite; under the suite's concurrent
CLI processes that database answered "database is locked" (the class behind most CI flakes). This
is the same harness (a temporary ASGI server in a subprocess, this process's settings pointed at
it) with the database URL of Prefect's own embedded PostgreSQL instead.
"""

from __future__ import annotations

import inspect
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from boundary_inference.local.prefect_server import start_prefect_database, stop_prefect_database


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def prefect_harness_on_postgres(directory: Path, *, startup_timeout_s: int = 120) -> Iterator[str]:
    """A Prefect API whose database lives under ``directory/pg``; yields the API URL.

    The PostgreSQL is stopped on exit; ``directory`` stays for the caller to remove.
    """
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.server.database.dependencies import temporary_database_interface
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_DATABASE_CONNECTION_URL,
        temporary_settings,
    )
    from prefect.utilities.asyncutils import run_coro_as_sync

    database_url = start_prefect_database(directory)
    try:
        with ExitStack() as stack:
            stack.enter_context(temporary_database_interface())
            stack.enter_context(
                temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database_url})
            )
            server = SubprocessASGIServer(port=_free_port())
            # Code that asks for "the" ephemeral server during a flow run finds this one instead
            # of spawning another (as prefect_test_harness does; Prefect issue #21544).
            prior = SubprocessASGIServer._instances.get(None)
            SubprocessASGIServer._instances[None] = server
            server.start(timeout=startup_timeout_s)
            stack.enter_context(temporary_settings({PREFECT_API_URL: server.api_url}))
            stack.enter_context(
                prefect.context._temporary_global_settings_context(
                    prefect.context.get_settings_context()
                )
            )
            try:
                yield server.api_url
            finally:

                async def drain() -> None:
                    # Logs and events first: sent to a stopped server they are errors.
                    try:
                        result = APILogWorker.instance().drain()
                        if inspect.isawaitable(result):
                            await result
                    except RuntimeError:  # never started
                        pass
                    result = EventsWorker.drain_all()
                    if inspect.isawaitable(result):
                        await result

                run_coro_as_sync(drain())
                server.stop()
                if prior is not None:
                    SubprocessASGIServer._instances[None] = prior
                else:
                    SubprocessASGIServer._instances.pop(None, None)
    finally:
        stop_prefect_database(directory)
