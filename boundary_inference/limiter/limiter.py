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

A token names one admission of one video (the run id). Redis errors of every kind (connection,
timeout, script error) are raised as :class:`LimiterUnavailable`; failing closed is the caller's call.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Literal, cast

import redis

_LUA = resources.files("boundary_inference.limiter") / "lua"

Reason = Literal["cooldown", "rate_limited"]


class LimiterUnavailable(Exception):
    """Redis could not be reached, did not answer in time, or failed the call. Fail closed."""


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

    def __init__(self, client: redis.Redis, *, prefix: str = "bi") -> None:
        self.client = client
        self.prefix = prefix
        # register_script only hashes the text; EVALSHA falls back to EVAL once per server.
        self._admit = client.register_script((_LUA / "admit.lua").read_text(encoding="utf-8"))
        self._refund = client.register_script((_LUA / "refund.lua").read_text(encoding="utf-8"))

    def _cooldown_key(self, video_id: str) -> str:
        return f"{{{self.prefix}}}:cooldown:{video_id}"

    @property
    def _window_key(self) -> str:
        return f"{{{self.prefix}}}:window"

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
        """Take the video's cooldown and a global window slot, both or neither, in one script."""
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
                keys=[self._cooldown_key(video_id), self._window_key], args=args
            )
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
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

    def ping(self) -> None:
        """Raise :class:`LimiterUnavailable` unless Redis answers within the client's timeout."""
        with _unavailable_on_error():
            self.client.ping()


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


@contextmanager
def _unavailable_on_error() -> Iterator[None]:
    """Turn every Redis or transport error into :class:`LimiterUnavailable`."""
    try:
        yield
    except (redis.RedisError, OSError) as error:
        raise LimiterUnavailable(f"Redis: {type(error).__name__}: {error}") from error
