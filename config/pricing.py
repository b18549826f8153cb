"""Pricing: Modal's prices, the resources the function requests (billed per second), and the
throughput the estimate assumes until recent runs calibrate it. The arithmetic that turns these
into money is the cost model (:mod:`config.cost_model`)."""

from __future__ import annotations

from pydantic import Field

from config.base import SettingsBase


class PricingSettings(SettingsBase):
    """Prices, billed resources and throughput."""

    # Modal bills a container by the second for its GPU, its CPU cores and its memory, each the
    # greater of what the function requests and what it uses (https://modal.com/pricing, read
    # 2026-12: A10G $0.000306/s, CPU $0.0000131 per physical core per s, memory $0.00000222 per
    # GiB per s). The function requests cpu_cores and memory_mib with equal limits
    # (modal_app.modal_config.function_options), so usage can never bill above them.
    gpu_price_usd_per_hour: float = Field(
        1.1016,
        gt=0,
        description="GPU price per hour (Modal's pricing page: A10G $0.000306/s = $1.1016/h).",
    )
    cpu_price_usd_per_core_s: float = Field(
        0.0000131,
        ge=0,
        description="Modal's CPU price per physical core per second (pricing page).",
    )
    memory_price_usd_per_gib_s: float = Field(
        0.00000222, ge=0, description="Modal's memory price per GiB per second (pricing page)."
    )
    cpu_cores: float = Field(
        2.0,
        gt=0,
        le=64,
        description="Physical cores the function requests, and its limit: billed per second.",
    )
    memory_mib: int = Field(
        8192,
        ge=128,
        le=1_048_576,
        description="Memory the function requests, and its limit (MiB): billed per GiB-second.",
    )
    default_throughput_pairs_per_s: float = Field(
        100.0, gt=0, description="Throughput assumed until recent runs calibrate it."
    )
    calibration_runs: int = Field(
        20,
        ge=1,
        le=1000,
        description="Recent succeeded runs of a (model, executor, GPU type) whose throughput"
        " calibrates its estimate.",
    )
    calibration_min_runs: int = Field(
        5,
        ge=1,
        le=1000,
        description="Succeeded runs needed before calibration replaces the default throughput.",
    )
    calibration_percentile: float = Field(
        0.2,
        ge=0.0,
        le=0.5,
        description="The estimate uses this low percentile of recent throughput (0.2: slower than"
        " 80% of recent runs), so the deadline derived from it covers slow runs.",
    )
    calibration_max_rise: float = Field(
        1.5,
        ge=1.0,
        le=100.0,
        description="One run can raise the calibrated throughput by at most this factor (a slow"
        " run lowers it without limit).",
    )

    def calibration_errors(self) -> list[str]:
        """A calibration that could never apply."""
        if self.calibration_min_runs > self.calibration_runs:
            return [
                f"calibration_min_runs ({self.calibration_min_runs}) exceeds calibration_runs"
                f" ({self.calibration_runs}), the runs it reads: calibration could never apply"
            ]
        return []
