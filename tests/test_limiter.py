"""The limiter on a real Redis: cooldown, sliding window, refunds, races, and a killed server."""

from __future__ import annotations

import multiprocessing
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from boundary_inference.embedded import start_redis
from boundary_inference.limiter import Limiter, LimiterUnavailable, open_redis_client
from boundary_inference.limiter.bench import concurrency_figures

HOUR_S = 3600.0


@pytest.fixture
def limiter(redis_url: str) -> Limiter:
    return Limiter(open_redis_client(redis_url, timeout_s=5), prefix=f"t{uuid.uuid4().hex[:10]}")


def admit(limiter: Limiter, video: str, token: str | None = None, **kw: float) -> object:
    params = {"cooldown_s": 600.0, "rate_limit": 20, "window_s": HOUR_S, **kw}
    return limiter.admit(video_id=video, token=token or uuid.uuid4().hex, **params)  # type: ignore[arg-type]


def test_cooldown_refuses_the_same_video_with_the_time_left(limiter: Limiter) -> None:
    assert admit(limiter, "a").allowed
    second = admit(limiter, "a")
    assert not second.allowed and second.reason == "cooldown"
    assert 590 < second.retry_after_s <= 600
    assert admit(limiter, "b").allowed
    assert 590 < limiter.cooldown_remaining_s("a") <= 600


def test_cooldown_expires(limiter: Limiter) -> None:
    assert admit(limiter, "a", cooldown_s=0.3).allowed
    assert not admit(limiter, "a", cooldown_s=0.3).allowed
    time.sleep(0.4)
    assert admit(limiter, "a", cooldown_s=0.3).allowed


def test_sliding_window_with_retry_after(limiter: Limiter) -> None:
    t0 = 1_000_000.0
    for i in range(20):
        assert admit(limiter, f"v{i}", now_s=t0 + i).allowed
    refused = admit(limiter, "v20", now_s=t0 + 30)
    assert not refused.allowed and refused.reason == "rate_limited"
    assert refused.retry_after_s == pytest.approx(HOUR_S - 30)
    assert refused.window_count == 20
    # The oldest admission ages out of the window; exactly one slot comes back.
    assert admit(limiter, "v21", now_s=t0 + HOUR_S + 0.5).allowed
    assert not admit(limiter, "v22", now_s=t0 + HOUR_S + 0.6).allowed


def test_refusals_consume_nothing(limiter: Limiter) -> None:
    t0 = 2_000_000.0
    assert admit(limiter, "a", now_s=t0, rate_limit=2).allowed
    for _ in range(5):  # cooldown refusals do not take window slots
        assert admit(limiter, "a", now_s=t0 + 1, rate_limit=2).reason == "cooldown"
    assert admit(limiter, "b", now_s=t0 + 2, rate_limit=2).allowed
    refused = admit(limiter, "c", now_s=t0 + 3, rate_limit=2)
    assert refused.reason == "rate_limited"
    assert limiter.cooldown_remaining_s("c") == 0  # a rate refusal sets no cooldown


def test_refund_gives_both_back_and_only_its_own(limiter: Limiter) -> None:
    t0 = 3_000_000.0
    assert admit(limiter, "a", token="run-1", now_s=t0, rate_limit=1).allowed
    assert limiter.refund(video_id="a", token="run-1")
    assert limiter.cooldown_remaining_s("a") == 0
    assert admit(limiter, "a", token="run-2", now_s=t0 + 1, rate_limit=1).allowed
    # A stale refund of run-1 must not free run-2's cooldown or slot.
    assert not limiter.refund(video_id="a", token="run-1")
    assert limiter.cooldown_remaining_s("a") > 0
    assert admit(limiter, "b", now_s=t0 + 2, rate_limit=1).reason == "rate_limited"
    assert not limiter.refund(video_id="a", token="run-1")  # idempotent


def test_200_threads_against_20_per_hour_admit_exactly_20(limiter: Limiter) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda i: admit(limiter, f"v{i}").allowed, range(200)))
    assert sum(results) == 20
    assert limiter.window_count(window_s=HOUR_S) == 20


def test_50_threads_on_one_video_admit_exactly_1(limiter: Limiter) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(
            pool.map(lambda _: admit(limiter, "same", rate_limit=1000).allowed, range(50))
        )
    assert sum(results) == 1


def test_separate_processes_race_exactly(redis_url: str) -> None:
    figures = concurrency_figures(redis_url)
    assert figures["admissions_200_vs_20_per_hour_allowed"] == 20
    assert figures["same_video_50_allowed"] == 1
    assert multiprocessing.get_start_method(allow_none=True) in (None, "fork", "spawn")


def test_killed_server_is_unavailable_then_recovers(tmp_path: Path) -> None:
    private = start_redis(tmp_path)
    limiter = Limiter(open_redis_client(private.url, timeout_s=1), prefix="k")
    assert admit(limiter, "a").allowed
    private.stop()
    started = time.monotonic()
    with pytest.raises(LimiterUnavailable):
        admit(limiter, "b")
    assert time.monotonic() - started < 5
    start_redis(tmp_path)
    assert admit(limiter, "c").allowed
    start_redis(tmp_path).stop()
