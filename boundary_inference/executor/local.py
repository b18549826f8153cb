"""Run inference in a child process on this machine: the embedded default executor.

Each call gets a directory under ``<state_dir>/jobs/<call_id>/`` holding the request, the child's
pid, its progress and its result or error. The call id is all another process needs to watch or
cancel the job, like a Modal ``FunctionCall`` id. The child enforces its own hard deadline, so a job
stops even when nobody is watching; :meth:`LocalExecutor.poll` enforces it too, from outside.

How long a job has run is measured on the machine's monotonic clock (``CLOCK_MONOTONIC``, one clock
for every process since boot), never the wall clock: a watcher or reaper whose wall clock is hours
off must not see a job started seconds ago as past its deadline and kill it. The clock is a
parameter, so tests advance it instead of waiting.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from boundary_inference.executor.base import (
    CallState,
    CallStatus,
    ExecutorFailure,
    FailureKind,
)
from boundary_inference.local.processes import pid_alive
from modal_app.types import InferenceRequest, InferenceResult

# Seconds past the request's deadline before the watcher kills a child that has not stopped itself.
_DEADLINE_GRACE_S = 5.0
EXIT_DEADLINE = 124  # the child's exit code when its own hard-deadline watchdog fires
# Seconds a finished child may take to exit (interpreter and torch teardown) before it is killed:
# a call reported done leaves no process of its own behind.
_REAP_S = 30.0


class LocalExecutor:
    """Executor that runs :func:`modal_app.predictor.run_inference` in a child process."""

    name = "local"

    def __init__(
        self,
        jobs_dir: Path,
        *,
        models_dir: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.jobs_dir = jobs_dir
        self.models_dir = models_dir
        self._clock = clock
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def preflight(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)

    def _dir(self, call_id: str) -> Path:
        if not call_id.startswith("local-") or "/" in call_id:
            raise ValueError(f"not a local call id: {call_id!r}")
        return self.jobs_dir / call_id

    def find_call(self, run_id: str) -> str | None:
        """Never needed: a local submit either starts the child or raises before it exists."""
        return None

    def fence(self, run_id: str) -> str | None:
        return None

    def submit(self, request: InferenceRequest) -> str:
        call_id = f"local-{uuid.uuid4().hex[:16]}"
        job_dir = self._dir(call_id)
        job_dir.mkdir(parents=True)
        (job_dir / "request.json").write_text(json.dumps(request.to_dict()))
        cmd = [sys.executable, "-m", "boundary_inference.executor.local_worker", str(job_dir)]
        if self.models_dir is not None:
            cmd += ["--models-dir", str(self.models_dir)]
        with open(job_dir / "worker.log", "wb") as log:
            # A new session so cancel() can kill the child and anything it started, as one group.
            child = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        (job_dir / "pid").write_text(str(child.pid))
        (job_dir / "started_at").write_text(repr(time.time()))  # for people; never compared
        (job_dir / "started_monotonic").write_text(f"{_boot_id()} {self._clock()!r}")
        self._children[call_id] = child
        return call_id

    def _exit_code(self, call_id: str) -> int | None:
        """None while the child runs; its exit code (or -signal) once it has ended."""
        child = self._children.get(call_id)
        if child is not None:
            return child.poll()
        if self._from_another_boot(call_id):
            return -1  # its process died with the last boot; the pid may belong to anyone now
        pid = int((self._dir(call_id) / "pid").read_text())
        if pid_alive(pid):
            return None
        exit_file = self._dir(call_id) / "exit_code"
        return int(exit_file.read_text()) if exit_file.exists() else -1

    def _deadline_s(self, call_id: str) -> float:
        request = json.loads((self._dir(call_id) / "request.json").read_text())
        return float(request["deadline_s"])

    def _elapsed_s(self, call_id: str) -> float | None:
        """Seconds since the submit, on the monotonic clock; None when unknowable (a job from
        before this machine's last boot, when the monotonic clock started again)."""
        try:
            boot, started = (self._dir(call_id) / "started_monotonic").read_text().split()
        except FileNotFoundError:  # a job directory written before the monotonic record
            return max(0.0, time.time() - float((self._dir(call_id) / "started_at").read_text()))
        except (OSError, ValueError):
            return None
        if boot != _boot_id():
            return None
        return max(0.0, self._clock() - float(started))

    def _from_another_boot(self, call_id: str) -> bool:
        try:
            boot = (self._dir(call_id) / "started_monotonic").read_text().split()[0]
        except (OSError, IndexError):
            return False
        return boot != _boot_id()

    def poll(self, call_id: str, *, timeout_s: float) -> CallStatus:
        job_dir = self._dir(call_id)
        if not job_dir.exists():
            return CallStatus(
                CallState.FAILED,
                failure=ExecutorFailure(FailureKind.INFRASTRUCTURE, f"unknown call {call_id}"),
            )
        end = time.monotonic() + max(0.0, timeout_s)
        while True:
            status = self._status(call_id)
            if status.state is not CallState.PENDING or time.monotonic() >= end:
                return status
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))

    def _status(self, call_id: str) -> CallStatus:
        job_dir = self._dir(call_id)
        done, total = _read_progress(job_dir)
        result_file = job_dir / "result.json"
        error_file = job_dir / "error.json"
        if result_file.exists():
            result = InferenceResult.from_dict(json.loads(result_file.read_text()))
            self._reap(call_id)
            return CallStatus(CallState.SUCCEEDED, done, total, result=result)
        if error_file.exists():
            error = json.loads(error_file.read_text())
            self._reap(call_id)
            failure = ExecutorFailure(
                FailureKind(error["kind"]),
                error["message"],
                error.get("error_type", ""),
                elapsed_s=error.get("elapsed_s"),
            )
            return CallStatus(CallState.FAILED, done, total, failure=failure)
        if (job_dir / "cancelled").exists():
            return CallStatus(
                CallState.FAILED,
                done,
                total,
                failure=ExecutorFailure(
                    FailureKind.CANCELLED, "cancelled", elapsed_s=self._elapsed_s(call_id)
                ),
            )
        code = self._exit_code(call_id)
        if code is None:
            elapsed = self._elapsed_s(call_id)
            if elapsed is None or elapsed > self._deadline_s(call_id) + _DEADLINE_GRACE_S:
                self._kill(call_id)
                return CallStatus(
                    CallState.FAILED,
                    done,
                    total,
                    failure=ExecutorFailure(
                        FailureKind.TIMEOUT,
                        f"killed: still running {_DEADLINE_GRACE_S:.0f} s past its"
                        f" {self._deadline_s(call_id):.0f} s deadline",
                        elapsed_s=elapsed,
                    ),
                )
            return CallStatus(CallState.PENDING, done, total)
        # Ended without writing a result or an error: it crashed or was killed.
        if result_file.exists() or error_file.exists():  # raced with the child's last write
            return self._status(call_id)
        kind = FailureKind.TIMEOUT if code == EXIT_DEADLINE else FailureKind.INFRASTRUCTURE
        return CallStatus(
            CallState.FAILED,
            done,
            total,
            failure=ExecutorFailure(
                kind,
                f"worker exited with code {code} without a result",
                elapsed_s=self._elapsed_s(call_id),
            ),
        )

    def _kill(self, call_id: str) -> None:
        pid = int((self._dir(call_id) / "pid").read_text())
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child = self._children.get(call_id)
        if child is not None:
            child.wait(timeout=10)

    def _reap(self, call_id: str) -> None:
        """Wait for a finished child of this process to exit; kill it if its teardown hangs.

        A child another process started (a watcher that took over) is its starter's to reap.
        """
        child = self._children.get(call_id)
        if child is None:
            return
        try:
            child.wait(timeout=_REAP_S)
        except subprocess.TimeoutExpired:
            self._kill(call_id)

    def cancel(self, call_id: str) -> None:
        job_dir = self._dir(call_id)
        if not job_dir.exists():
            return
        if self._exit_code(call_id) is None:
            (job_dir / "cancelled").write_text(repr(time.time()))
            self._kill(call_id)


def _boot_id() -> str:
    """This boot of the machine (the monotonic clock starts again at every boot)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _read_progress(job_dir: Path) -> tuple[int, int]:
    try:
        data = json.loads((job_dir / "progress.json").read_text())
        return int(data["done"]), int(data["total"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0, 0
