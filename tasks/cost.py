"""Safeguard: cost. Estimate what a job will cost and what it could cost at worst, and refuse a job
whose worst case exceeds ``max_cost_per_job_usd``.

expected GPU s = cold start + pairs / throughput; estimate = (expected + billed scaledown tail) x
price. The throughput is calibrated (:func:`calibrate`) from recent succeeded runs of the same
model, executor and GPU type, each measured as distinct pairs / GPU seconds: a low percentile of
them, used only once enough runs exist, and able to rise by a bounded factor per run. A job of
15,000 copies of one pair once looked four times faster than the model is and cut every later
deadline to a quarter; now its copies are dropped before it runs and it counts as one pair.
deadline = min(timeout, max(floor, deadline_factor x expected)) -- the GPU function stops itself
there; worst case = attempts (1 + Modal retries) x (start-up limit + deadline + abort grace) x price
+ tail. The worst case is what is
compared with the cap and reserved against the budgets, so no sequence of retries and hangs can
spend more than was admitted. (The original compared the *expected* cost of its largest allowed job,
$0.61, with a $1.00 cap: a check that could never fire.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from boundary_inference.ledger import Ledger
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, guard_task


@dataclass(frozen=True)
class CostEstimate:
    pairs: int
    throughput_pairs_per_s: float
    throughput_source: str  # "calibrated: ..." or "default ..."
    expected_gpu_s: float
    billed_s: float
    estimated_cost_usd: float
    deadline_s: float
    attempts: int
    worst_case_cost_usd: float
    price_usd_per_s: float
    cap_usd: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(settings: Settings, pairs: int, throughput: float, source: str) -> CostEstimate:
    """The formula, pure (the cost model of :mod:`config.cost_model`): the same numbers the
    CLI's `estimate` and the flow use."""
    model = settings.cost_model
    expected_s = model.expected_duration_s(pairs, throughput)
    billed_s = expected_s + settings.scaledown_window_s
    return CostEstimate(
        pairs=pairs,
        throughput_pairs_per_s=throughput,
        throughput_source=source,
        expected_gpu_s=expected_s,
        billed_s=billed_s,
        estimated_cost_usd=billed_s * model.price_usd_per_s,
        deadline_s=model.deadline_s(pairs, throughput),
        attempts=model.attempts,
        worst_case_cost_usd=model.worst_case_cost_usd(pairs, throughput),
        price_usd_per_s=model.price_usd_per_s,
        cap_usd=settings.max_cost_per_job_usd,
    )


def calibration_key(settings: Settings) -> tuple[str, str]:
    """The (executor, GPU type) a run's speed belongs to: CPU runs never calibrate the GPU
    function's estimate, nor the other way round."""
    if settings.executor == "modal":
        return "modal", settings.gpu.upper()
    return "local", "cpu"


def calibrate(
    samples: Sequence[float],
    *,
    default: float,
    percentile: float,
    min_runs: int,
    max_rise: float,
) -> tuple[float, str]:
    """Throughput for the estimate from recent runs' throughput ``samples`` (oldest first).

    * fewer than ``min_runs`` samples: ``default``;
    * then the ``percentile`` (linear, as SQL's percentile_cont) of the first ``min_runs``, and
      from there, run by run, the percentile of the samples seen so far, except that one run may
      raise the value by at most a factor ``max_rise`` (it may lower it without limit: a slow run
      must lengthen deadlines at once, while one fast run cannot shorten them much).

    Pure: the same numbers for the flow, the CLI's ``estimate`` and the bench.
    """
    usable = [float(x) for x in samples if x is not None and np.isfinite(x) and x > 0]
    if len(usable) < min_runs:
        return default, f"default ({len(usable)} of {min_runs} runs needed to calibrate)"
    value = float(np.percentile(usable[:min_runs], percentile * 100.0))
    for seen in range(min_runs + 1, len(usable) + 1):
        target = float(np.percentile(usable[:seen], percentile * 100.0))
        value = min(target, value * max_rise)
    return value, f"calibrated: p{percentile * 100:g} of {len(usable)} runs"


def calibrated_throughput(
    ledger: Ledger, settings: Settings, model_version: str
) -> tuple[float, str]:
    executor, gpu_type = calibration_key(settings)
    found = ledger.recent_throughput(
        model_version=model_version,
        runs=settings.calibration_runs,
        executor=executor,
        gpu_type=gpu_type,
        percentile=settings.calibration_percentile,
    )
    value, source = calibrate(
        list(found.get("samples") or []),
        default=settings.default_throughput_pairs_per_s,
        percentile=settings.calibration_percentile,
        min_runs=settings.calibration_min_runs,
        max_rise=settings.calibration_max_rise,
    )
    return value, f"{source} on {executor}/{gpu_type}"


@guard_task(name="cost-estimate", tags=GUARD)
def estimate_cost(
    ledger: Ledger, settings: Settings, *, model_version: str, pairs: int
) -> tuple[CostEstimate, Rejected | None]:
    throughput, source = calibrated_throughput(ledger, settings, model_version)
    est = estimate(settings, pairs, throughput, source)
    if est.worst_case_cost_usd > settings.max_cost_per_job_usd:
        model = settings.cost_model
        return est, Rejected(
            RejectionType.COST_EXCEEDED,
            f"worst case ${est.worst_case_cost_usd:.2f} ({est.attempts} attempts x"
            f" {model.attempt_limit_s(est.deadline_s):.0f} s (start-up limit + {est.deadline_s:.0f} s"
            f" deadline + abort grace) at ${model.price_usd_per_s * 3600:.4f}/h for GPU, CPU and"
            " memory + idle tail)"
            f" exceeds the per-job cap ${settings.max_cost_per_job_usd:.2f}; expected"
            f" ${est.estimated_cost_usd:.2f}. Split the job (at most about"
            f" {settings.max_admissible_pairs} pairs at default throughput).",
            details={"estimate": est.to_dict()},
        )
    return est, None
