"""``rejection_monitor_flow``: what was refused, what was spent, and whether anything needs a human.

Runs on a schedule (``rejection-monitor/scheduled``, every 12 h, see ``prefect.yaml``). It first ends
the live runs whose flow died (:mod:`flows.run.reaper`: a stale ``queued`` run blocks its video's
dedup key; a stale ``running`` one may be a call nobody bounds), then reads the ledger. It
publishes:

* table artifacts ``monitor-rejections-by-type`` (type, count, oldest and newest age, total
  estimated cost) and ``monitor-unacknowledged-rejections`` (one row per open rejection, the same
  columns as ``boundary-inference rejections``), and a markdown summary ``monitor-summary``;
* one Prefect event per alert condition, resource ``boundary-inference.monitor``, with the numbers
  in the payload (:data:`ALERT_EVENTS`); the automations in ``automations/`` turn them into
  notifications. Each alert carries a short "what to do" line (:data:`ALERT_ACTIONS`), in the
  payload (``action``), the summary artifact and ``boundary-inference monitor``'s output.

Every threshold is a setting (``daily_spend_alert_usd``, ``monthly_spend_alert_tiers_usd``,
``queue_depth_alert``, ``failure_rate_alert``, ``job_burst_alert``); :mod:`config.settings` refuses
thresholds that could never fire. The queue depth counts Prefect's backlog for the deployment as
the queue guard does (:mod:`tasks.queue`); when the Prefect API does not answer, the monitor
reports the ledger's part and says the backlog is unknown.

The metrics are computed by :func:`collect_metrics`, a plain function of the ledger and a clock, so
they can be tested without Prefect.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from boundary_inference.ledger import Ledger
from boundary_inference.timefmt import age_s, format_age
from config import Settings, get_settings
from tasks.ledger_upkeep import run_upkeep

MONITOR_RESOURCE_ID = "boundary-inference.monitor"
ALERT_PREFIX = "boundary-inference.alert."
ALERT_EVENTS = {
    "daily_spend": ALERT_PREFIX + "daily-spend",
    "monthly_spend": ALERT_PREFIX + "monthly-spend",
    "queue_depth": ALERT_PREFIX + "queue-depth",
    "failure_rate": ALERT_PREFIX + "failure-rate",
    "job_burst": ALERT_PREFIX + "job-burst",
    "unacknowledged_rejections": ALERT_PREFIX + "unacknowledged-rejections",
    "stale_runs": ALERT_PREFIX + "stale-runs",
}
# What a person should do about each alert: one line, in the artifact, the CLI and the event.
ALERT_ACTIONS = {
    "daily_spend": "Check `boundary-inference spend` and `runs` for jobs you did not expect;"
    " admissions stop by themselves at daily_budget_usd (budget_exceeded).",
    "monthly_spend": "Review `boundary-inference spend`; at monthly_budget_usd every job is refused"
    " until the month ends, so raise it deliberately or slow the submissions.",
    "queue_depth": "Jobs are piling up: check the workers and the Prefect backlog of the"
    " deployment; at queue_depth_block new jobs are refused (queue_full).",
    "failure_rate": "Read the errors in `boundary-inference runs` (failure_kind): infrastructure"
    " failures open the circuit breaker; fix the cause, then `boundary-inference breaker reset`.",
    "job_burst": "Find who submits (`boundary-inference runs`); the global rate limit caps"
    " admissions, but each refused burst is a sign of a runaway script.",
    "unacknowledged_rejections": "Read `boundary-inference rejections`, fix what the reasons"
    " say, then `boundary-inference ack <id>`.",
    "stale_runs": "A flow died with its run live: check the worker or process that ran it; the"
    " run was ended (a running call cancelled and charged its worst case).",
}
FAILURE_WINDOW = dt.timedelta(hours=24)
BURST_WINDOW = dt.timedelta(hours=1)
# list_rejections is newest-first with a limit; this bounds one monitor pass. (Finished and failed
# runs are counted by the ledger's run_counts: failed = failed or timed out.)
REJECTION_SCAN_LIMIT = 1000


@dataclass
class MonitorMetrics:
    """One pass of the monitor. Money in USD, ages in seconds, rate as a fraction."""

    now: str
    unacknowledged_rejections: int
    rejections_by_type: list[dict[str, Any]]
    unacknowledged: list[dict[str, Any]]
    daily_spend_usd: float
    daily_actual_usd: float
    daily_budget_usd: float
    daily_spend_alert_usd: float
    monthly_spend_usd: float
    monthly_actual_usd: float
    monthly_budget_usd: float
    monthly_spend_alert_tiers_usd: list[float]
    # The highest tier this month's committed spend has reached, if any.
    monthly_tier_reached_usd: float | None
    finished_runs_24h: int
    failed_runs_24h: int
    failure_rate_24h: float | None
    failure_rate_alert: float
    jobs_last_hour: int
    job_burst_alert: int
    queue_depth: int
    queue_queued: int
    queue_running: int
    queue_depth_alert: int
    # Flow runs waiting in Prefect for the deployment; None when the API did not answer.
    queue_prefect_waiting: int | None = None
    # Live runs with no flow behind them, ended by this pass (flows.run.reaper); set by the flow.
    stale_runs_reaped: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _money(value: float | None) -> float:
    return float(value) if value is not None else 0.0


def _open_rejections(
    ledger: Ledger, now: dt.datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The open (unacknowledged) rejections as rows to show, and grouped by type."""
    open_rejections = ledger.list_rejections(unacknowledged_only=True, limit=REJECTION_SCAN_LIMIT)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    unacked: list[dict[str, Any]] = []
    for row in open_rejections:
        age = age_s(row.get("created_at"), now)
        groups[str(row.get("rejection_type"))].append({**row, "_age_s": age})
        estimate = row.get("estimated_cost_usd")
        unacked.append(
            {
                "id": str(row.get("id")),
                "age": format_age(age),
                "age_s": round(age, 1) if age is not None else None,
                "type": row.get("rejection_type"),
                "video": row.get("video_id"),
                "frames": row.get("frame_count"),
                "estimate_usd": round(float(estimate), 4) if estimate is not None else None,
                "message": str(row.get("message") or "")[:200],
            }
        )
    by_type = []
    for rejection_type, rows in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        ages = [r["_age_s"] for r in rows if r["_age_s"] is not None]
        by_type.append(
            {
                "type": rejection_type,
                "count": len(rows),
                "oldest_age": format_age(max(ages)) if ages else "",
                "newest_age": format_age(min(ages)) if ages else "",
                "oldest_age_s": round(max(ages), 1) if ages else None,
                "newest_age_s": round(min(ages), 1) if ages else None,
                "total_estimated_cost_usd": round(
                    sum(_money(r.get("estimated_cost_usd")) for r in rows), 4
                ),
            }
        )
    return unacked, by_type


