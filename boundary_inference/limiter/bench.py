"""Concurrency figures of the limiter on a real Redis (loopback or Unix socket only)."""

from __future__ import annotations

import multiprocessing
import statistics
import time
import uuid
from typing import Any

from boundary_inference.limiter.client import open_redis_client
from boundary_inference.limiter.limiter import Limiter


def _admit_many(url: str, prefix: str, videos: list[str], limit: int, same_token: bool) -> int:
    limiter = Limiter(open_redis_client(url, timeout_s=10), prefix=prefix)
    allowed = 0
    for video in videos:
        token = uuid.uuid4().hex
        decision = limiter.admit(
            video_id=video, token=token, cooldown_s=600, rate_limit=limit, window_s=3600
        )
        allowed += int(decision.allowed)
    limiter.client.close()
    return allowed


def _race(url: str, videos: list[str], limit: int, processes: int) -> int:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    chunks = [videos[i::processes] for i in range(processes)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(processes) as pool:
        results = pool.starmap(_admit_many, [(url, prefix, c, limit, False) for c in chunks])
    _cleanup(url, prefix)
    return sum(results)


def _cleanup(url: str, prefix: str) -> None:
    client = open_redis_client(url, timeout_s=10)
    keys = list(client.scan_iter(f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


def concurrency_figures(url: str) -> dict[str, Any]:
    """200 admissions of distinct videos against 20/hour, and 50 of one video, from 8 processes."""
    started = time.monotonic()
    figures: dict[str, Any] = {
        "admissions_200_vs_20_per_hour_allowed": _race(url, [f"v{i}" for i in range(200)], 20, 8),
        "same_video_50_allowed": _race(url, ["same"] * 50, 1000, 8),
    }
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    limiter = Limiter(open_redis_client(url, timeout_s=10), prefix=prefix)
    latencies_ms = []
    for i in range(500):
        t0 = time.perf_counter()
        limiter.admit(
            video_id=f"l{i}", token=str(i), cooldown_s=600, rate_limit=10_000, window_s=3600
        )
        latencies_ms.append((time.perf_counter() - t0) * 1000)
    _cleanup(url, prefix)
    latencies_ms.sort()
    figures["admit_p50_ms"] = round(statistics.median(latencies_ms), 3)
    figures["admit_p99_ms"] = round(latencies_ms[int(len(latencies_ms) * 0.99) - 1], 3)
    figures["seconds"] = round(time.monotonic() - started, 2)
    return figures
