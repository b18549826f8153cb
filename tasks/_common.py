"""Shared helpers for the task modules. Private."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

R = TypeVar("R")

_SLUG = re.compile(r"[^a-z0-9-]+")


# Every task run with tags asks the Prefect API for tag concurrency slots; Prefect caches "no
# limit for this tag set" for 5 s. Three tag sets (not one per safeguard) keep those calls, which
# stalled ~2 s each on the ephemeral server's SQLite, to about one per set per flow run. Tags
# group; the task names say which safeguard.
GUARD = ["boundary-inference", "guard"]  # admission: the decisions before any GPU second
LEDGER = ["boundary-inference", "ledger"]  # bookkeeping after a decision: record, settle, refund
GPU = ["boundary-inference", "gpu"]  # the job itself (a tag concurrency limit on "gpu" applies)


def guard_task(*, name: str, tags: list[str]) -> Callable[[Callable[..., R]], Task[Any, R]]:
    """A task on live shared state: never cached (a cached answer is a wrong answer), never
    retried by Prefect (a retry is a second decision, or a second GPU bill)."""
    return task(name=name, tags=tags, cache_policy=NO_CACHE, retries=0)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return _SLUG.sub("-", text).strip("-")[:200] or "artifact"
