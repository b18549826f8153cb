"""ModalExecutor against a test double of the Modal cloud that runs the real function body.

The double replaces exactly the client objects the executor touches (``modal.Cls``, the method's
``spawn``, ``modal.FunctionCall``); the first test asserts that its method signatures equal the
real modal 1.6.4 client's. Behind it, a "call" runs :func:`modal_app.app.run_call` in a thread with
Modal's retry semantics, against a plain ``dict`` standing in for the progress ``modal.Dict``: the
executor reads what the real function body wrote.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import modal
import modal.exception as modal_exc
import numpy as np
import pytest

import modal_app.app as modal_app_module
import modal_app.predictor as predictor
from boundary_inference.executor import (
    CallState,
    ExecutorUnavailable,
    FailureKind,
    SpawnUncertain,
)
from boundary_inference.executor.modal import (
    ModalExecutor,
    classify,
    classify_kind,
    has_credentials,
)
from config import Settings, get_settings
from flows.run.retry_audit import retry_audit
from modal_app.errors import DeadlineExceeded, Stalled, VideoNotFound
from modal_app.modal_config import app_tags, attempts_key, function_options
from modal_app.models import BUILTIN, BUILTIN_MODEL, LogisticModel
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import CropBox, InferenceRequest
from tests.modal_double import (
    CREDENTIALS,
    ContainerCrash,
    FakeApp,
    FakeAutoscaler,
    FakeCloud,
    FakeCls,
    FakeFunction,
    FakeFunctionCall,
    executor_for,
    make_request,
    use_gated_model,
    wait_for,
)
from tests.storage_support import unreachable_store
from tests.support import signature_shape

# --- Fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("modal-exec") / "clip.mp4"
    return path, make_video(path, seed=5, frame_count=50)


@pytest.fixture
def settings() -> Settings:
    return get_settings(executor="modal")


@pytest.fixture
def cloud(settings: Settings) -> Iterator[FakeCloud]:
    fake = FakeCloud(settings)
    yield fake
    fake.close()


# --- The double is the real client's shape --------------------------------------------------------


REAL: Any = modal  # the real client, read as plain attributes


@pytest.mark.parametrize(
    ("double", "real"),
    [
        (FakeCls.from_name, REAL.Cls.from_name),
        (FakeCls.hydrate, REAL.Cls.hydrate),
        (FakeCls.__call__, REAL.Cls.__call__),
        (FakeFunction.spawn, REAL.Function.spawn),
        (FakeFunction.info, REAL.Function.info),
        (FakeAutoscaler.settings, REAL.functions.FunctionAutoscalerManager.settings),
        (FakeApp.lookup, REAL.App.lookup),
        (FakeApp.get_tags, REAL.App.get_tags),
        (FakeFunctionCall.from_id, REAL.FunctionCall.from_id),
        (FakeFunctionCall.get, REAL.FunctionCall.get),
        (FakeFunctionCall.cancel, REAL.FunctionCall.cancel),
    ],
    ids=lambda f: getattr(f, "__qualname__", str(f)),
)
def test_double_signatures_equal_the_real_client(
    double: Callable[..., Any], real: Callable[..., Any]
) -> None:
    assert modal.__version__ == "1.6.4"
    assert signature_shape(double) == signature_shape(real)


def test_the_real_client_has_what_the_executor_uses() -> None:
    assert isinstance(inspect.getattr_static(modal.FunctionCall, "object_id"), property)
    # The executor's store reads and the function's writes bind to modal.Dict as to a dict.
    inspect.signature(modal.Dict.get).bind(object(), "key")
    inspect.signature(modal.Dict.__setitem__).bind(object(), "key", {"done": 1})
    # The real Obj of the real class exposes the method the executor spawns.
    assert isinstance(modal_app_module.BoundaryInference().infer, modal.Function)


# --- Preflight ------------------------------------------------------------------------------------


def test_preflight_without_credentials_refuses_before_any_lookup(
    cloud: FakeCloud, tmp_path: Path
) -> None:
    executor = executor_for(cloud, environ={"HOME": str(tmp_path)})
    with pytest.raises(ExecutorUnavailable, match="no Modal credentials") as caught:
        executor.preflight()
    assert "modal token new" in str(caught.value)
    assert cloud.lookups == [] and cloud.spawned == []


def test_the_modal_setting_never_falls_back_to_local(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from boundary_inference.services import open_executor

    for name in ("MODAL_TOKEN_ID", "MODAL_TOKEN_SECRET", "MODAL_CONFIG_PATH", "MODAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    executor = open_executor(get_settings(executor="modal"))
    assert isinstance(executor, ModalExecutor) and executor.name == "modal"
    with pytest.raises(ExecutorUnavailable, match="no Modal credentials"):
        executor.preflight()


def test_credentials_come_from_the_env_pair_or_the_active_profile(tmp_path: Path) -> None:
    config = tmp_path / ".modal.toml"
    assert not has_credentials({"HOME": str(tmp_path)})
    assert not has_credentials({"MODAL_TOKEN_ID": "ak-1", "HOME": str(tmp_path)})
    assert has_credentials({"MODAL_TOKEN_ID": "ak-1", "MODAL_TOKEN_SECRET": "as-1"})
    config.write_text(
        '[old]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n\n[work]\ntoken_id = "ak-2"\nactive = true\n'
    )
    assert not has_credentials({"HOME": str(tmp_path)})  # the active profile has no secret
    assert has_credentials({"HOME": str(tmp_path), "MODAL_PROFILE": "old"})
    config.write_text('[default]\ntoken_id = "ak-1"\ntoken_secret = "as-1"\n')
    assert has_credentials({"HOME": str(tmp_path)})
    assert has_credentials({"HOME": "/nonexistent", "MODAL_CONFIG_PATH": str(config)})


def test_an_app_that_is_not_deployed_is_refused(cloud: FakeCloud) -> None:
    cloud.deployed = False
    executor = executor_for(cloud)
    with pytest.raises(ExecutorUnavailable, match=r"modal deploy modal_app/app\.py"):
        executor.preflight()
    assert cloud.lookups == [("boundary-inference", "BoundaryInference")]
    cloud.deployed = True
    executor.preflight()  # the failed lookup was not cached


def test_a_spawn_that_may_have_been_accepted_is_not_called_refused(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only answers that prove Modal did not take the input mean "nothing runs"; a timeout or an
    UNAVAILABLE after sending may leave a call running under an id we never saw."""
    executor = executor_for(cloud)

    def answer(error: BaseException) -> Any:
        def spawn(request: dict[str, Any]) -> Any:
            raise error

        return spawn

    monkeypatch.setattr(cloud, "spawn", answer(modal_exc.ServiceError("unavailable")))
    with pytest.raises(SpawnUncertain, match="a call may be running"):
        executor.submit(make_request(clip[0]))
    monkeypatch.setattr(cloud, "spawn", answer(TimeoutError("deadline")))
    with pytest.raises(SpawnUncertain):
        executor.submit(make_request(clip[0]))
    monkeypatch.setattr(cloud, "spawn", answer(modal_exc.NotFoundError("app not found")))
    with pytest.raises(ExecutorUnavailable):
        executor.submit(make_request(clip[0]))


