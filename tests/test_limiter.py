"""The limiter on a real Redis: cooldown, sliding window, refunds, replays, races, dead servers."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from boundary_inference.embedded import start_redis
from boundary_inference.limiter import (
    Admission,
    Limiter,
    LimiterUnavailable,
    open_redis_client,
    redis_client_from_block,
)
from boundary_inference.limiter.bench import concurrency_figures

HOUR_S = 3600.0


@pytest.fixture
def limiter(redis_url: str) -> Iterator[Limiter]:
    """A limiter under a prefix of its own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    limiter = Limiter(open_redis_client(redis_url, timeout_s=5), prefix=prefix)
    yield limiter
    keys = list(limiter.client.scan_iter(match=f"{{{prefix}}}:*"))
    if keys:
        limiter.client.delete(*keys)
    limiter.client.close()


def admit(limiter: Limiter, video: str, token: str | None = None, **kw: float) -> Admission:
    params: dict[str, float] = {"cooldown_s": 600.0, "rate_limit": 20, "window_s": HOUR_S, **kw}
    return limiter.admit(
        video_id=video,
        token=token or uuid.uuid4().hex,
        cooldown_s=params["cooldown_s"],
        rate_limit=int(params["rate_limit"]),
        window_s=params["window_s"],
        now_s=params.get("now_s"),
    )


# --- Cooldown ------------------------------------------------------------------------------------


def test_cooldown_refuses_the_same_video_with_the_time_left(limiter: Limiter) -> None:
    first = admit(limiter, "a")
    assert first == Admission(allowed=True, reason=None, retry_after_s=0.0, window_count=1)
    second = admit(limiter, "a")
    assert not second.allowed and second.reason == "cooldown"
    assert 599 < second.retry_after_s <= 600
    assert 599 < limiter.cooldown_remaining_s("a") <= 600
    assert admit(limiter, "b").allowed
    assert limiter.cooldown_remaining_s("never-seen") == 0


def test_cooldown_expires(limiter: Limiter) -> None:
    assert admit(limiter, "a", cooldown_s=0.3).allowed
    assert admit(limiter, "a", cooldown_s=0.3).reason == "cooldown"
    time.sleep(0.35)
    assert admit(limiter, "a", cooldown_s=0.3).allowed


# --- Global sliding window -----------------------------------------------------------------------


def test_21st_in_an_hour_is_refused_until_the_oldest_ages_out(limiter: Limiter) -> None:
    t0 = 1_000_000.0
    for i in range(20):
        assert admit(limiter, f"v{i}", now_s=t0 + i).window_count == i + 1
    refused = admit(limiter, "v20", now_s=t0 + 30)
    assert refused == Admission(
        allowed=False, reason="rate_limited", retry_after_s=HOUR_S - 30, window_count=20
    )
    assert limiter.window_count(window_s=HOUR_S, now_s=t0 + 30) == 20
    # At t0 + 3600 the first admission is exactly one window old: it has aged out.
    assert admit(limiter, "v21", now_s=t0 + HOUR_S).allowed
    late = admit(limiter, "v22", now_s=t0 + HOUR_S + 0.5)
    assert late.reason == "rate_limited" and late.retry_after_s == pytest.approx(0.5)
    # Long after, the whole window has emptied.
    assert limiter.window_count(window_s=HOUR_S, now_s=t0 + 3 * HOUR_S) == 0
    assert admit(limiter, "v23", now_s=t0 + 3 * HOUR_S).window_count == 1


def test_window_uses_the_server_clock_by_default(limiter: Limiter) -> None:
    for i in range(3):
        assert admit(limiter, f"v{i}", rate_limit=3, window_s=0.4).allowed
    refused = admit(limiter, "v3", rate_limit=3, window_s=0.4)
    assert refused.reason == "rate_limited" and 0 < refused.retry_after_s <= 0.4
    assert limiter.window_count(window_s=0.4) == 3
    time.sleep(refused.retry_after_s + 0.05)
    assert admit(limiter, "v3", rate_limit=3, window_s=0.4).allowed


# --- Nothing consumed on refusal; refunds; replays -----------------------------------------------


def test_refusals_consume_nothing(limiter: Limiter) -> None:
    t0 = 2_000_000.0
    assert admit(limiter, "a", now_s=t0, rate_limit=2).allowed
    for _ in range(5):  # cooldown refusals take no window slot
        assert admit(limiter, "a", now_s=t0 + 1, rate_limit=2).reason == "cooldown"
    assert limiter.window_count(window_s=HOUR_S, now_s=t0 + 1) == 1
    assert admit(limiter, "b", now_s=t0 + 2, rate_limit=2).allowed
    for _ in range(5):  # rate refusals set no cooldown and take no slot
        assert admit(limiter, "c", now_s=t0 + 3, rate_limit=2).reason == "rate_limited"
    assert limiter.cooldown_remaining_s("c") == 0
    assert limiter.window_count(window_s=HOUR_S, now_s=t0 + 3) == 2


def test_refund_gives_both_back_and_only_its_own(limiter: Limiter) -> None:
    t0 = 3_000_000.0
    assert admit(limiter, "a", token="run-1", now_s=t0, rate_limit=1).allowed
    assert admit(limiter, "b", now_s=t0, rate_limit=1).reason == "rate_limited"
    assert limiter.refund(video_id="a", token="run-1")
    assert limiter.cooldown_remaining_s("a") == 0
    assert limiter.window_count(window_s=HOUR_S, now_s=t0) == 0
    assert not limiter.refund(video_id="a", token="run-1")  # idempotent
    # The video and the slot are free again; run-2 takes them.
    assert admit(limiter, "a", token="run-2", now_s=t0 + 1, rate_limit=1).allowed
    # A stale refund of run-1 must not free run-2's cooldown or slot.
    assert not limiter.refund(video_id="a", token="run-1")
    assert limiter.cooldown_remaining_s("a") > 0
    assert admit(limiter, "b", now_s=t0 + 2, rate_limit=1).reason == "rate_limited"


