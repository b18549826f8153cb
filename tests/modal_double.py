"""A test double of the Modal cloud for :class:`ModalExecutor`, running the real function body.

The double replaces exactly the client objects the executor touches (``modal.Cls``, the method's
``spawn``, ``modal.FunctionCall``); ``tests/test_modal_executor.py`` asserts that its method
signatures equal the real client's. Behind it, a "call" runs :func:`modal_app.app.run_call` in a
thread with Modal's retry semantics, against a plain ``dict`` standing in for the progress
``modal.Dict``. Shared by the executor's tests and the flow tests that run on "Modal".
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import modal.exception as modal_exc
import numpy as np
import pytest
from modal._functions import _parse_retries
from modal._resources import convert_fn_config_to_resources_config
from modal.types import FunctionAutoscalerSettings, FunctionInfo
from modal_proto import api_pb2

import modal_app.app as modal_app_module
import modal_app.predictor as predictor
from boundary_inference.executor import (
    CallState,
    CallStatus,
)
from boundary_inference.executor.modal import ModalExecutor
from config import Settings
from modal_app.app import run_call
from modal_app.modal_config import app_tags, function_options
from modal_app.models import BUILTIN, BUILTIN_MODEL
from modal_app.types import InferenceRequest

# --- The test double ------------------------------------------------------------------------------


class ContainerCrash(BaseException):
    """An OOM kill or segfault: a deployed app retries it without counting a retry."""


class _Call:
    def __init__(self, object_id: str, request: dict[str, Any]) -> None:
        self.object_id = object_id
        self.request = request
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.cancel_requested = threading.Event()
        self.invocations = 0


class FakeCloud:
    """What Modal's servers do for one deployed app, in this process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # What the deployed app was deployed with (a redeploy replaces it): what Modal's function
        # metadata, autoscaler and app tags answer. The client's own settings are ``settings``.
        self.deployed_settings = settings
        self.autoscaler_override: dict[str, int] = {}  # Function.update_autoscaler after deploy
        self.store: dict[str, Any] = {}  # the progress modal.Dict
        self.deployed = True
        self.calls: dict[str, _Call] = {}
        self.spawned: list[dict[str, Any]] = []
        self.lookups: list[tuple[str, str]] = []
        self.gets: list[tuple[str, float | None]] = []
        self.cancels: list[tuple[str, bool]] = []
        self.expired: set[str] = set()
        self.get_raises: BaseException | None = None  # what the server answers instead
        # The spawn's answer is lost *after* the server accepted the call: the client raises this
        # (modal.exception.ConnectionError is what modal 1.6.4 re-raises a last retry's OSError
        # or asyncio timeout as, in _utils/grpc_utils.py) while the call runs on.
        self.answer_lost: BaseException | None = None
        # While set and not yet open, accepted calls wait in Modal's queue before any attempt.
        self.start_gate: threading.Event | None = None
        self.cancel_raises: BaseException | None = None
        self._ids = itertools.count(1)
        self._threads: list[threading.Thread] = []
        self.clock: Callable[[], float] = time.monotonic  # the containers' monotonic clock
        self.run_kwargs: dict[str, Any] = {}  # more keyword arguments of run_call (the container)
        bound = {"cloud": self}
        self.Cls: type[FakeCls] = type("BoundCls", (FakeCls,), bound)
        self.FunctionCall: type[FakeFunctionCall] = type(
            "BoundFunctionCall", (FakeFunctionCall,), bound
        )
        self.App: type[FakeApp] = type("BoundApp", (FakeApp,), bound)

    def function_info(self) -> FunctionInfo:
        """What ``Function.info(refresh=True)`` answers for the deployed class: the SDK's own
        parser over the ``FunctionData`` the SDK builds from the decorator values at deploy."""
        options = function_options(self.deployed_settings)
        function = api_pb2.Function(
            resources=convert_fn_config_to_resources_config(
                cpu=options["cpu"], memory=options["memory"], gpu=options["gpu"]
            ),
            retry_policy=_parse_retries(options["retries"], "Class 'BoundaryInference'"),
            timeout_secs=options["timeout"],
            startup_timeout_secs=int(options["startup_timeout"]),
        )
        data = api_pb2.FunctionData(
            ranked_functions=[api_pb2.FunctionData.RankedFunction(rank=0, function=function)],
            timeout_secs=options["timeout"],
            startup_timeout_secs=int(options["startup_timeout"]),
        )
        return FunctionInfo._from_function_proto(data)

    def autoscaler_settings(self) -> FunctionAutoscalerSettings:
        options = function_options(self.deployed_settings)
        current = {
            "max_containers": options["max_containers"],
            "scaledown_window": options["scaledown_window"],
            **self.autoscaler_override,
        }
        return FunctionAutoscalerSettings._from_proto(api_pb2.AutoscalerSettings(**current))

    def spawn(self, request: dict[str, Any]) -> FakeFunctionCall:
        if not self.deployed:
            raise modal_exc.NotFoundError("App 'boundary-inference' not found")
        call = _Call(f"fc-{next(self._ids):024d}", request)
        self.calls[call.object_id] = call
        self.spawned.append(request)
        thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._threads.append(thread)
        thread.start()
        if self.answer_lost is not None:
            raise self.answer_lost
        return self.FunctionCall(call.object_id)

    def _run(self, call: _Call) -> None:
        """Modal's input loop: exceptions consume ``retries``; crashes are retried uncounted."""
        if self.start_gate is not None:
            self.start_gate.wait(30)
        max_retries = function_options(self.settings)["retries"].max_retries
        retries_used = 0
        try:
            while call.invocations < 50:
                call.invocations += 1
                _CURRENT.call = call
                try:
                    call.value = run_call(
                        call.request,
                        store=self.store,
                        max_attempts=self.settings.gpu_attempts,
                        call_id=call.object_id,
                        **{"models_dir": None, "clock": self.clock, **self.run_kwargs},
                    )
                    return
                except ContainerCrash:
                    continue
                except modal_exc.InputCancellation:
                    # The server's answer to a terminated input; its wording is not relied upon.
                    call.error = modal_exc.RemoteError("input ended by the server")
                    return
                except Exception as error:
                    if retries_used == max_retries:
                        call.error = error
                        return
                    retries_used += 1
            call.error = AssertionError("crash loop never ended")
        finally:
            call.done.set()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(timeout=10)

    def close(self) -> None:
        """Release every held call (queued or running) and wait for their threads."""
        if self.start_gate is not None:
            self.start_gate.set()
        for call in self.calls.values():
            call.cancel_requested.set()
        self.join()


