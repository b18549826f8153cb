"""Shared helpers for the task modules. Private."""

from __future__ import annotations

import re

from prefect.cache_policies import NO_CACHE

# Guards act on live shared state: a cached answer would be a wrong answer.
GUARD_TASK_OPTIONS = {"cache_policy": NO_CACHE, "retries": 0}

_SLUG = re.compile(r"[^a-z0-9-]+")


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return _SLUG.sub("-", text).strip("-")[:200] or "artifact"