def collect_metrics(
    ledger: Ledger,
    settings: Settings,
    now: dt.datetime | None = None,
    *,
    prefect_waiting: int | None = 0,
) -> MonitorMetrics:
    """Read the ledger once and compute every monitored number and which alerts are due.

    Failure rate and jobs in the last hour are counted by the ledger (``run_counts``).
    ``prefect_waiting``: the deployment's backlog in Prefect (:func:`tasks.queue.prefect_backlog`),
    added to the queue depth; None when unknown.
    """
    now = now or dt.datetime.now(dt.UTC)

    unacked, by_type = _open_rejections(ledger, now)

    spend = ledger.spend_summary(now=now)
    depth = ledger.queue_depth()

    counts = ledger.run_counts(
        finished_since=now - FAILURE_WINDOW, created_since=now - BURST_WINDOW
    )
    finished, failed = int(counts["finished"]), int(counts["failed"])
    jobs_last_hour = int(counts["created"])
    failure_rate = failed / finished if finished else None
    monthly_spend = _money(spend.get("monthly_committed_usd"))
    tiers = [float(t) for t in settings.monthly_spend_alert_tiers_usd]
    reached = [t for t in tiers if monthly_spend >= t]

    metrics = MonitorMetrics(
        now=now.isoformat(),
        unacknowledged_rejections=len(unacked),
        rejections_by_type=by_type,
        unacknowledged=unacked,
        daily_spend_usd=_money(spend.get("daily_committed_usd")),
        daily_actual_usd=_money(spend.get("daily_actual_usd")),
        daily_budget_usd=settings.daily_budget_usd,
        daily_spend_alert_usd=settings.daily_spend_alert_usd,
        monthly_spend_usd=monthly_spend,
        monthly_actual_usd=_money(spend.get("monthly_actual_usd")),
        monthly_budget_usd=settings.monthly_budget_usd,
        monthly_spend_alert_tiers_usd=tiers,
        monthly_tier_reached_usd=max(reached) if reached else None,
        finished_runs_24h=finished,
        failed_runs_24h=failed,
        failure_rate_24h=failure_rate,
        failure_rate_alert=settings.failure_rate_alert,
        jobs_last_hour=jobs_last_hour,
        job_burst_alert=settings.job_burst_alert,
        queue_depth=int(depth.get("total", 0)) + (prefect_waiting or 0),
        queue_queued=int(depth.get("queued", 0)),
        queue_running=int(depth.get("running", 0)),
        queue_depth_alert=settings.queue_depth_alert,
        queue_prefect_waiting=prefect_waiting,
    )
    metrics.alerts = due_alerts(metrics)
    return metrics


