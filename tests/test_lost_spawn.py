"""A spawn whose answer was lost is "maybe spawned": its call is found by run id, or fenced.

modal 1.6.4 re-raises its last network retry's ``OSError`` or asyncio timeout as
``modal.exception.ConnectionError`` (``modal/_utils/grpc_utils.py``,
``process_exception_before_retry``), and a spent total deadline as ``RetryTimeoutError`` (a
``modal.exception.TimeoutError``), also when an earlier try reached the server and it accepted the
call. The double (``tests/modal_double.py``) accepts the call, starts it, then raises those very
types from ``spawn``. The function body that runs is the real one: it records its call id under its
run id before anything else, and reads the run's fence after that.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal.exception as modal_exc
import pytest
from modal._utils.grpc_utils import RetryTimeoutError

import boundary_inference.services as services_module
from boundary_inference.executor import CallState, ExecutorUnavailable, SpawnUncertain
from boundary_inference.videos import register_video
from config import Settings, get_settings
from modal_app.modal_config import REFUSED
from modal_app.sources import StorageConfig
from tests.flow_support import FlowEnv, MakeEnv, clip_fixture, job, run_flow
from tests.flow_support import flow_outcome as run
from tests.modal_double import FakeCloud, executor_for, make_request, wait_for
from tests.storage_support import BUCKET, S3, start_s3

video = clip_fixture("video", seed=21, frames=41)


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with start_s3() as server:
        yield server


@pytest.fixture
def settings() -> Settings:
    return get_settings(executor="modal")


@pytest.fixture
def cloud(settings: Settings) -> Iterator[FakeCloud]:
    fake = FakeCloud(settings)
    yield fake
    fake.close()


@pytest.mark.parametrize(
    "lost",
    [modal_exc.ConnectionError("Deadline exceeded"), RetryTimeoutError(TimeoutError("total"))],
    ids=["ConnectionError", "RetryTimeoutError"],
)
def test_a_lost_spawn_answer_is_uncertain_and_the_call_is_found_by_its_run_id(
    cloud: FakeCloud, video: tuple[Path, Any], lost: BaseException
) -> None:
    cloud.answer_lost = lost
    executor = executor_for(cloud)
    request = make_request(video[0], run_id="run-lost")
    with pytest.raises(SpawnUncertain, match="a call may be running"):
        executor.submit(request)
    (call,) = cloud.calls.values()  # ...yet the server took it, and it runs
    cloud.join()
    # Another process (a fresh executor) finds it by the run id alone, and can watch it.
    found = executor_for(cloud).find_call("run-lost")
    assert found == call.object_id
    assert wait_for(executor_for(cloud), found).state is CallState.SUCCEEDED


def test_only_answers_that_prove_nothing_was_taken_are_refusals(
    cloud: FakeCloud, video: tuple[Path, Any]
) -> None:
    executor = executor_for(cloud)
    cloud.deployed = False  # NotFoundError from the server: nothing was taken
    with pytest.raises(ExecutorUnavailable):
        executor.submit(make_request(video[0]))
    assert cloud.calls == {}


def test_a_call_that_starts_after_its_fence_does_no_work(
    cloud: FakeCloud, video: tuple[Path, Any]
) -> None:
    """Held in Modal's queue past the client's patience: the client fences the run; when the
    input starts at last it records its id, sees the fence, and returns a refusal at once."""
    cloud.start_gate = threading.Event()
    cloud.answer_lost = modal_exc.ConnectionError("connection reset")
    executor = executor_for(cloud)
    with pytest.raises(SpawnUncertain):
        executor.submit(make_request(video[0], run_id="run-late"))
    assert executor.find_call("run-late") is None  # still queued
    assert executor.fence("run-late") is None
    cloud.start_gate.set()
    cloud.join()
    (call,) = cloud.calls.values()
    assert call.invocations == 1 and call.value[REFUSED]["kind"] == "fenced"
    assert "run-late" not in cloud.store  # no progress: the model never ran
    status = wait_for(executor, call.object_id)
    assert status.failure is not None and status.failure.error_type == "Fenced"
    # The fence came after the start here: the fence's own look finds it instead.
    assert executor.fence("run-late") == call.object_id


# --- The flow: the money path ---------------------------------------------------------------------


def _on_double(
    monkeypatch: pytest.MonkeyPatch, make_env: MakeEnv, video: tuple[Path, Any], s3: S3, **env: str
) -> tuple[FlowEnv, FakeCloud]:
    """The flow on the Modal double, its video v1 in the moto S3 server (what Modal can read)."""
    flow_env = make_env(**s3.env(), **env)
    monkeypatch.setenv("BOUNDARY_INFERENCE_EXECUTOR", "modal")
    services_module.reset_services()
    settings = services_module.get_settings()
    s3.client.put_object(Bucket=BUCKET, Key="lost/clip.mp4", Body=video[0].read_bytes())
    register_video(flow_env.ledger, settings, video_id="v1", source=f"s3://{BUCKET}/lost/clip.mp4")
    cloud = FakeCloud(settings)
    cloud.run_kwargs = {"storage": StorageConfig.from_settings(settings)}
    monkeypatch.setattr(services_module, "open_executor", lambda s: executor_for(cloud))
    return flow_env, cloud


def test_the_flow_watches_and_settles_a_call_whose_spawn_answer_was_lost(
    monkeypatch: pytest.MonkeyPatch, make_env: MakeEnv, video: tuple[Path, Any], s3: S3
) -> None:
    """Was: "executor unavailable at spawn", the reservation released, the call running on
    unwatched and uncharged."""
    env, cloud = _on_double(monkeypatch, make_env, video, s3)
    cloud.answer_lost = modal_exc.ConnectionError("Deadline exceeded")
    try:
        outcome = run(**job())
    finally:
        cloud.join()
    assert outcome["status"] == "succeeded", outcome
    (call,) = cloud.calls.values()
    row = env.ledger.get_run(run_id=outcome["run_id"])
    assert row["executor_call_id"] == call.object_id
    assert 0 < float(row["actual_cost_usd"]) < float(row["worst_case_cost_usd"])
    spend = env.ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == pytest.approx(float(row["actual_cost_usd"]))


def test_a_lost_spawn_whose_call_never_shows_up_is_fenced_and_charged_its_worst_case(
    monkeypatch: pytest.MonkeyPatch, make_env: MakeEnv, video: tuple[Path, Any], s3: S3
) -> None:
    env, cloud = _on_double(monkeypatch, make_env, video, s3, spawn_confirm_s="0")
    cloud.start_gate = threading.Event()  # accepted, but still in Modal's queue
    cloud.answer_lost = modal_exc.ConnectionError("Deadline exceeded")
    try:
        state, outcome = run_flow(**job())
        cloud.start_gate.set()  # it starts at last: the fence stops it
    finally:
        cloud.start_gate.set()
        cloud.join()
    assert outcome["status"] != "succeeded", outcome
    # A standard state name: the UI's Runs tab and its state filter list it.
    assert (state.type.value, state.name) == ("FAILED", "Failed"), state
    row = env.ledger.get_run(run_id=outcome["run_id"])
    assert row["status"] == "cancelled" and "SpawnUnconfirmed" in row["error"]
    worst = float(row["worst_case_cost_usd"])
    # Not released: an input Modal may hold cannot be proved never to start.
    assert float(env.ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(worst)
    (call,) = cloud.calls.values()
    assert call.value[REFUSED]["kind"] == "fenced"
