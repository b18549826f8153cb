"""Concurrency and latency figures of the limiter on a real Redis (loopback or Unix socket only).

``concurrency_figures(url)`` races separate processes (``spawn``), each with its own client, released
together by a barrier so their admissions really overlap on the server. Every loop is bounded and
every key written is deleted afterwards.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from typing import Any

from boundary_inference.limiter.client import open_redis_client
from boundary_inference.limiter.limiter import Limiter

_TIMEOUT_S = 60.0


def _worker(url: str, prefix: str, videos: list[str], limit: int, barrier: Any, out: Any) -> None:
    limiter = Limiter(open_redis_client(url, timeout_s=10), prefix=prefix)
    # Connect and load the script before the start line, so the race is about the admissions.
    limiter.refund(video_id="warm-up", token=uuid.uuid4().hex)
    barrier.wait(timeout=_TIMEOUT_S)
    allowed = 0
    for video in videos:
        decision = limiter.admit(
            video_id=video, token=uuid.uuid4().hex, cooldown_s=600, rate_limit=limit, window_s=3600
        )
        allowed += int(decision.allowed)
    limiter.client.close()
    out.put(allowed)


def fresh_limiter(url: str, prefix: str) -> Limiter:
    """A limiter on a prefix of its own, synced with nothing admitted before (a new deployment)."""
    limiter = Limiter(open_redis_client(url, timeout_s=10), prefix=prefix)
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=3600, wait_s=10)
    return limiter


def race_processes(url: str, videos: list[str], *, limit: int, processes: int = 8) -> int:
    """Admissions granted when ``processes`` spawned processes admit ``videos`` at once."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    fresh_limiter(url, prefix).client.close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(processes)
    out = ctx.Queue()
    chunks = [videos[i::processes] for i in range(processes)]
    workers = [
        ctx.Process(target=_worker, args=(url, prefix, chunk, limit, barrier, out))
        for chunk in chunks
    ]
    for worker in workers:
        worker.start()
    try:
        results = [out.get(timeout=_TIMEOUT_S) for _ in workers]
    finally:
        for worker in workers:
            worker.join(timeout=_TIMEOUT_S)
            if worker.is_alive():
                worker.kill()
        _cleanup(url, prefix)
    return sum(results)


def _cleanup(url: str, prefix: str) -> None:
    client = open_redis_client(url, timeout_s=10)
    try:
        keys = list(client.scan_iter(match=f"{{{prefix}}}:*", count=1000))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


def admit_latencies_ms(url: str, *, n: int = 500) -> list[float]:
    """Sorted wall times of ``n`` sequential admissions (distinct videos, no refusals)."""
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    limiter = fresh_limiter(url, prefix)
    latencies_ms = []
    try:
        for i in range(n):
            t0 = time.perf_counter()
            limiter.admit(
                video_id=f"l{i}", token=f"t{i}", cooldown_s=600, rate_limit=n + 1, window_s=3600
            )
            latencies_ms.append((time.perf_counter() - t0) * 1000)
    finally:
        limiter.client.close()
        _cleanup(url, prefix)
    return sorted(latencies_ms)


def concurrency_figures(url: str) -> dict[str, Any]:
    """200 distinct videos against 20/hour and 50 admissions of one video (8 processes each),
    then the latency of one admission."""
    started = time.monotonic()
    processes = 8
    figures: dict[str, Any] = {
        "admissions_200_vs_20_per_hour_allowed": race_processes(
            url, [f"v{i}" for i in range(200)], limit=20, processes=processes
        ),
        "same_video_50_allowed": race_processes(
            url, ["same"] * 50, limit=1000, processes=processes
        ),
        "processes": processes,
    }
    latencies_ms = admit_latencies_ms(url)
    figures["admit_p50_ms"] = round(statistics.median(latencies_ms), 3)
    figures["admit_p99_ms"] = round(latencies_ms[int(len(latencies_ms) * 0.99) - 1], 3)
    figures["seconds"] = round(time.monotonic() - started, 2)
    return figures
