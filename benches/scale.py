"""``boundary-inference bench --scale``: the ledger's calls and admissions at 0, 100k and 1M runs.

For each size a throw-away schema is migrated and filled with realistic history
(:mod:`benches.history`; "0" holds only the dozen live runs the calls act on).
Then, interleaved so that the machine's load falls on every size alike:

* **latency**: every call of :data:`~benches.ledger_calls.CATALOGUE` (one admission,
  the monitor's pass, the reaper, predictions), each in a transaction that is rolled back, round
  after round over the sizes; p50 and p99 per size, and ``ratio_p50_1m_to_empty`` per call;
* **admissions per second**: ``processes`` spawned processes, each with its own ledger connection
  and Redis client, admit jobs for ``admission_s`` seconds through every guard in the flow's order
  (claim with a lease, cooldown + rate limit and its record in the ledger, budget reservation,
  breaker probe check, transition to running),
  committed as in production; rounds alternate between the empty ledger and the largest one. Each
  admission's time is split into its steps, the client's Python CPU, the Postgres backend's CPU
  (read from ``/proc``, embedded server only), Redis's CPU (``INFO cpu``) and the time spent
  waiting for the budget lock (``lock_wait_ms`` from ``reserve_budget``), so a machine that cannot
  reach the goal shows where the time goes.

Nothing outside the scratch schemas and a scratch Redis key prefix is written; both are removed at
the end unless ``keep`` (the history takes minutes to build).
"""

from __future__ import annotations

import datetime as dt
import math
import multiprocessing as mp
import os
import queue as queue_mod
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from config import Settings

DEFAULT_SIZES = (0, 100_000, 1_000_000)
ADMISSION_GOAL_PER_S = 1000
# A call is timed until it has this many samples per size or has used its time budget.
LATENCY_SAMPLES = 100
LATENCY_MIN_SAMPLES = 5
LATENCY_BUDGET_S = 5.0
_NO_CAP = 1e12
_BARRIER_TIMEOUT_S = 120.0


