"""Small helpers shared by test modules that need no servers of their own: an injected clock,
deeply nested JSON, a callable's signature as data, a schema migrated up to a point, a budget
reservation that must succeed, a child Python process.

Flow environments are in :mod:`tests.flow_support`; storage servers in
:mod:`tests.storage_support`."""

from __future__ import annotations

import datetime as dt
import heapq
import inspect
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from boundary_inference.ledger import Ledger, apply_migrations
from migrations import migration_files

T0 = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)  # the ledger tests' "now", injected
RUN_KEY: dict[str, Any] = {  # a run's dedup key in the ledger tests
    "video_id": "v1",
    "tenant_id": "t1",
    "frames_version": "f1",
    "model_version": "m1",
}


class Clock:
    """An injected clock: it moves only when its owner sleeps; nothing waits for real."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ManualTimer:
    """One timer of a :class:`ManualClock`."""

    def __init__(self, action: Callable[[], None], name: str) -> None:
        self.action = action
        self.name = name
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """The job's monotonic clock and its timers (``modal_app.timers.StartTimer``), moved only by
    the test: what fires, and in which order, follows the time the test moved, never this
    machine's speed.

    :meth:`advance` runs each timer that falls due, in time order, each on a thread of its own
    named as asked (as a real timer does, so an abort a watchdog raises into the working thread
    lands there, not in the timer) and waits for it to end before the next one.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._lock = threading.Lock()
        self._due: list[tuple[float, int, ManualTimer]] = []  # a heap: (due at, order, timer)
        self._order = 0

    def __call__(self) -> float:
        return self.now

    def start_timer(self, delay_s: float, action: Callable[[], None], name: str) -> ManualTimer:
        timer = ManualTimer(action, name)
        with self._lock:
            self._order += 1
            heapq.heappush(self._due, (self.now + delay_s, self._order, timer))
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            with self._lock:
                if not self._due or self._due[0][0] > end:
                    break
                at, _, timer = heapq.heappop(self._due)
            self.now = max(self.now, at)
            if timer.cancelled:
                continue
            thread = threading.Thread(target=timer.action, name=timer.name, daemon=True)
            thread.start()
            thread.join(timeout=30.0)  # a bound on the test: an action returns at once
            assert not thread.is_alive(), f"timer {timer.name!r} did not end"
        self.now = end


def nested(depth: int) -> list[Any]:
    """``[[[...]]]``: a list ``depth`` levels deep, built without recursion."""
    outer: list[Any] = []
    cursor = outer
    for _ in range(depth - 1):
        cursor.append([])
        cursor = cursor[0]
    return outer


def signature_shape(function: Callable[..., Any]) -> list[tuple[str, Any, Any]]:
    """(name, kind, default) of each parameter, ``self``/``cls`` left out: a test double's
    signature compared with the real client's it stands in for."""
    params = list(inspect.signature(function).parameters.values())
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [(p.name, p.kind, p.default) for p in params]


@contextmanager
def schema_migrated_before(
    dsn: str, tmp_path: Path, first_left_out: str
) -> Iterator[tuple[str, Path]]:
    """A fresh schema migrated with only the migrations named before ``first_left_out`` (a
    timestamp prefix), as production was before them: (the schema, the folder of those files).
    Dropped on exit."""
    schema = f"bi_old_{uuid.uuid4().hex[:10]}"
    before = tmp_path / "before"
    before.mkdir()
    for path in migration_files():
        if path.name < first_left_out:
            shutil.copy(path, before / path.name)
    apply_migrations(dsn, schema, directory=before)
    yield schema, before
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def reserve(ledger: Ledger, run_id: str, amount_usd: float, *, tenant_id: str = "t1") -> None:
    """Reserve ``amount_usd`` for ``run_id`` under caps far above it; it must be granted."""
    done = ledger.reserve_budget(
        run_id=run_id,
        tenant_id=tenant_id,
        amount_usd=amount_usd,
        daily_cap_usd=100.0,
        monthly_cap_usd=1000.0,
    )
    assert done["ok"], done


def try_reserve(
    ledger: Ledger,
    amount: float,
    *,
    caps: dict[str, Any],
    now: dt.datetime | None = T0,
    tenant: str = "t1",
    run_id: str | uuid.UUID | None = None,
    **cap_overrides: float,
) -> dict[str, Any]:
    """Ask to reserve ``amount`` USD under ``caps`` (``daily_cap_usd``, ``monthly_cap_usd``;
    ``cap_overrides`` over them) at ``now`` (None: the database's clock): the ledger's answer,
    granted or not."""
    return ledger.reserve_budget(
        run_id=run_id or str(uuid.uuid4()),
        tenant_id=tenant,
        amount_usd=amount,
        now=now,
        **{**caps, **cap_overrides},
    )


def in_threads(ledger: Ledger, calls: list[Callable[[Ledger], Any]]) -> list[Any]:
    """Run ``calls`` at once, one thread (and connection) each."""
    barrier = threading.Barrier(len(calls))

    def run(call: Callable[[Ledger], Any]) -> Any:
        ledger.ping()  # this thread's connection is open before the race
        barrier.wait(timeout=60)
        return call(ledger)

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


def run_python(
    args: Sequence[str], *, env: dict[str, str], cwd: Path, timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """``python <args>`` in a child process, its output captured as text; its exit status is
    the caller's to check."""
    return subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
