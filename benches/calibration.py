"""``boundary-inference bench``: calibration figures, from real inference on this machine.

The issue this answers: a job of 15,000 copies of one pair ran 15,000 predictions on two decoded
frames, looked 70 times faster than the model is, and moved the mean the estimate used from 454
to 1,984 pairs/s, so every later job got a deadline four times too short.

In a throw-away schema (``<schema>_calib_<hex>``, migrated, dropped after) and on a synthetic video,
the real inference code (:func:`modal_app.predictor.run_inference`, what the local executor and the
GPU function run) performs, in order:

1. ``calibration_min_runs`` ordinary jobs (every consecutive pair of a 320x180 video);
2. the duplicate-pair job: 15,000 copies of one pair. Parsed as the flow parses it (pairs are a
   set), it runs one pair. The old path's figure is measured too, by running all 15,000 copies;
3. a slow run: the same ordinary job on a video of four times the pixels (640x360), as a heavier
   video is slower for the same model on the same executor.

Each is recorded as a succeeded run the way the flow records it (executor, GPU type, distinct
pairs, GPU seconds), and after each the estimate's throughput is read back through the same code
the flow uses (:func:`tasks.cost.calibrated_throughput`), with the deadline it yields for a
reference job of ``max_frame_pairs`` pairs, the largest admitted. The old rule (mean of requested
pairs / seconds over the last 20 runs) is computed from the same measurements for comparison.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from boundary_inference.ledger import Ledger
from config import Settings

MODEL = "builtin-textdiff-v1"
DUPLICATE_COPIES = 15_000


def calibration_figures(
    dsn: str, schema: str, settings: Settings, *, frames: int = 300
) -> dict[str, Any]:
    """The figures, keyed ``calibration.*`` (flat, for the bench table)."""
    from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations

    started = time.monotonic()
    scratch = f"{schema}_calib_{uuid.uuid4().hex[:8]}"
    apply_migrations(dsn, scratch)
    transport = PsycopgTransport(dsn, scratch, timeout_s=30)
    try:
        with tempfile.TemporaryDirectory(prefix="bi-calib-") as workdir:
            figures = _measure(Ledger(transport), settings, Path(workdir), frames)
    finally:
        transport.close()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch))
            )
    figures["seconds"] = round(time.monotonic() - started, 2)
    return {f"calibration.{key}": value for key, value in figures.items()}


class _Runs:
    """Real inference on one video, each job recorded as the flow records a succeeded run."""

    def __init__(self, ledger: Ledger, settings: Settings, video: Path, frames: int, crop: Any):
        from tasks.cost import calibration_key

        self.ledger, self.settings, self.frames = ledger, settings, frames
        self.use(video, crop)
        self.executor, self.gpu_type = calibration_key(settings)
        self.reference_pairs = settings.max_frame_pairs
        # What the old rule averaged: requested pairs over seconds, every copy run.
        self.legacy_samples: list[float] = []
        ledger.upsert_video(
            id="calib", tenant_id="bench", frame_count=frames, fps=30.0, source_uri=str(video)
        )

    def use(self, video: Path, crop: Any) -> None:
        """Run the next jobs on ``video`` (same registered id: only its speed matters here)."""
        self.video, self.crop = video, crop

    def infer(self, pairs: list[tuple[int, int]]) -> float:
        from modal_app.predictor import run_inference
        from modal_app.types import InferenceRequest

        request = InferenceRequest(
            run_id=str(uuid.uuid4()),
            video_uri=str(self.video),
            frame_pairs=pairs,
            model_version=MODEL,
            crop_box=self.crop,
        )
        return float(run_inference(request).metrics.elapsed_s)

    def job(self, requested: Any, *, legacy_elapsed_s: float | None = None) -> dict[str, float]:
        """Run ``requested`` as the flow now does (distinct pairs) and record it."""
        from boundary_inference.pairs import FramePairs, parse_frame_pairs

        parsed = parse_frame_pairs(
            requested, frame_count=self.frames, max_pairs=self.settings.max_frame_pairs
        )
        assert isinstance(parsed, FramePairs), parsed
        elapsed = self.infer(parsed.pairs)
        run_id = self.ledger.claim_run(
            video_id="calib",
            tenant_id="bench",
            frames_version=f"f{uuid.uuid4().hex[:8]}",
            model_version=MODEL,
            pairs=len(parsed.pairs),
        )["run_id"]
        self.ledger.transition_run(
            run_id=run_id,
            to_status="running",
            executor=self.executor,
            gpu_type=self.gpu_type,
            unique_pairs=len(parsed.pairs),
            duplicate_pairs=parsed.duplicates,
        )
        self.ledger.transition_run(
            run_id=run_id,
            to_status="succeeded",
            gpu_seconds=elapsed,
            pairs_per_s=len(parsed.pairs) / elapsed,
        )
        legacy = parsed.requested / (legacy_elapsed_s if legacy_elapsed_s else elapsed)
        self.legacy_samples.append(legacy)
        return {
            "requested": parsed.requested,
            "unique": len(parsed.pairs),
            "seconds": elapsed,
            "pairs_per_s": len(parsed.pairs) / elapsed,
            "legacy_pairs_per_s": legacy,
        }

    def estimate(self) -> tuple[float, str, float]:
        """(throughput, its source, the deadline it yields for the reference job)."""
        from tasks.cost import calibrated_throughput

        throughput, source = calibrated_throughput(self.ledger, self.settings, MODEL)
        return (
            throughput,
            source,
            self.settings.cost_model.deadline_s(self.reference_pairs, throughput),
        )

    def legacy_estimate(self) -> tuple[float, float]:
        mean = float(np.mean(self.legacy_samples[-20:]))
        return mean, self.settings.cost_model.deadline_s(self.reference_pairs, mean)


def _measure(ledger: Ledger, settings: Settings, workdir: Path, frames: int) -> dict[str, Any]:
    from modal_app.synthetic import make_video

    video = workdir / "calibration.mp4"
    truth = make_video(video, seed=13, frame_count=frames)
    runs = _Runs(ledger, settings, video, frames, truth.crop_box)
    figures: dict[str, Any] = {
        "model": MODEL,
        "executor": f"{runs.executor}/{runs.gpu_type}",
        "reference_job_pairs": runs.reference_pairs,
    }
    runs.infer([(0, 1)])  # warm the decoder and the model once, outside the figures

    baseline = [runs.job(None) for _ in range(settings.calibration_min_runs)]
    figures["baseline_runs_pairs_per_s"] = [round(b["pairs_per_s"], 1) for b in baseline]
    _record(figures, "after_baseline", runs)

    copies = [[0, 1]] * DUPLICATE_COPIES
    # The old path ran every copy: measure that, for the old rule's figure.
    all_copies_s = runs.infer([(0, 1)] * DUPLICATE_COPIES)
    duplicate = runs.job(copies, legacy_elapsed_s=all_copies_s)
    figures["duplicate_job.requested_pairs"] = duplicate["requested"]
    figures["duplicate_job.unique_pairs"] = duplicate["unique"]
    figures["duplicate_job.sample_pairs_per_s"] = round(duplicate["pairs_per_s"], 1)
    figures["duplicate_job.old_sample_pairs_per_s"] = round(duplicate["legacy_pairs_per_s"], 1)
    _record(figures, "after_duplicate_job", runs)

    heavy = workdir / "calibration-640x360.mp4"
    heavy_truth = make_video(heavy, seed=13, frame_count=frames, width=640, height=360)
    runs.use(heavy, heavy_truth.crop_box)
    runs.infer([(0, 1)])  # warm, as for the first video
    slow = runs.job(None)
    figures["slow_run.pairs"] = slow["unique"]
    figures["slow_run.pairs_per_s"] = round(slow["pairs_per_s"], 1)
    _record(figures, "after_slow_run", runs)

    # Would the reference job, run at the slow run's speed, finish inside the deadline?
    slow_at_reference_s = settings.cold_start_s + runs.reference_pairs / slow["pairs_per_s"]
    figures["slow_run.at_reference_job_s"] = round(slow_at_reference_s, 1)
    figures["after_slow_run.deadline_covers_slow_run"] = (
        figures["after_slow_run.deadline_s"] >= slow_at_reference_s
    )
    figures["after_slow_run.old_deadline_covers_slow_run"] = (
        figures["after_slow_run.old_deadline_s"] >= slow_at_reference_s
    )
    return figures


def _record(figures: dict[str, Any], stage: str, runs: _Runs) -> None:
    throughput, source, deadline = runs.estimate()
    legacy, legacy_deadline = runs.legacy_estimate()
    figures[f"{stage}.pairs_per_s"] = round(throughput, 1)
    figures[f"{stage}.source"] = source
    figures[f"{stage}.deadline_s"] = round(deadline, 1)
    figures[f"{stage}.old_mean_pairs_per_s"] = round(legacy, 1)
    figures[f"{stage}.old_deadline_s"] = round(legacy_deadline, 1)
