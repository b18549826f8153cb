"""The Modal function, run for real on this machine: decorator options, deadline, heartbeat, hard
exit, attempt cap, live progress.

Only the Modal cloud is absent. The decorator options are checked two ways: against the settings,
and through the real modal 1.6.4 client, which validates them and reports (offline, via
``Function.info()``) what it would deploy. ``run_call`` is the function body; a plain ``dict``
stands in for the progress ``modal.Dict`` (it offers the same ``get``/``__setitem__``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import modal
import modal.exception as modal_exc
import numpy as np
import pytest

import modal_app.app as modal_app_module
import modal_app.predictor as predictor
from config import get_settings
from modal_app.app import EXIT_ABORTED, LOAD_KEEPALIVE_S, AttemptsUnrecorded, run_call
from modal_app.modal_config import (
    FAILED,
    IMAGE_PACKAGES,
    NOT_BAKED,
    REFUSED,
    attempts_key,
    baked_environment,
    call_key,
    function_options,
    models_mount_path,
)
from modal_app.models import BUILTIN, BUILTIN_MODEL
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import InferenceRequest
from tests.storage_support import unreachable_store
from tests.support import ManualClock, run_python

ROOT = Path(__file__).resolve().parents[1]
# Threads an attempt starts; none may outlive it.
WATCH_THREADS = ("heartbeat", "deadline", "decode")
DEPRECATED_NAMES = {
    "concurrency_limit",
    "keep_warm",
    "container_idle_timeout",
    "allow_concurrent_inputs",
}


# --- Fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("modal-app") / "clip.mp4"
    return path, make_video(path, seed=11, frame_count=90)


def make_request(
    video: Path | str,
    *,
    run_id: str = "run-1",
    pairs: int = 60,
    batch_size: int = 8,
    deadline_s: float = 60.0,
    heartbeat_timeout_s: float = 30.0,
    truth: GroundTruth | None = None,
) -> InferenceRequest:
    return InferenceRequest(
        run_id=run_id,
        video_uri=str(video),
        frame_pairs=[(i, i + 1) for i in range(pairs)],
        model_version=BUILTIN,
        crop_box=truth.crop_box if truth else None,
        batch_size=batch_size,
        deadline_s=deadline_s,
        heartbeat_timeout_s=heartbeat_timeout_s,
    )


class RecordingStore(dict[Any, Any]):
    """A real dict that also keeps every value written under each key, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.history: dict[Any, list[Any]] = {}

    def __setitem__(self, key: Any, value: Any) -> None:
        self.history.setdefault(key, []).append(value)
        super().__setitem__(key, value)


class ClockedModel:
    """The real builtin model, each batch of which "takes" ``step_s`` on the injected clock."""

    threshold = BUILTIN_MODEL.threshold

    def __init__(self, clock: ManualClock, step_s: float) -> None:
        self.clock = clock
        self.step_s = step_s

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.clock.advance(self.step_s)
        return BUILTIN_MODEL.predict_proba(a, b)


class HungModel:
    """A model stuck in Python code for ``advance_s`` of the job's clock: the watchdog timers due
    meanwhile run, and the abort one of them raises into this thread must end the hang."""

    threshold = 0.5

    def __init__(self, clock: ManualClock, advance_s: float) -> None:
        self.calls = 0
        self.clock = clock
        self.advance_s = advance_s

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.clock.advance(self.advance_s)  # the abort lands in here
        raise AssertionError(f"no watchdog ended a hang of {self.advance_s:g} s")


def use_model(monkeypatch: pytest.MonkeyPatch, model: Any) -> None:
    monkeypatch.setattr(predictor, "get_model", lambda version, models_dir=None: model)


