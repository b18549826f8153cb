"""Safeguard: one live run per (video, frames version, model version), claimed atomically.

``claim_run`` is a single SQL function (insert-or-get under an advisory lock, with a partial unique
index as backstop): of any number of concurrent submissions exactly one creates the run. A
duplicate is a *skip*, not a rejection. ``force=True`` (``skip_if_exists=False``) is an explicit,
recorded re-run of a finished job; it never creates a second *live* run.

The claimed run carries a lease (``lease_s``, held by ``lease_owner``) that the flow renews; a live
run whose lease has expired has no watcher and is never a duplicate: the claim takes it over
(``taken_over``: reattach to its call) or ends it and claims anew (see ``migrations/*_run_leases``).
"""

from __future__ import annotations

from boundary_inference.ledger import ClaimResult, Ledger, LedgerError
from tasks._common import GUARD, guard_task


@guard_task(name="dedup-claim", tags=GUARD)
def claim_run(
    ledger: Ledger,
    *,
    video_id: str,
    tenant_id: str,
    frames_version: str,
    model_version: str,
    pairs: int,
    priority: str,
    skip_if_exists: bool,
    flow_run_id: str | None,
    lease_s: float | None = None,
    lease_owner: str | None = None,
) -> ClaimResult:
    """Returns the ledger's claim: ``{run_id, created, status, rerun_of, taken_over, ...}``.

    A claim whose answer was lost (``maybe_committed``) is asked once more with the same lease
    owner: a run this owner claimed and never started is then ended by the claim itself and a
    new one claimed, so a lost answer never leaves a queued run holding the queue and the key.
    """

    def ask() -> ClaimResult:
        return ledger.claim_run(
            video_id=video_id,
            tenant_id=tenant_id,
            frames_version=frames_version,
            model_version=model_version,
            pairs=pairs,
            priority=priority,
            force=not skip_if_exists,
            flow_run_id=flow_run_id,
            lease_s=lease_s,
            lease_owner=lease_owner,
        )

    try:
        return ask()
    except LedgerError as error:
        if not (error.maybe_committed and (lease_owner or flow_run_id)):
            raise
    return ask()