class _Current(threading.local):
    call: _Call | None = None


_CURRENT = _Current()


class FakeFunction:
    """``BoundaryInference().infer``."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud

    def spawn(self, *args: Any, **kwargs: Any) -> FakeFunctionCall:
        assert not kwargs and len(args) == 1
        return self.cloud.spawn(args[0])

    def info(self, *, refresh: bool = False) -> FunctionInfo:
        assert refresh, "a cached FunctionInfo could be stale"
        return self.cloud.function_info()

    @property
    def autoscaler(self) -> FakeAutoscaler:
        return FakeAutoscaler(self.cloud)


class FakeAutoscaler:
    """``Function.autoscaler``: modal 1.6.4's ``FunctionAutoscalerManager``."""

    def __init__(self, cloud: FakeCloud) -> None:
        self.cloud = cloud

    def settings(self) -> FunctionAutoscalerSettings:
        return self.cloud.autoscaler_settings()


class FakeApp:
    """``modal.App.lookup(name)`` of the deployed app: its tags are what the deploy set."""

    cloud: ClassVar[FakeCloud]

    @classmethod
    def lookup(
        cls,
        name: str,
        *,
        client: Any = None,
        environment_name: str | None = None,
        create_if_missing: bool = False,
    ) -> FakeApp:
        if not cls.cloud.deployed:
            raise modal_exc.NotFoundError(f"App {name!r} not found")
        return cls()

    def get_tags(self, *, client: Any = None) -> dict[str, str]:
        return app_tags(self.cloud.deployed_settings)


class FakeObj:
    def __init__(self, cloud: FakeCloud) -> None:
        self.infer = FakeFunction(cloud)


class FakeCls:
    cloud: ClassVar[FakeCloud]

    @classmethod
    def from_name(
        cls,
        app_name: str,
        name: str,
        *,
        version: int | None = None,
        environment_name: str | None = None,
        client: Any = None,
    ) -> FakeCls:
        cls.cloud.lookups.append((app_name, name))
        return cls()

    def hydrate(self, client: Any = None) -> FakeCls:
        if not self.cloud.deployed:
            raise modal_exc.NotFoundError("Lookup failed for Cls 'BoundaryInference'")
        return self

    def __call__(self, *args: Any, **kwargs: Any) -> FakeObj:
        return FakeObj(self.cloud)


