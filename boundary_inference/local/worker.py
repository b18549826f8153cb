"""The local worker: one ``python -m flows.serve`` daemon per state dir, which runs the project's
deployment runs (``submit --no-wait``, runs created in the UI or by ``prefect deployment run``).

A deployment run is a child process of a runner, so a cancel from the UI reaches it, the
deployment's concurrency limit counts it and the queue guard sees it waiting. Like the other
embedded daemons, liveness is a lock and a pid, never a ping: the starter takes an exclusive
``flock`` on ``worker.lock`` and starts the worker with that descriptor inherited, so the lock is
held exactly as long as the worker lives. Its log is ``state/worker/worker.log``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock

from boundary_inference.errors import OperatorError
from boundary_inference.job_runs import DEPLOYMENT
from boundary_inference.local.locks import lock_held, try_lock
from boundary_inference.local.processes import pid_alive

START_TIMEOUT_S = 120.0  # imports, four deployments registered: seconds; a loaded CI machine more
STOP_TIMEOUT_S = 20.0
RUNNER_POLL_S = 1

State = Literal["running", "stopped", "exiting"]


class WorkerError(OperatorError):
    """The local worker could not be started."""


@dataclass(frozen=True)
class WorkerStatus:
    """``alive``: its lock is held; ``state``: running, stopped, or exiting (lock held, pid gone)."""

    name: str
    directory: Path
    pid: int | None
    alive: bool
    state: State
    api_url: str | None = None


def worker_dir(state_dir: Path) -> Path:
    return Path(state_dir).resolve() / "worker"


def start_worker(state_dir: Path, api_url: str, *, executor: str, models_dir: Path) -> WorkerStatus:
    """Start (or join) the worker of ``state_dir`` serving on ``api_url``; it outlives this
    process. Returns once the deployment the CLI runs exists on that server. ``models_dir`` is
    pinned absolute: the worker runs in its own directory, where a relative one means another."""
    directory = worker_dir(state_dir)
    directory.mkdir(parents=True, exist_ok=True)
    with (
        FileLock(str(directory / "start.lock"), timeout=START_TIMEOUT_S * 2),
        try_lock(directory / "worker.lock") as lock_fd,
    ):
        if lock_fd is None:  # a worker owns this directory (probed under the start lock)
            status = _status(directory, held=True)
            if status.api_url not in (None, api_url):
                raise WorkerError(
                    f"the worker of {state_dir} serves {status.api_url}, not {api_url};"
                    " `boundary-inference services stop` ends it"
                )
            return status
        pinned = {
            "BOUNDARY_INFERENCE_STATE_DIR": str(Path(state_dir).resolve()),
            "BOUNDARY_INFERENCE_EXECUTOR": executor,
            "BOUNDARY_INFERENCE_MODELS_DIR": str(Path(models_dir).resolve()),
        }
        process = _spawn(directory, pinned, api_url, lock_fd)
        _write_info(directory, process.pid, api_url)
        _wait_for_deployment(directory, process, api_url)
    return _status(directory, held=True)


def worker_status(state_dir: Path) -> WorkerStatus:
    """Decided by the lock and the pid, never a ping. Probed under the start lock: a probe that
    briefly holds ``worker.lock`` must never make a starter believe a worker owns the dir."""
    directory = worker_dir(state_dir)
    if not directory.exists():
        return _status(directory, held=False)
    with FileLock(str(directory / "start.lock"), timeout=START_TIMEOUT_S * 2):
        return _status(directory, held=lock_held(directory / "worker.lock"))


def _status(directory: Path, *, held: bool) -> WorkerStatus:
    info = _read_info(directory)
    pid = int(info["pid"]) if info.get("pid") else None
    api_url = str(info["api_url"]) if info.get("api_url") else None
    if not held:
        return WorkerStatus("worker", directory, pid, False, "stopped", api_url)
    state: State = "running" if pid is not None and pid_alive(pid) else "exiting"
    return WorkerStatus("worker", directory, pid, True, state, api_url)


def stop_worker(state_dir: Path, *, timeout_s: float = STOP_TIMEOUT_S) -> WorkerStatus:
    """SIGTERM to the worker's process group (the runner and the flow runs it started: their
    ``on_cancellation``/``on_crashed`` hooks settle what they watched), SIGKILL after
    ``timeout_s``."""
    status = worker_status(state_dir)
    if status.pid is not None and status.alive:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(status.pid, sig)  # its own session: the group is the worker's
            except ProcessLookupError:
                break
            deadline = time.monotonic() + timeout_s
            while worker_status(state_dir).alive and time.monotonic() < deadline:
                time.sleep(0.05)
            if not worker_status(state_dir).alive:
                break
    return worker_status(state_dir)


def _spawn(
    directory: Path, pinned: dict[str, str], api_url: str, lock_fd: int
) -> subprocess.Popen[bytes]:
    env = dict(os.environ) | pinned
    env.update(
        PREFECT_API_URL=api_url,
        # A CLI waits on every job it submits: a run should start within a second, not the
        # runner's default 10 s poll. One small query per second against the local server.
        PREFECT_RUNNER_POLL_FREQUENCY=str(RUNNER_POLL_S),
    )
    log = (directory / "worker.log").open("ab")
    try:
        log.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S%z')} serving {api_url}\n".encode())
        log.flush()
        return subprocess.Popen(
            [sys.executable, "-m", "flows.serve"],
            env=env,
            cwd=directory,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C in the terminal that started it does not stop it, and
            # stop_worker ends it and its flow runs as one group.
            start_new_session=True,
            pass_fds=(lock_fd,),
        )
    finally:
        log.close()


def _wait_for_deployment(directory: Path, process: subprocess.Popen[bytes], api_url: str) -> None:
    """Start-up only: until the worker has registered the deployment (a run created before it
    polls waits in Scheduled and is picked up on its first poll)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + START_TIMEOUT_S
    started = time.time()
    while True:
        if process.poll() is not None:
            raise WorkerError(
                f"the local worker exited while starting; log tail:\n{_tail(directory)}"
            )
        try:
            with get_client(sync_client=True) as client:
                deployment = client.read_deployment_by_name(DEPLOYMENT)
            if deployment.updated is not None and deployment.updated.timestamp() >= started - 5:
                return  # registered (or re-registered) by this worker
        except ObjectNotFound:
            pass
        if time.monotonic() > deadline:
            raise WorkerError(
                f"the local worker (pid {process.pid}) did not register {DEPLOYMENT} within"
                f" {START_TIMEOUT_S:.0f} s on {api_url}; log tail:\n{_tail(directory)}"
            )
        time.sleep(0.5)


def _read_info(directory: Path) -> dict[str, Any]:
    try:
        data = json.loads((directory / "worker.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_info(directory: Path, pid: int, api_url: str) -> None:
    tmp = directory / "worker.json.tmp"
    tmp.write_text(json.dumps({"pid": pid, "api_url": api_url}, indent=2) + "\n")
    tmp.replace(directory / "worker.json")


def _tail(directory: Path, chars: int = 3000) -> str:
    try:
        return (directory / "worker.log").read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"
