"""Batch prediction over frame pairs: the body both the local executor and the GPU function run."""

from __future__ import annotations

import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modal_app.errors import DeadlineExceeded, Stalled
from modal_app.frames import FrameSource
from modal_app.models import get_model
from modal_app.types import InferenceMetrics, InferenceRequest, InferenceResult, PairPrediction


class Heartbeat:
    """Watchdog: calls ``on_stall`` once if :meth:`beat` is not called for ``timeout_s``."""

    def __init__(
        self,
        timeout_s: float,
        on_stall: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.clock = clock
        self.last = clock()
        self.stalled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def beat(self) -> None:
        self.last = self.clock()
        if self.stalled:
            raise Stalled(f"no progress for more than {self.timeout_s:.0f} s")

    def _watch(self) -> None:
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            if self.clock() - self.last > self.timeout_s:
                self.stalled = True
                self.on_stall()
                return


def run_inference(
    request: InferenceRequest,
    *,
    models_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> InferenceResult:
    """Predict every pair of ``request``; stop at its deadline; report progress after each batch."""
    started = clock()
    model = get_model(request.model_version, models_dir)
    source = FrameSource(request.video_uri, request.crop_box)
    total = len(request.frame_pairs)
    # Batches come in decode order; a pair listed twice is yielded twice, and each copy fills the
    # next of its positions (a plain dict would fill only the last and leave the others at 0).
    positions: dict[tuple[int, int], deque[int]] = {}
    for i, pair in enumerate(request.frame_pairs):
        positions.setdefault(pair, deque()).append(i)
    probabilities = np.zeros(total, dtype=np.float32)
    model_s = 0.0
    done = 0
    for batch in source.iter_pairs(request.frame_pairs, request.batch_size):
        t0 = time.perf_counter()
        a = np.stack([item[1] for item in batch])
        b = np.stack([item[2] for item in batch])
        p = model.predict_proba(a, b)
        model_s += time.perf_counter() - t0
        for (pair, _, _), value in zip(batch, p, strict=True):
            probabilities[positions[pair].popleft()] = value
        done += len(batch)
        if progress is not None:
            progress(done, total)
        elapsed = clock() - started
        if elapsed > request.deadline_s and done < total:
            raise DeadlineExceeded(
                f"deadline {request.deadline_s:.0f} s passed after {done} of {total} pairs"
            )
        if should_stop is not None and should_stop():
            raise InterruptedError(f"stopped on request after {done} of {total} pairs")
    elapsed = clock() - started
    predictions = [
        PairPrediction(f1, f2, float(probabilities[i]), bool(probabilities[i] >= model.threshold))
        for i, (f1, f2) in enumerate(request.frame_pairs)
    ]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    metrics = InferenceMetrics(
        pairs=total,
        frames_decoded=source.stats.frames_decoded,
        decode_s=source.stats.decode_s,
        model_s=model_s,
        elapsed_s=elapsed,
        pairs_per_s=total / elapsed if elapsed > 0 else float(total),
        peak_rss_mb=peak_mb,
        device="cpu",
    )
    return InferenceResult(request.run_id, request.model_version, predictions, metrics)
