"""The limiter: admission = cooldown + global rate window, one Lua script. Private module.

When quota can be burned without use: an admission is taken before the budget reservation and the
breaker probe; if either refuses, :meth:`Limiter.refund` gives both quotas back in one script. If the
process dies between admission and refund (or after admission, before the job runs), the video's
cooldown stays until it expires (at most ``cooldown_s``) and the window slot until it ages out (at
most ``window_s``). That is the whole bound: no refusal ever consumes quota, and no crash holds it
longer than its own expiry.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Literal

import redis

_LUA = resources.files("boundary_inference.limiter") / "lua"


class LimiterUnavailable(Exception):
    """Redis could not be reached or did not answer in time. The caller fails closed."""


@dataclass(frozen=True)
class Admission:
    allowed: bool
    reason: Literal["cooldown", "rate_limited"] | None
    retry_after_s: float  # 0 when allowed
    window_count: int  # admissions in the global window after this call


class Limiter:
    """Cooldown and global rate limit on one Redis, keys under ``prefix``."""

    def __init__(self, client: redis.Redis, *, prefix: str = "bi") -> None:
        self.client = client
        self.prefix = prefix
        self._admit = client.register_script((_LUA / "admit.lua").read_text())
        self._refund = client.register_script((_LUA / "refund.lua").read_text())

    def _cooldown_key(self, video_id: str) -> str:
        return f"{self.prefix}:cooldown:{video_id}"

    @property
    def _window_key(self) -> str:
        return f"{self.prefix}:rate:global"

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
        """Take the video's cooldown and a global window slot, both or neither."""
        try:
            allowed, reason, retry_ms, count = self._admit(
                keys=[self._cooldown_key(video_id), self._window_key],
                args=[
                    token,
                    int(cooldown_s * 1000),
                    int(rate_limit),
                    int(window_s * 1000),
                    "" if now_s is None else int(now_s * 1000),
                ],
            )
        except (redis.RedisError, OSError) as error:
            raise LimiterUnavailable(f"Redis: {type(error).__name__}: {error}") from error
        reason_text = reason.decode() if isinstance(reason, bytes) else str(reason)
        return Admission(
            allowed=bool(allowed),
            reason=reason_text or None,  # type: ignore[arg-type]
            retry_after_s=int(retry_ms) / 1000.0,
            window_count=int(count),
        )

    def refund(self, *, video_id: str, token: str) -> bool:
        """Give back an admission a later guard refused. Idempotent; never touches another's."""
        try:
            return bool(
                self._refund(keys=[self._cooldown_key(video_id), self._window_key], args=[token])
            )
        except (redis.RedisError, OSError) as error:
            raise LimiterUnavailable(f"Redis: {type(error).__name__}: {error}") from error

    def cooldown_remaining_s(self, video_id: str) -> float:
        try:
            ttl_ms = int(self.client.pttl(self._cooldown_key(video_id)))
        except (redis.RedisError, OSError) as error:
            raise LimiterUnavailable(str(error)) from error
        return max(0, ttl_ms) / 1000.0

    def window_count(self, *, window_s: float, now_s: float | None = None) -> int:
        try:
            if now_s is None:
                seconds, micros = self.client.time()
                now_s = seconds + micros / 1e6
            return int(
                self.client.zcount(self._window_key, f"({int((now_s - window_s) * 1000)}", "+inf")
            )
        except (redis.RedisError, OSError) as error:
            raise LimiterUnavailable(str(error)) from error

    def ping(self) -> None:
        try:
            self.client.ping()
        except (redis.RedisError, OSError) as error:
            raise LimiterUnavailable(str(error)) from error
