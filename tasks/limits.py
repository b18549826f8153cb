"""Safeguard: per-video cooldown and the global rate limit, in Redis, as ONE atomic admission.

One Lua script checks the video's cooldown and the global sliding window and, only if both pass,
takes both. A refusal consumes nothing. An admission that a later guard refuses (budget, breaker)
is refunded by :func:`refund_admission`.

Every admission is also recorded in the ledger (``record_admission``), which is the source of
truth: when Redis has lost its data (restarted empty, failed over), the limiter refuses to decide
until its cooldowns and window are rebuilt from the ledger's admissions (:func:`rebuild_limiter`).
Nothing is admitted past the limits after a Redis restart.
"""

from __future__ import annotations

from typing import Any

from boundary_inference.ledger import Ledger
from boundary_inference.limiter import Limiter, LimiterUnsynced, PastAdmission, Rebuild
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, LEDGER, guard_task


def rebuild_limiter(limiter: Limiter, ledger: Ledger, settings: Settings) -> Rebuild:
    """Restore the limiter's Redis state from the ledger's admissions (one process rebuilds, the
    others wait at most ``guard_timeout_s`` and then fail closed)."""
    horizon_s = float(max(settings.video_cooldown_s, settings.global_rate_window_s))

    def load() -> list[PastAdmission]:
        return [
            PastAdmission(str(a["run_id"]), str(a["video_id"]), float(a["age_s"]))
            for a in ledger.recent_admissions(window_s=horizon_s)
        ]

    rebuilt: Rebuild = limiter.rebuild(
        load,
        cooldown_s=settings.video_cooldown_s,
        window_s=settings.global_rate_window_s,
        wait_s=settings.guard_timeout_s,
    )
    return rebuilt


def _decide(limiter: Limiter, settings: Settings, video_id: str, run_id: str) -> Any:
    return limiter.admit(
        video_id=video_id,
        token=run_id,
        cooldown_s=settings.video_cooldown_s,
        rate_limit=settings.global_rate_limit_jobs,
        window_s=settings.global_rate_window_s,
    )


@guard_task(name="cooldown-and-rate-limit", tags=GUARD)
def admit(
    limiter: Limiter,
    settings: Settings,
    *,
    video_id: str,
    run_id: str,
    ledger: Ledger | None = None,
) -> Rejected | None:
    """Admit the run (cooldown + window slot) and record the admission in ``ledger``.

    Without a ledger nothing is rebuilt or recorded: a limiter that lost its state then stays
    closed (``LimiterUnsynced`` is a ``LimiterUnavailable``: guard_unavailable).
    """
    try:
        decision = _decide(limiter, settings, video_id, run_id)
    except LimiterUnsynced:
        if ledger is None:
            raise
        done = rebuild_limiter(limiter, ledger, settings)
        if done.rebuilt:
            from prefect import get_run_logger

            get_run_logger().warning(
                "Redis had lost the limiter's state: rebuilt from %d ledger admissions"
                " (%d window entries, %d cooldowns) in %.3f s",
                done.admissions_read,
                done.window_added,
                done.cooldowns_set,
                done.seconds,
            )
        decision = _decide(limiter, settings, video_id, run_id)
    if decision.allowed:
        if ledger is not None:
            try:
                ledger.record_admission(run_id=run_id)
            except BaseException:
                # Unrecorded, the admission could be lost by a rebuild: give it back, fail closed.
                try:
                    limiter.refund(video_id=video_id, token=run_id)
                except Exception:  # noqa: S110 - it expires with its window; the error below counts
                    pass
                raise
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
def refund_admission(limiter: Limiter, *, video_id: str, run_id: str) -> bool:
    return bool(limiter.refund(video_id=video_id, token=run_id))
