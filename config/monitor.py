"""Monitor: the alert thresholds of the monitor flow (spend, failure rate, job bursts) and how long
the ledger keeps predictions."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from config.base import MAX_COUNT, SettingsBase


class MonitorSettings(SettingsBase):
    """Alert thresholds and retention."""

    daily_spend_alert_usd: float = Field(
        15.0,
        gt=0,
        description="The monitor raises an alert when today's committed spend exceeds this; below"
        " daily_budget_usd, which caps committed spend (at or above it, it could never fire).",
    )
    # NoDecode: read "25,50,75" (or "[25, 50, 75]", or the "(25.0, 50.0, 75.0)" that str() of the
    # value gives, as the Modal image's baked environment writes it) by _tiers below, not as JSON.
    monthly_spend_alert_tiers_usd: Annotated[tuple[float, ...], NoDecode] = Field(
        (25.0, 50.0, 75.0),
        max_length=10,
        description="The monitor raises the monthly-spend alert when this month's committed spend"
        " reaches a tier (comma-separated in the environment); each below monthly_budget_usd.",
    )
    failure_rate_alert: float = Field(
        0.20,
        ge=0.0,
        lt=1.0,
        description="The monitor alerts when failed + timed-out runs exceed this fraction of the"
        " runs finished in the last 24 h (below 1: a rate never exceeds 1).",
    )
    job_burst_alert: int = Field(
        50, ge=0, le=MAX_COUNT, description="The monitor alerts above this many runs in an hour."
    )
    predictions_retention_days: int | None = Field(
        None,
        ge=0,
        description="Predictions saved longer ago than this are deleted by the monitor; None keeps"
        " them forever (runs, spend and rejections are kept either way).",
    )

    @field_validator("monthly_spend_alert_tiers_usd", mode="before")
    @classmethod
    def _tiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            inner = value.strip().removeprefix("[").removesuffix("]")
            inner = inner.removeprefix("(").removesuffix(")")
            return tuple(part.strip() for part in inner.split(",") if part.strip())
        return value
