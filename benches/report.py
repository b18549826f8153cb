"""``boundary-inference bench``: the concurrency figures, measured on the real servers.

Runs in a throw-away schema and a throw-away Redis key prefix, so it never touches live state:
50 concurrent claims of one key, 200 concurrent admissions against 20/hour, 100 concurrent $0.50
reservations against a $20 cap, and 20 concurrent half-open probes, all from separate processes;
then the ``faults`` section (:mod:`benches.faults`): Redis killed, restarted empty
and frozen, PostgreSQL killed, a watcher killed after its spawn, each on private servers;
then the calibration figures (:mod:`benches.calibration`): the estimate's
throughput and deadline after real runs, a duplicate-pair job and a slow run.
"""

from __future__ import annotations

import time
from typing import Any

from config import Settings


def run_bench(settings: Settings) -> dict[str, Any]:
    from benches.ledger import concurrency_figures as ledger_figures
    from benches.limiter import concurrency_figures as limiter_figures
    from boundary_inference.local.embedded import start_redis
    from boundary_inference.services import embedded_dsn

    started = time.monotonic()
    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
    else:
        dsn = embedded_dsn(settings)
    # The ledger bench works in its own throw-away schema and drops it afterwards.
    figures: dict[str, Any] = {
        f"ledger.{k}": v for k, v in ledger_figures(dsn, settings.db_schema).items()
    }
    if settings.redis_url is not None:
        redis_url = settings.redis_url.get_secret_value()
    else:
        from pathlib import Path

        redis_url = start_redis(Path(settings.state_dir)).url
    figures.update({f"limiter.{k}": v for k, v in limiter_figures(redis_url).items()})
    from benches.faults import fault_figures

    figures["faults"] = fault_figures(dsn)
    from benches.calibration import calibration_figures

    figures.update(calibration_figures(dsn, settings.db_schema, settings))
    figures["total_seconds"] = round(time.monotonic() - started, 2)
    return figures
