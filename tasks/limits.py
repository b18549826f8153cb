"""Safeguard: per-video cooldown and the global rate limit, in Redis, as ONE atomic admission.

One Lua script checks the video's cooldown and the global sliding window and, only if both pass,
takes both. A refusal consumes nothing. An admission that a later guard refuses (budget, breaker)
is refunded by :func:`refund_admission`.
"""

from __future__ import annotations

from typing import Any

from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, LEDGER, guard_task


@guard_task(name="cooldown-and-rate-limit", tags=GUARD)
def admit(limiter: Any, settings: Settings, *, video_id: str, run_id: str) -> Rejected | None:
    decision = limiter.admit(
        video_id=video_id,
        token=run_id,
        cooldown_s=settings.video_cooldown_s,
        rate_limit=settings.global_rate_limit_jobs,
        window_s=settings.global_rate_window_s,
    )
    if decision.allowed:
        return None
    retry = float(decision.retry_after_s)
    if decision.reason == "cooldown":
        return Rejected(
            RejectionType.COOLDOWN,
            f"video {video_id!r} was submitted less than {settings.video_cooldown_s} s ago"
            f" (video_cooldown_s); retry in {retry:.0f} s",
            retry_after_s=retry,
        )
    return Rejected(
        RejectionType.RATE_LIMITED,
        f"{settings.global_rate_limit_jobs} jobs were admitted in the last"
        f" {settings.global_rate_window_s} s (global_rate_limit_jobs); retry in {retry:.0f} s",
        retry_after_s=retry,
        details={"window_count": decision.window_count},
    )


@guard_task(name="refund-admission", tags=LEDGER)
def refund_admission(limiter: Any, *, video_id: str, run_id: str) -> bool:
    return bool(limiter.refund(video_id=video_id, token=run_id))