def size_label(rows: int) -> str:
    if rows == 0:
        return "empty"
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}m"
    if rows % 1000 == 0:
        return f"{rows // 1000}k"
    return str(rows)


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of unsorted ``samples``."""
    ordered = sorted(samples)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Scratch:
    rows: int
    label: str
    schema: str


# --- building ---------------------------------------------------------------------------------


def build_schemas(
    dsn: str, base: str, sizes: Sequence[int]
) -> tuple[list[Scratch], dict[str, Any]]:
    from benches.history import HistoryShape, build_history

    tag = uuid.uuid4().hex[:6]
    scratches: list[Scratch] = []
    built: dict[str, Any] = {}
    for rows in sizes:
        label = size_label(rows)
        schema = f"{base[:30]}_scale_{label}_{tag}"
        if rows == 0:
            # No history: the dozen live runs (queued and running) the calls act on.
            shape = HistoryShape(runs=12, live_runs=12, orphans=0, rejections_per_run=0)
        else:
            shape = HistoryShape(runs=rows)
        started = time.monotonic()
        info = build_history(dsn, schema, shape)
        built[label] = {
            "schema": schema,
            "rows": info["rows"],
            "build_s": round(time.monotonic() - started, 1),
        }
        scratches.append(Scratch(rows, label, schema))
    return scratches, built


def drop_schemas(dsn: str, scratches: Sequence[Scratch]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        for scratch in scratches:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(scratch.schema))
            )


# --- latency of each call ---------------------------------------------------------------------


def call_latencies(dsn: str, scratches: Sequence[Scratch]) -> list[dict[str, Any]]:
    """p50/p99 (ms) of every catalogue call per size, rounds interleaved over the sizes."""
    from benches.ledger_calls import CATALOGUE, find_subjects
    from benches.plans import call_statement

    conns = {s.label: psycopg.connect(dsn) for s in scratches}
    try:
        subjects = {s.label: find_subjects(conns[s.label], s.schema) for s in scratches}
        results = []
        for call in CATALOGUE:
            samples: dict[str, list[float]] = {s.label: [] for s in scratches}
            spent = dict.fromkeys(samples, 0.0)
            for round_ in range(LATENCY_SAMPLES + 1):  # round 0 warms up (plans, caches)
                shift = round_ % len(scratches)
                order = [*scratches[shift:], *scratches[:shift]]
                for scratch in order:
                    label = scratch.label
                    if round_ > LATENCY_MIN_SAMPLES and spent[label] > LATENCY_BUDGET_S:
                        continue
                    conn = conns[label]
                    statement, values = call_statement(
                        scratch.schema, call.fn, call.params(subjects[label])
                    )
                    try:
                        started = time.perf_counter()
                        conn.execute(statement, values).fetchone()
                        elapsed = time.perf_counter() - started
                    finally:
                        conn.rollback()
                    if round_ > 0:
                        samples[label].append(elapsed * 1000)
                        spent[label] += elapsed
            p50 = {k: round(statistics.median(v), 3) for k, v in samples.items()}
            p99 = {k: round(percentile(v, 99), 3) for k, v in samples.items()}
            first, last = scratches[0].label, scratches[-1].label
            results.append(
                {
                    "call": call.name,
                    "path": call.path,
                    "owner": call.owner,
                    "samples": {k: len(v) for k, v in samples.items()},
                    "p50_ms": p50,
                    "p99_ms": p99,
                    f"ratio_p50_{last}_to_{first}": round(p50[last] / p50[first], 2)
                    if p50[first] > 0
                    else None,
                }
            )
        return results
    finally:
        for conn in conns.values():
            conn.close()


# --- admissions per second --------------------------------------------------------------------


def _proc_cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a local process, or None when it cannot be read."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def _admission_worker(
    dsn: str,
    schema: str,
    redis_url: str,
    prefix: str,
    worker: int,
    subject: tuple[str, str, str],
    duration_s: float,
    local_server: bool,
    barrier: Any,
    out: Any,
) -> None:
    """Child process: admit jobs through every guard for ``duration_s`` seconds."""
    from boundary_inference.ledger import Ledger, PsycopgTransport
    from boundary_inference.limiter import Limiter, open_redis_client

    transport = PsycopgTransport(dsn, schema, timeout_s=60)
    ledger = Ledger(transport)
    limiter = Limiter(open_redis_client(redis_url, timeout_s=30), prefix=prefix)
    video_id, tenant_id, model_version = subject
    steps = dict.fromkeys(("claim", "limiter", "reserve", "breaker", "transition"), 0.0)
    lock_wait_ms = 0.0
    admitted = refused = 0
    try:
        ledger.ping()
        limiter.refund(video_id="warm-up", token=uuid.uuid4().hex)  # connect, load the script
        backend_pid = transport._connection().info.backend_pid if local_server else None
        barrier.wait(_BARRIER_TIMEOUT_S)
        db_cpu0, py_cpu0 = _proc_cpu_s(backend_pid), time.process_time()
        started = time.perf_counter()
        deadline = started + duration_s
        n = 0
        while time.perf_counter() < deadline:
            n += 1
            t0 = time.perf_counter()
            claim = ledger.claim_run(
                video_id=video_id,
                tenant_id=tenant_id,
                frames_version=f"a{worker}-{n}-{uuid.uuid4().hex[:8]}",
                model_version=model_version,
                pairs=1000,
                lease_s=60,
                lease_owner=f"bench-{worker}",
            )
            run_id = str(claim["run_id"])
            t1 = time.perf_counter()
            decision = limiter.admit(
                video_id=f"{schema}-{worker}-{n}",
                token=run_id,
                cooldown_s=600,
                rate_limit=10**9,
                window_s=3600,
            )
            if decision.allowed:  # as tasks.limits.admit: the ledger records every admission
                ledger.record_admission(run_id=run_id)
            t2 = time.perf_counter()
            budget = ledger.reserve_budget(
                run_id=run_id,
                tenant_id=tenant_id,
                amount_usd=0.35,
                daily_cap_usd=_NO_CAP,
                monthly_cap_usd=_NO_CAP,
            )
            t3 = time.perf_counter()
            breaker = ledger.breaker_check(
                name="gpu-inference", threshold=5, window_s=3600, open_s=3600, acquire_probe=True
            )
            t4 = time.perf_counter()
            ledger.transition_run(
                run_id=run_id,
                to_status="running",
                attempts=1,
                worst_case_cost_usd=0.35,
                reserved_cost_usd=0.35,
            )
            t5 = time.perf_counter()
            steps["claim"] += t1 - t0
            steps["limiter"] += t2 - t1
            steps["reserve"] += t3 - t2
            steps["breaker"] += t4 - t3
            steps["transition"] += t5 - t4
            lock_wait_ms += float(budget.get("lock_wait_ms") or 0.0)
            ok = claim["created"] and decision.allowed and budget["ok"] and breaker["allowed"]
            admitted += int(bool(ok))
            refused += int(not ok)
        elapsed = time.perf_counter() - started
        db_cpu1, py_cpu1 = _proc_cpu_s(backend_pid), time.process_time()
        out.put(
            {
                "worker": worker,
                "admitted": admitted,
                "refused": refused,
                "seconds": elapsed,
                "steps_s": steps,
                "lock_wait_s": lock_wait_ms / 1000,
                "python_cpu_s": py_cpu1 - py_cpu0,
                "postgres_cpu_s": None if db_cpu0 is None or db_cpu1 is None else db_cpu1 - db_cpu0,
            }
        )
    except Exception as error:
        out.put({"worker": worker, "error": f"{type(error).__name__}: {error}"})
    finally:
        transport.close()
        limiter.client.close()


def _redis_cpu_s(redis_url: str) -> float:
    from boundary_inference.limiter import open_redis_client

    client = open_redis_client(redis_url, timeout_s=10)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _cleanup_redis(redis_url: str, prefix: str) -> None:
    from boundary_inference.limiter import open_redis_client

    client = open_redis_client(redis_url, timeout_s=10)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
    finally:
        client.close()


def admission_round(
    dsn: str,
    scratch: Scratch,
    redis_url: str,
    *,
    processes: int,
    duration_s: float,
    local_server: bool,
) -> dict[str, Any]:
    """One round: ``processes`` spawned processes admitting for ``duration_s`` seconds."""
    from benches.ledger_calls import find_subjects
    from benches.limiter import fresh_limiter

    with psycopg.connect(dsn) as conn:
        subjects = find_subjects(conn, scratch.schema)
    subject = (subjects.video_id, subjects.tenant_id, subjects.model_version)
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    # A limiter synced with nothing admitted before, as a new deployment's.
    fresh_limiter(redis_url, prefix).client.close()
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(processes + 1)
    out = ctx.Queue()
    workers = [
        ctx.Process(
            target=_admission_worker,
            args=(
                dsn,
                scratch.schema,
                redis_url,
                prefix,
                w,
                subject,
                duration_s,
                local_server,
                barrier,
                out,
            ),
            daemon=True,
        )
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    reports: list[dict[str, Any]] = []
    try:
        barrier.wait(_BARRIER_TIMEOUT_S)
        redis_cpu0, load0 = _redis_cpu_s(redis_url), os.getloadavg()[0]
        deadline = time.monotonic() + duration_s + _BARRIER_TIMEOUT_S
        while len(reports) < processes:
            try:
                reports.append(out.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue_mod.Empty:
                raise TimeoutError(
                    f"{len(reports)}/{processes} admission workers reported"
                ) from None
        redis_cpu = _redis_cpu_s(redis_url) - redis_cpu0
        load1 = os.getloadavg()[0]
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
        _cleanup_redis(redis_url, prefix)
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        raise RuntimeError(f"admission workers failed: {errors[:3]}")
    return _summarise(reports, redis_cpu, processes, (load0, load1))


def _summarise(
    reports: list[dict[str, Any]],
    redis_cpu_s: float,
    processes: int,
    load: tuple[float, float],
) -> dict[str, Any]:
    admitted = sum(r["admitted"] for r in reports)
    refused = sum(r["refused"] for r in reports)
    total = max(admitted + refused, 1)
    seconds = max(r["seconds"] for r in reports)
    busy_s = sum(r["seconds"] for r in reports)  # process-seconds spent admitting

    def per(value_s: float) -> float:
        return float(round(value_s * 1000 / total, 3))

    steps = {k: per(sum(r["steps_s"][k] for r in reports)) for k in reports[0]["steps_s"]}
    in_calls_s = sum(sum(r["steps_s"].values()) for r in reports)
    postgres = [r["postgres_cpu_s"] for r in reports]
    postgres_cpu = None if None in postgres else sum(postgres)
    cpu_ms = {
        "client_python": per(sum(r["python_cpu_s"] for r in reports)),
        "postgres_backends": None if postgres_cpu is None else per(postgres_cpu),
        "redis_server": per(redis_cpu_s),
    }
    known_cpu = [v for v in cpu_ms.values() if v is not None]
    cores = os.cpu_count() or 1
    return {
        "admissions_per_s": round(admitted / seconds, 1),
        "admitted": admitted,
        "refused": refused,
        "processes": processes,
        "seconds": round(seconds, 2),
        "load_average_1m": [round(load[0], 2), round(load[1], 2)],
        # Wall time one process spends per admission, by step (the calls include the client's
        # Python and psycopg/redis-py work, the round trip and the server's work).
        "wall_ms_per_admission": {
            **steps,
            "python_between_calls": per(busy_s - in_calls_s),
            "total": per(busy_s),
        },
        "budget_lock_wait_ms_per_admission": per(sum(r["lock_wait_s"] for r in reports)),
        "cpu_ms_per_admission": cpu_ms,
        # If admissions were CPU-bound, this machine's cores could do at most this many a second.
        "cpu_bound_admissions_per_s": round(cores * 1000 / sum(known_cpu), 1)
        if known_cpu
        else None,
        "cores": cores,
    }


def commit_flush_ms(dsn: str, schema: str, *, commits: int = 200) -> float:
    """p50 of a one-row synchronous commit: the WAL flush every reservation waits for while it
    holds the budget lock (locks are released after the commit record is on disk)."""
    table = sql.Identifier(schema, "bench_commit_probe")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (x integer)").format(table))
        try:
            samples = []
            for _ in range(commits):
                started = time.perf_counter()
                conn.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
                samples.append((time.perf_counter() - started) * 1000)
        finally:
            conn.execute(sql.SQL("DROP TABLE {}").format(table))
    return round(statistics.median(samples), 3)


def admissions(
    dsn: str,
    scratches: Sequence[Scratch],
    redis_url: str,
    *,
    processes: int,
    duration_s: float,
    rounds: int,
    local_server: bool,
) -> dict[str, Any]:
    """Alternate rounds on the empty and the largest ledger; per size, every round and the mean."""
    pair = [scratches[0], scratches[-1]]
    by_label: dict[str, list[dict[str, Any]]] = {s.label: [] for s in pair}
    for round_ in range(rounds):
        for scratch in pair if round_ % 2 == 0 else pair[::-1]:
            by_label[scratch.label].append(
                admission_round(
                    dsn,
                    scratch,
                    redis_url,
                    processes=processes,
                    duration_s=duration_s,
                    local_server=local_server,
                )
            )
    mean = {
        label: round(statistics.fmean(r["admissions_per_s"] for r in runs), 1)
        for label, runs in by_label.items()
    }
    first, last = pair[0].label, pair[1].label
    flush_ms = commit_flush_ms(dsn, pair[0].schema)
    return {
        "processes": processes,
        # Reservations are serialised by the budget lock, which each holds through its commit's
        # WAL flush: at most one reservation per flush, however many cores.
        "commit_flush_ms_p50": flush_ms,
        "reservations_per_s_ceiling_from_flush": round(1000 / flush_ms, 1) if flush_ms else None,
        "rounds": by_label,
        "admissions_per_s": mean,
        f"ratio_{last}_to_{first}": round(mean[last] / mean[first], 3) if mean[first] else None,
        "goal_per_s": ADMISSION_GOAL_PER_S,
    }


# --- the whole benchmark ----------------------------------------------------------------------


def run_scale_bench(
    settings: Settings,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    processes: int = 8,
    admission_s: float = 10.0,
    admission_rounds: int = 3,
    keep: bool = False,
) -> dict[str, Any]:
    from boundary_inference.services import embedded_dsn

    if len(sizes) < 2 or sorted(sizes) != list(sizes) or sizes[0] != 0:
        raise ValueError("sizes must start at 0 and increase, e.g. 0,100000,1000000")
    started = time.monotonic()
    local_server = settings.database_url is None
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        dsn = embedded_dsn(settings)
    if settings.redis_url is not None:
        redis_url = settings.redis_url.get_secret_value()
    else:
        from boundary_inference.local.embedded import start_redis

        redis_url = start_redis(Path(settings.state_dir)).url
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    scratches, built = build_schemas(dsn, settings.db_schema, sizes)
    try:
        calls = call_latencies(dsn, scratches)
        throughput = admissions(
            dsn,
            scratches,
            redis_url,
            processes=processes,
            duration_s=admission_s,
            rounds=admission_rounds,
            local_server=local_server,
        )
    finally:
        if not keep:
            drop_schemas(dsn, scratches)
    return _report(calls, throughput, built, scratches, load_at_start, started)


def _report(
    calls: list[dict[str, Any]],
    throughput: dict[str, Any],
    built: dict[str, Any],
    scratches: Sequence[Scratch],
    load_at_start: list[float],
    started: float,
) -> dict[str, Any]:
    first, last = scratches[0].label, scratches[-1].label
    key = f"ratio_p50_{last}_to_{first}"
    ratios = {f"{key}.{c['call']}": c[key] for c in calls}
    ratios[f"admissions_per_s.ratio_{last}_to_{first}"] = throughput[f"ratio_{last}_to_{first}"]
    admission_ratios = [c[key] for c in calls if c["path"] == "admission" and c[key] is not None]
    slow_reports = [
        {"call": c["call"], f"p50_ms_{last}": c["p50_ms"][last], "owner": c["owner"]}
        for c in calls
        if c["path"] in ("monitor", "reaper") and c["p50_ms"][last] >= 50
    ]
    throughput_ratio = throughput[f"ratio_{last}_to_{first}"]
    return {
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "sizes": {s.label: s.rows for s in scratches},
        "built": built,
        "load_average_1m_at_start": load_at_start,
        "cores": os.cpu_count(),
        "calls": calls,
        "admissions": throughput,
        "ratios": ratios,
        "done_when": {
            f"admission_p50_ratio_{last}_to_{first}_max": max(admission_ratios, default=None),
            "admission_p50_within_1.5x": all(r <= 1.5 for r in admission_ratios),
            f"admissions_per_s_ratio_{last}_to_{first}": throughput_ratio,
            "admissions_per_s_within_1.5x": throughput_ratio is not None
            and throughput_ratio >= 1 / 1.5,
            f"admissions_per_s_{last}": throughput["admissions_per_s"][last],
            "admissions_goal_per_s": ADMISSION_GOAL_PER_S,
            f"monitor_and_reaper_calls_at_or_over_50ms_{last}": slow_reports,
        },
        "total_seconds": round(time.monotonic() - started, 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as text: one line per call, sizes side by side, then the admissions."""
    labels = list(report["sizes"])
    first, last = labels[0], labels[-1]
    key = f"ratio_p50_{last}_to_{first}"
    head = (
        f"{'call':34} {'path':11}"
        + "".join(f" {'p50 ' + label:>11}" for label in labels)
        + "".join(f" {'p99 ' + label:>11}" for label in labels)
        + f" {'ratio':>7}"
    )
    lines = [
        f"ledger at scale ({report['cores']} cores, load {report['load_average_1m_at_start']}):"
        f" {', '.join(f'{k} = {v:,} runs' for k, v in report['sizes'].items())};"
        " times in ms, ratio = p50 " + f"{last} / p50 {first}",
        head,
        "-" * len(head),
    ]
    for call in report["calls"]:
        ratio = call[key]
        lines.append(
            f"{call['call']:34} {call['path']:11}"
            + "".join(f" {call['p50_ms'][label]:>11.2f}" for label in labels)
            + "".join(f" {call['p99_ms'][label]:>11.2f}" for label in labels)
            + f" {'' if ratio is None else f'{ratio:.2f}':>7}"
        )
    adm = report["admissions"]
    lines.append("")
    lines.append(
        f"admissions per second, {adm['processes']} processes, every guard (claim with lease,"
        f" cooldown + rate + record, reserve, breaker, transition), goal {adm['goal_per_s']}:"
    )
    for label, value in adm["admissions_per_s"].items():
        rounds = ", ".join(f"{r['admissions_per_s']:.0f}" for r in adm["rounds"][label])
        lines.append(f"  {label:>6}: {value:8.1f} /s   (rounds: {rounds})")
    lines.append(f"  ratio {last}/{first}: {adm[f'ratio_{last}_to_{first}']}")
    sample = adm["rounds"][last][-1]
    lines.append(f"  where one admission's time goes ({last}, last round):")
    lines.append(f"    wall ms by step: {sample['wall_ms_per_admission']}")
    lines.append(f"    budget lock wait ms: {sample['budget_lock_wait_ms_per_admission']}")
    lines.append(f"    CPU ms: {sample['cpu_ms_per_admission']}")
    lines.append(
        f"    CPU-bound ceiling on {sample['cores']} cores: {sample['cpu_bound_admissions_per_s']}/s"
    )
    lines.append(
        f"    commit (WAL flush) p50 {adm['commit_flush_ms_p50']} ms: the budget lock is held"
        f" through it, so at most {adm['reservations_per_s_ceiling_from_flush']} reservations/s"
    )
    lines.append("")
    lines.append(f"done when: {report['done_when']}")
    return "\n".join(lines)
