"""rejection_monitor_flow: the numbers from a seeded ledger, and the alert events it emits."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prefect.events.clients import AssertingEventsClient

from boundary_inference.ledger import Ledger
from config import Settings
from flows import rejection_monitor as monitor
from tests.flow_support import MakeEnv
from tests.support import try_reserve

NOW = dt.datetime.now(dt.UTC)


def _seed_runs(ledger: Ledger, outcomes: list[str]) -> None:
    """One run per outcome: 'queued', 'running', 'succeeded', 'failed', 'timed_out'."""
    for i, outcome in enumerate(outcomes):
        claim = ledger.claim_run(
            video_id="v1", tenant_id="demo", frames_version=f"f{i}", model_version="m", pairs=10
        )
        if outcome == "queued":
            continue
        ledger.transition_run(run_id=claim["run_id"], to_status="running")
        if outcome != "running":
            ledger.transition_run(run_id=claim["run_id"], to_status=outcome)


def _seed_rejections(ledger: Ledger) -> None:
    seeds = [
        ("cost_exceeded", 1.5, dt.timedelta(hours=2)),
        ("cost_exceeded", 2.0, dt.timedelta(minutes=10)),
        ("cooldown", None, dt.timedelta(seconds=30)),
    ]
    for rejection_type, estimate, age in seeds:
        ledger.log_rejection(
            rejection_type=rejection_type,
            message="no",
            video_id="v1",
            tenant_id="demo",
            frame_count=1000,
            estimated_cost_usd=estimate,
            now=NOW - age,
        )
    done = ledger.log_rejection(rejection_type="queue_full", message="old", video_id="v1")
    ledger.acknowledge_rejection(id=done["id"], by="test")


def test_metrics_and_alerts_from_a_seeded_ledger(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=1000, fps=30.0)
    _seed_rejections(ledger)
    _seed_runs(
        ledger, ["succeeded", "succeeded", "succeeded", "failed", "timed_out", "queued", "running"]
    )
    claim = ledger.claim_run(
        video_id="v1", tenant_id="demo", frames_version="spend", model_version="m"
    )
    caps = {"daily_cap_usd": 50.0, "monthly_cap_usd": 100.0}
    # now=NOW: the day the metrics are read for (a run across midnight once read 0 here).
    try_reserve(ledger, 21.0, caps=caps, now=NOW, tenant="demo", run_id=claim["run_id"])
    settings = Settings(queue_depth_alert=2, queue_depth_block=50, job_burst_alert=5)

    m = monitor.collect_metrics(ledger, settings, now=NOW)

    assert m.unacknowledged_rejections == 3
    by_type = {row["type"]: row for row in m.rejections_by_type}
    assert by_type["cost_exceeded"]["count"] == 2
    assert by_type["cost_exceeded"]["total_estimated_cost_usd"] == pytest.approx(3.5)
    assert by_type["cost_exceeded"]["oldest_age_s"] == pytest.approx(7200, abs=1)
    assert by_type["cost_exceeded"]["newest_age_s"] == pytest.approx(600, abs=1)
    assert (by_type["cost_exceeded"]["oldest_age"], by_type["cost_exceeded"]["newest_age"]) == (
        "2h",
        "10m",
    )
    assert by_type["cooldown"]["total_estimated_cost_usd"] == 0
    assert "queue_full" not in by_type  # acknowledged
    assert [row["type"] for row in m.unacknowledged] == [
        "cooldown",
        "cost_exceeded",
        "cost_exceeded",
    ]
    assert m.unacknowledged[0]["frames"] == 1000

    assert m.daily_spend_usd == pytest.approx(21.0)
    assert m.monthly_spend_usd == pytest.approx(21.0)
    assert (m.finished_runs_24h, m.failed_runs_24h) == (5, 2)
    assert m.failure_rate_24h == pytest.approx(0.4)
    assert m.jobs_last_hour == 8
    assert (m.queue_depth, m.queue_queued, m.queue_running) == (3, 2, 1)  # spend claim is queued

    assert m.alerts == [
        "daily_spend",
        "queue_depth",
        "failure_rate",
        "job_burst",
        "unacknowledged_rejections",
    ]
    payload = monitor.alert_payload("unacknowledged_rejections", m)
    assert payload["count"] == 3 and payload["by_type"] == {"cost_exceeded": 2, "cooldown": 1}
    assert monitor.alert_payload("daily_spend", m)["daily_spend_usd"] == pytest.approx(21.0)
    assert monitor.alert_payload("failure_rate", m)["failure_rate"] == pytest.approx(0.4)


def test_monthly_tiers_backlog_and_what_to_do(ledger: Ledger) -> None:
    """Seed 000's monthly tiers (25/50/75 of a $100 month), Prefect's backlog in the queue depth,
    and a "what to do" line for every alert in the payload and the summary artifact."""
    ledger.upsert_video(id="v1", tenant_id="demo", frame_count=1000, fps=30.0)
    for i, amount in enumerate((19.0, 19.0, 14.0)):  # $52 this month
        claim = ledger.claim_run(
            video_id="v1", tenant_id="demo", frames_version=f"m{i}", model_version="m"
        )
        ledger.reserve_budget(
            run_id=claim["run_id"],
            tenant_id="demo",
            amount_usd=amount,
            daily_cap_usd=100.0,
            monthly_cap_usd=100.0,
            now=NOW,
        )
        ledger.transition_run(run_id=claim["run_id"], to_status="running")
    settings = Settings(daily_spend_alert_usd=19.5, failure_rate_alert=0.5, job_burst_alert=10)

    m = monitor.collect_metrics(ledger, settings, now=NOW, prefect_waiting=30)

    assert m.monthly_spend_usd == pytest.approx(52.0)
    assert m.monthly_tier_reached_usd == 50.0
    assert m.queue_depth == 33 and m.queue_prefect_waiting == 30  # 3 running + 30 waiting
    assert "monthly_spend" in m.alerts and "queue_depth" in m.alerts
    payload = monitor.alert_payload("monthly_spend", m)
    assert (payload["tier_usd"], payload["tiers_usd"]) == (50.0, [25.0, 50.0, 75.0])
    assert payload["action"] == monitor.ALERT_ACTIONS["monthly_spend"]
    assert monitor.alert_payload("queue_depth", m)["prefect_waiting"] == 30
    summary = monitor._summary_markdown(m)
    for key in m.alerts:
        assert monitor.ALERT_ACTIONS[key] in summary
    assert "30 waiting in Prefect" in summary
    # Every alert the monitor can raise has its line.
    assert set(monitor.ALERT_ACTIONS) == set(monitor.ALERT_EVENTS)
    # Below the lowest tier: no monthly alert. The backlog unknown: said, not guessed.
    quiet = monitor.collect_metrics(
        ledger, Settings(monthly_spend_alert_tiers_usd=(60.0, 80.0)), now=NOW, prefect_waiting=None
    )
    assert quiet.monthly_tier_reached_usd is None and "monthly_spend" not in quiet.alerts
    assert "unknown waiting in Prefect" in monitor._summary_markdown(quiet)


def test_quiet_ledger_raises_no_alert(ledger: Ledger) -> None:
    m = monitor.collect_metrics(ledger, Settings(), now=NOW)
    assert m.alerts == []
    assert m.failure_rate_24h is None and m.jobs_last_hour == 0 and m.daily_spend_usd == 0


def test_flow_publishes_artifacts_and_one_event_per_alert(
    make_env: MakeEnv, asserting_events_worker: Any
) -> None:
    env = make_env()
    env.ledger.log_rejection(
        rejection_type="cost_exceeded", message="too big", video_id="v9", estimated_cost_usd=1.25
    )

    summary = monitor.rejection_monitor_flow()

    assert summary["unacknowledged_rejections"] == 1
    assert summary["events"] == ["boundary-inference.alert.unacknowledged-rejections"]
    asserting_events_worker.drain()
    client = AssertingEventsClient.last
    alerts = [
        e for e in (client.events if client else []) if e.event.startswith(monitor.ALERT_PREFIX)
    ]
    assert [e.event for e in alerts] == ["boundary-inference.alert.unacknowledged-rejections"]
    assert alerts[0].resource.id == "boundary-inference.monitor"
    assert alerts[0].payload["count"] == 1
    assert alerts[0].payload["total_estimated_cost_usd"] == pytest.approx(1.25)

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client_:
        found = client_.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(
                    any_=[
                        "monitor-rejections-by-type",
                        "monitor-unacknowledged-rejections",
                        "monitor-summary",
                    ]
                )
            )
        )
    assert {a.key for a in found} >= {
        "monitor-rejections-by-type",
        "monitor-unacknowledged-rejections",
        "monitor-summary",
    }


def test_every_alert_and_the_rejection_event_have_a_shipped_automation() -> None:
    import uuid

    from boundary_inference.automations import build_automations, load_definitions
    from tasks.ledger_upkeep import BUDGET_DRIFT_EVENT
    from tasks.queue import QUEUE_ALERT_EVENT
    from tasks.rejections import REJECTION_EVENT

    block_id = uuid.uuid4()
    automations = build_automations(load_definitions(), block_id)
    expected = {
        *monitor.ALERT_EVENTS.values(),
        REJECTION_EVENT,
        QUEUE_ALERT_EVENT,
        BUDGET_DRIFT_EVENT,
    }
    assert {e for a in automations for e in a.trigger.expect} == expected
    for automation in automations:
        assert [a.type for a in automation.actions] == ["send-notification"]
        assert automation.actions[0].block_document_id == block_id
