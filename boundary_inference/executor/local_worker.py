"""Child-process entry point of :class:`LocalExecutor` (``python -m ...local_worker JOB_DIR``).

Writes ``progress.json`` as batches complete, then ``result.json`` or ``error.json``; files are
written to a temporary name and renamed, so a reader never sees half a file. A watchdog thread ends
the process with exit code 124 if the job outlives its deadline by a grace period, whatever the
inference code is doing (a hang inside a native decoder cannot block it).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import traceback
from pathlib import Path

from boundary_inference.executor.base import FailureKind
from boundary_inference.executor.local import _DEADLINE_GRACE_S, EXIT_DEADLINE
from modal_app.errors import SourceUnavailable
from modal_app.types import InferenceRequest


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _hard_deadline(deadline_s: float) -> None:
    def watchdog() -> None:
        time.sleep(deadline_s + _DEADLINE_GRACE_S)
        os._exit(EXIT_DEADLINE)

    threading.Thread(target=watchdog, name="hard-deadline", daemon=True).start()


def _failure_kind(error: BaseException) -> FailureKind:
    kind = getattr(error, "kind", None)
    if kind in ("deadline_exceeded", "stalled"):
        return FailureKind.TIMEOUT
    if isinstance(error, MemoryError | SourceUnavailable):
        return FailureKind.INFRASTRUCTURE
    return FailureKind.USER_CODE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("job_dir", type=Path)
    parser.add_argument("--models-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    job_dir: Path = args.job_dir
    started = time.monotonic()
    request = InferenceRequest.from_dict(json.loads((job_dir / "request.json").read_text()))
    _hard_deadline(request.deadline_s)
    last_write = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last_write[0] >= 0.2:
            last_write[0] = now
            _write_json(job_dir / "progress.json", {"done": done, "total": total})

    try:
        from config import get_settings
        from modal_app.inputs import prepared
        from modal_app.predictor import run_inference
        from modal_app.sources import StorageConfig

        settings = get_settings()
        # The same checks as the GPU function: the registered checkpoint and video, or a typed
        # user failure after one attempt, charged for the seconds it used.
        with prepared(
            request,
            models_dir=args.models_dir,
            storage=StorageConfig.from_settings(settings),
            max_source_bytes=settings.video_max_bytes,
            work_dir=job_dir,
        ) as ready:
            result = run_inference(ready, models_dir=args.models_dir, progress=progress)
    except Exception as error:  # every failure is reported, typed, to the watcher
        _write_json(
            job_dir / "error.json",
            {
                "kind": str(_failure_kind(error)),
                "message": str(error) or type(error).__name__,
                "error_type": type(error).__name__,
                "traceback": traceback.format_exc(),
                "elapsed_s": time.monotonic() - started,
            },
        )
        return 1
    _write_json(job_dir / "result.json", result.to_dict())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
