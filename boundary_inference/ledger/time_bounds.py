"""How long each ledger SQL function may run on the server: its ``statement_timeout``.

Private module. Through PostgREST the client cannot cancel a call it gave up on: the server runs on
and may commit after the client raised. So every RPC entry point carries its own
``statement_timeout`` (``ALTER FUNCTION ... SET``, migration ``*_rpc_time_bounds``), which PostgREST
(12.2+, what Supabase runs) hoists into the request's transaction, and the Supabase transport waits
at least that long plus :data:`RESPONSE_MARGIN_S` before it counts a call as unavailable. A call the
client gave up on has then already stopped on the server; only a lost answer is ambiguous (undo it
by run id: ``LedgerError.maybe_committed``).

The direct psycopg transport sets ``statement_timeout`` per connection (``timeout_s``), which the
function-level setting does not change for a statement already running.
"""

from __future__ import annotations

#: Guards and bookkeeping: one row or a few, under one advisory lock. Below Supabase's 8 s API-role
#: timeout and the 5 s default ``guard_timeout_s`` minus the margin.
GUARD_STATEMENT_TIMEOUT_S = 4.0
#: Scans and maintenance (``ledger rebuild-totals``, ``prune-predictions``, reconcile, prediction
#: chunks): below the Supabase API gateway's 60 s cap on a request.
LONG_STATEMENT_TIMEOUT_S = 50.0
#: From the server's cancel to the answer reaching the client (network, PostgREST).
RESPONSE_MARGIN_S = 1.0

#: The functions that get :data:`LONG_STATEMENT_TIMEOUT_S`; every other RPC gets the guard bound.
LONG_FUNCTIONS = frozenset(
    {
        "budget_totals_drift",
        "budget_totals_rebuild",
        "expired_leases",
        "get_predictions",
        "get_predictions_packed",
        "ledger_size",
        "orphan_reservations",
        "prune_predictions",
        "recent_admissions",
        "runs_finished_between",
        "save_predictions",
        "spend_by_day",
    }
)


def server_timeout_s(fn: str) -> float:
    """The ``statement_timeout`` (seconds) the migrations give ledger function ``fn``."""
    return LONG_STATEMENT_TIMEOUT_S if fn in LONG_FUNCTIONS else GUARD_STATEMENT_TIMEOUT_S
