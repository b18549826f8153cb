"""The cost model: what a job is billed and what it could cost at worst, as plain arithmetic.

Domain code, not configuration: it reads no environment and knows no settings class; its inputs
are numbers (:attr:`config.Settings.cost_model` fills them in from the pricing and timeout
settings). The estimate (:func:`tasks.cost.estimate`), the settlement, the reaper and the watch use
it; it lives under ``config/`` only because :class:`config.Settings` refuses, at construction, caps
that no job could fit or that could never refuse (so the arithmetic must sit in the layer that
validates, which is also the layer shipped into the Modal image with ``modal_app``).

Modal bills a container by the second for its GPU, its CPU cores and its memory. One attempt is
billed for its start-up (bounded by Modal's ``startup_timeout``, before the deadline clock starts),
its deadline and the grace an abort gets; the idle tail (``scaledown_window``) follows the last.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


def price_by_resource_usd_per_s(
    *,
    gpu: str,
    gpu_price_usd_per_hour: float,
    cpu_cores: float,
    cpu_price_usd_per_core_s: float,
    memory_mib: int,
    memory_price_usd_per_gib_s: float,
) -> dict[str, float]:
    """One container-second, by the resource names of Modal's ``cost_by_resource``."""
    return {
        gpu: gpu_price_usd_per_hour / 3600.0,
        "CPU": cpu_cores * cpu_price_usd_per_core_s,
        "Memory": memory_mib / 1024.0 * memory_price_usd_per_gib_s,
    }


@dataclass(frozen=True)
class CostModel:
    """Prices and the limits that bound billed seconds; every method is pure."""

    gpu: str
    price_by_resource_usd_per_s: Mapping[str, float]
    attempts: int  # the first try plus Modal's retries
    cold_start_s: float
    startup_timeout_s: float
    abort_grace_s: float
    scaledown_window_s: float
    deadline_factor: float
    min_deadline_s: float
    gpu_timeout_s: float

    @property
    def gpu_price_usd_per_s(self) -> float:
        return self.price_by_resource_usd_per_s[self.gpu]

    @property
    def price_usd_per_s(self) -> float:
        """What one second of one container costs: GPU + CPU cores + memory. Every estimate,
        reservation and settlement multiplies seconds by this."""
        return sum(self.price_by_resource_usd_per_s.values())

    def expected_duration_s(self, pairs: int, throughput_pairs_per_s: float) -> float:
        return self.cold_start_s + pairs / throughput_pairs_per_s

    def deadline_s(self, pairs: int, throughput_pairs_per_s: float) -> float:
        """Per-attempt deadline the GPU function enforces on itself, capped by Modal's timeout."""
        expected = self.expected_duration_s(pairs, throughput_pairs_per_s)
        return min(
            float(self.gpu_timeout_s),
            max(float(self.min_deadline_s), expected * self.deadline_factor),
        )

    def attempt_limit_s(self, deadline_s: float) -> float:
        """Billed seconds one attempt can reach: its start-up (bounded by ``startup_timeout_s``,
        before the deadline clock starts), its deadline, and the grace an abort gets."""
        return self.startup_timeout_s + deadline_s + self.abort_grace_s

    def worst_case_gpu_s(self, deadline_s: float) -> float:
        """Billed seconds of the worst job: every attempt to its limit, then the idle tail."""
        return self.attempts * self.attempt_limit_s(deadline_s) + self.scaledown_window_s

    def worst_case_cost_usd(self, pairs: int, throughput_pairs_per_s: float) -> float:
        """Every attempt starts as slowly as allowed, runs to its deadline and ignores its abort
        for the whole grace; then the idle tail is billed."""
        deadline = self.deadline_s(pairs, throughput_pairs_per_s)
        return self.worst_case_gpu_s(deadline) * self.price_usd_per_s

    def watch_limit_s(self, deadline_s: float) -> float:
        """How long the flow watches a call before it cancels it as lost: every attempt to its
        limit. Past it the call is stuck (a crash-looping container, a start-up that never
        ends); cancelling it is what keeps Modal's endless retry of crashed containers bounded."""
        return self.attempts * self.attempt_limit_s(deadline_s)

    def billed_cost_usd(self, gpu_s: float) -> float:
        """What to charge a finished job: its measured GPU seconds plus the start-up and idle tail
        that Modal bills around them but no call can observe. Conservative (a reused warm
        container pays neither); the billing reconciliation measures the difference."""
        return (gpu_s + self.cold_start_s + self.scaledown_window_s) * self.price_usd_per_s

    @property
    def absolute_ceiling_usd(self) -> float:
        """What one job could cost if its own deadline failed: every attempt to Modal's timeout."""
        return self.worst_case_gpu_s(float(self.gpu_timeout_s)) * self.price_usd_per_s

    def longest_job_s(self, cap_usd: float) -> float:
        """The longest an admitted job can be watched: every attempt to its limit, for the
        longest deadline a job under the per-job cap ``cap_usd`` can get (or Modal's timeout)."""
        by_timeout = self.watch_limit_s(float(self.gpu_timeout_s))
        by_cap = cap_usd / self.price_usd_per_s - self.scaledown_window_s
        return max(0.0, min(by_timeout, by_cap))

    def max_admissible_pairs(
        self, cap_usd: float, max_pairs: int, throughput_pairs_per_s: float
    ) -> int:
        """Largest job (at most ``max_pairs``) whose worst case fits under ``cap_usd``."""
        lo, hi = 0, max_pairs
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self.worst_case_cost_usd(mid, throughput_pairs_per_s) <= cap_usd:
                lo = mid
            else:
                hi = mid - 1
        return lo