def run_watched(
    request: InferenceRequest, store: Any, exits: list[int], clock: ManualClock
) -> dict[str, Any]:
    """``run_call`` with its watchdogs on the job's ``clock`` (its timers too); a hard exit is
    recorded in ``exits`` instead of ending the test process."""
    return run_call(
        request.to_dict(),
        store=store,
        max_attempts=3,
        models_dir=None,
        hard_exit=exits.append,
        abort_grace_s=0.5,
        clock=clock,
        watch_timer=clock.start_timer,
    )


def stepping_clock(step_s: float) -> Callable[[], float]:
    """A wall clock that advances ``step_s`` per reading: every progress update is published."""
    now = [1_000_000.0]

    def read() -> float:
        now[0] += step_s
        return now[0]

    return read


# --- What is passed to Modal ----------------------------------------------------------------------


def test_decorator_options_follow_the_settings() -> None:
    custom = get_settings(
        gpu_retries=1,
        gpu_timeout_s=900,
        max_containers=2,
        scaledown_window_s=60,
        allow_unreachable_cost_cap=True,
    )
    for settings in (get_settings(), custom):
        options = function_options(settings)
        assert options["gpu"] == settings.gpu
        assert options["timeout"] == settings.gpu_timeout_s
        assert options["scaledown_window"] == settings.scaledown_window_s
        assert options["max_containers"] == settings.max_containers
        retries = options["retries"]
        assert isinstance(retries, modal.Retries)
        assert retries.max_retries == settings.gpu_retries
        assert options["enable_memory_snapshot"] is True
        assert options["secrets"] == []
        assert set(options["volumes"]) == {models_mount_path(settings)}
        assert not DEPRECATED_NAMES & set(options)
        # No per-container concurrency: one job per container, so billed seconds are per job.
        assert "max_inputs" not in options
    assert get_settings().gpu == "A10G"


def test_the_real_modal_client_accepts_the_options_and_reports_them_offline() -> None:
    settings = get_settings(
        gpu_retries=1, gpu_timeout_s=900, max_containers=2, allow_unreachable_cost_cap=True
    )
    app = modal.App("boundary-inference-options-test")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a deprecated name would warn or raise here

        @app.cls(**function_options(settings), serialized=True)
        class Probe:
            @modal.method()
            def infer(self) -> None:
                return None

    info = Probe().infer.info()
    assert info.gpus == [("A10G", 1)]
    assert info.timeout == 900
    assert info.max_retries == 1
    assert info.concurrency_info is None
    assert info.single_use_containers is False
    assert set(info.volumes) == {models_mount_path(settings)}


@pytest.mark.parametrize("name", sorted(DEPRECATED_NAMES))
def test_this_modal_refuses_the_deprecated_names(name: str) -> None:
    """Why the check above means something: modal 1.6 raises on every old spelling."""
    app = modal.App("boundary-inference-deprecated-test")
    old_spelling: dict[str, Any] = {name: 2}
    with pytest.raises(modal_exc.DeprecationError):

        @app.cls(**old_spelling, serialized=True)
        class Old:
            @modal.method()
            def infer(self) -> None:
                return None


def test_the_deployed_class_reports_its_settings_offline() -> None:
    """``Cls().method.info()`` works without credentials for the real decorated class."""
    settings = modal_app_module.settings
    info = modal_app_module.BoundaryInference().infer.info()
    assert info.gpus == [(settings.gpu.upper(), 1)]
    assert info.timeout == settings.gpu_timeout_s
    assert info.max_retries == settings.gpu_retries
    assert info.method_names == ["infer"]
    assert info.concurrency_info is None  # no @modal.concurrent
    assert set(info.volumes) == {models_mount_path(settings)}
    assert info.secrets == []


