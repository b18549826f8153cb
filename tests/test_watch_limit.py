"""The flow's watch limit: a call that stays pending past every attempt's limit is cancelled.

Modal retries a container that crashes before our code runs (a failing ``@modal.enter``, an image
that cannot start) without end on deployed apps, and the attempt counter inside the function never
sees those attempts. What bounds them is the watcher: past ``watch_limit_s`` the call is cancelled
and charged its worst case. The Modal cloud is the test double of ``test_modal_executor``; the
ledger, the executor and the task are the real ones; the watch loop's clock is injected and
advanced by its own sleeps, so the limit is reached after a counted number of polls, however fast
or slow this machine is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import modal.exception as modal_exc
import pytest
from prefect import flow, runtime
from prefect.client.orchestration import get_client
from prefect.states import Cancelling

from boundary_inference.executor import CallState, FailureKind
from boundary_inference.ledger import Ledger
from config import get_settings
from modal_app.models import BUILTIN
from modal_app.types import InferenceRequest
from tasks.execute import run_job
from tests.modal_double import FakeCloud, executor_for
from tests.support import Clock


class StartupCrashLoop(FakeCloud):
    """Every container dies in start-up, before ``run_call``; Modal starts another, forever."""

    def _run(self, call: Any) -> None:
        while not call.cancel_requested.wait(0.05):
            call.invocations += 1


def running_request(
    ledger: Ledger, tmp_path: Path, *, pairs: int, deadline_s: float
) -> InferenceRequest:
    """A run claimed and moved to ``running`` in the real ledger, and the request for its job."""
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=50, fps=25.0)
    claim = ledger.claim_run(
        video_id="v1", tenant_id="t1", frames_version="f1", model_version=BUILTIN
    )
    run_id = str(claim["run_id"])
    ledger.transition_run(run_id=run_id, to_status="running")
    return InferenceRequest(
        run_id=run_id,
        video_uri=str(tmp_path / "never-read.mp4"),
        frame_pairs=[(i, i + 1) for i in range(pairs)],
        model_version=BUILTIN,
        batch_size=8,
        deadline_s=deadline_s,
        heartbeat_timeout_s=30.0,
    )


def test_a_call_stuck_in_a_crash_loop_is_cancelled_at_the_watch_limit(
    ledger: Ledger, tmp_path: Path
) -> None:
    settings = get_settings(executor="modal", poll_interval_s=0.1).model_copy(
        update={"startup_timeout_s": 1, "abort_grace_s": 0.5, "gpu_retries": 0}
    )
    cloud = StartupCrashLoop(settings)
    executor = executor_for(cloud)
    request = running_request(ledger, tmp_path, pairs=10, deadline_s=0.5)
    run_id = request.run_id
    limit_s = settings.cost_model.watch_limit_s(request.deadline_s)
    assert limit_s == pytest.approx(2.0)

    clock = Clock()

    @flow
    def watch() -> tuple[str, Any, float]:
        call_id, status = run_job(
            executor, ledger, settings, request, clock=clock, sleep=clock.sleep
        )
        return call_id, status, clock.now

    try:
        call_id, status, waited_s = watch()
    finally:
        for call in cloud.calls.values():
            call.cancel_requested.set()
        cloud.join()
    assert status.state is CallState.FAILED
    assert status.failure.kind is FailureKind.TIMEOUT
    assert status.failure.error_type == "WatchLimitExceeded"
    # Charged every attempt to its limit: what was reserved, since nobody knows what ran.
    assert status.failure.elapsed_s == pytest.approx(limit_s)
    # Given up at the first poll past the limit (the clock moves by one poll interval per sleep).
    assert limit_s <= waited_s < limit_s + 2 * settings.poll_interval_s
    assert [cid for cid, _ in cloud.cancels] == [call_id]
    assert cloud.calls[call_id].invocations > 1  # it really was crash-looping
    assert ledger.get_run(run_id=run_id)["executor_call_id"] == call_id


def test_a_call_that_ends_failed_is_cancelled_too(ledger: Ledger, tmp_path: Path) -> None:
    """A failure seen by the client (here an error the poll cannot place) is not proof that the
    attempt stopped: the call is cancelled before the flow settles and stops watching."""
    settings = get_settings(executor="modal", poll_interval_s=0.1)
    cloud = StartupCrashLoop(settings)  # stands for any call that is still running
    executor = executor_for(cloud)
    request = running_request(ledger, tmp_path, pairs=1, deadline_s=60.0)

    @flow
    def watch() -> tuple[str, Any]:
        return run_job(executor, ledger, settings, request)

    cloud.get_raises = RuntimeError("a state the client cannot place")
    try:
        call_id, status = watch()
    finally:
        for call in cloud.calls.values():
            call.cancel_requested.set()
        cloud.join()
    assert status.state is CallState.FAILED
    assert [cid for cid, _ in cloud.cancels] == [call_id]


class RunsUntilCancelled(FakeCloud):
    """A call that runs until cancelled; Modal then answers its ``get`` with a bare RemoteError."""

    def _run(self, call: Any) -> None:
        call.cancel_requested.wait()
        call.error = modal_exc.RemoteError("input ended by the server")
        call.done.set()


def test_a_cancel_from_prefect_terminates_the_modal_call_and_charges_its_seconds(
    ledger: Ledger, tmp_path: Path
) -> None:
    """The flow run is set Cancelling through the real Prefect API (as the UI does) while it
    watches a Modal call: the watch cancels the call with its containers terminated, and the
    call's seconds are the time since its spawn (Modal does not report a cancelled call's), not
    unknown (which would charge the worst case)."""
    settings = get_settings(executor="modal", poll_interval_s=0.1)
    cloud = RunsUntilCancelled(settings)
    executor = executor_for(cloud)
    request = running_request(ledger, tmp_path, pairs=10, deadline_s=60.0)
    clock = Clock()
    seen: dict[str, Any] = {}

    @flow
    def watch() -> None:
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(runtime.flow_run.id, Cancelling(), force=True)
        seen["call_id"], seen["status"] = run_job(
            executor, ledger, settings, request, clock=clock, sleep=clock.sleep
        )

    try:
        watch(return_state=True)
    finally:
        for call in cloud.calls.values():
            call.cancel_requested.set()
        cloud.join()
    status = seen["status"]
    assert cloud.cancels[0] == (seen["call_id"], True)  # containers terminated
    assert status.state is CallState.FAILED and status.failure.kind is FailureKind.CANCELLED
    assert "Cancelling" in status.failure.message
    assert status.failure.elapsed_s == pytest.approx(clock.now)  # since the spawn, not unknown
