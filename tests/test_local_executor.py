"""LocalExecutor: a real child process, watched, killed at its deadline, cancelled, reattached."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from boundary_inference.executor import CallState, FailureKind, LocalExecutor
from modal_app.synthetic import make_video
from modal_app.types import InferenceRequest


def request(
    video: Path, *, pairs: int = 20, deadline_s: float = 60.0, model: str = "builtin-textdiff-v1"
) -> InferenceRequest:
    return InferenceRequest(
        run_id="r1",
        video_uri=str(video),
        frame_pairs=[(i, i + 1) for i in range(pairs)],
        model_version=model,
        deadline_s=deadline_s,
    )


def wait(executor: LocalExecutor, call_id: str, limit_s: float = 60.0):  # type: ignore[no-untyped-def]
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        status = executor.poll(call_id, timeout_s=0.5)
        if status.state is not CallState.PENDING:
            return status
    raise AssertionError("call did not finish")


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("v") / "clip.mp4"
    make_video(path, seed=3, frame_count=40)
    return path


def test_runs_the_real_inference_and_reports_progress(tmp_path: Path, video: Path) -> None:
    executor = LocalExecutor(tmp_path / "jobs")
    call_id = executor.submit(request(video))
    status = wait(executor, call_id)
    assert status.state is CallState.SUCCEEDED, status.failure
    assert status.result is not None
    assert len(status.result.predictions) == 20
    assert (status.pairs_done, status.pairs_total) == (20, 20)


def test_reattach_by_call_id_from_another_instance(tmp_path: Path, video: Path) -> None:
    call_id = LocalExecutor(tmp_path / "jobs").submit(request(video))
    other = LocalExecutor(tmp_path / "jobs")  # knows nothing but the id, like another process
    status = wait(other, call_id)
    assert status.state is CallState.SUCCEEDED


class Clock:
    """The watcher's monotonic clock, advanced by the test instead of by waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_watcher_kills_a_hang_past_its_deadline(tmp_path: Path) -> None:
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)  # opening it blocks forever inside the decoder
    clock = Clock()
    executor = LocalExecutor(tmp_path / "jobs", clock=clock)
    call_id = executor.submit(request(fifo, deadline_s=60.0))
    pid = int((tmp_path / "jobs" / call_id / "pid").read_text())
    clock.now += 60.0 + 4.9  # within the grace after the deadline: still its own business
    assert executor.poll(call_id, timeout_s=0).state is CallState.PENDING
    assert not gone(pid)
    clock.now += 0.2
    status = executor.poll(call_id, timeout_s=0)
    assert status.state is CallState.FAILED
    assert status.failure is not None and status.failure.kind is FailureKind.TIMEOUT
    assert status.failure.elapsed_s == pytest.approx(65.1)
    assert gone(pid)


def test_the_child_stops_itself_at_its_deadline_with_nobody_watching(tmp_path: Path) -> None:
    """The child's own watchdog: the watcher's clock never moves (it never kills); the child ends
    with exit code 124, which is reported as a timeout."""
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    executor = LocalExecutor(tmp_path / "jobs", clock=Clock())
    call_id = executor.submit(request(fifo, deadline_s=0.5))
    status = wait(executor, call_id, limit_s=120)
    assert status.state is CallState.FAILED
    assert status.failure is not None and status.failure.kind is FailureKind.TIMEOUT
    assert "124" in status.failure.message
    assert gone(int((tmp_path / "jobs" / call_id / "pid").read_text()))


def test_a_wall_clock_hours_off_does_not_kill_a_live_job(tmp_path: Path) -> None:
    """Elapsed time is the machine's monotonic clock: another watcher (a reaper on this host)
    whose wall clock jumped four hours ahead sees the job as seconds old, and leaves it."""
    import datetime as dt

    import time_machine

    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    call_id = LocalExecutor(tmp_path / "jobs").submit(request(fifo, deadline_s=60.0))
    other = LocalExecutor(tmp_path / "jobs")  # knows only the id, like another process
    with time_machine.travel(dt.datetime.now(dt.UTC) + dt.timedelta(hours=4), tick=True):
        assert other.poll(call_id, timeout_s=0).state is CallState.PENDING
    other.cancel(call_id)


def test_cancel_kills_the_child_and_is_idempotent(tmp_path: Path) -> None:
    fifo = tmp_path / "hang.mp4"
    os.mkfifo(fifo)
    executor = LocalExecutor(tmp_path / "jobs")
    call_id = executor.submit(request(fifo, deadline_s=600))
    assert executor.poll(call_id, timeout_s=0.5).state is CallState.PENDING
    executor.cancel(call_id)
    executor.cancel(call_id)
    status = executor.poll(call_id, timeout_s=0)
    assert status.failure is not None and status.failure.kind is FailureKind.CANCELLED
    pid = int((tmp_path / "jobs" / call_id / "pid").read_text())
    deadline = time.monotonic() + 5
    while not gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(pid)


def test_bad_input_is_a_user_code_failure(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"not a video at all" * 100)
    executor = LocalExecutor(tmp_path / "jobs")
    status = wait(executor, executor.submit(request(corrupt)))
    assert status.state is CallState.FAILED
    assert status.failure is not None and status.failure.kind is FailureKind.USER_CODE
    assert status.failure.error_type == "CorruptVideo"


def test_unknown_call_id_is_refused(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "jobs")
    with pytest.raises(ValueError, match="not a local call id"):
        executor.poll("../../etc", timeout_s=0)
    status = executor.poll("local-doesnotexist", timeout_s=0)
    assert status.state is CallState.FAILED