def test_the_module_decorates_the_class_with_exactly_function_options(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What ``info()`` cannot show (max_containers, scaledown, snapshot, backoff) is read off the
    decorator call itself: the module is imported afresh with ``App.cls`` spied on."""
    seen: list[dict[str, Any]] = []
    real_cls = modal.App.cls

    def spy(self: modal.App, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_cls(self, **kwargs)

    monkeypatch.setattr(modal.App, "cls", spy)
    name = "modal_app._app_under_spy"
    spec = importlib.util.spec_from_file_location(name, ROOT / "modal_app" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, module)
    spec.loader.exec_module(module)

    assert len(seen) == 1
    used, expected = seen[0], function_options(module.settings)
    assert set(used) == set(expected)
    for key in (
        "gpu",
        "timeout",
        "startup_timeout",
        "scaledown_window",
        "max_containers",
        "enable_memory_snapshot",
    ):
        assert used[key] == expected[key], key
    assert used["startup_timeout"] == module.settings.startup_timeout_s
    # Billing is attributed by this tag (boundary_inference.billing's default tag name).
    # The deploy also records the two spend limits Modal's metadata does not report back.
    assert module.app._local_state.tags == {
        "project": module.settings.modal_app_name,
        "bi-startup-timeout-s": "120",
        "bi-abort-grace-s": "30",
    }
    for key in ("cpu", "memory"):
        assert used[key] == expected[key], key
    assert vars(used["retries"]) == vars(expected["retries"])
    assert used["max_containers"] == module.settings.max_containers
    assert used["scaledown_window"] == module.settings.scaledown_window_s


def test_image_pins_are_the_locked_versions() -> None:
    locked = dict(
        line.split("==", 1)
        for line in (ROOT / "requirements.lock").read_text().splitlines()
        if re.match(r"^[A-Za-z0-9_.-]+==", line)
    )
    for pin in IMAGE_PACKAGES:
        name, version = pin.split("==")
        assert locked.get(name) == version, pin


# The image's platform: Modal's debian_slim with CPython 3.11 on x86_64.
IMAGE_MARKERS = {
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
}


def test_the_image_pins_every_package_it_pulls_in() -> None:
    """Closed under requirements: each pinned package's own requirements (as installed here,
    at the lock's versions; markers read for the image's platform, extras followed) are pinned
    too, so uv has nothing left to resolve when the image is built."""
    import importlib.metadata as md

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    pinned = {canonicalize_name(pin.split("==")[0]) for pin in IMAGE_PACKAGES}
    missing: set[str] = set()
    stack = [(name, frozenset[str]()) for name in pinned]
    seen: set[tuple[str, frozenset[str]]] = set()
    while stack:
        name, extras = stack.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for line in md.distribution(name).requires or []:
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**IMAGE_MARKERS, "extra": extra}) for extra in {"", *extras}
            )
            if not wanted:
                continue
            dependency = canonicalize_name(req.name)
            if dependency not in pinned:
                missing.add(f"{dependency} (required by {name})")
            else:
                stack.append((dependency, frozenset(req.extras)))
    assert not missing, sorted(missing)
    assert {"numpy", "av", "boto3", "supabase", "pydantic-core", "botocore"} <= pinned


def test_baked_environment_carries_no_secret_and_rebuilds_the_same_limits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    deployer = get_settings(
        gpu_retries=1,
        gpu_timeout_s=1800,
        max_containers=3,
        database_url="postgresql://user:hunter2@db.example/x",
        redis_url="redis://:hunter2@cache.example:6379/0",
        allow_unreachable_cost_cap=True,
    )
    env = baked_environment(deployer)
    assert not any("hunter2" in value for value in env.values())
    assert not {f"BOUNDARY_INFERENCE_{n.upper()}" for n in NOT_BAKED} & set(env)
    assert env["BOUNDARY_INFERENCE_MODELS_DIR"] == "/models"
    # The container re-reads Settings from exactly this environment.
    for key in [k for k in os.environ if k.startswith("BOUNDARY_INFERENCE_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(ROOT / "tests")  # no .env here
    inside = get_settings()
    assert inside.gpu_attempts == deployer.gpu_attempts
    assert inside.gpu_timeout_s == deployer.gpu_timeout_s
    assert inside.max_containers == deployer.max_containers
    assert inside.database_url is None and inside.redis_url is None


# --- The function body: a real job ----------------------------------------------------------------


def test_a_real_job_publishes_monotonic_progress_and_counts_its_attempt(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modal_app_module, "PROGRESS_INTERVAL_S", 0.0)
    video, truth = clip
    request = make_request(video, pairs=60, batch_size=8, truth=truth)
    store = RecordingStore()
    out = run_call(
        request.to_dict(),
        store=store,
        max_attempts=3,
        models_dir=None,
        call_id="fc-real",
        wall_clock=stepping_clock(1.0),
    )
    assert REFUSED not in out
    predictions = out["predictions"]
    assert len(predictions) == 60
    # The builtin model on the synthetic clip finds the caption changes.
    labels = truth.labels_for(request.frame_pairs)
    hits = sum(p["is_boundary"] == label for p, label in zip(predictions, labels, strict=True))
    assert hits >= 57
    assert out["extra"]["attempts"] == 1 and out["extra"]["call_id"] == "fc-real"

    updates = store.history["run-1"]
    done = [u["done"] for u in updates]
    assert len(updates) >= 60 // 8  # one per batch at least, plus start and end
    assert done == sorted(done) and done[0] == 0 and done[-1] == 60
    assert {u["total"] for u in updates} == {60}
    assert updates[-1]["state"] == "succeeded"
    assert all(set(u) >= {"done", "total", "updated_at", "attempt", "state"} for u in updates)
    assert [u["updated_at"] for u in updates] == sorted(u["updated_at"] for u in updates)
    assert store[call_key("fc-real")] == "run-1"
    record = store[attempts_key("run-1")]
    assert record["count"] == 1 and record["billed_s"] > 0 and record["last_error_kind"] is None


def test_progress_is_throttled_but_always_final(clip: tuple[Path, GroundTruth]) -> None:
    video, truth = clip
    store = RecordingStore()
    frozen = lambda: 5_000_000.0  # noqa: E731 - the wall clock never advances: all throttled
    run_call(
        make_request(video, pairs=60, batch_size=4, truth=truth).to_dict(),
        store=store,
        max_attempts=3,
        models_dir=None,
        wall_clock=frozen,
    )
    updates = store.history["run-1"]
    # Start, the last batch (never throttled) and the final state; the 14 batches in between
    # were not written.
    assert [(u["done"], u["state"]) for u in updates] == [
        (0, "running"),
        (60, "running"),
        (60, "succeeded"),
    ]


# --- Per-job deadline, heartbeat, hard exit -------------------------------------------------------


def test_a_tiny_deadline_stops_a_real_decode(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real decoding, the real model; each batch takes 1 s on the job's clock, so a 5.5 s
    deadline ends the job in its sixth batch whatever this machine's speed."""
    video, truth = clip
    clock = ManualClock()
    use_model(monkeypatch, ClockedModel(clock, step_s=1.0))
    store = RecordingStore()
    outcome = run_call(
        make_request(video, pairs=80, batch_size=8, deadline_s=5.5, truth=truth).to_dict(),
        store=store,
        max_attempts=3,
        models_dir=None,
        clock=clock,
        watch_timer=clock.start_timer,
    )
    # Returned, not raised: a retry would pass the same deadline again, billed again.
    assert outcome[FAILED]["kind"] == "deadline_exceeded" and outcome[FAILED]["attempts"] == 1
    assert outcome[FAILED]["billed_s"] == pytest.approx(6.0)
    record = store[attempts_key("run-1")]
    assert record["last_error_kind"] == "deadline_exceeded"
    # Either watch (the predictor between batches or the deadline watchdog inside one) ends it
    # at 6 s on the job's clock: that is what is billed.
    assert record["billed_s"] == pytest.approx(6.0)
    last = store["run-1"]
    assert last["state"] == "failed"
    assert last["done"] in (40, 48)  # stopped part-way; the count did not fall back to 0
    done = [u["done"] for u in store.history["run-1"]]
    assert done == sorted(done)


