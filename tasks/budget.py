"""Safeguard: budgets. A job's worst-case cost is *reserved* against the daily and monthly caps
(global, and per tenant when configured) in one SQL function under a lock, so concurrent jobs can
never together reserve past a cap. On completion the reservation is settled to the measured cost
and the rest is released."""

from __future__ import annotations

from boundary_inference.ledger import Ledger, LedgerError
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from tasks._common import GUARD, LEDGER, guard_task


@guard_task(name="budget-reserve", tags=GUARD)
def reserve(
    ledger: Ledger, settings: Settings, *, run_id: str, tenant_id: str, amount_usd: float
) -> Rejected | None:
    try:
        result = ledger.reserve_budget(
            run_id=run_id,
            tenant_id=tenant_id,
            amount_usd=amount_usd,
            daily_cap_usd=settings.daily_budget_usd,
            monthly_cap_usd=settings.monthly_budget_usd,
            tenant_daily_cap_usd=settings.tenant_daily_budget_usd,
            tenant_monthly_cap_usd=settings.tenant_monthly_budget_usd,
        )
    except LedgerError as error:
        if error.maybe_committed:
            # The answer was lost, not the call: it may hold the caps. The server has stopped
            # by now (its statement_timeout is below the client's wait) and release takes the
            # same lock, so this finds a committed reservation and gives it back.
            _release_quietly(ledger, run_id)
        raise
    if result.get("ok"):
        return None
    return Rejected(
        RejectionType.BUDGET_EXCEEDED,
        f"reserving ${amount_usd:.2f} would exceed the {result.get('reason')}: today"
        f" ${float(result.get('daily_committed_usd') or 0):.2f} of ${settings.daily_budget_usd:.2f},"
        f" this month ${float(result.get('monthly_committed_usd') or 0):.2f} of"
        f" ${settings.monthly_budget_usd:.2f} are committed",
        details={"budget": result, "amount_usd": amount_usd},
    )


def _release_quietly(ledger: Ledger, run_id: str) -> None:
    try:
        ledger.release_budget(run_id=run_id)
    except LedgerError:
        pass  # the caller's undo path releases again; the reaper's orphan rule is the last resort


@guard_task(name="budget-release", tags=LEDGER)
def release(ledger: Ledger, *, run_id: str) -> None:
    ledger.release_budget(run_id=run_id)


@guard_task(name="budget-settle", tags=LEDGER)
def settle(ledger: Ledger, *, run_id: str, actual_usd: float) -> None:
    ledger.settle_budget(run_id=run_id, actual_usd=actual_usd)
