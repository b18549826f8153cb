"""The limiter: admission = per-video cooldown + global sliding window, one Lua script. Private module.

Each decision is one atomic script on the Redis server (``lua/admit.lua``, ``lua/refund.lua``,
registered once per :class:`Limiter` with ``register_script``), so any number of threads, processes
or hosts sharing the Redis cannot admit more than the limit. Time is the Redis server's clock unless
a test passes ``now_s``; client clocks never matter.

Keys (all under one hash tag, so both keys of a script share a slot on Redis Cluster):
``{prefix}:cooldown:<video_id>`` holds the token of the admission that owns the cooldown, with a
``PX`` expiry of ``cooldown_s``; ``{prefix}:window`` is a ZSET of admission tokens scored by time.

When quota is burned without use, exactly:

* A refusal never consumes quota: a cooldown refusal takes no window slot, a rate refusal sets no
  cooldown.
* An admission followed by a later guard's refusal (budget, breaker) is given back by
  :meth:`Limiter.refund`, atomically and only if the cooldown still holds that admission's token.
* An admission followed by a crash (or a lost Redis connection) **before** the refund, or before the
  job runs, keeps its cooldown until it expires (at most ``cooldown_s``) and its window slot until it
  ages out (at most ``window_s``). Nothing holds quota longer than that; no reaper is needed.
* An admission whose answer was lost (the script ran, then the connection timed out) also holds
  both, with the same bounds; calling :meth:`Limiter.admit` again with the **same token** replays it
  ("allowed", nothing more taken) instead of refusing the caller's own cooldown.

Redis is the fast path; the ledger is the source of truth. A Redis that lost its data (restarted
without it, a failover to a replica that missed the last writes) would forget every cooldown and
the whole window, and admit up to twice the rate limit. So the state is *marked* with the run id of
the server that holds it (``{prefix}:synced``), and the admission script refuses with
:class:`LimiterUnsynced` whenever the marker is missing or names another server process. The caller
then calls :meth:`Limiter.rebuild` with the ledger's admissions of the last window: one process
rebuilds (a lock in Redis), the others wait for it (at most ``wait_s``) and otherwise fail closed.
The rebuild merges (adds, never removes), so it is safe against admissions running meanwhile. A
new, empty deployment is the same case: its first admission rebuilds from an empty ledger.

A token names one admission of one video (the run id). Redis errors of every kind (connection,
timeout, script error) are raised as :class:`LimiterUnavailable`; failing closed is the caller's call.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal, cast

import redis

from boundary_inference.errors import StoreUnavailable

_LUA = resources.files("boundary_inference.limiter") / "lua"

Reason = Literal["cooldown", "rate_limited"]


class LimiterUnavailable(StoreUnavailable):
    """Redis could not be reached, did not answer in time, or failed the call. Fail closed."""


class LimiterUnsynced(LimiterUnavailable):
    """Redis does not hold the state this limiter wrote (it restarted empty, or it is another
    server): nothing is admitted until :meth:`Limiter.rebuild` has restored it from the ledger.
    A caller that cannot rebuild fails closed, as for any :class:`LimiterUnavailable`."""


@dataclass(frozen=True)
class PastAdmission:
    """One admission as the ledger recorded it, for :meth:`Limiter.rebuild`.

    Attributes:
        token: The admission's token (the run id).
        video_id: The video it took the cooldown of.
        age_s: Seconds since it was admitted, in the ledger's clock.
    """

    token: str
    video_id: str
    age_s: float


@dataclass(frozen=True)
class Rebuild:
    """What :meth:`Limiter.rebuild` did. ``rebuilt=False``: another process rebuilt meanwhile.

    Attributes:
        rebuilt: This call restored the state (it held the rebuild lock).
        admissions_read: Admissions the loader returned.
        window_added: Window entries that were missing and were added.
        cooldowns_set: Cooldowns that were missing (or shorter) and were set.
        seconds: Wall time of the call.
    """

    rebuilt: bool
    admissions_read: int = 0
    window_added: int = 0
    cooldowns_set: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class Admission:
    """One admission decision.

    Attributes:
        allowed: Both the cooldown and a window slot were taken (or already held by this token).
        reason: Why it was refused; ``None`` when allowed.
        retry_after_s: Seconds until the refusing limit lets this request through; 0 when allowed.
        window_count: Admissions in the current global window after this call.
    """

    allowed: bool
    reason: Reason | None
    retry_after_s: float
    window_count: int


class Limiter:
    """Per-video cooldown and a global sliding-window rate limit on one Redis.

    Example:
        >>> limiter = Limiter(open_redis_client("unix:///tmp/redis.sock", timeout_s=5))
        >>> limiter.admit(video_id="v1", token=run_id, cooldown_s=600, rate_limit=20,
        ...               window_s=3600)  # doctest: +SKIP
        Admission(allowed=True, reason=None, retry_after_s=0.0, window_count=1)
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "bi",
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._clock = clock
        self._sleep = sleep
        # register_script only hashes the text; EVALSHA falls back to EVAL once per server.
        self._admit = client.register_script(_script("admit.lua", with_run_id=True))
        self._refund = client.register_script(_script("refund.lua"))
        self._restore = client.register_script(_script("restore.lua", with_run_id=True))
        self._synced = client.register_script(_script("synced.lua", with_run_id=True))
        self._unlock = client.register_script(_script("unlock.lua"))

    def _cooldown_key(self, video_id: str) -> str:
        return f"{{{self.prefix}}}:cooldown:{video_id}"

    @property
    def _window_key(self) -> str:
        return f"{{{self.prefix}}}:window"

    @property
    def _marker_key(self) -> str:
        return f"{{{self.prefix}}}:synced"

    @property
    def _rebuild_lock_key(self) -> str:
        return f"{{{self.prefix}}}:rebuilding"

    def admit(
        self,
        *,
        video_id: str,
        token: str,
        cooldown_s: float,
        rate_limit: int,
        window_s: float,
        now_s: float | None = None,
    ) -> Admission:
        """Take the video's cooldown and a global window slot, both or neither, in one script.

        Raises:
            LimiterUnsynced: Redis does not hold this limiter's state; :meth:`rebuild` first.
            LimiterUnavailable: Redis failed or did not answer in time.
        """
        if not token:
            raise ValueError("token must be a non-empty, unique id of this admission (the run id)")
        args: list[str | int] = [
            token,
            _ms(cooldown_s),
            int(rate_limit),
            max(_ms(window_s), 1),
            "" if now_s is None else _ms(now_s),
        ]
        with _unavailable_on_error():
            allowed, reason, retry_ms, count = self._admit(
                keys=[self._cooldown_key(video_id), self._window_key, self._marker_key], args=args
            )
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
        if reason_text == "unsynced":
            raise LimiterUnsynced(
                "Redis does not hold the limiter's state (restarted without its data, or another"
                " server): rebuild it from the ledger before admitting anything"
            )
        return Admission(
            allowed=bool(allowed),
            reason=cast(Reason, reason_text) if reason_text else None,
            retry_after_s=int(retry_ms) / 1000.0,
            window_count=int(count),
        )

    def refund(self, *, video_id: str, token: str) -> bool:
        """Give back an admission a later guard refused; True if anything was given back.

        Idempotent, and never touches another admission: the cooldown is deleted only while it
        still holds ``token``.
        """
        with _unavailable_on_error():
            result = self._refund(
                keys=[self._cooldown_key(video_id), self._window_key], args=[token]
            )
        return bool(result)

    def cooldown_remaining_s(self, video_id: str) -> float:
        """Seconds until ``video_id`` may be admitted again as far as its cooldown goes (0: now)."""
        with _unavailable_on_error():
            ttl_ms = int(self.client.pttl(self._cooldown_key(video_id)))
        return max(0, ttl_ms) / 1000.0

    def window_count(self, *, window_s: float, now_s: float | None = None) -> int:
        """Admissions inside the window ending now (server clock) or at ``now_s``."""
        with _unavailable_on_error():
            if now_s is None:
                seconds, micros = self.client.time()
                now_ms = int(seconds) * 1000 + int(micros) // 1000
            else:
                now_ms = _ms(now_s)
            # The script drops scores <= now - window, so the window is (now - window, +inf).
            return int(self.client.zcount(self._window_key, f"({now_ms - _ms(window_s)}", "+inf"))

    def synced(self) -> bool:
        """Whether Redis holds this limiter's state (the marker names this server process)."""
        with _unavailable_on_error():
            return bool(self._synced(keys=[self._marker_key]))

    def rebuild(
        self,
        load: Callable[[], Iterable[PastAdmission]],
        *,
        cooldown_s: float,
        window_s: float,
        wait_s: float,
    ) -> Rebuild:
        """Restore the cooldowns and the window from ``load()`` (the ledger), then mark synced.

        One process rebuilds (a lock in Redis, expiring on its own if its holder dies); the others
        wait until the marker is back, at most ``wait_s``, then raise :class:`LimiterUnavailable`
        (fail closed). Errors of ``load`` propagate unchanged: without the ledger there is no
        rebuild, and nothing is admitted.
        """
        started = self._clock()
        token = uuid.uuid4().hex
        lock_ms = max(_ms(wait_s) * 4, 10_000)
        with _unavailable_on_error():
            mine = bool(self.client.set(self._rebuild_lock_key, token, nx=True, px=lock_ms))
        if not mine:
            while self._clock() - started < wait_s:
                if self.synced():
                    return Rebuild(rebuilt=False, seconds=self._clock() - started)
                self._sleep(0.05)
            raise LimiterUnavailable(
                f"another process is rebuilding the limiter's state and has not finished within"
                f" {wait_s:g} s; nothing is admitted meanwhile"
            )
        try:
            if self.synced():  # finished by another process just before we took the lock
                return Rebuild(rebuilt=False, seconds=self._clock() - started)
            admissions = list(load())
            window, cooldowns = _restore_args(admissions, window_s=window_s)
            keys = [self._window_key, self._marker_key]
            keys += [self._cooldown_key(video) for video in cooldowns]
            args: list[str | int] = [max(_ms(window_s), 1), len(window)]
            for token_, age_s in window:
                args += [token_, _ms(age_s)]
            args.append(_ms(cooldown_s))
            for token_, age_s in cooldowns.values():
                args += [token_, _ms(age_s)]
            with _unavailable_on_error():
                added, cooled = self._restore(keys=keys, args=args)
            return Rebuild(
                rebuilt=True,
                admissions_read=len(admissions),
                window_added=int(added),
                cooldowns_set=int(cooled),
                seconds=self._clock() - started,
            )
        finally:
            try:
                self._unlock(keys=[self._rebuild_lock_key], args=[token])
            except (redis.RedisError, OSError):
                pass  # it expires on its own

    def ping(self) -> None:
        """Raise :class:`LimiterUnavailable` unless Redis answers within the client's timeout."""
        with _unavailable_on_error():
            self.client.ping()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _script(name: str, *, with_run_id: bool = False) -> str:
    text = (_LUA / name).read_text(encoding="utf-8")
    if with_run_id:
        text = (_LUA / "server_run_id.lua").read_text(encoding="utf-8") + "\n" + text
    return text


def _restore_args(
    admissions: list[PastAdmission], *, window_s: float
) -> tuple[list[tuple[str, float]], dict[str, tuple[str, float]]]:
    """Window entries (every admission younger than the window) and, per video, its newest
    admission (what its cooldown runs from)."""
    window = [(a.token, max(a.age_s, 0.0)) for a in admissions if a.age_s < window_s]
    cooldowns: dict[str, tuple[str, float]] = {}
    for a in admissions:
        newest = cooldowns.get(a.video_id)
        if newest is None or a.age_s < newest[1]:
            cooldowns[a.video_id] = (a.token, max(a.age_s, 0.0))
    return window, cooldowns


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn every Redis or transport error into :class:`LimiterUnavailable`."""
    try:
        yield
    except (redis.RedisError, OSError) as error:
        raise LimiterUnavailable(f"Redis: {type(error).__name__}: {error}") from error