def test_the_deadline_fires_inside_a_batch_that_never_ends(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    use_model(monkeypatch, HungModel(clock, advance_s=61.0))  # the batch outlives the deadline
    exits: list[int] = []
    store = RecordingStore()
    outcome = run_watched(
        make_request(clip[0], deadline_s=60.0, heartbeat_timeout_s=600), store, exits, clock
    )
    assert outcome[FAILED]["error_type"] == "DeadlineExceeded"
    assert "deadline watchdog" in outcome[FAILED]["message"]
    assert store[attempts_key("run-1")]["billed_s"] == pytest.approx(61.0)
    clock.advance(1.0)  # past the grace: the thread honoured the abort, so no exit
    assert exits == []


def test_the_heartbeat_ends_a_hang_well_before_the_hard_timeout(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock()
    # No batch completes: the first forward pass is kept alive for LOAD_KEEPALIVE_S (a compile),
    # then 121 s of the job's clock pass without a beat.
    hang_s = LOAD_KEEPALIVE_S + 121.0
    model = HungModel(clock, advance_s=hang_s)
    use_model(monkeypatch, model)
    store = RecordingStore()
    exits: list[int] = []
    outcome = run_watched(
        make_request(clip[0], deadline_s=3000.0, heartbeat_timeout_s=120.0), store, exits, clock
    )
    assert outcome[FAILED]["kind"] == "stalled" and "heartbeat" in outcome[FAILED]["message"]
    assert model.calls == 1
    record = store[attempts_key("run-1")]
    assert record["last_error_kind"] == "stalled"
    # Ended at the heartbeat, far below the per-job deadline (3000 s) and Modal's timeout.
    assert record["billed_s"] == pytest.approx(hang_s)
    assert store["run-1"]["state"] == "failed"
    clock.advance(1.0)  # past the grace
    assert exits == []
    assert not [t for t in threading.enumerate() if t.name in WATCH_THREADS and t.is_alive()]


def blocked_in_fifo_open() -> bool:
    """A thread of this process waits, in the kernel, for a writer to open the FIFO it opens
    for reading."""
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "wchan").read_text() == "wait_for_partner":
                return True
        except OSError:
            continue  # the thread ended meanwhile
    return False


def test_a_thread_stuck_in_native_code_gets_the_hard_exit(tmp_path: Path) -> None:
    """Opening a FIFO blocks inside the decoder's C code, where the raised abort cannot land.

    The decoding thread opens it; the working thread, aborted, waits for that thread to end. The
    job's clock moves only once the open is blocked (the kernel says so), so the attempt is stuck
    in native code when its watchdog fires, on any machine, however slow."""
    fifo = tmp_path / "stuck.mp4"
    os.mkfifo(fifo)

    def unblock() -> None:
        try:  # a writer that opens and closes lets the blocked open() return
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass  # nobody is blocked on it any more

    clock = ManualClock()
    started = clock()
    exits: list[tuple[int, float]] = []

    def hard_exit(code: int) -> None:
        # In the container this is os._exit: the process ends. Here the record is taken and the
        # stuck thread set free, so the test can finish.
        exits.append((code, clock() - started))
        unblock()

    stuck = threading.Event()

    def move_time_once_stuck() -> None:
        bound = time.monotonic() + 15.0  # a bound on the test, not a synchronisation
        while not blocked_in_fifo_open() and time.monotonic() < bound:
            time.sleep(0.01)  # polls the kernel's answer
        if blocked_in_fifo_open():
            stuck.set()
            clock.advance(2.0)  # past the heartbeat (0.5 s) and the grace (0.3 s)
        unblock()  # never leave the suite hanging if the exit is missing

    store = RecordingStore()
    driver = threading.Thread(target=move_time_once_stuck, daemon=True)
    driver.start()
    try:
        outcome = run_call(
            make_request(fifo, deadline_s=60.0, heartbeat_timeout_s=0.5).to_dict(),
            store=store,
            max_attempts=3,
            models_dir=None,
            hard_exit=hard_exit,
            abort_grace_s=0.3,
            clock=clock,
            watch_timer=clock.start_timer,
        )
        assert outcome[FAILED]["kind"] in ("stalled", "deadline_exceeded")
    finally:
        driver.join(30.0)
    assert stuck.is_set(), "no thread blocked in the FIFO's open"
    assert len(exits) == 1
    code, at_s = exits[0]
    assert code == EXIT_ABORTED
    # Not before the heartbeat (0.5 s) and the grace (0.3 s) on the job's clock; and by the exit,
    # not the driver's own unblock (it set the thread free).
    assert at_s > 0.7
    # Recorded *before* the exit, so the next attempt and the client learn why.
    assert store[attempts_key("run-1")]["last_error_kind"] == "stalled"


# --- Attempt cap ----------------------------------------------------------------------------------


def test_an_attempt_past_the_cap_is_refused_without_running(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = get_settings()
    ran: list[str] = []
    monkeypatch.setattr(
        predictor, "get_model", lambda version, models_dir=None: ran.append(version)
    )
    store: dict[str, Any] = {
        attempts_key("run-1"): {
            "count": settings.gpu_attempts,
            "billed_s": 42.0,
            "last_error_kind": "stalled",
        }
    }
    out = run_call(
        make_request(clip[0]).to_dict(),
        store=store,
        max_attempts=settings.gpu_attempts,
        models_dir=None,
    )
    refused = out[REFUSED]
    assert refused["kind"] == "attempts_exhausted"
    assert refused["attempts"] == settings.gpu_attempts
    assert refused["billed_s"] == 42.0 and refused["last_error_kind"] == "stalled"
    assert ran == []  # not even the model was loaded
    assert "run-1" not in store  # no progress published: nothing ran
    assert store[attempts_key("run-1")]["count"] == settings.gpu_attempts + 1


class ContainerCrash(BaseException):
    """Stands for an OOM kill or a segfault: not an exception Modal's retry count sees."""


class FailingModel:
    threshold = 0.5

    def __init__(self, error: Callable[[], BaseException]) -> None:
        self.error = error
        self.invocations = 0

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.invocations += 1
        raise self.error()


def modal_retry_loop(
    invoke: Callable[[], dict[str, Any]], *, max_retries: int, crash_limit: int = 50
) -> tuple[str, Any, int]:
    """Modal's semantics for a deployed function: an exception consumes one of ``max_retries``;
    a container crash is retried without counting (here up to ``crash_limit``: "forever")."""
    retries_used = invocations = 0
    while invocations < crash_limit:
        invocations += 1
        try:
            return "returned", invoke(), invocations
        except ContainerCrash:
            continue
        except Exception as error:
            if retries_used == max_retries:
                return "raised", error, invocations
            retries_used += 1
    return "looping", None, invocations


@pytest.mark.parametrize(
    ("failure", "expected_end"),
    [
        (lambda: ContainerCrash("OOM-killed"), "refused"),  # the crash loop, cut by the counter
        (lambda: MemoryError("CUDA out of memory"), "failed"),  # would repeat: one attempt
        (lambda: ValueError("a bug in the model code"), "failed"),  # would repeat: one attempt
    ],
    ids=["crash-loop", "out-of-memory", "code-error"],
)
def test_invocations_per_logical_job_are_bounded_by_the_retry_policy(
    clip: tuple[Path, GroundTruth],
    monkeypatch: pytest.MonkeyPatch,
    failure: Callable[[], BaseException],
    expected_end: str,
) -> None:
    settings = get_settings()
    max_retries = function_options(settings)["retries"].max_retries
    model = FailingModel(failure)
    use_model(monkeypatch, model)
    store: dict[str, Any] = {}
    request = make_request(clip[0]).to_dict()

    end, value, invocations = modal_retry_loop(
        lambda: run_call(request, store=store, max_attempts=settings.gpu_attempts, models_dir=None),
        max_retries=max_retries,
    )
    assert end == "returned"  # never left to Modal's retries
    if expected_end == "refused":
        assert model.invocations == 1 + max_retries == settings.gpu_attempts
        assert value[REFUSED]["kind"] == "attempts_exhausted"
        assert invocations == settings.gpu_attempts + 1  # the refused one ran nothing
    else:
        assert model.invocations == invocations == 1
        kind = "out_of_memory" if "memory" in str(value[FAILED]["message"]) else "code_error"
        assert value[FAILED]["kind"] == kind and value[FAILED]["attempts"] == 1
    assert store[attempts_key("run-1")]["count"] == invocations


def test_an_attempt_after_a_hard_exit_returns_its_watchdog_failure(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attempt ignored its abort and the container exited: Modal retries that as a crash,
    and the retry returns the recorded failure without loading or decoding anything."""
    model = FailingModel(lambda: AssertionError("must not run"))
    use_model(monkeypatch, model)
    store: dict[str, Any] = {
        attempts_key("run-1"): {"count": 1, "billed_s": 61.0, "last_error_kind": "stalled"}
    }
    outcome = run_call(
        make_request(clip[0]).to_dict(), store=store, max_attempts=3, models_dir=None
    )
    assert outcome[FAILED]["kind"] == "stalled" and outcome[FAILED]["attempts"] == 1
    assert outcome[FAILED]["billed_s"] == 61.0 and model.invocations == 0


def test_an_attempt_that_cannot_be_counted_does_not_run(
    clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    class Unreachable(dict[Any, Any]):
        def get(self, key: Any, default: Any = None) -> Any:
            raise ConnectionError("Dict service unavailable")

    ran: list[str] = []
    monkeypatch.setattr(
        predictor, "get_model", lambda version, models_dir=None: ran.append(version)
    )
    with pytest.raises(AttemptsUnrecorded):
        run_call(
            make_request(clip[0]).to_dict(), store=Unreachable(), max_attempts=3, models_dir=None
        )
    assert ran == []


# --- Errors the client classifies -----------------------------------------------------------------


def test_user_errors_are_returned_typed_and_cancellation_is_raised(
    tmp_path: Path, clip: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    store: dict[str, Any] = {attempts_key("gone"): {"count": 1, "billed_s": 4.0}}
    out = run_call(
        make_request(tmp_path / "missing.mp4", run_id="gone").to_dict(),
        store=store,
        max_attempts=3,
        models_dir=None,
        call_id="fc-gone",
    )
    failed = out[FAILED]  # a value, not an exception: Modal's retry policy never sees it
    assert (failed["kind"], failed["error_type"]) == ("video_not_found", "VideoNotFound")
    assert "missing.mp4" in failed["message"]
    assert failed["attempts"] == 2 and failed["call_id"] == "fc-gone"
    assert failed["billed_s"] >= 4.0  # every attempt's seconds, this one's included
    assert store[attempts_key("gone")]["last_error_kind"] == "video_not_found"
    assert store[attempts_key("gone")]["billed_s"] == pytest.approx(failed["billed_s"])
    assert store["gone"]["state"] == "failed"

    # Modal raises InputCancellation (a BaseException) inside the running input on a cancel.
    use_model(monkeypatch, FailingModel(lambda: modal_exc.InputCancellation("cancelled")))
    with pytest.raises(modal_exc.InputCancellation):
        run_call(
            make_request(clip[0], run_id="cancelled").to_dict(),
            store=store,
            max_attempts=3,
            models_dir=None,
        )
    assert store[attempts_key("cancelled")]["last_error_kind"] == "InputCancellation"
    assert store["cancelled"]["state"] == "failed"


@pytest.fixture(autouse=True)
def _no_stray_watchdogs() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name in WATCH_THREADS and t.is_alive()]:
            return
        time.sleep(0.05)
    raise AssertionError("a heartbeat, deadline or decoding thread outlived its attempt")


def test_modal_deploy_can_import_the_app_file_offline() -> None:
    """``modal deploy modal_app/app.py`` imports the file in script mode (its folder first on
    ``sys.path``, module name ``app``): done here with modal's own import code, in a child
    process so that the path change does not leak into the suite."""

    code = (
        "from modal.cli.import_refs import import_file_or_module, parse_import_ref\n"
        "ref = parse_import_ref('modal_app/app.py', use_module_mode=False, command='deploy')\n"
        "module = import_file_or_module(ref, base_cmd='modal deploy')\n"
        "info = module.BoundaryInference().infer.info()\n"
        "print(module.__name__, module.app.name, info.max_retries, info.timeout)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNDARY_INFERENCE_")}
    done = run_python(["-c", code], env=env, cwd=ROOT, timeout_s=60)
    assert done.returncode == 0, done.stderr[-2000:]
    fields = type(get_settings()).model_fields  # the child ran with no overrides: defaults
    expected = " ".join(
        str(fields[name].default) for name in ("modal_app_name", "gpu_retries", "gpu_timeout_s")
    )
    expected = f"app {expected}"
    assert done.stdout.split("\n")[-2] == expected


# --- What the function checks before it runs ------------------------------------------------------


def test_a_swapped_checkpoint_is_returned_typed_before_any_frame_is_decoded(
    clip: tuple[Path, GroundTruth], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hashlib
    from dataclasses import replace

    from modal_app.models import LogisticModel

    decoded: list[str] = []
    real_source = predictor.FrameSource

    def counting(*args: Any, **kwargs: Any) -> Any:
        decoded.append("opened")
        return real_source(*args, **kwargs)

    monkeypatch.setattr(predictor, "FrameSource", counting)
    path = tmp_path / "m.npz"
    LogisticModel("m", np.array([20.0, 0.0, 0.0], np.float32), -6.0).save(path)
    registered = hashlib.sha256(path.read_bytes()).hexdigest()
    request = replace(make_request(clip[0]), model_version="ckpt:m", model_sha256=registered)
    ok = run_call(request.to_dict(), store={}, max_attempts=3, models_dir=tmp_path)
    assert FAILED not in ok and len(ok["predictions"]) == 60
    LogisticModel("m", np.array([1.0, 1.0, 1.0], np.float32), 0.0).save(path)  # swapped
    decoded.clear()
    out = run_call(request.to_dict(), store={}, max_attempts=3, models_dir=tmp_path)
    assert out[FAILED]["error_type"] == "ChecksumMismatch"
    assert "not the registered ckpt:m" in out[FAILED]["message"]
    assert decoded == []  # refused before the video was opened


def test_a_store_that_does_not_answer_is_raised_for_modal_to_retry(
    refused_port: int,
) -> None:
    from modal_app.errors import SourceUnavailable

    down = unreachable_store(refused_port)
    store: dict[str, Any] = {}
    request = make_request("s3://videos/clip.mp4")
    with pytest.raises(SourceUnavailable):
        run_call(request.to_dict(), store=store, max_attempts=3, models_dir=None, storage=down)
    assert store[attempts_key("run-1")]["last_error_kind"] == "source_unavailable"


def test_the_sources_secret_is_attached_only_when_named() -> None:
    assert function_options(get_settings())["secrets"] == []
    options = function_options(get_settings(sources_secret_name="video-stores"))
    (secret,) = options["secrets"]
    assert isinstance(secret, modal.Secret)
    # Store keys are never baked into the image's environment.
    env = baked_environment(
        get_settings(s3_access_key_id="AKIA-secret-id", s3_secret_access_key="very-secret")
    )
    assert not any("secret" in value.lower() for value in env.values())
    assert "BOUNDARY_INFERENCE_S3_SECRET_ACCESS_KEY" not in env
