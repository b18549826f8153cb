"""``lease_reaper_flow``: end or settle the live runs whose watcher died, every two minutes.

A flow that dies after claiming a run stops renewing its lease; once the lease has expired
(``run_lease_s``, in the database's clock) this flow takes the run over and asks its call
(:mod:`flows.run.reaper`): a finished call is settled from its real result, a queued run without a
call is ended and its reservation released, a call past its watch limit is cancelled. Deployed as
``lease-reaper/every-2-minutes`` (``prefect.yaml``, ``python -m flows.serve``): one flow run an
hour that makes a pass every two minutes (``passes=29``, ``every_s=120``), so the Runs list gets
24 reaper runs a day, not 720; the rejection monitor and every flow start run the same check.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from config import get_settings

# Hourly: each run makes DEPLOYED_PASSES passes, PASS_EVERY_S apart, and ends before the next hour's
# run starts (the deployment's concurrency limit of 1 would cancel a run that found it still going).
REAPER_CRON = "0 * * * *"
DEPLOYED_PASSES = 29
PASS_EVERY_S = 120.0
MAX_PASSES = 60


@flow(name="lease-reaper", log_prints=False, retries=0)  # pinned: see boundary_inference_flow
def lease_reaper_flow(passes: int = 1, every_s: float = PASS_EVERY_S) -> dict[str, Any]:
    """End or settle every live run whose lease expired (its watcher died); close reservations
    left open by ended runs. ``passes`` times, ``every_s`` apart (the deployment: 29 passes, 2
    minutes apart, from one flow run an hour).

    Returns:
        ``{"reaped": [...], "passes": n}``: one record per run acted on (run, video, status,
        action), over all passes.
    """
    from boundary_inference.services import open_executor, open_ledger
    from flows.run.reaper import reap_stale_runs

    if not 1 <= passes <= MAX_PASSES or not 0 <= every_s <= 3600:
        raise ValueError(
            f"passes must be 1..{MAX_PASSES} and every_s 0..3600 (got {passes}, {every_s})"
        )
    settings = get_settings()
    # The ledger and the executor only: Redis plays no part in ending a run.
    ledger = open_ledger(settings)
    executor = open_executor(settings)
    reaped: list[dict[str, Any]] = []
    try:
        for done in range(passes):
            if done:
                time.sleep(every_s)
            found = reap_stale_runs(ledger, executor, settings)
            get_run_logger().info(
                "pass %d/%d: %d run(s) without a watcher handled", done + 1, passes, len(found)
            )
            reaped += found
    finally:
        ledger.close()
    return {"reaped": reaped, "passes": passes}


if __name__ == "__main__":
    lease_reaper_flow()
