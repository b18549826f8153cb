"""The limiter on a real Redis: cooldown, sliding window, refunds, replays, races, dead servers,
a Redis that lost its data. Time is the Redis server's or an injected ``now_s``; expiry is caused
by shortening a key's TTL, never by waiting for it."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis

from benches.limiter import concurrency_figures, fresh_limiter
from boundary_inference.limiter import (
    Admission,
    Limiter,
    LimiterUnavailable,
    LimiterUnsynced,
    PastAdmission,
    open_redis_client,
    redis_client_from_block,
)
from boundary_inference.local.embedded import EmbeddedRedis, start_redis
from boundary_inference.local.processes import pid_alive
from tests.flow_support import freeze
from tests.support import Clock

HOUR_S = 3600.0


@pytest.fixture
def limiter(redis_url: str) -> Iterator[Limiter]:
    """A limiter under a prefix of its own; its keys are deleted afterwards."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    limiter = fresh_limiter(redis_url, prefix)
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


def age_out(limiter: Limiter, key: str) -> None:
    """Make ``key`` expire now (as its TTL running out would), and wait until Redis agrees."""
    limiter.client.pexpire(key, 1)
    while limiter.client.exists(key):
        time.sleep(0.01)


def test_cooldown_expires(limiter: Limiter) -> None:
    assert admit(limiter, "a").allowed
    assert admit(limiter, "a").reason == "cooldown"
    age_out(limiter, f"{{{limiter.prefix}}}:cooldown:a")
    assert limiter.cooldown_remaining_s("a") == 0
    assert admit(limiter, "a").allowed


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
    seconds, micros = limiter.client.time()
    before_s = int(seconds) + int(micros) / 1e6
    for i in range(3):
        assert admit(limiter, f"v{i}", rate_limit=3).allowed
    refused = admit(limiter, "v3", rate_limit=3)
    assert refused.reason == "rate_limited" and 0 < refused.retry_after_s <= HOUR_S
    assert limiter.window_count(window_s=HOUR_S) == 3
    # The entries carry the server's time: an hour after the last one, all have aged out.
    scores_ms = [s for _, s in limiter.client.zrange(limiter._window_key, 0, -1, withscores=True)]
    assert min(scores_ms) / 1000 >= before_s - 0.001
    assert limiter.window_count(window_s=HOUR_S, now_s=(min(scores_ms) - 1) / 1000 + HOUR_S) == 3
    assert limiter.window_count(window_s=HOUR_S, now_s=max(scores_ms) / 1000 + HOUR_S) == 0
    assert admit(limiter, "v3", rate_limit=3, now_s=max(scores_ms) / 1000 + HOUR_S).allowed


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
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
    try:
        assert admit(limiter, "a").allowed
        private.stop()
        for call in (
            lambda: admit(limiter, "b"),
            lambda: limiter.refund(video_id="a", token="x"),
            lambda: limiter.cooldown_remaining_s("a"),
            lambda: limiter.window_count(window_s=HOUR_S),
            limiter.ping,
        ):
            with pytest.raises(LimiterUnavailable):
                call()
        start_redis(tmp_path)
        # Same client: it reconnects on its own, to another server process, which it notices.
        with pytest.raises(LimiterUnsynced):
            admit(limiter, "c")
        limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
        assert admit(limiter, "c").allowed
    finally:
        private.stop()


def test_hung_server_is_unavailable_within_the_timeout(tmp_path: Path) -> None:
    """A server that accepts but never answers: one timeout, no redis-py retries (10 by default)."""
    private = start_redis(tmp_path)
    limiter = Limiter(open_redis_client(private.url, timeout_s=0.5), prefix="h")
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
    pid = private.pid()
    assert pid is not None
    try:
        assert admit(limiter, "a").allowed
        freeze(pid)
        started = time.monotonic()
        with pytest.raises(LimiterUnavailable, match="Timeout"):
            admit(limiter, "b")
        # One timeout, not redis-py's default 10 retries with backoff (>= 5 s here).
        assert time.monotonic() - started < 10 * 0.5
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


