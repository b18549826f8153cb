"""Safeguard: a circuit breaker over GPU job failures, kept in the ledger.

It opens after ``breaker_failure_threshold`` failures inside ``breaker_window_s`` and, after
``breaker_open_s``, lets exactly one probe job through (half-open); the probe's outcome closes or
re-opens it. Only failures that say something about the service count (infrastructure, timeouts),
not bad input.
"""

from __future__ import annotations

from boundary_inference.ledger import BreakerCheck, BreakerRecord, Ledger
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, LEDGER, guard_task

BREAKER_NAME = "gpu-inference"


def _check(ledger: Ledger, settings: Settings, *, acquire_probe: bool) -> BreakerCheck:
    return ledger.breaker_check(
        name=BREAKER_NAME,
        threshold=settings.breaker_failure_threshold,
        window_s=settings.breaker_window_s,
        open_s=settings.breaker_open_s,
        acquire_probe=acquire_probe,
    )


def _refusal(decision: BreakerCheck) -> Rejected:
    retry = float(decision.get("retry_after_s") or 0.0)
    return Rejected(
        RejectionType.CIRCUIT_OPEN,
        f"circuit breaker '{BREAKER_NAME}' is {decision.get('state')}: recent GPU jobs failed;"
        f" next probe in {retry:.0f} s",
        retry_after_s=retry,
        details={"breaker": decision},
    )


@guard_task(name="circuit-breaker-check", tags=GUARD)
def check_breaker(ledger: Ledger, settings: Settings) -> Rejected | None:
    """Cheap read before anything is reserved: refuse while the circuit is open."""
    decision = _check(ledger, settings, acquire_probe=False)
    if decision.get("allowed") or float(decision.get("retry_after_s") or 0.0) <= 0.0:
        return None  # closed, or open with a probe available: admission decides
    return _refusal(decision)


@guard_task(name="circuit-breaker-admit", tags=GUARD)
def admit_breaker(ledger: Ledger, settings: Settings) -> tuple[Rejected | None, bool]:
    """At admission: pass when closed; when open and due, take the single probe slot."""
    decision = _check(ledger, settings, acquire_probe=True)
    if decision.get("allowed"):
        return None, bool(decision.get("probe"))
    return _refusal(decision), False


@guard_task(name="circuit-breaker-record", tags=LEDGER)
def record_outcome(
    ledger: Ledger, settings: Settings, *, ok: bool, kind: str, probe: bool
) -> BreakerRecord:
    """``probe``: this job held the half-open probe; only its success closes the circuit."""
    return ledger.breaker_record(
        name=BREAKER_NAME,
        ok=ok,
        kind=kind,
        threshold=settings.breaker_failure_threshold,
        window_s=settings.breaker_window_s,
        probe=probe,
    )
