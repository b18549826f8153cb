"""The embedded Prefect server killed (``kill -9``) while a ``submit`` is watching its job.

The fault is caused for real: a real ``prefect server start`` for the test's state dir (the one a
user's ``submit`` starts), a real CLI process, a job that blocks on a FIFO until the test acts.
Prefect only records; the ledger decides. So the CLI must end in bounded time with one line and
exit 2 (never hang on a dead API, never a traceback), and the run must not stay reserved.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from boundary_inference.local.prefect_server import prefect_dir, prefect_status, stop_prefect
from boundary_inference.local.processes import pid_alive
from tests.flow_support import MakeEnv
from tests.prefect_template import seed_prefect_cluster

FRAMES = 60
WAIT_S = 240.0  # for the CLI to start its server and reach the job: bounded, not a speed claim


def _wait_for(what: str, check: Callable[[], object], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not check():
        if proc.poll() is not None:
            _out, err = proc.communicate()
            pytest.fail(f"submit ended before {what}: {proc.returncode}\n{err.decode()[-3000:]}")
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        time.sleep(0.05)


@pytest.mark.slow  # a Prefect server started, killed mid-job and waited out: a minute
def test_killed_prefect_server_mid_job_ends_the_cli_and_settles_the_run(
    make_env: MakeEnv, tmp_path: Path, prefect_template: Path
) -> None:
    fifo = tmp_path / "blocks.mp4"
    os.mkfifo(fifo)  # no writer: the job's decoder blocks in open() until the test acts
    env = make_env()
    seed_prefect_cluster(prefect_dir(env.state_dir), prefect_template)  # migrated already
    env.register("v1", fifo, FRAMES, None)
    # No PREFECT_API_URL: the CLI starts (and uses) the state dir's embedded server, as a user's
    # does. One client retry: the bounded give-up is the claim, not how long Prefect backs off.
    child_env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    child_env["PREFECT_CLIENT_MAX_RETRIES"] = "1"
    cmd = [sys.executable, "-m", "boundary_inference.cli.app", "submit", "v1", "--in-process"]
    cmd += ["--frames-version"]
    proc = subprocess.Popen(
        [*cmd, "f1", "--json"], env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        _wait_for("a spawned job", lambda: any(env.jobs_dir.glob("local-*/pid")), proc)
        (pid_file,) = env.jobs_dir.glob("local-*/pid")
        _wait_for("the job's pid", lambda: pid_file.read_text().strip(), proc)
        job_pid = int(pid_file.read_text())
        server = prefect_status(env.state_dir)
        assert server.state == "running" and server.pid is not None
        os.kill(server.pid, signal.SIGKILL)
        while pid_alive(server.pid):
            time.sleep(0.05)
        # The job then dies too (as a worker would), so the watch has something to settle.
        os.kill(job_pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_prefect(env.state_dir)
    stderr = err.decode()
    assert proc.returncode == 2, (proc.returncode, out.decode()[-2000:], stderr[-3000:])
    # Ours: one line. (Prefect's own flow-run log records the engine's exception with its
    # traceback, as it does in a worker's log; what an uncaught exception would print here is
    # typer's boxed traceback.)
    ours = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert ours == [line for line in ours if "cannot reach the Prefect API" in line], ours
    assert len(ours) == 1 and "\N{BOX DRAWINGS LIGHT ARC DOWN AND RIGHT}" not in stderr, stderr
    assert ours[0].endswith(
        "(the ledger holds what was decided: boundary-inference runs --video v1)"
    )
    # The ledger settled the run before the CLI gave up on Prefect: nothing left reserved.
    (run,) = env.ledger.list_runs(limit=5, video_id="v1")
    assert run["status"] not in ("queued", "admitted", "running"), run
    assert float(env.ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(
        float(env.ledger.spend_summary()["daily_actual_usd"])
    )
