"""Serve the project's deployments from one process, without a work pool.

    python -m flows.serve            # PREFECT_API_URL's server, else the state dir's embedded one

Like the CLI, it uses the state dir's embedded Prefect server when ``PREFECT_API_URL`` is not set,
and the embedded PostgreSQL and Redis when no database or Redis URL is: this process is yours, so
it starts them under its working directory's state dir (made absolute here), and its flow runs
join them. A deployment run never starts an embedded server itself (``services.embedded_refusal``).

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
from prefect.schedules import Cron
from prefect.types.entrypoint import EntrypointType

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
    from flows.lease_reaper import DEPLOYED_PASSES, PASS_EVERY_S, REAPER_CRON, lease_reaper_flow
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
            parameters={"passes": DEPLOYED_PASSES, "every_s": PASS_EVERY_S},
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
    _pin_state_dir()
    _start_stores()
    _use_prefect_server()
    serve(*build_deployments(), limit=args.limit)


def _pin_state_dir() -> None:
    """The flow runs (child processes, deployment runs) get this process's state dir, absolute."""
    import os
    from pathlib import Path

    from config import get_settings

    state_dir = Path(get_settings().state_dir)
    if not state_dir.is_absolute():
        os.environ["BOUNDARY_INFERENCE_STATE_DIR"] = str(state_dir.resolve())


def _start_stores() -> None:
    """Start the embedded PostgreSQL and Redis that no URL replaces, and name the executor: the
    deployment runs (child processes) join running servers only and need a named executor
    (``services.embedded_refusal``). This process is the developer's own, so it may start them."""
    import os

    from boundary_inference.services import start_embedded_stores
    from config import get_settings

    settings = get_settings()
    start_embedded_stores(settings)
    os.environ["BOUNDARY_INFERENCE_EXECUTOR"] = settings.executor


def _use_prefect_server() -> None:
    from pathlib import Path

    from boundary_inference.local.prefect_server import use_embedded_prefect
    from config import get_settings

    server = use_embedded_prefect(Path(get_settings().state_dir))
    if server is not None:
        print(f"serving on the embedded Prefect server; UI at {server.ui_url}", flush=True)


if __name__ == "__main__":
    main()