def test_a_deployment_that_allows_more_spend_is_refused(
    cloud: FakeCloud, settings: Settings
) -> None:
    """Read from the deployment itself on each preflight: a looser redeploy is refused at once,
    a corrected redeploy passes at once (nothing cached, nothing to delete by hand)."""
    executor = executor_for(cloud)
    executor.preflight()
    cloud.deployed_settings = get_settings(
        executor="modal", gpu_retries=4, gpu_timeout_s=3000, allow_unreachable_cost_cap=True
    )
    with pytest.raises(ExecutorUnavailable) as refused:
        executor.preflight()
    assert "gpu_retries: deployed 4 > configured 2" in str(refused.value)
    assert "gpu_timeout_s: deployed 3000 > configured" not in str(refused.value)  # 3000 < 3600
    cloud.deployed_settings = settings  # the fix, redeployed
    executor.preflight()


@pytest.mark.parametrize(
    ("deployed", "expected"),
    [
        ({"gpu": "H100"}, "gpu: deployed [('H100', 1)] != configured ['A10G' x 1]"),
        ({"gpu_timeout_s": 3601}, "gpu_timeout_s: deployed 3601 > configured 3600"),
        ({"cpu_cores": 4.0}, "cpu_cores: deployed 4 > configured 2"),
        ({"memory_mib": 16384}, "memory_mib: deployed 16384 > configured 8192"),
        ({"max_containers": 6}, "max_containers: deployed 6 > configured 5"),
        ({"scaledown_window_s": 301}, "scaledown_window_s: deployed 301 > configured 300"),
        ({"startup_timeout_s": 121.0}, "startup_timeout_s: deployed 121 > configured 120"),
        ({"abort_grace_s": 31.0}, "abort_grace_s: deployed 31 > configured 30"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_every_spend_limit_and_the_gpu_type_are_compared(
    cloud: FakeCloud, settings: Settings, deployed: dict[str, Any], expected: str
) -> None:
    cloud.deployed_settings = get_settings(
        **{"executor": "modal", "allow_unreachable_cost_cap": True, **deployed}
    )
    with pytest.raises(ExecutorUnavailable) as refused:
        executor_for(cloud).preflight()
    assert expected in str(refused.value)
    cloud.deployed_settings = settings
    executor_for(cloud).preflight()  # the same client passes once the deploy matches


def test_an_autoscaler_override_or_a_missing_record_is_refused(
    cloud: FakeCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``update_autoscaler`` after the deploy, and a deployment older than the recorded tags."""
    for override, expected in (
        ({"max_containers": 0}, "max_containers: deployed unbounded"),
        ({"min_containers": 1}, "min_containers: deployed 1 > 0"),
        ({"buffer_containers": 2}, "buffer_containers: deployed 2 > 0"),
    ):
        cloud.autoscaler_override = override
        with pytest.raises(ExecutorUnavailable, match=expected):
            executor_for(cloud).preflight()
    cloud.autoscaler_override = {}
    monkeypatch.setattr(cloud.App, "get_tags", lambda self, **_: {"project": "x"})
    with pytest.raises(ExecutorUnavailable, match="abort_grace_s: not recorded by the deploy"):
        executor_for(cloud).preflight()


def test_the_deploy_records_what_modal_does_not_report_back(settings: Settings) -> None:
    """The tags the real app object carries are valid Modal tags and hold the two values."""
    from modal._utils.name_utils import check_tag_dict

    tags = app_tags(settings)
    check_tag_dict(tags)
    assert tags == {
        "project": "boundary-inference",
        "bi-startup-timeout-s": "120",
        "bi-abort-grace-s": "30",
    }
    assert modal_app_module.app._local_state.tags == tags  # what `modal deploy` sends


# --- Spawn, poll, progress ------------------------------------------------------------------------


def test_submit_spawns_the_request_and_the_call_runs_the_real_job(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth]
) -> None:
    executor = executor_for(cloud)
    executor.preflight()
    request = make_request(clip[0], crop_box=clip[1].crop_box)
    call_id = executor.submit(request)
    assert call_id.startswith("fc-") and call_id in cloud.calls
    assert cloud.spawned == [request.to_dict()]
    status = wait_for(executor, call_id)
    assert status.state is CallState.SUCCEEDED, status.failure
    assert status.result is not None and len(status.result.predictions) == 40
    assert status.result.extra["attempts"] == 1 and status.result.extra["call_id"] == call_id
    assert (status.pairs_done, status.pairs_total) == (40, 40)
    assert all(timeout == 0.2 for _, timeout in cloud.gets)  # get(timeout=...), never unbounded
    assert cloud.calls[call_id].invocations == 1


def test_a_pending_call_reports_live_progress(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = use_gated_model(monkeypatch, hold_at=2, live_progress=True)
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0]))
    assert model.holding.wait(10)
    started = time.monotonic()
    status = executor.poll(call_id, timeout_s=0.3)
    assert time.monotonic() - started >= 0.25  # it waited in get(timeout=...)
    assert status.state is CallState.PENDING
    assert (status.pairs_done, status.pairs_total) == (16, 40)  # two batches of 8 went through
    assert status.progress == pytest.approx(0.4)
    model.release.set()
    status = wait_for(executor, call_id)
    assert status.state is CallState.SUCCEEDED


def test_a_fresh_instance_reattaches_with_only_the_call_id(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = use_gated_model(monkeypatch, hold_at=1, live_progress=True)
    call_id = executor_for(cloud).submit(make_request(clip[0]))
    assert model.holding.wait(10)

    other = executor_for(cloud)  # another process: no memory of the submit
    status = other.poll(call_id, timeout_s=0.05)
    assert status.state is CallState.PENDING
    assert (status.pairs_done, status.pairs_total) == (8, 40)  # found via the call id's record
    model.release.set()
    status = wait_for(executor_for(cloud), call_id)
    assert status.state is CallState.SUCCEEDED
    assert status.result is not None and status.result.run_id == "run-1"


def test_an_expired_result_is_a_lost_call(cloud: FakeCloud, clip: tuple[Path, GroundTruth]) -> None:
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0]))
    cloud.calls[call_id].done.wait(10)
    cloud.expired.add(call_id)
    status = executor.poll(call_id, timeout_s=0.1)
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.INFRASTRUCTURE
    assert status.failure.error_type == "OutputExpiredError"


def test_an_unknown_call_id_is_a_failure_not_a_hang(cloud: FakeCloud) -> None:
    status = executor_for(cloud).poll("fc-" + "9" * 24, timeout_s=0.1)
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.INFRASTRUCTURE


@pytest.mark.parametrize(
    "client_error",
    [
        modal_exc.ConnectionError("connection reset"),
        # Client-side, not the job's: once classified "user code", and the call left running.
        modal_exc.InternalError("internal"),
        modal_exc.ResourceExhaustedError("slow down"),
        modal_exc.ClientClosed("client closed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_polls_that_cannot_reach_modal_stay_pending_then_give_up(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], client_error: Exception
) -> None:
    now = [0.0]
    executor = executor_for(cloud, poll_error_limit_s=600.0, clock=lambda: now[0])
    call_id = executor.submit(make_request(clip[0]))
    cloud.calls[call_id].done.wait(10)
    cloud.get_raises = client_error
    assert executor.poll(call_id, timeout_s=0.1).state is CallState.PENDING
    now[0] = 599.0
    assert executor.poll(call_id, timeout_s=0.1).state is CallState.PENDING
    assert cloud.cancels == []
    now[0] = 601.0
    status = executor.poll(call_id, timeout_s=0.1)
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.INFRASTRUCTURE
    assert cloud.cancels == [(call_id, True)]  # and it stops paying for what it cannot watch


# --- Refusal, cancel, classification --------------------------------------------------------------


def test_a_refused_attempt_is_classified_as_infrastructure(
    cloud: FakeCloud, settings: Settings, clip: tuple[Path, GroundTruth]
) -> None:
    cloud.store[attempts_key("run-1")] = {"count": settings.gpu_attempts, "billed_s": 30.0}
    executor = executor_for(cloud)
    status = wait_for(executor, executor.submit(make_request(clip[0])))
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.INFRASTRUCTURE
    assert status.failure.error_type == "AttemptsExhausted"
    assert "refused" in status.failure.message
    assert status.failure.kind.counts_for_breaker


def test_a_crash_loop_ends_in_a_refusal_after_the_allowed_attempts(
    cloud: FakeCloud,
    settings: Settings,
    clip: tuple[Path, GroundTruth],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ran: list[int] = []

    class OomModel:
        threshold = 0.5

        def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
            ran.append(1)
            raise ContainerCrash("OOM-killed")

    monkeypatch.setattr(predictor, "get_model", lambda version, models_dir=None: OomModel())
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0]))
    status = wait_for(executor, call_id)
    assert status.failure is not None and status.failure.error_type == "AttemptsExhausted"
    assert (
        len(ran) == settings.gpu_attempts == 1 + function_options(settings)["retries"].max_retries
    )
    assert cloud.calls[call_id].invocations == settings.gpu_attempts + 1


def test_cancel_calls_function_call_cancel_and_the_call_ends_cancelled(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = use_gated_model(monkeypatch, hold_at=1)
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0]))
    assert model.holding.wait(10)
    executor.cancel(call_id)
    executor.cancel(call_id)  # idempotent
    assert cloud.cancels == [(call_id, True), (call_id, True)]  # container terminated too
    status = wait_for(executor, call_id)
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.CANCELLED
    assert status.failure.error_type == "RemoteError"
    assert cloud.calls[call_id].invocations == 1  # a cancel is not retried
    # Another process that never saw the cancel reads the same verdict from the call's record.
    fresh = wait_for(executor_for(cloud), call_id)
    assert fresh.failure is not None and fresh.failure.kind is FailureKind.CANCELLED
    assert not fresh.failure.kind.counts_for_breaker


def test_a_fresh_instance_cancels_by_id_and_cancel_never_raises(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    model = use_gated_model(monkeypatch, hold_at=1)
    call_id = executor_for(cloud).submit(make_request(clip[0]))
    assert model.holding.wait(10)
    executor_for(cloud).cancel(call_id)
    assert cloud.calls[call_id].done.wait(10)
    cloud.cancel_raises = modal_exc.ConnectionError("unreachable")
    executor_for(cloud).cancel(call_id)  # logged, not raised: it runs in finally blocks
    assert cloud.cancels[-3:] == [(call_id, True)] * 3


@pytest.mark.parametrize(
    ("server_error", "kind", "error_type", "billed_known"),
    [
        (
            modal_exc.FunctionTimeoutError("timed out"),
            FailureKind.TIMEOUT,
            "FunctionTimeoutError",
            False,
        ),
        (
            modal_exc.InternalFailure("worker preempted"),
            FailureKind.INFRASTRUCTURE,
            "InternalFailure",
            False,
        ),
        (modal_exc.RemoteError("worker lost"), FailureKind.INFRASTRUCTURE, "RemoteError", False),
        (
            modal_exc.ExecutionError("could not deserialize"),
            FailureKind.INFRASTRUCTURE,
            "ExecutionError",
            False,
        ),
        (MemoryError("CUDA out of memory"), FailureKind.INFRASTRUCTURE, "MemoryError", False),
        (Stalled("no progress"), FailureKind.TIMEOUT, "Stalled", True),
        (ValueError("bad input"), FailureKind.USER_CODE, "ValueError", True),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_failures_from_the_server_are_classified(
    cloud: FakeCloud,
    clip: tuple[Path, GroundTruth],
    server_error: BaseException,
    kind: FailureKind,
    error_type: str,
    billed_known: bool,
) -> None:
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0]))
    assert cloud.calls[call_id].done.wait(10)
    cloud.get_raises = server_error
    status = executor.poll(call_id, timeout_s=0.1)
    assert status.state is CallState.FAILED and status.failure is not None
    assert (status.failure.kind, status.failure.error_type) == (kind, error_type)
    assert (status.failure.elapsed_s is not None) is billed_known


def _user_error_request(case: str, clip: Path, tmp_path: Path) -> InferenceRequest:
    """A request that no attempt can run, one per class of user error."""
    if case == "missing-video":
        return make_request(tmp_path / "missing.mp4")
    if case == "video-changed":
        copy = tmp_path / "clip.mp4"
        copy.write_bytes(clip.read_bytes())
        registered = {"size_bytes": copy.stat().st_size + 1, "modified": "1"}
        return make_request(copy, source=registered)
    if case == "checksum-mismatch":
        LogisticModel("m", np.array([20.0, 0.0, 0.0], np.float32), -6.0).save(tmp_path / "m.npz")
        return replace(make_request(clip), model_version="ckpt:m", model_sha256="0" * 64)
    if case == "bad-checkpoint":
        (tmp_path / "m.npz").write_bytes(b"not a checkpoint")
        return replace(make_request(clip), model_version="ckpt:m")
    if case == "empty-crop":
        return make_request(clip, crop_box=CropBox(0, 600, 1280, 120))  # below a 320x180 frame
    assert case == "frame-out-of-range"
    return replace(make_request(clip), frame_pairs=[(0, 1), (48, 500)])


@pytest.mark.parametrize(
    "case",
    [
        "missing-video",
        "video-changed",
        "checksum-mismatch",
        "bad-checkpoint",
        "empty-crop",
        "frame-out-of-range",
    ],
)
def test_a_user_error_is_returned_typed_and_not_retried(
    cloud: FakeCloud, clip: tuple[Path, GroundTruth], tmp_path: Path, case: str
) -> None:
    """``modal.Retries`` retries every raised exception, each attempt billed: an error that no
    attempt can fix is returned, so the call runs once and is charged the seconds it used."""
    cloud.run_kwargs = {"models_dir": tmp_path}
    executor = executor_for(cloud)
    call_id = executor.submit(_user_error_request(case, clip[0], tmp_path))
    status = wait_for(executor, call_id)
    assert status.state is CallState.FAILED and status.failure is not None
    assert status.failure.kind is FailureKind.USER_CODE, status.failure
    assert not status.failure.kind.counts_for_breaker
    assert cloud.calls[call_id].invocations == 1
    record = cloud.store[attempts_key("run-1")]
    assert record["count"] == 1
    # The seconds of its one attempt: what the flow settles at (plus start-up and idle tail).
    assert status.failure.elapsed_s == pytest.approx(record["billed_s"])
    expected_type = {
        "missing-video": "VideoNotFound",
        "video-changed": "VideoChanged",
        "checksum-mismatch": "ChecksumMismatch",
        "bad-checkpoint": "CheckpointError",
        "empty-crop": "EmptyCrop",
        "frame-out-of-range": "FrameOutOfRange",
    }[case]
    assert status.failure.error_type == expected_type
    assert cloud.store["run-1"]["state"] == "failed"


def test_an_unreachable_video_store_still_raises_and_is_retried(
    cloud: FakeCloud, settings: Settings, refused_port: int
) -> None:
    """Infrastructure, not input: another attempt may succeed, so Modal's retries apply."""
    down = unreachable_store(refused_port)
    cloud.run_kwargs = {"storage": down}
    executor = executor_for(cloud)
    call_id = executor.submit(
        InferenceRequest(
            run_id="run-1",
            video_uri="s3://videos/clip.mp4",
            frame_pairs=[(0, 1)],
            model_version=BUILTIN,
            source={"size_bytes": 1000, "etag": '"e"'},
        )
    )
    status = wait_for(executor, call_id, limit_s=120)
    assert status.failure is not None
    assert (status.failure.kind, status.failure.error_type) == (
        FailureKind.INFRASTRUCTURE,
        "SourceUnavailable",
    )
    assert status.failure.kind.counts_for_breaker
    assert cloud.calls[call_id].invocations == settings.gpu_attempts


class ClockedModel:
    """The real builtin model; each batch "takes" ``step_s`` on the containers' clock."""

    threshold = BUILTIN_MODEL.threshold

    def __init__(self, step_s: float) -> None:
        self.now = 0.0
        self.step_s = step_s

    def clock(self) -> float:
        return self.now

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.now += self.step_s
        return BUILTIN_MODEL.predict_proba(a, b)


def test_the_per_job_deadline_is_a_timeout_with_its_billed_seconds(
    cloud: FakeCloud,
    settings: Settings,
    clip: tuple[Path, GroundTruth],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each batch of the real job takes 1 s on the containers' clock: a 3.5 s deadline ends every
    attempt in its fourth batch of 8, on any machine."""
    model = ClockedModel(step_s=1.0)
    monkeypatch.setattr(predictor, "get_model", lambda version, models_dir=None: model)
    cloud.clock = model.clock
    executor = executor_for(cloud)
    call_id = executor.submit(make_request(clip[0], batch_size=8, deadline_s=3.5))
    status = wait_for(executor, call_id)
    assert status.failure is not None
    assert (status.failure.kind, status.failure.error_type) == (
        FailureKind.TIMEOUT,
        "DeadlineExceeded",
    )
    # Returned, not raised: Modal retries nothing, so one attempt is billed its 4 s on the clock.
    assert status.failure.elapsed_s == pytest.approx(4.0)
    assert cloud.calls[call_id].invocations == 1
    assert status.pairs_done in (24, 32)  # part-way through 40


def test_a_returned_failure_is_classified_by_its_kind() -> None:
    """Deadlines and stalls count for the breaker as timeouts, out of memory as infrastructure;
    a code error is the job's own, whichever way it reached the client."""
    assert classify_kind("deadline_exceeded") is FailureKind.TIMEOUT
    assert classify_kind("stalled") is FailureKind.TIMEOUT
    assert classify_kind("out_of_memory") is FailureKind.INFRASTRUCTURE
    assert classify_kind("code_error") is FailureKind.USER_CODE
    assert classify_kind("video_changed") is FailureKind.USER_CODE


def test_classify_reads_the_stable_kind() -> None:
    assert classify(DeadlineExceeded("x")) is FailureKind.TIMEOUT
    assert classify(Stalled("x")) is FailureKind.TIMEOUT
    assert classify(VideoNotFound("x")) is FailureKind.USER_CODE
    assert classify(modal_app_module.AttemptsUnrecorded("x")) is FailureKind.INFRASTRUCTURE
    assert classify(MemoryError()) is FailureKind.INFRASTRUCTURE


# --- Exactly one retry layer ----------------------------------------------------------------------


def test_the_spawning_task_never_retries_and_the_audit_sees_stacking(settings: Settings) -> None:
    from flows.boundary_inference import boundary_inference_flow
    from tasks.execute import run_job

    assert run_job.retries == 0
    assert not boundary_inference_flow.retries
    assert retry_audit(settings, run_job, flows=[boundary_inference_flow]) == []

    stacked = retry_audit(settings, run_job.with_options(retries=2))
    assert len(stacked) == 1 and "could run 9 times, not 3" in stacked[0]
    flow_retried = retry_audit(
        settings, run_job, flows=[boundary_inference_flow.with_options(retries=1)]
    )
    assert len(flow_retried) == 1 and "flow retry" in flow_retried[0]
    # The imported class was built from other settings than these: reported, not assumed.
    other = get_settings(gpu_retries=1, allow_unreachable_cost_cap=True)
    assert any("BoundaryInference has max_retries=2" in p for p in retry_audit(other, run_job))


def test_the_configured_modal_environment_is_the_one_looked_up(cloud: FakeCloud) -> None:
    """``modal_environment_name`` reaches every name lookup (None: the token's default)."""
    seen: list[tuple[str, str | None]] = []

    def cls_lookup(app_name: str, name: str, *, environment_name: str | None = None) -> Any:
        seen.append(("cls", environment_name))
        return cloud.Cls.from_name(app_name, name, environment_name=environment_name)

    def app_lookup(name: str, *, environment_name: str | None = None) -> Any:
        seen.append(("app", environment_name))
        return cloud.App.lookup(name, environment_name=environment_name)

    for environment in ("staging", None):
        seen.clear()
        settings = get_settings(executor="modal", modal_environment_name=environment)
        ModalExecutor(
            settings,
            cls_lookup=cls_lookup,
            app_lookup=app_lookup,
            function_call_from_id=cloud.FunctionCall.from_id,
            progress_dict=cloud.store,
            environ=CREDENTIALS,
        ).preflight()
        assert seen == [("cls", environment), ("app", environment)]
