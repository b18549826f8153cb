"""`bench --scale` end to end at a tiny size: every call timed at every size, admissions through
every guard from separate processes, ratios named as the issue asks, scratch state removed."""

from __future__ import annotations

import json
import math

import psycopg
import pytest
from typer.testing import CliRunner

from benches.__main__ import bench_app
from benches.ledger_calls import CATALOGUE
from benches.scale import format_report, percentile, run_scale_bench
from config import Settings


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


def test_percentile_is_nearest_rank() -> None:
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == 50.0
    assert percentile(samples, 99) == 99.0
    assert percentile([3.0], 99) == 3.0


@pytest.mark.slow
def test_scale_bench_at_a_tiny_size(pg_dsn: str, redis_url: str) -> None:
    settings = Settings(database_url=pg_dsn, redis_url=redis_url, db_schema="bi_scale_test")
    report = run_scale_bench(
        settings, sizes=(0, 300), processes=2, admission_s=1.0, admission_rounds=2
    )
    assert report["sizes"] == {"empty": 0, "300": 300}
    assert report["built"]["300"]["rows"]["boundary_inference_runs"] == 300
    assert [c["call"] for c in report["calls"]] == [c.name for c in CATALOGUE]
    for call in report["calls"]:
        for label in ("empty", "300"):
            assert call["samples"][label] >= 5
            assert 0 < call["p50_ms"][label] <= call["p99_ms"][label]
        assert call["ratio_p50_300_to_empty"] > 0
    assert all("ratio" in key for key in report["ratios"])
    assert "admissions_per_s.ratio_300_to_empty" in report["ratios"]

    admissions = report["admissions"]
    for label in ("empty", "300"):
        rounds = admissions["rounds"][label]
        assert len(rounds) == 2
        for r in rounds:
            assert r["admitted"] > 0 and r["refused"] == 0 and r["processes"] == 2
            wall = r["wall_ms_per_admission"]
            assert set(wall) >= {"claim", "limiter", "reserve", "breaker", "transition", "total"}
            assert wall["total"] >= wall["reserve"] > 0
            cpu = r["cpu_ms_per_admission"]
            assert cpu["client_python"] > 0 and cpu["redis_server"] >= 0
            assert cpu["postgres_backends"] is None  # a database_url: no /proc of its server
            assert r["budget_lock_wait_ms_per_admission"] >= 0
    assert math.isfinite(admissions["ratio_300_to_empty"])
    assert admissions["commit_flush_ms_p50"] > 0
    assert set(report["done_when"]) >= {
        "admission_p50_within_1.5x",
        "admissions_per_s_within_1.5x",
        "admissions_per_s_300",
    }
    text = format_report(report)
    assert "reserve_budget" in text and "admissions per second" in text

    # Nothing left behind: the scratch schemas are dropped.
    with psycopg.connect(pg_dsn) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bi_scale_test_scale_%'"
        ).fetchall()
    assert left == []


def test_cli_refuses_sizes_that_do_not_start_at_zero(
    monkeypatch: pytest.MonkeyPatch, pg_dsn: str, redis_url: str
) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_DATABASE_URL", pg_dsn)
    monkeypatch.setenv("BOUNDARY_INFERENCE_REDIS_URL", redis_url)
    result = CliRunner().invoke(bench_app, ["--scale", "--rows", "100,0", "--json"])
    assert result.exit_code == 2
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)
