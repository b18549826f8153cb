"""Guards: what admission refuses. The video cooldown, the global rate limit, the queue depth,
the circuit breaker, the per-job cost cap and the budgets, and the validation limits on a request,
a video source and a checkpoint."""

from __future__ import annotations

import math

from pydantic import Field, field_validator

from config.base import MAX_BYTES, MAX_COUNT, MAX_DURATION_S, SettingsBase
from config.identifiers import identifier_problem


class GuardSettings(SettingsBase):
    """Admission limits, budgets and validation limits."""

    video_cooldown_s: int = Field(
        600,
        ge=0,
        le=MAX_DURATION_S,
        description="A video may be submitted at most once per this many seconds.",
    )
    global_rate_limit_jobs: int = Field(
        20,
        ge=1,
        le=MAX_COUNT,
        description="At most this many admitted jobs per rate window, all tenants.",
    )
    global_rate_window_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="Length of the sliding window for the global rate limit.",
    )
    queue_depth_alert: int = Field(
        20,
        ge=1,
        le=MAX_COUNT,
        description="Jobs waiting or live (Prefect backlog + queued + running) at which an alert"
        " event is emitted.",
    )
    queue_depth_block: int = Field(
        50,
        ge=1,
        le=MAX_COUNT,
        description="Jobs waiting or live (Prefect backlog + queued + running) at which new jobs"
        " are refused.",
    )
    queue_counts_prefect_backlog: bool = Field(
        True,
        description="Count the flow runs waiting in Prefect for queue_prefect_deployment"
        " (Scheduled, Late, Pending, AwaitingConcurrencySlot) in the queue depth, besides the"
        " ledger's live runs.",
    )
    queue_prefect_deployment: str = Field(
        "boundary-inference/default",
        description="The deployment ('flow/deployment') whose waiting flow runs are the backlog.",
    )
    deployment_concurrency_limit: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Flow runs of that deployment Prefect runs at once (prefect.yaml"
        " concurrency_limit); the rest wait in Prefect.",
    )
    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Failures inside the breaker window that open the circuit.",
    )
    breaker_window_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="Only failures this recent count towards opening the circuit.",
    )
    breaker_open_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="An open circuit lets one probe job through after this long.",
    )
    max_frame_pairs: int = Field(
        100_000,
        ge=1,
        le=MAX_COUNT,
        description="Largest job accepted; bounds decode work and the estimate.",
    )
    max_cost_per_job_usd: float = Field(
        1.00, gt=0, description="A job whose worst-case cost exceeds this is refused."
    )
    daily_budget_usd: float = Field(
        20.0, gt=0, description="Reservations of one UTC day may not exceed this (global)."
    )
    monthly_budget_usd: float = Field(
        100.0, gt=0, description="Reservations of one UTC month may not exceed this (global)."
    )
    tenant_daily_budget_usd: float | None = Field(
        None, gt=0, description="Optional per-tenant daily cap; None means only the global cap."
    )
    tenant_monthly_budget_usd: float | None = Field(
        None, gt=0, description="Optional per-tenant monthly cap; None means only the global cap."
    )
    # Escape hatch for the original bug's shape: refuse by default, allow when deliberate.
    allow_unreachable_cost_cap: bool = Field(
        False, description="Accept a per-job cap that no admissible job can ever exceed."
    )
    default_tenant_id: str = Field("demo", description="Tenant used when a request names none.")
    video_max_bytes: int = Field(
        8 * 1024**3,
        ge=1,
        le=MAX_BYTES,
        description="Largest video source accepted at registration and downloaded by the function.",
    )
    video_max_pixels: int = Field(
        7680 * 4320,
        ge=1,
        le=MAX_COUNT,
        description="Largest frame (width x height) accepted at registration: bounds decode memory.",
    )
    checkpoint_max_bytes: int = Field(
        4 * 1024**3,
        ge=1,
        le=MAX_BYTES,
        description="Largest checkpoint file `models add` accepts.",
    )

    @field_validator("default_tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        problem = identifier_problem("tenant_id", value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("queue_prefect_deployment")
    @classmethod
    def _deployment(cls, value: str) -> str:
        flow_name, _, deployment = value.partition("/")
        if not flow_name or not deployment or "/" in deployment or value != value.strip():
            raise ValueError(f"{value!r} must be 'flow-name/deployment-name'")
        return value

    def admitted_within(self, seconds: float) -> int:
        """Most jobs the global rate limit admits in any interval of ``seconds``."""
        windows = max(1, math.ceil(seconds / self.global_rate_window_s))
        return self.global_rate_limit_jobs * windows
