"""Serve the project's deployments from one process, without a work pool.

    python -m flows.serve            # needs PREFECT_API_URL pointing at a running server

The same four deployments as ``prefect.yaml`` (``boundary-inference/default``,
``rejection-monitor/scheduled`` with its 12-hourly cron, ``lease-reaper/every-2-minutes``,
``backfill/default``); each flow run is
a child process of this one. Stop with Ctrl-C: the monitor's schedule is paused on shutdown, and
runs created while nothing serves them wait in Scheduled/Late until it is back.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import EntrypointType
from prefect.schedules import Cron

MONITOR_CRON = "0 */12 * * *"
# Module entrypoints (``flows.rejection_monitor.rejection_monitor_flow``), not file paths: Prefect
# loads a file entrypoint with its folder first on sys.path, where flows/boundary_inference.py then
# shadows the boundary_inference package for every import made after loading.
ENTRYPOINT = EntrypointType.MODULE_PATH
INFERENCE_CONCURRENCY = 5

logger = logging.getLogger(__name__)


def build_deployments() -> list[Any]:
    """``RunnerDeployment`` objects mirroring ``prefect.yaml``."""
    from flows.boundary_inference import boundary_inference_flow
    from flows.lease_reaper import REAPER_CRON, lease_reaper_flow
    from flows.rejection_monitor import rejection_monitor_flow

    deployments = [
        boundary_inference_flow.to_deployment(
            name="default",
            entrypoint_type=ENTRYPOINT,
            tags=["boundary-inference"],
            parameters={"skip_if_exists": True, "priority": "high"},
            # The flow validates its own parameters: bad input becomes a recorded rejection.
            enforce_parameter_schema=False,
            concurrency_limit=ConcurrencyLimitConfig(
                limit=INFERENCE_CONCURRENCY, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
        ),
        rejection_monitor_flow.to_deployment(
            name="scheduled",
            entrypoint_type=ENTRYPOINT,
            tags=["boundary-inference", "monitor"],
            schedules=[Cron(MONITOR_CRON, timezone="UTC")],
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
        ),
        lease_reaper_flow.to_deployment(
            name="every-2-minutes",
            entrypoint_type=ENTRYPOINT,
            tags=["boundary-inference", "reaper"],
            schedules=[Cron(REAPER_CRON, timezone="UTC")],
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
            ),
        ),
    ]
    try:
        from flows.backfill import backfill_flow
    except ImportError as error:  # served without it rather than not at all
        logger.warning("backfill/default not served: flows.backfill is not importable (%s)", error)
    else:
        deployments.append(
            backfill_flow.to_deployment(
                name="default",
                entrypoint_type=ENTRYPOINT,
                tags=["boundary-inference", "backfill"],
                concurrency_limit=ConcurrencyLimitConfig(
                    limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
                ),
            )
        )
    return deployments


def main(argv: list[str] | None = None) -> None:
    from prefect import serve

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--limit", type=int, default=None, help="Most flow runs this process executes at once."
    )
    args = parser.parse_args(argv)
    serve(*build_deployments(), limit=args.limit)


if __name__ == "__main__":
    main()
