"""The Modal function's money guards around its own body: a hard-exit timer before any network
call, a time bound on each Dict call, no CUDA on a GPU container as a typed failure, and
heartbeats while a model loads (a load that hangs still stalls).

``run_call`` is the function body, run here for real; a plain ``dict`` stands in for the progress
``modal.Dict`` (the same ``get``/``__setitem__``). Nothing waits on a sleep: a hung Dict call
blocks on an event the test releases, and the timer is the test's own recorder.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import modal_app.predictor as predictor
from boundary_inference.executor.base import FailureKind
from boundary_inference.executor.modal import classify_kind
from modal_app.app import EXIT_ABORTED, AttemptsUnrecorded, run_call
from modal_app.inputs import verify_checkpoint
from modal_app.modal_config import FAILED, attempts_key, call_key
from modal_app.models import BUILTIN, BUILTIN_MODEL
from modal_app.sources import CHUNK_BYTES
from modal_app.synthetic import make_video
from modal_app.types import InferenceRequest
from tests.support import ManualClock


def request(video: Path, *, run_id: str = "run-safe", deadline_s: float = 60.0) -> dict[str, Any]:
    return InferenceRequest(
        run_id=run_id,
        video_uri=str(video),
        frame_pairs=[(0, 1), (1, 2)],
        model_version=BUILTIN,
        deadline_s=deadline_s,
        heartbeat_timeout_s=30.0,
    ).to_dict()


class EventStore(dict[Any, Any]):
    """A real dict that logs each call into a shared event list."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events

    def get(self, key: Any, default: Any = None) -> Any:
        self.events.append(f"get {key}")
        return super().get(key, default)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.events.append(f"put {key}")
        super().__setitem__(key, value)


class RecordingTimer:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.started: list[tuple[float, Callable[[], None]]] = []
        self.cancelled = False

    def __call__(self, delay_s: float, action: Callable[[], None]) -> RecordingTimer:
        self.events.append("timer")
        self.started.append((delay_s, action))
        return self

    def cancel(self) -> None:
        self.cancelled = True


def test_the_hard_exit_timer_starts_before_the_first_dict_call(tmp_path: Path) -> None:
    events: list[str] = []
    timer = RecordingTimer(events)
    exits: list[int] = []
    out = run_call(
        request(tmp_path / "missing.mp4", deadline_s=40.0),
        store=EventStore(events),
        max_attempts=3,
        models_dir=None,
        hard_exit=exits.append,
        abort_grace_s=5.0,
        network_timeout_s=2.0,
        start_timer=timer,
    )
    assert out[FAILED]["kind"] == "video_not_found"  # a quick typed end, through the Dict
    assert events[0] == "timer" and events[1] == f"get {attempts_key('run-safe')}"
    [(delay_s, action)] = timer.started
    assert delay_s == 40.0 + 5.0  # deadline and grace: the bookkeeping counts inside them
    assert timer.cancelled  # the attempt ended: nothing fires later
    action()
    assert exits == [EXIT_ABORTED]


def test_a_dict_call_that_never_answers_is_given_up_and_the_attempt_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    class Hung(dict[Any, Any]):
        def get(self, key: Any, default: Any = None) -> Any:
            release.wait()  # the SDK's Dict.get has no timeout of its own
            return default

    ran: list[str] = []
    monkeypatch.setattr(
        predictor, "get_model", lambda version, models_dir=None: ran.append(version)
    )
    outcome: list[BaseException | dict[str, Any]] = []

    def attempt() -> None:
        try:
            outcome.append(
                run_call(
                    request(tmp_path / "missing.mp4"),
                    store=Hung(),
                    max_attempts=3,
                    models_dir=None,
                    hard_exit=lambda code: None,
                    network_timeout_s=0.2,
                )
            )
        except BaseException as error:
            outcome.append(error)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(timeout=30.0)  # a bound on the test, not a synchronisation: 0.2 s is expected
    release.set()
    assert not worker.is_alive(), "the attempt waited on a Dict call that never answered"
    [error] = outcome
    assert isinstance(error, AttemptsUnrecorded)  # raised: Modal may retry bookkeeping
    assert "did not answer within 0.2 s" in str(error) and ran == []


