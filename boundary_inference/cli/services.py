"""``boundary-inference services start|status|env|stop``: the embedded daemons of the state
directory.

PostgreSQL (``state/pg``), Redis (``state/redis``) and the Prefect server (``state/prefect``, with
its own PostgreSQL in ``state/prefect/pg``, shown as ``prefect-db``) keep running after the
command that started them, so that the next one joins them in milliseconds.
These commands show them and stop them. Whether each lives is read from its pidfile and lock,
never from a ping (a busy server is not a dead one).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from boundary_inference.cli.context import load_settings
from boundary_inference.cli.output import console

services_app = typer.Typer(
    no_args_is_help=True, help="The embedded PostgreSQL, Redis and Prefect server of the state dir."
)


@dataclass(frozen=True)
class _Row:
    name: str
    state: str
    pid: int | None
    address: str | None
    directory: Path
    ui_url: str | None = None


def _state_dir() -> Path:
    return Path(load_settings().state_dir).resolve()


def _rows(state_dir: Path) -> list[_Row]:
    from boundary_inference.local.prefect_server import prefect_database_status, prefect_status
    from boundary_inference.local.worker import worker_status

    prefect = prefect_status(state_dir)
    prefect_db = prefect_database_status(state_dir)
    worker = worker_status(state_dir)
    return [
        _postgres_row(state_dir),
        _redis_row(state_dir),
        _Row(
            prefect_db.name,
            prefect_db.state,
            prefect_db.pid,
            prefect_db.address,
            prefect_db.directory,
        ),
        _Row(
            "prefect",
            prefect.state,
            prefect.pid,
            prefect.address,
            prefect.directory,
            prefect.ui_url,
        ),
        _Row("worker", worker.state, worker.pid, worker.api_url, worker.directory),
    ]


# PostgreSQL and Redis: ``boundary_inference.local.embedded`` owns them. Its status API
# (``postgres_status``/``redis_status``/``stop_*``) is used when present; until then the same
# facts are read from their pidfiles here.


def _postgres_row(state_dir: Path) -> _Row:
    from boundary_inference.local import embedded

    if hasattr(embedded, "postgres_status"):
        status = embedded.postgres_status(state_dir)
        return _Row("postgres", status.state, status.pid, status.address, status.directory)
    pgdata = state_dir / "pg"
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return _Row("postgres", "stopped", None, None, pgdata)
    address = (
        f"postgresql://postgres:@/postgres?host={lines[4].strip()}" if len(lines) > 4 else None
    )
    return _Row("postgres", _pid_state(pid), pid, address, pgdata)


def _redis_row(state_dir: Path) -> _Row:
    from boundary_inference.local import embedded

    if hasattr(embedded, "redis_status"):
        status = embedded.redis_status(state_dir)
        return _Row("redis", status.state, status.pid, status.address, status.directory)
    directory = state_dir / "redis"
    try:
        pid = int((directory / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return _Row("redis", "stopped", None, None, directory)
    return _Row("redis", _pid_state(pid), pid, f"unix://{directory / 'redis.sock'}", directory)


def _pid_state(pid: int) -> str:
    from boundary_inference.local.processes import pid_alive

    return "running" if pid_alive(pid) else "stopped"


def _stop_postgres(state_dir: Path) -> None:
    from boundary_inference.local import embedded

    if hasattr(embedded, "stop_postgres"):
        embedded.stop_postgres(state_dir)
        return
    if (state_dir / "pg" / "postmaster.pid").exists():
        embedded.EmbeddedPostgres(pgdata=state_dir / "pg", dsn="").stop()


def _stop_redis(state_dir: Path) -> None:
    from boundary_inference.local import embedded

    if hasattr(embedded, "stop_redis"):
        embedded.stop_redis(state_dir)
        return
    row = _redis_row(state_dir)
    if row.pid is None or row.state != "running":
        return
    try:
        os.kill(row.pid, signal.SIGTERM)  # redis saves its snapshot and exits
    except ProcessLookupError:
        return
    from boundary_inference.local.processes import pid_alive

    deadline = time.monotonic() + 30
    while pid_alive(row.pid) and time.monotonic() < deadline:
        time.sleep(0.05)


@services_app.command("status")
def status(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Each embedded daemon: running or stopped, its pid and its address (and Prefect's UI)."""
    state_dir = _state_dir()
    rows = _rows(state_dir)
    if as_json:
        data = {
            "state_dir": str(state_dir),
            "services": [
                {
                    "name": r.name,
                    "state": r.state,
                    "pid": r.pid,
                    "address": r.address,
                    "ui_url": r.ui_url,
                    "directory": str(r.directory),
                }
                for r in rows
            ],
        }
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    table = Table(title=f"embedded services under {state_dir}")
    for column in ("service", "state", "pid", "address"):
        table.add_column(column, overflow="fold")
    for r in rows:
        table.add_row(r.name, r.state, str(r.pid or ""), r.address or "")
    console.print(table)
    prefect = next(r for r in rows if r.name == "prefect")
    if prefect.state == "running" and prefect.ui_url:
        console.print(f"Prefect UI: {prefect.ui_url}", soft_wrap=True)


