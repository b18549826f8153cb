"""Ledger upkeep: the monitor reports budget-totals drift with an event and applies prediction
retention; `boundary-inference ledger` checks, repairs, prunes and sizes the ledger."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
from prefect.events.clients import AssertingEventsClient
from psycopg import sql
from typer.testing import CliRunner

from boundary_inference.cli.app import app
from flows import rejection_monitor as monitor
from tasks.ledger_upkeep import BUDGET_DRIFT_EVENT
from tests.flow_support import FlowEnv, MakeEnv

NOW = dt.datetime.now(dt.UTC)


def cli(*args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(app, ["ledger", *args, "--json"])
    return result.exit_code, json.loads(result.stdout) if result.stdout.strip() else None


def seed(env: FlowEnv) -> tuple[str, str]:
    """A reservation today and a run whose predictions were saved 40 days ago."""
    env.ledger.upsert_video(id="v1", tenant_id="demo", frame_count=100, fps=25.0)
    run = env.ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version="f1", model_version="m"
    )["run_id"]
    env.ledger.reserve_budget(
        run_id=run, tenant_id="demo", amount_usd=0.5, daily_cap_usd=20, monthly_cap_usd=100
    )
    rows = [{"frame1": 0, "frame2": 1, "probability": 0.5, "is_boundary": True}]
    env.ledger.save_predictions(run_id=run, rows=rows, now=NOW - dt.timedelta(days=40))
    recent = env.ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version="f2", model_version="m"
    )["run_id"]
    env.ledger.save_predictions(run_id=recent, rows=rows)
    return str(run), str(recent)


def drift(env: FlowEnv, ledger_dsn: str, run_id: str) -> None:
    """Change a reservation behind the trigger's back (as a restore or a hand edit would)."""
    table = sql.Identifier(env.schema, "budget_reservations")
    with psycopg.connect(ledger_dsn) as conn:
        conn.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER budget_totals_follow").format(table))
        conn.execute(
            sql.SQL("UPDATE {} SET reserved_usd = 3 WHERE run_id = %s").format(table), (run_id,)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER budget_totals_follow").format(table))


def test_monitor_alerts_on_drift_and_prunes_old_predictions(
    make_env: MakeEnv, ledger_dsn: str, asserting_events_worker: Any
) -> None:
    env = make_env(predictions_retention_days="30")
    old, recent = seed(env)

    quiet = monitor.rejection_monitor_flow()
    assert BUDGET_DRIFT_EVENT not in quiet["events"]
    assert env.ledger.get_predictions(run_id=old) == []  # 40 days old: pruned
    assert len(env.ledger.get_predictions(run_id=recent)) == 1

    drift(env, ledger_dsn, old)
    summary = monitor.rejection_monitor_flow()
    assert BUDGET_DRIFT_EVENT in summary["events"]
    asserting_events_worker.drain()
    client = AssertingEventsClient.last
    found = [e for e in (client.events if client else []) if e.event == BUDGET_DRIFT_EVENT]
    assert len(found) == 1
    assert found[0].resource.id == monitor.MONITOR_RESOURCE_ID
    assert found[0].payload["ok"] is False and found[0].payload["drift_rows"] == 4


def test_ledger_cli_checks_repairs_prunes_and_sizes(make_env: MakeEnv, ledger_dsn: str) -> None:
    env = make_env()
    old, recent = seed(env)

    assert cli("check")[0] == 0
    drift(env, ledger_dsn, old)
    code, found = cli("check")
    assert code == 1 and found["drift_rows"] == 4
    code, rebuilt = cli("rebuild-totals")
    assert code == 0 and rebuilt["written"] >= 4
    code, checked = cli("check")
    assert code == 0 and checked["ok"] is True
    assert env.ledger.spend_summary()["daily_committed_usd"] == 3.0

    code, nothing = cli("prune-predictions")  # no retention configured, none given
    assert (code, nothing) == (2, None)
    code, pruned = cli("prune-predictions", "--keep-days", "30")
    assert code == 0 and pruned["runs"] == 1 and pruned["more"] is False
    assert env.ledger.get_predictions(run_id=old) == []
    assert len(env.ledger.get_predictions(run_id=recent)) == 1

    code, sizes = cli("size")
    assert code == 0
    by_table = {row["table"]: row for row in sizes}
    assert {"boundary_inference_runs", "budget_totals", "boundary_prediction_chunks"} <= set(
        by_table
    )
    assert all(row["total_bytes"] > 0 for row in sizes)