def test_a_gpu_container_without_cuda_fails_typed_before_loading_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = tmp_path / "clip.mp4"
    make_video(video, seed=3, frame_count=8)
    loads: list[str] = []
    monkeypatch.setattr(
        predictor, "get_model", lambda version, models_dir=None: loads.append(version)
    )
    reloads: list[str] = []
    store: dict[str, Any] = {}
    out = run_call(
        request(video),
        store=store,
        max_attempts=3,
        models_dir=None,
        call_id="fc-nocuda",
        reload_models=lambda: reloads.append("reload"),
        require_cuda=True,
        cuda_available=lambda: False,
    )
    failed = out[FAILED]
    assert failed["kind"] == "no_cuda" and failed["error_type"] == "NoCuda"
    assert failed["attempts"] == 1 and failed["call_id"] == "fc-nocuda"
    assert loads == [] and reloads == []  # no checkpoint reload, no model, no video
    assert store[call_key("fc-nocuda")] == "run-safe"  # still findable by its run id
    assert store[attempts_key("run-safe")]["last_error_kind"] == "no_cuda"
    assert classify_kind(failed["kind"]) is FailureKind.INFRASTRUCTURE


def test_the_local_cpu_path_runs_without_cuda(tmp_path: Path) -> None:
    """The same body without ``require_cuda`` (the local executor's case) runs on the CPU."""
    video = tmp_path / "clip.mp4"
    make_video(video, seed=3, frame_count=8)
    out = run_call(
        request(video), store={}, max_attempts=3, models_dir=None, cuda_available=lambda: False
    )
    assert FAILED not in out and len(out["predictions"]) == 2


# --- Heartbeats while a model loads, on the job's clock (moved by the test) -----------------------


class SlowFirstForward:
    """The builtin model whose first forward pass takes ``first_s`` on the job's clock (a
    torch.compile compiling)."""

    threshold = BUILTIN_MODEL.threshold

    def __init__(self, clock: ManualClock, first_s: float) -> None:
        self.clock = clock
        self.first_s = first_s
        self.calls = 0

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == 1:
            self.clock.advance(self.first_s)
        return BUILTIN_MODEL.predict_proba(a, b)


def test_a_load_and_a_first_forward_longer_than_the_heartbeat_are_kept_alive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = tmp_path / "clip.mp4"
    make_video(video, seed=3, frame_count=8)
    clock = ManualClock()
    model = SlowFirstForward(clock, first_s=2.5)

    def slow_load(version: str, models_dir: Path | None = None) -> SlowFirstForward:
        # Reading a checkpoint and moving it to the GPU: 2.5 s of the job's clock pass, every
        # watchdog timer due meanwhile runs, and no batch completes.
        clock.advance(2.5)
        return model

    monkeypatch.setattr(predictor, "get_model", slow_load)
    exits: list[int] = []
    out = run_call(
        {**request(video), "heartbeat_timeout_s": 1.0},
        store={},
        max_attempts=3,
        models_dir=None,
        hard_exit=exits.append,
        clock=clock,
        watch_timer=clock.start_timer,
    )
    assert FAILED not in out, out  # each phase lasts 2.5 heartbeats and none of them stalls
    assert len(out["predictions"]) == 2 and model.calls == 1 and exits == []
    assert out["extra"]["billed_s"] == pytest.approx(5.0)  # both phases ran on the job's clock
    assert not [t for t in threading.enumerate() if t.name == "load-keepalive" and t.is_alive()]


def test_a_load_that_hangs_past_its_keepalive_is_still_a_stall(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = tmp_path / "clip.mp4"
    make_video(video, seed=3, frame_count=8)
    clock = ManualClock()
    loaded: list[str] = []

    def hung_load(version: str, models_dir: Path | None = None) -> Any:
        # A load that does not finish for 30 s of the job's clock: the watchdog's abort, raised
        # into this thread while the time passes, is what must end it.
        clock.advance(30.0)
        loaded.append(version)
        return BUILTIN_MODEL

    monkeypatch.setattr(predictor, "get_model", hung_load)
    exits: list[int] = []
    out = run_call(
        {**request(video), "heartbeat_timeout_s": 0.5},
        store={},
        max_attempts=3,
        models_dir=None,
        hard_exit=exits.append,
        load_keepalive_s=0.3,
        clock=clock,
        watch_timer=clock.start_timer,
    )
    assert out[FAILED]["kind"] == "stalled"
    # The stall, not the 30 s "load", ended it: kept alive 0.3 s, then 0.5 s without a beat.
    assert loaded == [] and out[FAILED]["billed_s"] < 30.0
    assert exits == []  # the abort landed in Python code: no hard exit


def test_a_checkpoint_is_hashed_in_chunks_that_each_beat_the_heartbeat(tmp_path: Path) -> None:
    body = bytes(range(256)) * (3 * CHUNK_BYTES // 256)
    (tmp_path / "big.npz").write_bytes(body)
    beats: list[int] = []
    verify_checkpoint("ckpt:big", hashlib.sha256(body).hexdigest(), tmp_path, beats.append)
    assert beats == [CHUNK_BYTES, 2 * CHUNK_BYTES, 3 * CHUNK_BYTES]