@services_app.command("start")
def start() -> None:
    """Start what a ``submit`` would: PostgreSQL and Redis (where no URL replaces them), the
    Prefect server (where no PREFECT_API_URL names one) and the worker that runs the
    deployments' runs, so that runs created in the UI or by ``prefect deployment run`` run."""
    from prefect.settings import get_current_settings

    from boundary_inference.cli.context import use_prefect
    from boundary_inference.local.prefect_server import is_embedded_api
    from boundary_inference.local.worker import start_worker
    from boundary_inference.services import get_services

    settings = load_settings()
    get_services(settings)
    server = use_prefect()
    api_url = str(get_current_settings().api.url or "")
    state_dir = _state_dir()
    if server is None and not is_embedded_api(state_dir, api_url):
        console.print(
            f"PREFECT_API_URL is {api_url}, not this state dir's server: its deployments are"
            " served by the workers you run there (docs/OPERATIONS.md); no local worker started"
        )
    else:
        start_worker(state_dir, api_url, executor=settings.executor, models_dir=settings.models_dir)
    status(as_json=False)


@services_app.command("env")
def env() -> None:
    """Print ``export PREFECT_API_URL=...`` for the state dir's Prefect server (started if needed),
    so that ``prefect`` commands in this shell use it: ``eval "$(boundary-inference services env)"``."""
    from boundary_inference.local.prefect_server import start_prefect

    server = start_prefect(_state_dir())
    sys.stdout.write(f"export PREFECT_API_URL={server.api_url}\n")
    sys.stderr.write(f"# Prefect UI: {server.ui_url}\n")


@services_app.command("stop")
def stop(
    only: Annotated[
        list[str] | None,
        typer.Argument(
            help="Which to stop (worker, prefect: the server and its database, redis,"
            " postgres); default all."
        ),
    ] = None,
) -> None:
    """Stop the embedded daemons (all, or those named). The next command that needs one starts it
    again; their data stays under the state dir."""
    from boundary_inference.local.prefect_server import stop_prefect
    from boundary_inference.local.worker import stop_worker

    state_dir = _state_dir()
    everything = ["worker", "prefect", "redis", "postgres"]
    names = only or everything
    unknown = sorted(set(names) - set(everything))
    if unknown:
        console.print(f"[red]unknown service(s)[/red]: {', '.join(unknown)}")
        raise typer.Exit(2)
    stoppers: dict[str, Callable[[], object]] = {
        "worker": lambda: stop_worker(state_dir),
        "prefect": lambda: stop_prefect(state_dir),
        "redis": lambda: _stop_redis(state_dir),
        "postgres": lambda: _stop_postgres(state_dir),
    }
    for name in everything:  # clients first, the ledger last
        if name in names:
            stoppers[name]()
    # "prefect" names the server and its database (prefect-db): they stop together.
    shown = [r for r in _rows(state_dir) if r.name.removesuffix("-db") in names]
    for row in shown:
        console.print(f"{row.name}: {row.state}")
    still: list[Any] = [r for r in shown if r.state == "running"]
    raise typer.Exit(1 if still else 0)
