"""Shared helpers for the task modules. Private."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any, TypeVar

from prefect import Task, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

R = TypeVar("R")

_SLUG = re.compile(r"[^a-z0-9-]+")


# Every task run with tags asks the Prefect API for tag concurrency slots (an acquire and a release
# per run of a tag set, before Prefect caches "no limit" for 5 s). Under a burst of submissions
# those calls were where the embedded server's SQLite gave up ("ConcurrencySlotAcquisitionError").
# The guards and the bookkeeping carry no tags: nothing should limit them but the ledger. Only the
# job itself is tagged, so a tag concurrency limit on "gpu" can bound the spawns.
GUARD: list[str] = []  # admission: the decisions before any GPU second
LEDGER: list[str] = []  # bookkeeping after a decision: record, settle, refund
GPU = ["boundary-inference", "gpu"]  # the job itself (a tag concurrency limit on "gpu" applies)


def guard_task(*, name: str, tags: list[str]) -> Callable[[Callable[..., R]], Task[Any, R]]:
    """A task on live shared state: never cached (a cached answer is a wrong answer), never
    retried by Prefect (a retry is a second decision, or a second GPU bill), and never persisted
    (a task's result is read once, in the same process)."""
    return task(name=name, tags=tags, cache_policy=NO_CACHE, retries=0, persist_result=False)


def artifact_key(*parts: str) -> str:
    """Prefect artifact keys allow lower-case letters, digits and dashes only."""
    text = "-".join(parts).lower()
    return _SLUG.sub("-", text).strip("-")[:200] or "artifact"


def run_logger() -> Any:
    """The run's logger; outside a run (a flow hook in the runner) the module logger."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("boundary_inference")
