"""Leases and timeouts: the per-job deadline, Modal's limits and retries, the watch and its polls,
the run lease, and how long a guard's store or a video store may take."""

from __future__ import annotations

from pydantic import Field

from config.base import MAX_DURATION_S, SettingsBase


class TimeoutSettings(SettingsBase):
    """Deadlines, limits, retries, leases and polls (seconds)."""

    cold_start_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Container start and model load, billed before the first pair.",
    )
    deadline_factor: float = Field(
        3.0, ge=1.0, description="A job is stopped after this many times its expected duration."
    )
    min_deadline_s: int = Field(
        120,
        ge=1,
        le=MAX_DURATION_S,
        description="Floor for the per-job deadline so tiny jobs are not cut short.",
    )
    gpu_timeout_s: int = Field(
        3600, ge=10, le=86_400, description="Modal's hard per-attempt timeout (server max 24 h)."
    )
    scaledown_window_s: int = Field(
        300, ge=2, le=3600, description="Idle seconds a warm container is kept (and billed)."
    )
    gpu_retries: int = Field(
        2, ge=0, le=10, description="Modal-side retries; the only retry layer around GPU work."
    )
    startup_timeout_s: int = Field(
        120,
        ge=10,
        le=3600,
        description="Modal's limit on container start (image, snapshot restore, model load) per"
        " attempt; start-up runs before the per-job deadline starts, so it is bounded here.",
    )
    abort_grace_s: float = Field(
        30.0,
        ge=1.0,
        le=3600,
        description="Seconds an attempt that ignores its deadline or heartbeat abort (stuck in"
        " native code) gets before the container exits; billed, so part of the worst case.",
    )
    heartbeat_timeout_s: int = Field(
        120,
        ge=5,
        le=86_400,
        description="The GPU function ends itself after this long without progress.",
    )
    guard_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="A ledger/limiter/Prefect API call slower than this counts as unavailable.",
    )
    poll_interval_s: float = Field(
        2.0, gt=0, le=300, description="How often the flow polls a running job for progress."
    )
    cancel_check_s: float = Field(
        3.0,
        gt=0,
        le=300,
        description="How often a flow watching a call asks the Prefect API whether its flow run"
        " (or the backfill above it) was cancelled, to cancel the call and stop paying.",
    )
    spawn_confirm_s: float = Field(
        300.0,
        ge=0,
        le=MAX_DURATION_S,
        description="After a spawn whose answer was lost (a connection error or timeout after"
        " sending), how long the watcher looks for the call by its run id (the call records its"
        " id when it starts) before it fences the run and charges its worst case.",
    )
    stale_queued_s: int = Field(
        3600,
        ge=60,
        le=MAX_DURATION_S,
        description="A run still queued after this long lost its flow between claim and spawn;"
        " the monitor cancels it and releases its reservation.",
    )
    stale_margin_s: int = Field(
        600,
        ge=0,
        le=MAX_DURATION_S,
        description="Added to the longest possible watch before a running run counts as stale"
        " (its call is cancelled, its worst case charged).",
    )
    run_lease_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description="A live run's lease: its flow renews it every run_lease_s / 6 (database clock);"
        " once it has expired the run has no watcher, and a new claim or the reaper takes it over.",
    )
    source_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Connect/read timeout for a video store (S3, HTTPS, Supabase).",
    )

    @property
    def gpu_attempts(self) -> int:
        """Invocations one logical job may cost: the first try plus Modal's retries."""
        return 1 + self.gpu_retries

    @property
    def lease_renew_s(self) -> float:
        """How often a flow renews its run's lease: five renewals may fail before it expires."""
        return self.run_lease_s / 6.0

    def timeout_errors(self) -> list[str]:
        """Limits that cut off what another limit expects."""
        errors: list[str] = []
        if self.cold_start_s > self.startup_timeout_s:
            errors.append(
                f"cold_start_s ({self.cold_start_s:g}) exceeds startup_timeout_s"
                f" ({self.startup_timeout_s}): Modal would kill every start the estimate expects"
            )
        if self.heartbeat_timeout_s >= self.gpu_timeout_s:
            errors.append(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be below gpu_timeout_s"
                f" ({self.gpu_timeout_s}), or a hang is only caught by the hard timeout"
            )
        return errors