# --- Durability: the daemon killed, the data kept ----------------------------------------------


def _wait_until_logged(server: EmbeddedRedis, token: str) -> None:
    """Until the append-only file holds ``token``. Redis writes it before answering unless an
    fsync is still running (then up to 2 s later): the one window ``kill -9`` can lose."""
    aof = server.directory / "appendonly.aof"
    while not (aof.exists() and token.encode() in aof.read_bytes()):
        time.sleep(0.01)


def test_kill_9_of_the_daemon_keeps_cooldowns_and_the_window(tmp_path: Path) -> None:
    private = start_redis(tmp_path)
    client = open_redis_client(private.url, timeout_s=5)
    assert client.config_get("save") == {"save": "60 1"}  # snapshots on (not "no snapshots")
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    limiter = Limiter(client, prefix="d")
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
    try:
        for video in ("a", "b", "c"):
            assert admit(limiter, video, token=f"run-{video}", rate_limit=3).allowed
        _wait_until_logged(private, "run-c")
        old_pid = private.pid()
        private.stop()  # kill -9
        assert old_pid is not None and not pid_alive(old_pid)
        start_redis(tmp_path)
        assert private.pid() != old_pid
        # Read straight from Redis, before any rebuild: the daemon reloaded them from its file.
        assert 590 < limiter.cooldown_remaining_s("a") <= 600
        assert limiter.window_count(window_s=HOUR_S) == 3
        # Another server process: the limiter re-syncs first (here from a ledger that knows
        # nothing, so whatever is refused below is refused from the reloaded data alone).
        with pytest.raises(LimiterUnsynced):
            admit(limiter, "a", token="run-a2")
        limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
        assert admit(limiter, "a", token="run-a2", rate_limit=4).reason == "cooldown"
        assert admit(limiter, "d", token="run-d", rate_limit=3).reason == "rate_limited"
    finally:
        client.close()
        private.stop()


# --- A Redis that lost its data: nothing admitted until rebuilt from the ledger -------------------


def test_nothing_is_admitted_before_the_state_is_synced(redis_url: str) -> None:
    limiter = Limiter(open_redis_client(redis_url, timeout_s=5), prefix=f"u{uuid.uuid4().hex[:8]}")
    try:
        with pytest.raises(LimiterUnsynced):
            admit(limiter, "a")
        assert not limiter.synced()
        done = limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
        assert done.rebuilt and done.admissions_read == 0
        assert limiter.synced() and admit(limiter, "a").allowed
        # Synced once is synced: no second rebuild.
        assert not limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5).rebuilt
    finally:
        for key in limiter.client.scan_iter(match=f"{{{limiter.prefix}}}:*"):
            limiter.client.delete(key)
        limiter.client.close()