class FakeFunctionCall:
    cloud: ClassVar[FakeCloud]

    def __init__(self, object_id: str) -> None:
        self._object_id = object_id

    @property
    def object_id(self) -> str:
        return self._object_id

    @classmethod
    def from_id(cls, function_call_id: str, client: Any = None) -> FakeFunctionCall:
        return cls(function_call_id)  # lazy, like the real one: no lookup until used

    def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        cloud = self.cloud
        cloud.gets.append((self.object_id, timeout))
        if cloud.get_raises is not None:
            raise cloud.get_raises
        call = cloud.calls.get(self.object_id)
        if call is None:
            raise modal_exc.NotFoundError(f"function call {self.object_id} not found")
        if self.object_id in cloud.expired:
            raise modal_exc.OutputExpiredError("output expired")
        if not call.done.wait(timeout):
            raise TimeoutError()  # the built-in one, as the real client raises while pending
        if call.error is not None:
            raise call.error
        return call.value

    def cancel(self, terminate_containers: bool = False) -> None:
        cloud = self.cloud
        cloud.cancels.append((self.object_id, terminate_containers))
        if cloud.cancel_raises is not None:
            raise cloud.cancel_raises
        call = cloud.calls.get(self.object_id)
        if call is not None:
            call.cancel_requested.set()


class GatedModel:
    """The real builtin model, held before batch ``hold_at`` until released (a slow job), and
    raising ``InputCancellation`` there when the call is cancelled, as Modal does in the container."""

    threshold = BUILTIN_MODEL.threshold

    def __init__(self, hold_at: int = 1) -> None:
        self.release = threading.Event()
        self.holding = threading.Event()
        self.hold_at = hold_at
        self.batches = 0

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.batches += 1
        if self.batches > self.hold_at:
            self.holding.set()
            call = _CURRENT.call
            while not self.release.wait(0.01):
                if call is not None and call.cancel_requested.is_set():
                    raise modal_exc.InputCancellation("input cancelled")
        return BUILTIN_MODEL.predict_proba(a, b)


def use_gated_model(
    monkeypatch: pytest.MonkeyPatch, *, hold_at: int, live_progress: bool = False
) -> GatedModel:
    """Every job in this process runs a :class:`GatedModel`; ``live_progress``: each batch's
    progress is published at once (no throttle)."""
    if live_progress:
        monkeypatch.setattr(modal_app_module, "PROGRESS_INTERVAL_S", 0.0)
    model = GatedModel(hold_at=hold_at)
    monkeypatch.setattr(predictor, "get_model", lambda version, models_dir=None: model)
    return model


CREDENTIALS = {"MODAL_TOKEN_ID": "ak-test", "MODAL_TOKEN_SECRET": "as-test", "HOME": "/nonexistent"}


def executor_for(
    cloud: FakeCloud, *, environ: dict[str, str] | None = None, **kwargs: Any
) -> ModalExecutor:
    """A fresh instance, as another process would build it: it shares only the cloud."""
    return ModalExecutor(
        cloud.settings,
        cls_lookup=cloud.Cls.from_name,
        function_call_from_id=cloud.FunctionCall.from_id,
        app_lookup=cloud.App.lookup,
        progress_dict=cloud.store,
        environ=CREDENTIALS if environ is None else environ,
        **kwargs,
    )


def make_request(video: Path, *, run_id: str = "run-1", **kwargs: Any) -> InferenceRequest:
    fields: dict[str, Any] = {"batch_size": 8, "deadline_s": 60.0, "heartbeat_timeout_s": 30.0}
    fields.update(kwargs)
    return InferenceRequest(
        run_id=run_id,
        video_uri=str(video),
        frame_pairs=[(i, i + 1) for i in range(40)],
        model_version=BUILTIN,
        **fields,
    )


def wait_for(executor: ModalExecutor, call_id: str, limit_s: float = 30.0) -> CallStatus:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        status = executor.poll(call_id, timeout_s=0.2)
        if status.state is not CallState.PENDING:
            return status
    raise AssertionError(f"{call_id} did not finish in {limit_s} s")
