"""The suite's Prefect API on PostgreSQL, as the embedded server is (``embedded_prefect``).

``prefect.testing.utilities.prefect_test_harness`` hard-codes SQLite; under the suite's concurrent
CLI processes that database answered "database is locked" (the class behind most CI flakes). This
is the same harness (a temporary ASGI server in a subprocess, this process's settings pointed at
it) with the database URL of Prefect's own embedded PostgreSQL instead.

It comes in two halves, so that one server can serve several processes: :func:`serve_prefect_api`
starts the database and the server and touches nothing of this process's settings;
:func:`use_prefect_api` points this process's Prefect client at a running API. Under xdist the
controller serves one API for the whole run and every worker uses it (``tests/conftest.py``); a
serial run does both in one process (:func:`prefect_harness_on_postgres`).
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
def serve_prefect_api(directory: Path, *, startup_timeout_s: int = 120) -> Iterator[str]:
    """A Prefect API whose database lives under ``directory/pg``; yields the API URL.

    The server and its PostgreSQL are stopped on exit; ``directory`` stays for the caller to
    remove. This process's own settings are left as they were (only the server's environment
    names the database), so it may run in any thread.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_DATABASE_CONNECTION_URL, temporary_settings

    database_url = start_prefect_database(directory)
    try:
        # The server's environment is made from the settings current when it starts.
        with temporary_settings({PREFECT_SERVER_DATABASE_CONNECTION_URL: database_url}):
            server = SubprocessASGIServer(port=_free_port())
            server.start(timeout=startup_timeout_s)
        try:
            yield server.api_url
        finally:
            server.stop()
    finally:
        stop_prefect_database(directory)


@contextmanager
def use_prefect_api(api_url: str) -> Iterator[None]:
    """Point this process's Prefect client at the running API ``api_url`` until exit, then send
    what its log and event workers still hold (to a stopped server they are errors)."""
    import prefect.context
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.asyncutils import run_coro_as_sync

    # Code that asks for "the" ephemeral server during a flow run finds this one instead of
    # spawning another (as prefect_test_harness does; Prefect issue #21544). A stand-in that
    # is already running: its start() is a no-op, and it owns no process to stop.
    port = int(api_url.split(":")[2].split("/")[0])
    stand_in = SubprocessASGIServer(port=port)
    stand_in.running = True
    prior = SubprocessASGIServer._instances.get(None)
    SubprocessASGIServer._instances[None] = stand_in
    try:
        with ExitStack() as stack:
            stack.enter_context(temporary_settings({PREFECT_API_URL: api_url}))
            stack.enter_context(
                prefect.context._temporary_global_settings_context(
                    prefect.context.get_settings_context()
                )
            )
            try:
                yield
            finally:

                async def drain() -> None:
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
    finally:
        stand_in.running = False
        SubprocessASGIServer._instances.pop(port, None)
        if prior is not None:
            SubprocessASGIServer._instances[None] = prior
        else:
            SubprocessASGIServer._instances.pop(None, None)


@contextmanager
def prefect_harness_on_postgres(directory: Path, *, startup_timeout_s: int = 120) -> Iterator[str]:
    """A Prefect API whose database lives under ``directory/pg``, this process pointed at it;
    yields the API URL. Server and PostgreSQL are stopped on exit; ``directory`` stays."""
    with (
        serve_prefect_api(directory, startup_timeout_s=startup_timeout_s) as api_url,
        use_prefect_api(api_url),
    ):
        yield api_url