def due_alerts(m: MonitorMetrics) -> list[str]:
    """Keys of :data:`ALERT_EVENTS` whose condition holds (each a strict "above")."""
    due = []
    if m.daily_spend_usd > m.daily_spend_alert_usd:
        due.append("daily_spend")
    if m.monthly_tier_reached_usd is not None:
        due.append("monthly_spend")
    if m.queue_depth > m.queue_depth_alert:
        due.append("queue_depth")
    if m.failure_rate_24h is not None and m.failure_rate_24h > m.failure_rate_alert:
        due.append("failure_rate")
    if m.jobs_last_hour > m.job_burst_alert:
        due.append("job_burst")
    if m.unacknowledged_rejections > 0:
        due.append("unacknowledged_rejections")
    if m.stale_runs_reaped:
        due.append("stale_runs")
    return due


def alert_payload(key: str, m: MonitorMetrics) -> dict[str, Any]:
    """The numbers behind one alert; notification templates read these."""
    payloads: dict[str, dict[str, Any]] = {
        "daily_spend": {
            "daily_spend_usd": round(m.daily_spend_usd, 4),
            "daily_actual_usd": round(m.daily_actual_usd, 4),
            "alert_at_usd": m.daily_spend_alert_usd,
            "daily_budget_usd": m.daily_budget_usd,
            "monthly_spend_usd": round(m.monthly_spend_usd, 4),
            "monthly_budget_usd": m.monthly_budget_usd,
        },
        "monthly_spend": {
            "monthly_spend_usd": round(m.monthly_spend_usd, 4),
            "monthly_actual_usd": round(m.monthly_actual_usd, 4),
            "tier_usd": m.monthly_tier_reached_usd,
            "tiers_usd": m.monthly_spend_alert_tiers_usd,
            "monthly_budget_usd": m.monthly_budget_usd,
        },
        "queue_depth": {
            "depth": m.queue_depth,
            "queued": m.queue_queued,
            "running": m.queue_running,
            "prefect_waiting": m.queue_prefect_waiting,
            "alert_at": m.queue_depth_alert,
        },
        "failure_rate": {
            "failure_rate": round(m.failure_rate_24h or 0.0, 4),
            "failed_runs": m.failed_runs_24h,
            "finished_runs": m.finished_runs_24h,
            "alert_above": m.failure_rate_alert,
            "window_h": FAILURE_WINDOW.total_seconds() / 3600,
        },
        "job_burst": {
            "jobs_last_hour": m.jobs_last_hour,
            "alert_above": m.job_burst_alert,
        },
        "unacknowledged_rejections": {
            "count": m.unacknowledged_rejections,
            "by_type": {row["type"]: row["count"] for row in m.rejections_by_type},
            "oldest_age_s": max(
                (row["oldest_age_s"] for row in m.rejections_by_type if row["oldest_age_s"]),
                default=None,
            ),
            "total_estimated_cost_usd": round(
                sum(row["total_estimated_cost_usd"] for row in m.rejections_by_type), 4
            ),
        },
        "stale_runs": {
            "count": len(m.stale_runs_reaped),
            "runs": [
                {k: r[k] for k in ("run_id", "video_id", "status", "age_s", "action")}
                for r in m.stale_runs_reaped[:20]
            ],
        },
    }
    return {"alert": key, **payloads[key], "action": ALERT_ACTIONS[key]}


def _summary_markdown(m: MonitorMetrics) -> str:
    rate = "n/a" if m.failure_rate_24h is None else f"{m.failure_rate_24h:.0%}"
    lines = [
        "# Boundary-inference monitor",
        "",
        "| figure | value | alert at |",
        "|---|---|---|",
        f"| spend today (committed) | ${m.daily_spend_usd:.4f} of ${m.daily_budget_usd:.2f}"
        f" | > ${m.daily_spend_alert_usd:.2f} |",
        f"| spend this month (committed) | ${m.monthly_spend_usd:.4f} of"
        f" ${m.monthly_budget_usd:.2f} | >= "
        + ", ".join(f"${t:g}" for t in m.monthly_spend_alert_tiers_usd)
        + " |",
        f"| failure rate, 24 h | {rate} ({m.failed_runs_24h}/{m.finished_runs_24h})"
        f" | > {m.failure_rate_alert:.0%} |",
        f"| jobs, last hour | {m.jobs_last_hour} | > {m.job_burst_alert} |",
        f"| queue depth | {m.queue_depth} ({_waiting(m)} waiting in Prefect, {m.queue_queued}"
        f" queued, {m.queue_running} running) | > {m.queue_depth_alert} |",
        f"| unacknowledged rejections | {m.unacknowledged_rejections} | > 0 |",
        f"| stale runs ended by this pass | {len(m.stale_runs_reaped)} | > 0 |",
        "",
        "**Alerts:** " + (", ".join(f"`{ALERT_EVENTS[a]}`" for a in m.alerts) or "none"),
    ]
    if m.alerts:
        lines += ["", "**What to do:**", ""]
        lines += [f"- `{a}`: {ALERT_ACTIONS[a]}" for a in m.alerts]
    if m.unacknowledged_rejections:
        lines += ["", "Acknowledge with `boundary-inference ack <id>` once handled."]
    for run in m.stale_runs_reaped:
        lines.append(
            f"- stale {run['status']} run `{run['run_id']}` ({run['video_id']}): {run['action']}"
        )
    return "\n".join(lines)


