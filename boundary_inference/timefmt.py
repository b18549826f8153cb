"""Timestamps from the ledger (datetimes, or ISO strings through PostgREST) and ages for people."""

from __future__ import annotations

import datetime as dt
from typing import Any


def parse_utc(value: Any) -> dt.datetime | None:
    """A ledger timestamp as an aware UTC-comparable datetime; None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def age_s(value: Any, now: dt.datetime) -> float | None:
    then = parse_utc(value)
    return None if then is None else max(0.0, (now - then).total_seconds())


def format_age(seconds: float | None) -> str:
    """``95s``, ``12m``, ``5h``, ``3d``."""
    if seconds is None:
        return ""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"
