"""Safeguard: cost. Estimate what a job will cost and what it could cost at worst, and refuse a job
whose worst case exceeds ``max_cost_per_job_usd``.

expected GPU s = cold start + pairs / throughput (calibrated from recent successful runs of the
model, else the configured default); estimate = (expected + billed scaledown tail) x price.
deadline = min(timeout, max(floor, deadline_factor x expected)) -- the GPU function stops itself
there; worst case = attempts (1 + Modal retries) x (start-up limit + deadline + abort grace) x price
+ tail. The worst case is what is
compared with the cap and reserved against the budgets, so no sequence of retries and hangs can
spend more than was admitted. (The original compared the *expected* cost of its largest allowed job,
$0.61, with a $1.00 cap: a check that could never fire.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, guard_task


@dataclass(frozen=True)
class CostEstimate:
    pairs: int
    throughput_pairs_per_s: float
    throughput_source: str  # "calibrated:<n> runs" or "default"
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
    """The formula, pure: the same numbers the CLI's `estimate` and the flow use."""
    expected_s = settings.expected_duration_s(pairs, throughput)
    billed_s = expected_s + settings.scaledown_window_s
    return CostEstimate(
        pairs=pairs,
        throughput_pairs_per_s=throughput,
        throughput_source=source,
        expected_gpu_s=expected_s,
        billed_s=billed_s,
        estimated_cost_usd=billed_s * settings.gpu_price_usd_per_s,
        deadline_s=settings.deadline_s(pairs, throughput),
        attempts=settings.gpu_attempts,
        worst_case_cost_usd=settings.worst_case_cost_usd(pairs, throughput),
        price_usd_per_s=settings.gpu_price_usd_per_s,
        cap_usd=settings.max_cost_per_job_usd,
    )


def calibrated_throughput(ledger: Any, settings: Settings, model_version: str) -> tuple[float, str]:
    found = dict(
        ledger.recent_throughput(model_version=model_version, runs=settings.calibration_runs)
    )
    value = found.get("pairs_per_s")
    if value:
        return float(value), f"calibrated:{found.get('runs')} runs"
    return settings.default_throughput_pairs_per_s, "default"


@guard_task(name="cost-estimate", tags=GUARD)
def estimate_cost(
    ledger: Any, settings: Settings, *, model_version: str, pairs: int
) -> tuple[CostEstimate, Rejected | None]:
    throughput, source = calibrated_throughput(ledger, settings, model_version)
    est = estimate(settings, pairs, throughput, source)
    if est.worst_case_cost_usd > settings.max_cost_per_job_usd:
        return est, Rejected(
            RejectionType.COST_EXCEEDED,
            f"worst case ${est.worst_case_cost_usd:.2f} ({est.attempts} attempts x"
            f" {settings.attempt_limit_s(est.deadline_s):.0f} s (start-up limit + {est.deadline_s:.0f} s"
            f" deadline + abort grace) at ${settings.gpu_price_usd_per_hour}/h + idle tail)"
            f" exceeds the per-job cap ${settings.max_cost_per_job_usd:.2f}; expected"
            f" ${est.estimated_cost_usd:.2f}. Split the job (at most about"
            f" {settings.max_admissible_pairs} pairs at default throughput).",
            details={"estimate": est.to_dict()},
        )
    return est, None