def test_a_server_restarted_empty_admits_nothing_past_the_limits(tmp_path: Path) -> None:
    """The real thing: the daemon killed, its files deleted, started again with nothing. The
    ledger's record of the last hour (here a list; tests/test_leases.py uses the real ledger)
    restores every cooldown and the whole window before anything is admitted."""
    private = start_redis(tmp_path)
    limiter = Limiter(open_redis_client(private.url, timeout_s=5), prefix="e")
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=HOUR_S, wait_s=5)
    ledger = [PastAdmission(f"run-{i}", f"v{i}", age_s=100.0 + i) for i in range(20)]
    try:
        for admission in ledger:
            assert admit(limiter, admission.video_id, token=admission.token).allowed
        private.stop()
        for name in ("appendonly.aof", "dump.rdb"):
            (private.directory / name).unlink(missing_ok=True)
        start_redis(tmp_path)
        assert limiter.window_count(window_s=HOUR_S) == 0  # it really lost everything
        with pytest.raises(LimiterUnsynced):
            admit(limiter, "v-new")
        done = limiter.rebuild(lambda: ledger, cooldown_s=600, window_s=HOUR_S, wait_s=5)
        assert (done.window_added, done.cooldowns_set) == (20, 20)
        refused = admit(limiter, "v-new")
        assert refused.reason == "rate_limited" and refused.window_count == 20
        # The oldest (119 s old by the ledger's clock) ages out one hour after it was admitted.
        assert HOUR_S - 119 - 5 < refused.retry_after_s <= HOUR_S - 119
        cooled = admit(limiter, "v3", rate_limit=100)
        assert cooled.reason == "cooldown" and 600 - 103 - 5 < cooled.retry_after_s <= 600 - 103
        # An admission older than the cooldown takes a window slot but holds no cooldown.
        old = [PastAdmission("run-old", "v-old", age_s=700.0)]
        limiter.client.delete(limiter._marker_key)
        limiter.rebuild(lambda: old, cooldown_s=600, window_s=HOUR_S, wait_s=5)
        assert limiter.cooldown_remaining_s("v-old") == 0
        assert limiter.window_count(window_s=HOUR_S) == 21
    finally:
        limiter.client.close()
        private.stop()


def test_a_rebuild_only_adds(limiter: Limiter) -> None:
    """A rebuild from a stale read of the ledger (an admission happened since) takes nothing away:
    it merges, so admissions running during a rebuild are never forgotten."""
    assert admit(limiter, "a", token="run-new").allowed
    limiter.client.delete(limiter._marker_key)  # as if the server had restarted
    stale = [PastAdmission("run-old", "b", age_s=30.0)]
    limiter.rebuild(lambda: stale, cooldown_s=600, window_s=HOUR_S, wait_s=5)
    assert 599 < limiter.cooldown_remaining_s("a") <= 600
    assert 560 < limiter.cooldown_remaining_s("b") <= 570
    assert limiter.window_count(window_s=HOUR_S) == 2


def test_one_process_rebuilds_the_others_fail_closed_until_it_is_done(redis_url: str) -> None:
    """Eight clients find the state unsynced at once. Exactly one reads the ledger; while its read
    is held open (a source that blocks until told), the others wait their guard timeout (an
    injected clock) and refuse: nothing is admitted from a half-rebuilt state."""
    prefix = f"r{uuid.uuid4().hex[:8]}"
    clients = [open_redis_client(redis_url, timeout_s=5) for _ in range(8)]
    clocks = [Clock() for _ in clients]
    limiters = [
        Limiter(c, prefix=prefix, clock=k, sleep=k.sleep)
        for c, k in zip(clients, clocks, strict=True)
    ]
    release, reading = threading.Event(), threading.Event()
    loads = []

    def ledger_read() -> list[PastAdmission]:
        loads.append(1)
        reading.set()
        assert release.wait(60)
        return [PastAdmission("run-0", "v0", age_s=10.0)]

    def rebuild(limiter: Limiter) -> str:
        try:
            done = limiter.rebuild(ledger_read, cooldown_s=600, window_s=HOUR_S, wait_s=5)
        except LimiterUnavailable:
            return "refused"
        return "rebuilt" if done.rebuilt else "waited"

    with ThreadPoolExecutor(max_workers=8) as pool:
        first = pool.submit(rebuild, limiters[0])
        assert reading.wait(60)
        others = list(pool.map(rebuild, limiters[1:]))
        release.set()
        assert first.result(timeout=60) == "rebuilt"
    assert others == ["refused"] * 7 and len(loads) == 1
    # Now synced for everyone, with what the ledger said.
    assert all(limiter.synced() for limiter in limiters)
    assert admit(limiters[3], "v0").reason == "cooldown"
    for key in clients[0].scan_iter(match=f"{{{prefix}}}:*"):
        clients[0].delete(key)
    for client in clients:
        client.close()
