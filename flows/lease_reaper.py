"""``lease_reaper_flow``: end or settle the live runs whose watcher died, every two minutes.

A flow that dies after claiming a run stops renewing its lease; once the lease has expired
(``run_lease_s``, in the database's clock) this flow takes the run over and asks its call
(:mod:`flows.run.reaper`): a finished call is settled from its real result, a queued run without a
call is ended and its reservation released, a call past its watch limit is cancelled. Deployed as
``lease-reaper/every-2-minutes`` (``prefect.yaml``, ``python -m flows.serve``); the rejection
monitor and every flow start run the same check.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from config import get_settings

REAPER_CRON = "*/2 * * * *"


@flow(name="lease-reaper", log_prints=False, retries=0)  # pinned: see boundary_inference_flow
def lease_reaper_flow() -> dict[str, Any]:
    """End or settle every live run whose lease expired (its watcher died); close reservations
    left open by ended runs.

    Returns:
        ``{"reaped": [...]}``: one record per run acted on (run, video, status, action).
    """
    from boundary_inference.services import open_executor, open_ledger
    from flows.run.reaper import reap_stale_runs

    settings = get_settings()
    # The ledger and the executor only: Redis plays no part in ending a run.
    ledger = open_ledger(settings)
    try:
        reaped = reap_stale_runs(ledger, open_executor(settings), settings)
    finally:
        ledger.close()
    get_run_logger().info("%d run(s) without a watcher handled", len(reaped))
    return {"reaped": reaped}


if __name__ == "__main__":
    lease_reaper_flow()