def _waiting(m: MonitorMetrics) -> str:
    return "unknown" if m.queue_prefect_waiting is None else str(m.queue_prefect_waiting)


@task(name="collect-monitor-metrics", cache_policy=NO_CACHE, retries=0)
def collect(settings: Settings) -> MonitorMetrics:
    from boundary_inference.services import open_ledger
    from tasks.queue import BacklogUnavailable, prefect_backlog

    waiting: int | None = 0
    if settings.queue_counts_prefect_backlog:
        try:
            waiting = prefect_backlog(settings)
        except BacklogUnavailable as error:  # report the rest; say the backlog is unknown
            get_run_logger().error("%s", error)
            waiting = None
    # The ledger only: a monitor must still report when Redis or Modal is what is broken.
    ledger = open_ledger(settings)
    try:
        return collect_metrics(ledger, settings, prefect_waiting=waiting)
    finally:
        ledger.close()


def reap(settings: Settings) -> list[dict[str, Any]]:
    """The monitor's one write: end the live runs whose flow died (see :mod:`flows.run.reaper`).

    A failure here is logged and the report goes on: the report is what tells a human.
    """
    from boundary_inference.services import open_executor, open_ledger
    from flows.run.reaper import reap_stale_runs

    try:
        ledger = open_ledger(settings)
    except Exception as error:
        get_run_logger().error("stale runs not reaped (ledger unavailable): %s", error)
        return []
    try:
        return reap_stale_runs(ledger, open_executor(settings), settings)
    except Exception as error:
        get_run_logger().error("stale runs not reaped: %s", error)
        return []
    finally:
        ledger.close()


@task(name="publish-monitor-report", cache_policy=NO_CACHE, retries=0)
def publish(m: MonitorMetrics) -> list[str]:
    """Artifacts for the UI, then one event per due alert. Returns the emitted event names."""
    create_table_artifact(
        table=[
            {
                k: row[k]
                for k in ("type", "count", "oldest_age", "newest_age", "total_estimated_cost_usd")
            }
            for row in m.rejections_by_type
        ]
        or [{"type": "(none)", "count": 0}],
        key="monitor-rejections-by-type",
        description="Unacknowledged rejections grouped by type.",
    )
    create_table_artifact(
        table=[
            {k: row[k] for k in ("age", "type", "video", "frames", "estimate_usd", "id")}
            for row in m.unacknowledged
        ]
        or [{"age": "", "type": "(none)"}],
        key="monitor-unacknowledged-rejections",
        description="Every unacknowledged rejection, newest first.",
    )
    create_markdown_artifact(
        markdown=_summary_markdown(m),
        key="monitor-summary",
        description="Spend, failure rate, job rate, queue depth and open rejections.",
    )
    emitted = []
    for key in m.alerts:
        emit_event(
            ALERT_EVENTS[key],
            resource={
                "prefect.resource.id": MONITOR_RESOURCE_ID,
                "prefect.resource.name": "boundary-inference monitor",
            },
            payload=alert_payload(key, m),
        )
        emitted.append(ALERT_EVENTS[key])
    return emitted


@flow(name="rejection-monitor", log_prints=False, retries=0)  # pinned: see boundary_inference_flow
def rejection_monitor_flow() -> dict[str, Any]:
    """Report unacknowledged rejections, spend against the budgets, failure rate, job rate and
    queue depth; emit one ``boundary-inference.alert.*`` event per alert condition.

    Returns:
        The metrics as a dict, with ``alerts`` (the due alert keys) and ``events`` (their names).
    """
    settings = get_settings()
    # First, so the queue depth and the spend below already reflect what it ended.
    reaped = reap(settings)
    metrics = collect(settings)
    metrics.stale_runs_reaped = reaped
    metrics.alerts = due_alerts(metrics)
    events = publish(metrics)
    events += run_upkeep(settings)  # budget totals vs reservations (event on drift); retention
    logger = get_run_logger()
    if events:
        logger.warning("alerts: %s", ", ".join(events))
    else:
        logger.info("no alert conditions")
    return {**metrics.to_dict(), "events": events}


if __name__ == "__main__":
    rejection_monitor_flow()
