"""Batch predictor: batches of the configured size, a probability and a label for every pair, sane
metrics, progress, the deadline, the stop request, the heartbeat, and typed errors passed through."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from config.settings import Settings
from modal_app.errors import (
    CorruptVideo,
    DeadlineExceeded,
    EmptyCrop,
    FrameOutOfRange,
    Stalled,
    UnknownModel,
    VideoNotFound,
)
from modal_app.frames import FrameSource
from modal_app.models import BUILTIN, BUILTIN_MODEL
from modal_app.predictor import Heartbeat, _Prefetcher, run_inference
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import CropBox, InferenceRequest, InferenceResult
from tests.support import ManualClock

FRAMES = 241
PAIRS = [(i, i + 1) for i in range(FRAMES - 1)]


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("pred") / "v.mp4"
    return path, make_video(path, seed=31, frame_count=FRAMES, width=192, height=108)


def _request(
    video: tuple[Path, GroundTruth], pairs: list[tuple[int, int]] = PAIRS, **changes: object
) -> InferenceRequest:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "video_uri": str(video[0]),
        "frame_pairs": pairs,
        "model_version": BUILTIN,
        "crop_box": video[1].crop_box,
        "batch_size": 64,
    }
    fields.update(changes)
    return InferenceRequest(**fields)  # type: ignore[arg-type]


def test_batches_come_from_config_and_progress_increases(
    video: tuple[Path, GroundTruth],
) -> None:
    settings = Settings(_env_file=None, batch_size=50)  # type: ignore[call-arg]
    calls: list[tuple[int, int]] = []
    result = run_inference(
        _request(video, batch_size=settings.batch_size),
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(50, 240), (100, 240), (150, 240), (200, 240), (240, 240)]
    assert len(result.predictions) == 240


def test_every_pair_gets_a_probability_and_a_label(video: tuple[Path, GroundTruth]) -> None:
    _, truth = video
    result = run_inference(_request(video))
    assert result.run_id == "run-1" and result.model_version == BUILTIN
    assert [(p.frame1, p.frame2) for p in result.predictions] == PAIRS
    for p in result.predictions:
        assert 0.0 <= p.probability <= 1.0
        assert p.is_boundary == (p.probability >= BUILTIN_MODEL.threshold)
    predicted = [p.is_boundary for p in result.predictions]
    actual = truth.labels_for(PAIRS)
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    assert tp >= 3 and 2 * tp / (2 * tp + fp + fn) >= 0.95


def test_metrics_are_present_and_sane(video: tuple[Path, GroundTruth]) -> None:
    metrics = run_inference(_request(video)).metrics
    assert metrics.pairs == 240
    assert metrics.frames_decoded == FRAMES  # shared frames decoded once
    assert metrics.decode_s > 0 and metrics.model_s > 0
    # Decoding runs on its own thread, overlapping the model: each fits in the job, not the sum.
    assert metrics.decode_s <= metrics.elapsed_s and metrics.model_s <= metrics.elapsed_s
    assert 0 <= metrics.decode_wait_s <= metrics.elapsed_s
    assert metrics.pairs_per_s == pytest.approx(240 / metrics.elapsed_s)
    assert 10 < metrics.peak_rss_mb < 100_000
    assert metrics.device == "cpu"


def test_result_survives_the_process_boundary(video: tuple[Path, GroundTruth]) -> None:
    result = run_inference(_request(video, pairs=PAIRS[:20]))
    assert InferenceResult.from_dict(result.to_dict()) == result


def test_order_and_duplicates_do_not_change_answers(video: tuple[Path, GroundTruth]) -> None:
    reference = {
        (p.frame1, p.frame2): p.probability for p in run_inference(_request(video)).predictions
    }
    shuffled = PAIRS[:120] * 2
    random.Random(4).shuffle(shuffled)
    result = run_inference(_request(video, pairs=shuffled, batch_size=7))
    assert [(p.frame1, p.frame2) for p in result.predictions] == shuffled
    for p in result.predictions:
        assert p.probability == pytest.approx(reference[(p.frame1, p.frame2)], abs=1e-6)


def test_deadline_stops_after_the_batch_that_passes_it(video: tuple[Path, GroundTruth]) -> None:
    now = [0.0]

    def clock() -> float:
        return now[0]

    calls: list[int] = []

    def progress(done: int, total: int) -> None:
        calls.append(done)
        now[0] += 10.0  # each batch "takes" 10 s

    with pytest.raises(DeadlineExceeded, match="after 192 of 240") as caught:
        run_inference(_request(video, deadline_s=25.0), progress=progress, clock=clock)
    assert caught.value.kind == "deadline_exceeded"
    assert calls == [64, 128, 192]


def test_deadline_does_not_discard_finished_work(video: tuple[Path, GroundTruth]) -> None:
    # Past the deadline only at the very end: the work is done, so the result is returned.
    result = run_inference(_request(video, pairs=PAIRS[:30], deadline_s=0.0))
    assert len(result.predictions) == 30


def test_real_deadline(video: tuple[Path, GroundTruth]) -> None:
    with pytest.raises(DeadlineExceeded):
        run_inference(_request(video, batch_size=8, deadline_s=0.0))


def test_stop_request(video: tuple[Path, GroundTruth]) -> None:
    done: list[int] = []
    with pytest.raises(InterruptedError, match="after 128 of 240"):
        run_inference(
            _request(video),
            progress=lambda d, _: done.append(d),
            should_stop=lambda: len(done) >= 2,
        )


def test_heartbeat_fires_once_without_beats() -> None:
    clock = ManualClock()
    count = [0]

    def on_stall() -> None:
        count[0] += 1

    with Heartbeat(10.0, on_stall, clock=clock, start_timer=clock.start_timer) as heartbeat:
        clock.advance(11.0)  # past the timeout and its next check (every 1 s), with no beat
        assert count[0] == 1
        clock.advance(100.0)  # the watch ends after firing: it cannot fire twice
        assert heartbeat.stalled and count[0] == 1
        with pytest.raises(Stalled, match="no progress"):
            heartbeat.beat()


def test_heartbeat_stays_quiet_while_beating() -> None:
    clock = ManualClock()
    fired = threading.Event()
    with Heartbeat(1.0, fired.set, clock=clock, start_timer=clock.start_timer) as heartbeat:
        for _ in range(40):
            clock.advance(0.5)  # 20 s of the job's clock in all, never 1 s without a beat
            heartbeat.beat()
    assert not fired.is_set() and not heartbeat.stalled


def test_heartbeat_follows_its_clock() -> None:
    clock = ManualClock()
    fired = threading.Event()
    with Heartbeat(0.2, fired.set, clock=clock, start_timer=clock.start_timer) as heartbeat:
        clock.advance(0.2)  # not past the timeout yet
        assert not fired.is_set()
        clock.advance(1.0)
        assert fired.is_set() and heartbeat.stalled


def test_a_stopped_heartbeat_never_fires() -> None:
    clock = ManualClock()
    fired = threading.Event()
    with Heartbeat(1.0, fired.set, clock=clock, start_timer=clock.start_timer):
        clock.advance(0.5)
    clock.advance(100.0)
    assert not fired.is_set()


def test_typed_errors_pass_through(video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    with pytest.raises(VideoNotFound):
        run_inference(_request(video, video_uri=str(tmp_path / "missing.mp4")))
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 40)
    with pytest.raises(CorruptVideo):
        run_inference(_request(video, video_uri=str(corrupt)))
    with pytest.raises(EmptyCrop):
        run_inference(_request(video, crop_box=CropBox(0, 500, 10, 10)))
    with pytest.raises(FrameOutOfRange, match=f"only {FRAMES} frames"):
        run_inference(_request(video, pairs=[(0, 1), (5, FRAMES)]))
    # The model is resolved before any decoding: no time is spent on a job that cannot finish.
    with pytest.raises(UnknownModel):
        run_inference(_request(video, model_version="nope", video_uri=str(tmp_path / "x")))


# --- Decoding overlapped with the model -----------------------------------------------------------


def _wait_until(condition: Callable[[], bool], limit_s: float = 30.0) -> bool:
    """Polls ``condition``; ``limit_s`` only bounds a failing test, it measures nothing."""
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def test_frames_are_decoded_while_the_model_works(
    video: tuple[Path, GroundTruth], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The model holds its first batch until the decoder has produced the third: that can only
    happen if decoding runs beside the model (sequentially it would wait forever)."""
    yielded: list[int] = []
    real_iter_pairs = FrameSource.iter_pairs

    def recording_iter_pairs(self: FrameSource, pairs: Any, batch_size: int) -> Any:
        for batch in real_iter_pairs(self, pairs, batch_size):
            yielded.append(len(batch))
            yield batch

    monkeypatch.setattr(FrameSource, "iter_pairs", recording_iter_pairs)
    overlapped: list[bool] = []

    class PatientModel:
        threshold = BUILTIN_MODEL.threshold

        def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
            if not overlapped:
                overlapped.append(_wait_until(lambda: len(yielded) >= 3))
            return BUILTIN_MODEL.predict_proba(a, b)

    result = run_inference(_request(video, batch_size=32), model=PatientModel())
    assert overlapped == [True]
    assert len(result.predictions) == 240 and sum(yielded) == 240