def test_same_token_replays_instead_of_taking_more(limiter: Limiter) -> None:
    """A retried admission (first answer lost) is allowed again, not refused by its own cooldown."""
    t0 = 4_000_000.0
    assert admit(limiter, "a", token="run-1", now_s=t0, rate_limit=2).allowed
    replay = admit(limiter, "a", token="run-1", now_s=t0 + 1, rate_limit=2)
    assert replay == Admission(allowed=True, reason=None, retry_after_s=0.0, window_count=1)
    assert admit(limiter, "a", token="run-2", now_s=t0 + 1, rate_limit=2).reason == "cooldown"
    # With no cooldown at all the window entry alone recognises the replay.
    assert admit(limiter, "b", token="run-3", now_s=t0 + 2, rate_limit=2, cooldown_s=0).allowed
    assert admit(limiter, "b", token="run-3", now_s=t0 + 2, rate_limit=2, cooldown_s=0).allowed
    assert limiter.window_count(window_s=HOUR_S, now_s=t0 + 2) == 2


def test_empty_token_is_refused_before_redis(limiter: Limiter) -> None:
    with pytest.raises(ValueError, match="token"):
        limiter.admit(video_id="a", token="", cooldown_s=1, rate_limit=1, window_s=1)


# --- Real concurrency ----------------------------------------------------------------------------


def test_200_threads_against_20_per_hour_admit_exactly_20(limiter: Limiter) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda i: admit(limiter, f"v{i}").allowed, range(200)))
    assert sum(results) == 20
    assert limiter.window_count(window_s=HOUR_S) == 20


def test_50_threads_on_one_video_admit_exactly_1(limiter: Limiter) -> None:
    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(lambda _: admit(limiter, "same", rate_limit=1000), range(50)))
    assert sum(r.allowed for r in results) == 1
    assert {r.reason for r in results if not r.allowed} == {"cooldown"}
    assert limiter.window_count(window_s=HOUR_S) == 1


def test_separate_processes_race_exactly(redis_url: str) -> None:
    """8 spawned processes, each with its own client on the same socket, released by a barrier."""
    figures = concurrency_figures(redis_url)
    assert figures["admissions_200_vs_20_per_hour_allowed"] == 20
    assert figures["same_video_50_allowed"] == 1
    assert 0 < figures["admit_p50_ms"] <= figures["admit_p99_ms"]


# --- A dead or hung Redis ------------------------------------------------------------------------


def test_killed_server_is_unavailable_then_recovers(tmp_path: Path) -> None:
    private = start_redis(tmp_path)
    limiter = Limiter(open_redis_client(private.url, timeout_s=1), prefix="k")
    try:
        assert admit(limiter, "a").allowed
        private.stop()
        started = time.monotonic()
        for call in (
            lambda: admit(limiter, "b"),
            lambda: limiter.refund(video_id="a", token="x"),
            lambda: limiter.cooldown_remaining_s("a"),
            lambda: limiter.window_count(window_s=HOUR_S),
            limiter.ping,
        ):
            with pytest.raises(LimiterUnavailable):
                call()
        assert time.monotonic() - started < 1.0
        start_redis(tmp_path)
        assert admit(limiter, "c").allowed  # same client: it reconnects on its own
    finally:
        private.stop()


def test_hung_server_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    """A server that accepts but never answers: one timeout, no redis-py retries (10 by default)."""
    private = start_redis(tmp_path)
    limiter = Limiter(open_redis_client(private.url, timeout_s=0.5), prefix="h")
    pid = private.pid()
    assert pid is not None
    try:
        assert admit(limiter, "a").allowed
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable, match="Timeout"):
            admit(limiter, "b")
        assert time.monotonic() - started < 1.5
    finally:
        os.kill(pid, signal.SIGCONT)
    assert admit(limiter, "c").allowed
    private.stop()


def _retries(client: redis.Redis) -> int:
    retry = client.get_retry()
    assert retry is not None
    return retry.get_retries()


# --- Clients -------------------------------------------------------------------------------------


def test_client_from_a_saved_prefect_redis_block(redis_url: str) -> None:
    from prefect_redis import RedisDatabase

    name = f"limiter-{uuid.uuid4().hex[:8]}"
    RedisDatabase(connection_url=redis_url).save(name)
    client = redis_client_from_block(name, timeout_s=2)
    assert client.ping()
    assert _retries(client) == 0
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 2 and kwargs["socket_connect_timeout"] == 2
    client.close()

    RedisDatabase(host="redis.invalid", port=6380, db=3).save(f"{name}-fields")
    fields = redis_client_from_block(f"{name}-fields", timeout_s=2)  # lazy: connects on first use
    kwargs = fields.connection_pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (
        "redis.invalid",
        6380,
        3,
        2,
    )


@pytest.mark.parametrize(
    "url", ["redis://localhost:6399/2", "rediss://localhost:6399/0", "unix:///tmp/none.sock"]
)
def test_url_schemes_get_timeouts_and_no_retries(url: str) -> None:
    client = open_redis_client(url, timeout_s=0.25)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.25 and kwargs["socket_connect_timeout"] == 0.25
    assert _retries(client) == 0
