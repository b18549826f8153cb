"""Concurrency figures of the ledger's atomic functions, measured on a real server.

:func:`concurrency_figures` races separate *processes* (spawned, each with its own
:class:`PsycopgTransport` and one connection per thread) against the three functions whose
atomicity the safeguards depend on, and counts winners:

* ``claims_50_creators``: 50 callers claim one (video, frames, model) key -> must be 1;
* ``reservations_100x0.50_cap20_ok``: 100 reservations of $0.50 under a $20 daily cap -> must be 40;
* ``breaker_probe_20_granted``: 20 callers ask an open breaker whose wait is over -> must be 1.

It works in a throwaway schema (``<schema>_bench_<hex>``, migrated first, dropped after), so the
named schema's runs, budget and breaker are never touched. :func:`race` is the reusable part (the
tests use it too).
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import queue as queue_mod
import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql

# Separate processes x threads per process = 50 concurrent callers, each on its own connection
# (pgserver's max_connections is 100; leave room for everything else).
DEFAULT_PROCESSES = 5
DEFAULT_THREADS = 10
_BARRIER_TIMEOUT_S = 120.0

Phase = tuple[str, list[dict[str, Any]]]  # (Ledger method name, one kwargs dict per call)


def _worker(
    dsn: str,
    schema: str,
    phases: list[list[list[dict[str, Any]]]],
    threads: int,
    barrier: Any,
    names: list[str],
    results: Any,
    worker_index: int,
) -> None:
    """Child process: ``threads`` threads, one connection each, all phases in step."""
    from boundary_inference.ledger import Ledger, PsycopgTransport

    transport = PsycopgTransport(dsn, schema, timeout_s=60)
    ledger = Ledger(transport)
    out: list[list[list[Any]]] = [[[] for _ in range(threads)] for _ in phases]
    spans: list[list[tuple[float, float]]] = [[] for _ in phases]

    def run_thread(t: int) -> None:
        ledger.ping()  # open this thread's connection before the race starts
        for p, per_thread in enumerate(phases):
            barrier.wait(_BARRIER_TIMEOUT_S)
            start = time.time()
            for kwargs in per_thread[t]:
                # A call may name its own method ("_method"): one phase can mix methods.
                args = dict(kwargs)
                method = getattr(ledger, args.pop("_method", names[p]))
                try:
                    out[p][t].append(method(**args))
                except Exception as exc:
                    out[p][t].append({"error": f"{type(exc).__name__}: {exc}"})
            spans[p].append((start, time.time()))

    pool = [threading.Thread(target=run_thread, args=(t,)) for t in range(threads)]
    try:
        for th in pool:
            th.start()
        for th in pool:
            th.join()
    finally:
        transport.close()
    results.put((worker_index, out, spans))


def race(
    dsn: str,
    schema: str,
    phases: list[Phase],
    *,
    processes: int = DEFAULT_PROCESSES,
    threads: int = DEFAULT_THREADS,
    timeout_s: float = 120.0,
) -> list[dict[str, Any]]:
    """Run each phase's calls at once from ``processes`` x ``threads`` callers (spawned processes).

    Calls are dealt round-robin to the callers; every caller waits at a cross-process barrier
    before each phase, so each phase's calls race. A call's kwargs may hold ``"_method"`` to
    call another Ledger method than its phase's, so one phase can mix, say, reservations and
    releases. Returns one ``{"results": [...],
    "seconds": wall}`` per phase; a call that raised appears as ``{"error": "..."}``.
    """
    ctx = mp.get_context("spawn")
    callers = processes * threads
    barrier = ctx.Barrier(callers)
    results = ctx.Queue()
    names = [name for name, _ in phases]
    # plan[process][phase][thread] -> list of kwargs
    plan: list[list[list[list[dict[str, Any]]]]] = [
        [[[] for _ in range(threads)] for _ in phases] for _ in range(processes)
    ]
    for p, (_, calls) in enumerate(phases):
        for i, kwargs in enumerate(calls):
            caller = i % callers
            plan[caller % processes][p][caller // processes].append(kwargs)
    procs = [
        ctx.Process(
            target=_worker,
            args=(dsn, schema, plan[w], threads, barrier, names, results, w),
            daemon=True,
        )
        for w in range(processes)
    ]
    for proc in procs:
        proc.start()
    collected: list[tuple[int, Any, Any]] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(collected) < processes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"race: {len(collected)}/{processes} workers reported")
            try:
                collected.append(results.get(timeout=min(remaining, 1.0)))
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    raise RuntimeError(f"race: worker exited with {dead[0].exitcode}") from None
        for proc in procs:
            proc.join(timeout=30)
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(5)
    phase_out: list[dict[str, Any]] = []
    for p in range(len(phases)):
        flat: list[Any] = []
        starts: list[float] = []
        ends: list[float] = []
        for _, out, spans in collected:
            for per_thread in out[p]:
                flat.extend(per_thread)
            starts.extend(s for s, _ in spans[p])
            ends.extend(e for _, e in spans[p])
        seconds = (max(ends) - min(starts)) if starts else 0.0
        phase_out.append({"results": flat, "seconds": round(seconds, 4)})
    return phase_out


def _scratch_schema(schema: str) -> str:
    return f"{schema[:40]}_bench_{uuid.uuid4().hex[:8]}"


def concurrency_figures(
    dsn: str,
    schema: str,
    *,
    processes: int = DEFAULT_PROCESSES,
    threads: int = DEFAULT_THREADS,
) -> dict[str, Any]:
    """Race claims, reservations and breaker probes from separate processes; count the winners.

    Returns ``{"claims_50_creators": 1, "reservations_100x0.50_cap20_ok": 40,
    "breaker_probe_20_granted": 1, "seconds": ..., ...}`` when the ledger is correct; anything
    else is a bug. ``schema`` only names the scratch schema (see the module docstring).
    """
    from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations

    started = time.monotonic()
    scratch = _scratch_schema(schema)
    apply_migrations(dsn, scratch)
    try:
        transport = PsycopgTransport(dsn, scratch, timeout_s=30)
        ledger = Ledger(transport)
        try:
            ledger.upsert_video(id="bench-video", tenant_id="bench", frame_count=1000, fps=25.0)
            t0 = dt.datetime(2030, 1, 15, 12, 0, tzinfo=dt.UTC)
            breaker: dict[str, Any] = {"name": "bench", "threshold": 5, "window_s": 3600}
            for i in range(5):
                ledger.breaker_record(
                    name="bench",
                    threshold=5,
                    window_s=3600,
                    ok=False,
                    kind="bench",
                    now=t0 + dt.timedelta(seconds=i),
                )
            opened = ledger.breaker_status(name="bench", now=t0 + dt.timedelta(seconds=5))
        finally:
            transport.close()

        claim = {
            "video_id": "bench-video",
            "tenant_id": "bench",
            "frames_version": "f1",
            "model_version": "m1",
            "pairs": 999,
        }
        reserve_now = t0
        reserve = [
            {
                "run_id": str(uuid.uuid4()),
                "tenant_id": f"tenant-{i % 3}",
                "amount_usd": 0.5,
                "daily_cap_usd": 20.0,
                "monthly_cap_usd": 1000.0,
                "now": reserve_now,
            }
            for i in range(100)
        ]
        probe_now = t0 + dt.timedelta(seconds=3600 + 10)
        probe = [
            {**breaker, "open_s": 3600, "acquire_probe": True, "now": probe_now} for _ in range(20)
        ]
        claims, reservations, probes = race(
            dsn,
            scratch,
            [("claim_run", [claim] * 50), ("reserve_budget", reserve), ("breaker_check", probe)],
            processes=processes,
            threads=threads,
        )
        errors = [
            r["error"]
            for phase in (claims, reservations, probes)
            for r in phase["results"]
            if isinstance(r, dict) and "error" in r
        ]
        run_ids = {r.get("run_id") for r in claims["results"] if "run_id" in r}
        return {
            "claims_50_creators": sum(1 for r in claims["results"] if r.get("created") is True),
            "claims_50_distinct_run_ids": len(run_ids),
            "reservations_100x0.50_cap20_ok": sum(
                1 for r in reservations["results"] if r.get("ok") is True
            ),
            "breaker_state_before_probe": opened["state"],
            "breaker_probe_20_granted": sum(
                1 for r in probes["results"] if r.get("probe") is True and r.get("allowed")
            ),
            "errors": errors[:5],
            "error_count": len(errors),
            "processes": processes,
            "threads_per_process": threads,
            "phase_seconds": {
                "claims": claims["seconds"],
                "reservations": reservations["seconds"],
                "breaker_probes": probes["seconds"],
            },
            "seconds": round(time.monotonic() - started, 3),
        }
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch))
            )