def _batches(
    count: int, pulled: list[int], closed: threading.Event, fail_at: int | None = None
) -> Iterator[list[tuple[tuple[int, int], np.ndarray, np.ndarray]]]:
    try:
        for k in range(count):
            if k == fail_at:
                raise FrameOutOfRange(f"frame {k} requested but the video ended")
            pulled.append(k)
            frame = np.full((2, 3), k, dtype=np.uint8)
            yield [((k, k + 1), frame, frame)]
    finally:
        closed.set()


def test_decoding_runs_ahead_by_a_bounded_number_of_batches() -> None:
    pulled: list[int] = []
    closed = threading.Event()
    with _Prefetcher(_batches(10, pulled, closed), lambda a, b: (a, b), depth=2) as batches:
        first = next(batches)
        # The model holds batch 0: two batches wait in the queue and a third in the decoder's
        # hand, and no more however long the model takes (memory stays bounded).
        assert _wait_until(lambda: len(pulled) == 4)
        time.sleep(0.3)
        assert len(pulled) == 4
        rest = list(batches)
    assert [pairs for pairs, _ in [first, *rest]] == [[(k, k + 1)] for k in range(10)]
    assert rest[-1][1][0].shape == (1, 2, 3)  # stacked on the decoding thread
    assert closed.is_set()


def test_a_decoding_error_reaches_the_model_loop_typed() -> None:
    pulled: list[int] = []
    closed = threading.Event()
    with pytest.raises(FrameOutOfRange, match="video ended"):  # noqa: SIM117 - order matters
        with _Prefetcher(_batches(10, pulled, closed, fail_at=3), lambda a, b: (a, b), 2) as it:
            assert len(list(it)) == 99  # never reached: the error is raised while iterating
    assert pulled == [0, 1, 2] and closed.is_set()


def test_leaving_early_stops_and_joins_the_decoder() -> None:
    pulled: list[int] = []
    closed = threading.Event()
    prefetcher = _Prefetcher(_batches(1000, pulled, closed), lambda a, b: (a, b), 2)

    def consume_one_then_stop() -> None:
        with prefetcher as batches:
            next(batches)
            raise DeadlineExceeded("deadline passed after 1 batch")

    with pytest.raises(DeadlineExceeded):
        consume_one_then_stop()
    assert closed.is_set()  # the video is closed by the time the caller moves on
    assert not prefetcher._thread.is_alive()
    assert len(pulled) < 1000
