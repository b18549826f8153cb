"""The embedded servers: one per state directory, liveness by lock and pid (never a ping), a status
API that reads without talking to them. Faults caused for real: SIGSTOP, SIGKILL, a reused pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from boundary_inference.ledger import Ledger, LedgerUnavailable, PsycopgTransport
from boundary_inference.local.embedded import (
    postgres_status,
    redis_status,
    start_postgres,
    start_redis,
    stop_redis,
)
from boundary_inference.local.processes import pid_alive
from tests.flow_support import freeze

_START = (
    "import sys; from pathlib import Path; from boundary_inference.local.embedded import {fn};"
    " print({fn}(Path(sys.argv[1])).{attr})"
)


def _in_processes(n: int, fn: str, attr: str, directory: Path) -> list[str]:
    code = _START.format(fn=fn, attr=attr)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(n)
    ]
    outs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()[-2000:]
        outs.append(out.decode().strip())
    return outs


def _redis_servers(socket_path: Path) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "redis-server" in cmdline and str(socket_path) in cmdline and pid_alive(proc.pid):
            found.append(proc.pid)
    return found


def test_four_processes_starting_at_once_start_one_redis(server_dir: Path) -> None:
    urls = _in_processes(4, "start_redis", "url", server_dir)
    assert len(set(urls)) == 1
    socket_path = server_dir / "redis" / "redis.sock"
    try:
        assert _redis_servers(socket_path) == [redis_status(server_dir).pid]
    finally:
        stop_redis(server_dir)


def test_redis_status_and_stop(server_dir: Path) -> None:
    assert redis_status(server_dir).state == "stopped"
    server = start_redis(server_dir)
    status = redis_status(server_dir)
    assert (status.state, status.alive, status.pid) == ("running", True, server.pid())
    assert status.address == server.url
    assert status.pid is not None
    freeze(status.pid)
    try:
        assert redis_status(server_dir).state == "frozen"
    finally:
        os.kill(status.pid, signal.SIGCONT)
    # A frozen daemon is resumed to handle SIGTERM: stop works on it too.
    freeze(status.pid)
    stopped = stop_redis(server_dir)
    assert (stopped.state, stopped.alive) == ("stopped", False)
    assert not pid_alive(status.pid)
    again = start_redis(server_dir)
    assert redis_status(server_dir).pid == again.pid() != status.pid
    stop_redis(server_dir, force=True)
    assert redis_status(server_dir).state == "stopped"


def test_a_frozen_postmaster_is_joined_never_replaced(server_dir: Path) -> None:
    """pgserver decides by pid (never a ping): a frozen postmaster is joined; its new clients time
    out (guard_unavailable); resumed, it serves again. One postmaster throughout."""
    server = start_postgres(server_dir)
    status = postgres_status(server_dir)
    assert status.state == "running" and status.pid == server.pid()
    assert status.pid is not None
    freeze(status.pid)
    try:
        assert postgres_status(server_dir).state == "frozen"
        assert _in_processes(2, "start_postgres", "dsn", server_dir) == [server.dsn] * 2
        ledger = Ledger(PsycopgTransport(server.dsn, "public", timeout_s=1.0))
        with pytest.raises(LedgerUnavailable):
            ledger.ping()
        postmasters = [
            p.pid
            for p in psutil.process_iter(["cmdline"])
            if str(server.pgdata) in " ".join(p.info["cmdline"] or [])
            and p.info["cmdline"]
            and p.info["cmdline"][0].endswith("postgres")
        ]
        assert postmasters == [status.pid]
    finally:
        os.kill(status.pid, signal.SIGCONT)
    assert postgres_status(server_dir).state == "running"
    server.stop()
    assert postgres_status(server_dir).state == "stopped"


def test_a_postmaster_pid_reused_by_another_process_is_not_joined(server_dir: Path) -> None:
    """The postmaster died and its pid now belongs to something else: pgserver would join that
    process and PostgreSQL would refuse to start ("another postmaster running?"). The stale file
    is recognised by the process's start time and removed (nothing holds the old shared memory),
    and a real server starts."""
    server = start_postgres(server_dir)
    recorded = (server.pgdata / "postmaster.pid").read_text().splitlines()
    server.stop()
    impostor = subprocess.Popen(["sleep", "300"])
    try:
        # As if the dead postmaster's pid had been handed to `sleep`, started long after it.
        recorded[0] = str(impostor.pid)
        recorded[2] = str(int(psutil.Process(impostor.pid).create_time()) - 3600)
        (server.pgdata / "postmaster.pid").write_text("\n".join(recorded) + "\n")
        assert postgres_status(server_dir).state == "stale"
        again = start_postgres(server_dir)
        status = postgres_status(server_dir)
        assert status.state == "running" and status.pid not in (None, impostor.pid)
        assert Ledger(PsycopgTransport(again.dsn, "public", timeout_s=5)).transport
        again.stop()
    finally:
        impostor.kill()
        impostor.wait()
