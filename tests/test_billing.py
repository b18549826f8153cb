"""Billing reconciliation against a billing report in the shape Modal's SDK returns.

``tests/data/modal_billing_report.json`` holds ``modal.types.BillingReportItem`` fields (Decimals
as strings); :func:`load_billing_report` turns it back into the SDK's own objects.
"""

from __future__ import annotations

import datetime as dt
import inspect
from pathlib import Path
from typing import Any

import pytest

from boundary_inference.billing import (
    UNTAGGED,
    fetch_modal_billing,
    ledger_costs_from_runs,
    load_billing_report,
    reconcile,
    save_billing_report,
)

REPORT = Path(__file__).parent / "data" / "modal_billing_report.json"
TAG = "boundary-inference"
D20, D21, D22 = dt.date(2026, 11, 20), dt.date(2026, 11, 21), dt.date(2026, 11, 22)


def _run(day: dt.date, est: float, act: float, status: str = "succeeded") -> dict[str, Any]:
    finished = dt.datetime.combine(day, dt.time(13, 30), tzinfo=dt.UTC).isoformat()
    return {
        "status": status,
        "finished_at": finished,
        "estimated_cost_usd": est,
        "actual_cost_usd": act,
    }


RUNS = [
    _run(D20, 0.15, 0.20),
    _run(D20, 0.15, 0.10),
    _run(D20, 0.15, 0.20, "failed"),
    _run(D21, 0.30, 0.25),
    _run(D21, 0.30, 0.25),
    _run(D21, 0.30, 0.25),
    _run(D21, 0.21, 0.20),
    _run(D21, 0.21, 0.20, "timed_out"),
    _run(D22, 0.10, 0.09),
    {"status": "rejected", "finished_at": None, "estimated_cost_usd": 5.0},
    {"status": "running", "finished_at": None, "estimated_cost_usd": 0.3},
]


def test_ledger_rows_group_finished_runs_by_day() -> None:
    rows = ledger_costs_from_runs(RUNS, tag=TAG)
    assert [(r["day"], r["tag"], r["runs"]) for r in rows] == [
        (D20, TAG, 3),
        (D21, TAG, 5),
        (D22, TAG, 1),
    ]
    assert rows[0]["estimated_cost_usd"] == pytest.approx(0.45)
    assert rows[1]["actual_cost_usd"] == pytest.approx(1.15)


def test_reconcile_against_recorded_report() -> None:
    items = load_billing_report(REPORT)
    from modal.types import BillingReportItem

    assert all(isinstance(i, BillingReportItem) for i in items)

    report = reconcile(ledger_costs_from_runs(RUNS, tag=TAG), items, tag_name="project")
    rows = {(r.day, r.tag): r for r in report.rows}
    assert list(rows) == [(D20, UNTAGGED), (D20, TAG), (D21, TAG), (D22, TAG)]

    day20 = rows[(D20, TAG)]
    assert day20.billed_usd == pytest.approx(0.5234)
    assert day20.estimate_error_usd == pytest.approx(-0.0734)
    assert day20.estimate_error_pct == pytest.approx(-14.02)
    assert day20.actual_error_usd == pytest.approx(-0.0234)
    assert day20.actual_error_pct == pytest.approx(-4.47)
    assert day20.billed_by_resource_usd["GPU (A10G)"] == pytest.approx(0.4812)

    day21 = rows[(D21, TAG)]
    assert (day21.runs, day21.billed_usd) == (5, pytest.approx(1.2))
    assert day21.estimate_error_pct == pytest.approx(10.0)
    assert day21.actual_error_pct == pytest.approx(-4.17)

    # Another app's spend has no ledger rows: all of it shows as the estimate's miss.
    other = rows[(D20, UNTAGGED)]
    assert (other.runs, other.billed_usd, other.estimate_error_pct) == (0, 0.1, -100.0)
    # Not billed yet (the report excludes partial days): no percentage to give.
    assert rows[(D22, TAG)].billed_usd == 0 and rows[(D22, TAG)].estimate_error_pct is None

    totals = report.totals
    assert totals.billed_usd == pytest.approx(1.8234)
    assert totals.estimated_usd == pytest.approx(1.87)
    assert totals.estimate_error_usd == pytest.approx(0.0466)
    assert totals.estimate_error_pct == pytest.approx(2.56)
    assert totals.actual_error_pct == pytest.approx(-4.57)
    assert report.to_dict()["rows"][0]["day"] == "2026-11-20"


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    items = load_billing_report(REPORT)
    save_billing_report(items, tmp_path / "r.json")
    assert load_billing_report(tmp_path / "r.json") == items


def test_fetch_calls_the_workspace_billing_report_as_modal_defines_it() -> None:
    from modal._workspace import _WorkspaceBillingManager

    params = inspect.signature(_WorkspaceBillingManager.report).parameters
    assert {"start", "end", "resolution", "tag_names"} <= set(params)

    calls: list[dict[str, Any]] = []

    class Billing:
        def report(self, **kwargs: Any) -> list[Any]:
            calls.append(kwargs)
            return load_billing_report(REPORT)

    class Workspace:
        billing = Billing()

    start = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
    end = dt.datetime(2026, 11, 23, tzinfo=dt.UTC)
    items = fetch_modal_billing(start, end, tag_names=["project"], workspace=Workspace())
    assert len(items) == 3
    assert calls == [{"start": start, "end": end, "resolution": "d", "tag_names": ["project"]}]


def test_one_job_estimated_reserved_and_settled_at_modals_bill() -> None:
    """The job docs/MODAL.md bills line by line: 10,000 pairs at 100 pairs/s on an A10G with 2
    cores and 8 GiB. Expected 30 s start + 100 s + 300 s idle tail = 430 container-seconds."""
    from config import Settings
    from tasks.cost import estimate

    s = Settings(_env_file=None)
    est = estimate(s, 10_000, 100.0, "default")
    gpu, cpu, memory = 430 * 0.000306, 430 * 2 * 0.0000131, 430 * 8 * 0.00000222
    assert (gpu, cpu, memory) == pytest.approx((0.13158, 0.011266, 0.0076368))
    assert est.estimated_cost_usd == pytest.approx(gpu + cpu + memory)  # $0.1504828
    # Reserved: 3 attempts x (120 s start-up + 390 s deadline + 30 s grace) + 300 s = 1920 s.
    assert est.worst_case_cost_usd == pytest.approx(1920 * 0.00034996)  # $0.6719232
    # Settled after 100 measured seconds: the same 430 s as the estimate.
    assert s.cost_model.billed_cost_usd(100.0) == pytest.approx(gpu + cpu + memory)
    # Reconcile splits the ledger's charge as Modal splits its bill.
    day = dt.date(2026, 12, 1)
    report = reconcile(
        [
            {
                "day": day,
                "tag": "boundary-inference",
                "runs": 1,
                "actual_cost_usd": gpu + cpu + memory,
            }
        ],
        [],
        price_by_resource_usd_per_s=s.cost_model.price_by_resource_usd_per_s,
    )
    assert report.rows[0].ledger_by_resource_usd == pytest.approx(
        {"A10G": gpu, "CPU": cpu, "Memory": memory}
    )
