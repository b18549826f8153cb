"""Batch prediction over frame pairs: the body both the local executor and the GPU function run.

Decoding and compute overlap: a decoding thread reads frames, stacks each batch and hands it to
the model's ``prepare`` (page-locked tensors for a GPU), through a bounded queue
(:data:`PREFETCH_BATCHES` deep, so memory stays bounded); the calling thread runs the model on one
batch while the next is decoded. The model runs in the calling thread, so the abort the function's
watchdog raises into that thread reaches it, and the deadline, heartbeat, progress and stop checks
run between batches exactly as before.
"""

from __future__ import annotations

import queue
import resource
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modal_app.errors import DeadlineExceeded, Stalled
from modal_app.frames import FrameSource
from modal_app.models import get_model as get_model  # re-exported: the function loads through it
from modal_app.timers import Cancellable, StartTimer, daemon_timer
from modal_app.types import InferenceMetrics, InferenceRequest, InferenceResult, PairPrediction

# Batches decoded ahead of the model: enough to hide decoding jitter, few enough that memory is
# a handful of batches (256 pairs of 480x48 crops are 12 MB).
PREFETCH_BATCHES = 2
# How long the model loop waits on the queue before looking again: a Python-level wait, so an
# exception raised into this thread by a watchdog lands within this long.
_QUEUE_POLL_S = 0.1


class Heartbeat:
    """Watchdog: calls ``on_stall`` once if :meth:`beat` is not called for ``timeout_s``.

    Measured on ``clock`` and checked every ``min(1 s, timeout_s / 4)`` by timers from
    ``start_timer`` (both injectable, real by default). Never beaten, it is a deadline (the Modal
    function uses it so, named ``deadline``).
    """

    def __init__(
        self,
        timeout_s: float,
        on_stall: Callable[[], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        start_timer: StartTimer = daemon_timer,
        name: str = "heartbeat",
    ) -> None:
        self.timeout_s = timeout_s
        self.on_stall = on_stall
        self.clock = clock
        self.last = clock()
        self.stalled = False
        self._start_timer = start_timer
        self._name = name
        self._interval_s = min(1.0, max(timeout_s, 0.004) / 4)
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: Cancellable | None = None

    def __enter__(self) -> Heartbeat:
        self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def beat(self) -> None:
        self.last = self.clock()
        if self.stalled:
            raise Stalled(f"no progress for more than {self.timeout_s:.0f} s")

    def _arm(self) -> None:
        with self._lock:
            if not self._stopped:
                self._timer = self._start_timer(self._interval_s, self._check, self._name)

    def _check(self) -> None:
        if self.clock() - self.last > self.timeout_s:
            self.stalled = True
            self.on_stall()
            return  # fires once: no further check
        self._arm()


Batch = list[tuple[tuple[int, int], np.ndarray, np.ndarray]]
_END = object()


class _Prefetcher:
    """Runs ``batches`` on a daemon thread, ``prepare``-ing each into a bounded queue.

    Leaving the context stops the thread and *waits* for it: a decoder stuck in native code keeps
    the caller here, where the Modal function's watchdog sees an attempt that ignored its abort
    and exits the container (the same bound as when decoding ran in the calling thread).
    """

    def __init__(
        self,
        batches: Iterator[Batch],
        prepare: Callable[[np.ndarray, np.ndarray], Any],
        depth: int,
    ) -> None:
        self._batches = batches
        self._prepare = prepare
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="decode", daemon=True)
        self.wait_s = 0.0  # time the model loop waited for a decoded batch

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_QUEUE_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for batch in self._batches:
                if self._stop.is_set():
                    return
                pairs = [item[0] for item in batch]
                a = np.stack([item[1] for item in batch])
                b = np.stack([item[2] for item in batch])
                if not self._put((pairs, self._prepare(a, b))):
                    return
            self._put(_END)
        except BaseException as error:  # typed decode errors go to the model loop, re-raised there
            self._put(error)
        finally:
            close = getattr(self._batches, "close", None)
            if close is not None:
                close()  # closes the container in the thread that opened it

    def __enter__(self) -> Iterator[tuple[list[tuple[int, int]], Any]]:
        self._thread.start()
        return self._iterate()

    def _iterate(self) -> Iterator[tuple[list[tuple[int, int]], Any]]:
        while True:
            waited = time.perf_counter()
            while True:
                try:
                    item = self._queue.get(timeout=_QUEUE_POLL_S)
                    break
                except queue.Empty:
                    continue
            self.wait_s += time.perf_counter() - waited
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _unprepared(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy models take the stacked batches as they are."""
    return a, b


def run_inference(
    request: InferenceRequest,
    *,
    models_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    clock: Callable[[], float] = time.monotonic,
    prefetch_batches: int = PREFETCH_BATCHES,
    model: Any = None,
) -> InferenceResult:
    """Predict every pair of ``request``; stop at its deadline; report progress after each batch.

    ``model`` overrides the one ``request.model_version`` names (the benchmark runs one
    checkpoint on the CPU and on CUDA); normally it is resolved here, before any decoding.
    """
    started = clock()
    if model is None:
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
    prefetcher = _Prefetcher(
        source.iter_pairs(request.frame_pairs, request.batch_size),
        getattr(model, "prepare", _unprepared),
        prefetch_batches,
    )
    with prefetcher as batches:
        for pairs, inputs in batches:
            t0 = time.perf_counter()
            p = model.predict_proba(*inputs)
            model_s += time.perf_counter() - t0
            _place(probabilities, positions, pairs, p)
            done += len(pairs)
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
        device=str(getattr(model, "device_name", "cpu")),
        decode_wait_s=prefetcher.wait_s,
    )
    return InferenceResult(request.run_id, request.model_version, predictions, metrics)


def _place(
    probabilities: np.ndarray,
    positions: dict[tuple[int, int], deque[int]],
    pairs: Sequence[tuple[int, int]],
    values: np.ndarray,
) -> None:
    for pair, value in zip(pairs, values, strict=True):
        probabilities[positions[pair].popleft()] = value
