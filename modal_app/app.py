"""The Modal app: ``BoundaryInference.infer`` runs one job on a GPU container, within bounds.

Deploy with ``modal deploy modal_app/app.py`` (see docs/MODAL.md). Importing this module needs no
credentials and no network: it only *defines* Modal objects (``Volume``/``Dict`` handles are lazy).

What bounds one job's spend, innermost first:

1. the per-job deadline (``request.deadline_s``): checked by the predictor after each batch, and
   by a timer here that fires inside a batch too;
2. the heartbeat (``request.heartbeat_timeout_s``): no completed batch for that long ends the attempt
   with :class:`~modal_app.errors.Stalled`;
3. if the working thread is stuck in native code and ignores the exception raised into it, the
   container exits after ``abort_grace_s`` (a crash, retried by Modal, counted by 4); a hard-exit
   timer started before the body's first network call does the same at ``deadline_s +
   abort_grace_s`` whatever hangs, and each ``modal.Dict`` call is bounded (:func:`bounded`);
4. an attempt counter per ``run_id`` in the progress ``modal.Dict``: an attempt beyond
   ``1 + gpu_retries`` returns a refusal at once, without running. Deployed apps retry container
   crashes (OOM, the exit in 3) *indefinitely*; this is what turns that loop into a bounded one;
5. Modal's own ``timeout`` (``gpu_timeout_s``) per attempt and ``retries`` (``gpu_retries``).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import modal

from config import Settings, get_settings
from modal_app.errors import DeadlineExceeded, InferenceError, NoCuda, Stalled, UserInputError
from modal_app.modal_config import (
    FAILED,
    REFUSED,
    app_tags,
    attempts_key,
    call_key,
    fence_key,
    function_options,
    models_mount_path,
    models_volume_name,
    progress_dict_name,
)
from modal_app.sources import StorageConfig
from modal_app.timers import Cancellable, StartTimer, daemon_timer
from modal_app.types import InferenceRequest, InferenceResult

logger = logging.getLogger(__name__)

settings = get_settings()
app = modal.App(settings.modal_app_name, tags=app_tags(settings))

# Seconds a stalled or overdue attempt gets to honour the exception raised into it before the
# container exits. Billed at most once per attempt, on top of the deadline or heartbeat.
ABORT_GRACE_S = settings.abort_grace_s  # in the worst case (CostModel.attempt_limit_s)
EXIT_ABORTED = 124
# Progress is published at most this often (one Dict write each), and always at the end.
PROGRESS_INTERVAL_S = 2.0
# The SDK gives ``modal.Dict.get``/``__setitem__`` and ``Volume.reload`` no timeout: each one runs
# in a helper thread and is given up after this long (a hung call is then a failure to record).
NETWORK_CALL_TIMEOUT_S = 10.0


# How long loading a model (reading a checkpoint, moving it to the GPU, the first batch, which a
# torch.compile compiles) is kept alive without completing a batch. Past it the stall watchdog
# takes over again, so a load that hangs ends heartbeat_timeout_s later, not at the deadline.
LOAD_KEEPALIVE_S = 300.0


class _LoadKeepalive:
    """Beats the heartbeat while the model loads, up to ``limit_s`` on the job's clock."""

    def __init__(
        self,
        beat: Callable[[], None],
        *,
        limit_s: float,
        interval_s: float,
        clock: Callable[[], float],
        start_timer: StartTimer,
    ) -> None:
        self._beat = beat
        self._limit_s = limit_s
        self._interval_s = interval_s
        self._clock = clock
        self._start_timer = start_timer
        self._lock = threading.Lock()
        self._stopped = False
        self._timer: Cancellable | None = None
        self._started = 0.0

    def __enter__(self) -> _LoadKeepalive:
        self._started = self._clock()
        with self._lock:
            self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop beating. A beat runs under the lock, so none lands after the load."""
        with self._lock:
            self._stopped = True
            if self._timer is not None:
                self._timer.cancel()

    def _arm(self) -> None:  # with the lock held
        self._timer = self._start_timer(self._interval_s, self._tick, "load-keepalive")

    def _tick(self) -> None:
        with self._lock:
            if self._stopped:
                return
            if self._clock() - self._started > self._limit_s:
                logger.warning("model load past %g s: no longer kept alive", self._limit_s)
                return
            try:
                self._beat()
            except Stalled:  # the watchdog already ended the attempt
                return
            self._arm()


def _daemon_timer(delay_s: float, action: Callable[[], None]) -> Cancellable:
    return daemon_timer(delay_s, action, "hard-exit")


def bounded(call: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """``call()`` in a daemon thread, given up after ``timeout_s`` (``TimeoutError``).

    The abandoned thread may live on, blocked in the SDK; the attempt's hard-exit timer bounds the
    container, so a hung network call can delay it by at most ``timeout_s``, never keep it billed.
    """
    box: dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as error:  # handed to the caller's thread
            box["error"] = error
        finally:
            done.set()

    threading.Thread(target=target, name="network-call", daemon=True).start()
    if not done.wait(timeout_s):
        raise TimeoutError(f"{what} did not answer within {timeout_s:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


class BoundedStore:
    """A :class:`ProgressStore` whose every call is :func:`bounded`."""

    def __init__(self, store: ProgressStore, timeout_s: float) -> None:
        self._store = store
        self._timeout_s = timeout_s

    def get(self, key: Any, default: Any = None) -> Any:
        return bounded(lambda: self._store.get(key, default), self._timeout_s, f"Dict get {key!r}")

    def __setitem__(self, key: Any, value: Any) -> None:
        def put() -> None:
            self._store[key] = value

        bounded(put, self._timeout_s, f"Dict put {key!r}")


class ProgressStore(Protocol):
    """The subset of ``modal.Dict`` used here; a plain ``dict`` satisfies it (tests, local runs)."""

    def get(self, key: Any, default: Any = None) -> Any: ...

    def __setitem__(self, key: Any, value: Any) -> None: ...


class AttemptsExhausted(InferenceError):
    """More attempts started for one run than the retry policy allows: a crash loop was cut."""

    kind = "attempts_exhausted"


class AttemptsUnrecorded(InferenceError):
    """The attempt could not be counted, so it does not run (fail closed; Modal retries it)."""

    kind = "attempts_unrecorded"


def open_progress_store(settings: Settings) -> ProgressStore:
    """The shared progress/attempts ``modal.Dict`` (lazy: no network until first use)."""
    return modal.Dict.from_name(progress_dict_name(settings), create_if_missing=True)


class _Abort(BaseException):
    """Raised *into* the working thread by the watchdog. A BaseException so that no
    ``except Exception`` in the inference code swallows it; converted to a typed error below."""


class _Watchdog:
    """Ends an attempt that stalls or outlives its deadline, even if nobody polls it."""

    def __init__(
        self,
        request: InferenceRequest,
        *,
        on_abort: Callable[[InferenceError], None],
        hard_exit: Callable[[int], None],
        grace_s: float,
        clock: Callable[[], float],
        start_timer: StartTimer,
    ) -> None:
        from modal_app.predictor import Heartbeat

        self._target = threading.get_ident()
        self._lock = threading.Lock()
        self._stopped = False
        self.error: InferenceError | None = None
        self._on_abort = on_abort
        self._hard_exit = hard_exit
        self._grace_s = grace_s
        self._start_timer = start_timer
        self._timers: list[Cancellable] = []
        self._watches: list[Heartbeat] = []
        self.heartbeat = Heartbeat(
            request.heartbeat_timeout_s,
            lambda: self.abort(
                Stalled(
                    f"no progress for more than {request.heartbeat_timeout_s:g} s"
                    " (heartbeat watchdog)"
                )
            ),
            clock=clock,
            start_timer=start_timer,
        )
        # The predictor checks the deadline between batches; this fires even inside a batch. A
        # heartbeat that is never beaten, on the same clock as the predictor's own check, so
        # tests drive both with one injected clock.
        self.deadline = Heartbeat(
            request.deadline_s,
            lambda: self.abort(
                DeadlineExceeded(
                    f"deadline {request.deadline_s:g} s passed inside a batch (deadline watchdog)"
                )
            ),
            clock=clock,
            start_timer=start_timer,
            name="deadline",
        )
        self._watches = [self.heartbeat, self.deadline]

    def __enter__(self) -> _Watchdog:
        for watch in self._watches:
            watch.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def abort(self, error: InferenceError) -> None:
        with self._lock:
            if self._stopped or self.error is not None:
                return
            self.error = error
        # Recorded before the attempt is interrupted: the interrupted attempt returns its failure
        # at once, and the record (why, and the seconds billed) must be there by then. Raised the
        # other way round, a test read the record between the two (KeyError: last_error_kind).
        self._on_abort(error)
        with self._lock:
            if not self._stopped:
                _raise_in_thread(self._target, _Abort)
        # Native code (a wedged decoder, a CUDA call) never sees the exception: exit instead.
        self._timers.append(self._start_timer(self._grace_s, self._exit_if_running, "abort-grace"))

    def _exit_if_running(self) -> None:
        with self._lock:
            if self._stopped:
                return
        logger.error("attempt ignored its abort for %g s; exiting the container", self._grace_s)
        self._hard_exit(EXIT_ABORTED)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            if self.error is not None:
                # An abort raised a moment ago may still be pending: clear it, the caller decides.
                _raise_in_thread(self._target, None)
        for watch in self._watches:
            watch.__exit__(None, None, None)
        for timer in self._timers:
            timer.cancel()


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exc_type) if exc_type else None
    )


class _Progress:
    """Publishes ``{done, total, updated_at}`` under the run id, throttled; never fails the job."""

    def __init__(
        self,
        store: ProgressStore,
        request: InferenceRequest,
        attempt: int,
        *,
        beat: Callable[[], None],
        wall_clock: Callable[[], float],
    ) -> None:
        self.store = store
        self.run_id = request.run_id
        self.attempt = attempt
        self.beat = beat
        self.wall_clock = wall_clock
        self.total = len(request.frame_pairs)
        self.done = 0
        self.last_publish = float("-inf")

    def publish(self, done: int, *, state: str = "running", force: bool = False) -> None:
        self.done = max(self.done, done)  # readers see a count that never goes back
        now = self.wall_clock()
        if not force and now - self.last_publish < PROGRESS_INTERVAL_S and done < self.total:
            return
        self.last_publish = now
        try:
            self.store[self.run_id] = {
                "done": self.done,
                "total": self.total,
                "updated_at": now,
                "attempt": self.attempt,
                "state": state,
            }
        except Exception as error:  # progress is advisory; the result is what counts
            logger.warning("progress not published: %s", error)

    def __call__(self, done: int, total: int) -> None:
        self.beat()  # raises Stalled if the watchdog already gave up on this attempt
        self.publish(done)


def _start_attempt(
    store: ProgressStore, run_id: str, call_id: str | None
) -> tuple[int, dict[str, Any]]:
    """Count this attempt; fails closed (raises) if the count cannot be recorded."""
    key = attempts_key(run_id)
    try:
        record = dict(store.get(key) or {"count": 0, "billed_s": 0.0})
        record["count"] = int(record.get("count", 0)) + 1
        if call_id:
            record["call_id"] = call_id
        store[key] = record  # attempts of one call are sequential: read-modify-write is enough
    except Exception as error:
        raise AttemptsUnrecorded(f"cannot count attempts of run {run_id}: {error}") from error
    if call_id:
        try:
            store[call_key(call_id)] = run_id
        except Exception as error:
            logger.warning("call id mapping not published: %s", error)
    try:
        # Read *after* our id was written: a client that fences the run writes the fence first
        # and reads the id second, so one of the two always sees the other.
        fenced = store.get(fence_key(run_id)) is not None
    except Exception as error:
        raise AttemptsUnrecorded(f"cannot read the fence of run {run_id}: {error}") from error
    return record["count"], {**record, "fenced": fenced}


class Fenced(InferenceError):
    """The client gave up finding this call after a lost spawn answer and charged its worst case:
    the run is over for it, so this late start does no work."""

    kind = "fenced"


def _end_attempt(
    store: ProgressStore, run_id: str, elapsed_s: float, error: BaseException | None
) -> None:
    try:
        key = attempts_key(run_id)
        record = dict(store.get(key) or {"count": 1, "billed_s": 0.0})
        record["billed_s"] = float(record.get("billed_s", 0.0)) + elapsed_s
        record["last_error_kind"] = getattr(error, "kind", type(error).__name__) if error else None
        record["last_error"] = str(error)[:500] if error else None
        store[key] = record
    except Exception as inner:
        logger.warning("attempt end not recorded: %s", inner)


# Raised for Modal's retries: only a video store that did not answer and bookkeeping that could
# not be written, which another attempt may find working. Every other failure would repeat with the
# same input and limits (a deadline, a stall, out of memory, a code error): it is returned typed,
# one attempt billed, since Modal retries only what a call raises.
RETRYABLE_KINDS = frozenset({"source_unavailable", AttemptsUnrecorded.kind})
# An attempt whose abort was ignored ends in a hard exit, which Modal retries as a crash: the next
# attempt reads this kind in the record and returns the failure without running again.
_ABORT_KINDS = frozenset({DeadlineExceeded.kind, Stalled.kind})


def _kind_of(error: BaseException) -> str:
    kind = getattr(error, "kind", None)
    if isinstance(kind, str):
        return kind
    return "out_of_memory" if isinstance(error, MemoryError) else "code_error"


def _repeats(error: BaseException) -> bool:
    return isinstance(error, Exception) and _kind_of(error) not in RETRYABLE_KINDS


def _failed(
    kind: str, error_type: str, message: str, attempt: int, billed_s: float, call_id: str | None
) -> dict[str, Any]:
    return {
        FAILED: {
            "kind": kind,
            "error_type": error_type,
            "message": message[:2000],
            "attempts": attempt,
            "billed_s": billed_s,
            "call_id": call_id,
        }
    }


def run_call(
    request_dict: dict[str, Any],
    *,
    store: ProgressStore,
    max_attempts: int,
    models_dir: Path | None,
    call_id: str | None = None,
    reload_models: Callable[[], None] | None = None,
    storage: StorageConfig | None = None,
    max_source_bytes: int | None = None,
    hard_exit: Callable[[int], None] = os._exit,
    abort_grace_s: float = ABORT_GRACE_S,
    clock: Callable[[], float] = time.monotonic,
    wall_clock: Callable[[], float] = time.time,
    network_timeout_s: float = NETWORK_CALL_TIMEOUT_S,
    start_timer: Callable[[float, Callable[[], None]], Cancellable] = _daemon_timer,
    watch_timer: StartTimer = daemon_timer,
    require_cuda: bool = False,
    cuda_available: Callable[[], bool] | None = None,
    load_keepalive_s: float = LOAD_KEEPALIVE_S,
) -> dict[str, Any]:
    """One attempt, inside a hard-exit timer started before its first network call.

    ``require_cuda`` (the Modal entry sets it when a GPU is requested; the local CPU executor runs
    the same code on the CPU on purpose and leaves it off): no CUDA device is :class:`NoCuda`,
    returned before any model or video is touched.

    Whatever hangs (a Dict call the SDK never times out, a Volume reload, native code that ignores
    its abort), the container exits ``deadline_s + abort_grace_s`` after the body starts: the
    bookkeeping counts inside that, so the worst case per attempt
    (``config.Settings.attempt_limit_s``) holds. Each store call is also :func:`bounded` by
    ``network_timeout_s``, so a slow Dict is a failure to record, not a wait. See :func:`_attempt`.

    ``clock`` and ``watch_timer`` are the job's time for its watchdogs (heartbeat, deadline, load
    keepalive, abort grace): injected so tests move time themselves; real by default.
    """
    request = InferenceRequest.from_dict(request_dict)  # no network: the limit needs its deadline
    limit_s = request.deadline_s + abort_grace_s

    def exit_now() -> None:
        logger.error("run %s outlived its hard limit (%g s); exiting", request.run_id, limit_s)
        hard_exit(EXIT_ABORTED)

    timer = start_timer(limit_s, exit_now)
    try:
        return _attempt(
            request,
            store=BoundedStore(store, network_timeout_s),
            max_attempts=max_attempts,
            models_dir=models_dir,
            call_id=call_id,
            reload_models=(
                None
                if reload_models is None
                else lambda: bounded(reload_models, network_timeout_s, "models Volume reload")
            ),
            storage=storage,
            max_source_bytes=max_source_bytes,
            hard_exit=hard_exit,
            abort_grace_s=abort_grace_s,
            clock=clock,
            watch_timer=watch_timer,
            wall_clock=wall_clock,
            load_keepalive_s=load_keepalive_s,
            cuda_missing=(
                (lambda: not (cuda_available or _torch_cuda_available)()) if require_cuda else None
            ),
        )
    finally:
        timer.cancel()


def _torch_cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # the image always has torch; without it nothing runs on the GPU
        return False
    return bool(torch.cuda.is_available())


def _attempt(
    request: InferenceRequest,
    *,
    store: ProgressStore,
    max_attempts: int,
    models_dir: Path | None,
    call_id: str | None,
    reload_models: Callable[[], None] | None,
    storage: StorageConfig | None,
    max_source_bytes: int | None,
    hard_exit: Callable[[int], None],
    abort_grace_s: float,
    clock: Callable[[], float],
    watch_timer: StartTimer,
    wall_clock: Callable[[], float],
    load_keepalive_s: float,
    cuda_missing: Callable[[], bool] | None,
) -> dict[str, Any]:
    """One attempt of one job: the body of ``BoundaryInference.infer``, free of Modal objects.

    Returns ``InferenceResult.to_dict()`` (plus ``extra.attempts`` and ``extra.billed_s``), or
    ``{"refused": {...}}`` when the attempt cap is reached, or ``{"failed": {...}}`` for an error
    that would repeat: an error in the request itself (:class:`~modal_app.errors.UserInputError`:
    a missing or changed video, a bad checkpoint or checksum, an empty crop, a frame out of range),
    a deadline, a stall, out of memory, a code error. Those are *returns*, not raises, so Modal sees
    the call finished and retries nothing: another attempt cannot succeed, and each would be
    billed. Only :data:`RETRYABLE_KINDS` are raised for Modal's retry policy (the ``gpu_retries``).
    """
    from modal_app.inputs import prepared

    started = clock()
    attempt, record = _start_attempt(store, request.run_id, call_id)
    if record.get("fenced"):
        message = f"run {request.run_id} was fenced by its client (a lost spawn answer): not run"
        logger.error(message)
        return {REFUSED: {"kind": Fenced.kind, "message": message, "attempts": attempt}}
    if cuda_missing is not None and cuda_missing():
        # After the call id is recorded (a lost spawn stays findable), before any load: the same
        # container would fail the same way, so one attempt, returned typed.
        no_cuda = NoCuda(f"run {request.run_id}: a GPU was requested and CUDA is not available")
        logger.error("%s", no_cuda)
        elapsed = clock() - started
        _end_attempt(store, request.run_id, elapsed, no_cuda)
        billed = float(record.get("billed_s", 0.0)) + elapsed
        return _failed(NoCuda.kind, "NoCuda", str(no_cuda), attempt, billed, call_id)
    if reload_models is not None:
        try:
            reload_models()  # after the call recorded its id: a lost spawn is findable at once
        except TimeoutError as slow:  # a checkpoint still missing is then a typed failure
            logger.warning("%s", slow)
    if attempt > max_attempts:
        message = (
            f"attempt {attempt} of run {request.run_id} refused: the retry policy allows"
            f" {max_attempts} (1 + gpu_retries). Earlier attempts crashed or were lost"
            f" (last error: {record.get('last_error_kind') or 'container crash, no record'})."
        )
        logger.error(message)
        return {
            REFUSED: {
                "kind": AttemptsExhausted.kind,
                "message": message,
                "attempts": attempt - 1,
                "billed_s": float(record.get("billed_s", 0.0)),
                "last_error_kind": record.get("last_error_kind"),
            }
        }

    if record.get("last_error_kind") in _ABORT_KINDS:
        kind = str(record["last_error_kind"])
        message = f"attempt {attempt - 1} of run {request.run_id} ended by its watchdog ({kind})"
        logger.error("%s; not run again", message)
        billed = float(record.get("billed_s", 0.0))
        return _failed(kind, kind, message, attempt - 1, billed, call_id)

    def on_abort(error: InferenceError) -> None:
        # Recorded before anything else happens: if the container must exit, the next attempt (or
        # the client) still learns why.
        _end_attempt(store, request.run_id, clock() - started, error)

    progress: _Progress | None = None
    watchdog = _Watchdog(
        request,
        on_abort=on_abort,
        hard_exit=hard_exit,
        grace_s=abort_grace_s,
        clock=clock,
        start_timer=watch_timer,
    )
    error: BaseException | None = None
    try:
        with watchdog:
            progress = _Progress(
                store, request, attempt, beat=watchdog.heartbeat.beat, wall_clock=wall_clock
            )
            progress.publish(0, force=True)
            try:
                with prepared(
                    request,
                    models_dir=models_dir,
                    storage=storage or StorageConfig.from_settings(settings),
                    max_source_bytes=max_source_bytes or settings.video_max_bytes,
                    # A download makes no batch progress; its chunks keep the heartbeat alive.
                    on_chunk=lambda _: watchdog.heartbeat.beat(),
                ) as ready:
                    result = _infer_loading_kept_alive(
                        ready, models_dir, watchdog, progress, load_keepalive_s, clock, watch_timer
                    )
            finally:
                watchdog.stop()
    except _Abort:
        error = watchdog.error or Stalled("aborted by the watchdog")
    except InterruptedError as stopped:
        error = watchdog.error or InferenceError(str(stopped))
    except UserInputError as bad_input:
        if watchdog.error is not None:
            error = watchdog.error
        else:
            elapsed = clock() - started
            _end_attempt(store, request.run_id, elapsed, bad_input)
            if progress is not None:
                progress.publish(progress.done, state="failed", force=True)
            logger.warning("run %s: %s (returned, not retried)", request.run_id, bad_input)
            return {
                FAILED: {
                    "kind": bad_input.kind,
                    "error_type": type(bad_input).__name__,
                    "message": str(bad_input)[:2000],
                    "attempts": attempt,
                    "billed_s": float(record.get("billed_s", 0.0)) + elapsed,
                    "call_id": call_id,
                }
            }
    except BaseException as raised:  # InputCancellation included: record, then let it through
        if watchdog.error is None:
            elapsed = clock() - started
            _end_attempt(store, request.run_id, elapsed, raised)
            if progress is not None:
                progress.publish(progress.done, state="failed", force=True)
            if not _repeats(raised):
                raise
            logger.exception("run %s failed (returned, not retried)", request.run_id)
            billed = float(record.get("billed_s", 0.0)) + elapsed
            message = f"{type(raised).__name__}: {raised}"
            return _failed(
                _kind_of(raised), type(raised).__name__, message, attempt, billed, call_id
            )
        error = watchdog.error
    if error is not None:
        if progress is not None:
            progress.publish(progress.done, state="failed", force=True)
        # A deadline or a stall repeats on a retry: returned, one attempt (_end_attempt ran in
        # on_abort, so the record already holds these seconds).
        billed = float(record.get("billed_s", 0.0)) + (clock() - started)
        return _failed(_kind_of(error), type(error).__name__, str(error), attempt, billed, call_id)
    elapsed = clock() - started
    _end_attempt(store, request.run_id, elapsed, None)
    assert progress is not None
    progress.publish(progress.total, state="succeeded", force=True)
    data = result.to_dict()
    data["extra"] = {
        **data.get("extra", {}),
        "attempts": attempt,
        "billed_s": float(record.get("billed_s", 0.0)) + elapsed,
        "call_id": call_id,
    }
    return data


def _infer_loading_kept_alive(
    request: InferenceRequest,
    models_dir: Path | None,
    watchdog: _Watchdog,
    progress: _Progress,
    keepalive_s: float,
    clock: Callable[[], float],
    start_timer: StartTimer,
) -> InferenceResult:
    """The model's load and its first forward pass (where a ``torch.compile`` compiles) run under
    a :class:`_LoadKeepalive`; decoding never does, so a decoder that hangs is still a stall."""
    from modal_app import predictor

    def keepalive() -> _LoadKeepalive:
        interval_s = min(1.0, request.heartbeat_timeout_s / 4)
        beat = watchdog.heartbeat.beat
        return _LoadKeepalive(
            beat, limit_s=keepalive_s, interval_s=interval_s, clock=clock, start_timer=start_timer
        )

    with keepalive():
        model = predictor.get_model(request.model_version, models_dir)
    return predictor.run_inference(
        request,
        models_dir=models_dir,
        progress=progress,
        should_stop=lambda: watchdog.error is not None,
        clock=clock,
        model=_FirstCallKeptAlive(model, keepalive),
    )


class _FirstCallKeptAlive:
    """The model, its first ``predict_proba`` under a keepalive; everything else delegated."""

    def __init__(self, model: Any, keepalive: Callable[[], _LoadKeepalive]) -> None:
        self._model = model
        self._keepalive: Callable[[], _LoadKeepalive] | None = keepalive

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def predict_proba(self, *inputs: Any) -> Any:
        keepalive, self._keepalive = self._keepalive, None
        if keepalive is None:
            return self._model.predict_proba(*inputs)
        with keepalive():
            return self._model.predict_proba(*inputs)


@app.cls(**function_options(settings))
class BoundaryInference:
    """One job per container at a time (no ``@modal.concurrent``): billed seconds are per job."""

    @modal.enter(snap=True)
    def load(self) -> None:
        # Imports and the builtin model go into the memory snapshot: restores skip them. torch
        # is imported here too when the image has it (CUDA itself is initialised only after the
        # restore, when the first torch model is loaded onto the GPU).
        import importlib.util

        from modal_app.models import BUILTIN, get_model

        get_model(BUILTIN)
        if importlib.util.find_spec("torch") is not None:
            import modal_app.torch_models.checkpoint
            import modal_app.torch_models.runner  # noqa: F401
        self.models_dir = Path(models_mount_path(settings))
        self.max_attempts = settings.gpu_attempts

    @modal.enter(snap=False)
    def connect(self) -> None:
        # Network handles are made after the restore, never captured in the snapshot.
        self.store = open_progress_store(settings)

    @modal.method()
    def infer(self, request_dict: dict[str, Any]) -> dict[str, Any]:
        return run_call(
            request_dict,
            store=self.store,
            max_attempts=self.max_attempts,
            models_dir=self.models_dir,
            # Recorded first thing, under the run id: a client whose spawn answer was lost
            # finds this call by its run id (ModalExecutor.find_call).
            call_id=modal.current_function_call_id(),
            reload_models=lambda: _reload_models_if_missing(request_dict, self.models_dir),
            require_cuda=bool(settings.gpu),  # never the model on the CPU at the GPU's price
        )


def _reload_models_if_missing(request_dict: dict[str, Any], models_dir: Path) -> None:
    """A checkpoint uploaded after this container started is not visible until a reload."""
    from modal_app.models import checkpoint_name, checkpoint_path

    version = str(request_dict.get("model_version", ""))
    if checkpoint_name(version) is None or modal.is_local():
        return
    if not checkpoint_path(models_dir, version).exists():
        try:
            modal.Volume.from_name(models_volume_name(settings)).reload()
        except Exception as error:
            logger.warning("models volume reload failed: %s", error)
