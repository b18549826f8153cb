"""Cost truth: the ledger's estimates and measured costs against what Modal actually billed.

The ledger knows, per run, the estimate made before admission and the cost computed from measured
GPU seconds. Modal's billing report knows what was charged, per Modal object (the app) and per
interval, with the object's tags. :func:`reconcile` joins the two per UTC day and per tag value and
reports how far off the estimate (and the ledger's own actual) was, in USD and in percent.

Modal bills objects, not function calls: the finest attribution is a tag on the deployed app
(``tag_name``, e.g. ``project=boundary-inference``). Billed cost under a tag value the ledger has
no runs for is reported too (ledger zero), which is how unattributed spend shows up.

Example:
    >>> rows = ledger_costs_from_runs(ledger.list_runs(limit=5000), tag="boundary-inference")
    ... # doctest: +SKIP
    >>> report = reconcile(rows, fetch_modal_billing(start, end, tag_names=["project"]),
    ...                    tag_name="project")  # doctest: +SKIP
    >>> report.totals.estimate_error_pct  # doctest: +SKIP
    -12.5
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from modal_app.modal_config import BILLING_TAG_NAME

DEFAULT_TAG_NAME = BILLING_TAG_NAME  # the tag modal_app.app puts on the deployed app
UNTAGGED = "(untagged)"


@dataclass(frozen=True)
class BilledCost:
    """One row of Modal's billing report, normalised (costs as float USD, day as a UTC date)."""

    object_id: str
    description: str
    environment_name: str
    day: dt.date
    cost_usd: float
    cost_by_resource_usd: dict[str, float]
    tags: dict[str, str]


@dataclass
class ReconciliationRow:
    """Ledger vs bill for one (day, tag value). Errors are ledger minus bill; percent of the bill
    (None when nothing was billed)."""

    day: dt.date | None
    tag: str
    runs: int = 0
    estimated_usd: float = 0.0
    ledger_actual_usd: float = 0.0
    billed_usd: float = 0.0
    billed_by_resource_usd: dict[str, float] = field(default_factory=dict)
    # The ledger's charges split as Modal splits its bill (GPU type, ``CPU``, ``Memory``), by the
    # per-second rates the charges were computed at: a line that disagrees points at its setting.
    ledger_by_resource_usd: dict[str, float] = field(default_factory=dict)
    estimate_error_usd: float = 0.0
    estimate_error_pct: float | None = None
    actual_error_usd: float = 0.0
    actual_error_pct: float | None = None

    def _finish(self) -> ReconciliationRow:
        self.estimate_error_usd = round(self.estimated_usd - self.billed_usd, 6)
        self.actual_error_usd = round(self.ledger_actual_usd - self.billed_usd, 6)
        if self.billed_usd:
            self.estimate_error_pct = round(100.0 * self.estimate_error_usd / self.billed_usd, 2)
            self.actual_error_pct = round(100.0 * self.actual_error_usd / self.billed_usd, 2)
        return self

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["day"] = self.day.isoformat() if self.day else None
        return data


@dataclass
class ReconciliationReport:
    tag_name: str
    rows: list[ReconciliationRow]
    totals: ReconciliationRow

    def to_dict(self) -> dict[str, Any]:
        return {
            "tag_name": self.tag_name,
            "rows": [r.to_dict() for r in self.rows],
            "totals": self.totals.to_dict(),
        }


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
        day: dt.date = value.date()
        return day
    if isinstance(value, dt.date):
        return value
    text = str(value)
    return _as_date(dt.datetime.fromisoformat(text)) if "T" in text else dt.date.fromisoformat(text)


def _field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, Mapping):
        return item.get(name, default)
    return getattr(item, name, default)


def normalise_billing_item(item: Any) -> BilledCost:
    """A ``modal.types.BillingReportItem`` (or a mapping with its fields) as a :class:`BilledCost`."""
    return BilledCost(
        object_id=str(_field(item, "object_id", "")),
        description=str(_field(item, "description", "")),
        environment_name=str(_field(item, "environment_name", "")),
        day=_as_date(_field(item, "interval_start")),
        cost_usd=float(Decimal(str(_field(item, "cost", "0")))),
        cost_by_resource_usd={
            str(k): float(Decimal(str(v)))
            for k, v in dict(_field(item, "cost_by_resource", {}) or {}).items()
        },
        tags={str(k): str(v) for k, v in dict(_field(item, "tags", {}) or {}).items()},
    )


def ledger_costs_from_runs(
    runs: Iterable[Mapping[str, Any]],
    *,
    tag: str | Callable[[Mapping[str, Any]], str],
) -> list[dict[str, Any]]:
    """Group ledger runs by UTC day of ``finished_at`` and tag value.

    ``tag`` is the Modal tag value the runs were billed under: a constant (one deployed app) or a
    function of the run row. Runs that never reached the GPU (rejected, or no ``finished_at``) are
    left out: nothing of theirs can appear on the bill.
    """
    groups: dict[tuple[dt.date, str], dict[str, Any]] = {}
    for run in runs:
        if run.get("status") in ("rejected", "queued", "running") or not run.get("finished_at"):
            continue
        day = _as_date(run["finished_at"])
        value = tag(run) if callable(tag) else tag
        row = groups.setdefault(
            (day, value),
            {
                "day": day,
                "tag": value,
                "runs": 0,
                "estimated_cost_usd": 0.0,
                "actual_cost_usd": 0.0,
            },
        )
        row["runs"] += 1
        row["estimated_cost_usd"] += float(run.get("estimated_cost_usd") or 0)
        row["actual_cost_usd"] += float(run.get("actual_cost_usd") or 0)
    return [groups[key] for key in sorted(groups)]


def reconcile(
    ledger_rows_by_day_and_tag: Iterable[Mapping[str, Any]],
    billing_report_rows: Iterable[Any],
    *,
    tag_name: str = DEFAULT_TAG_NAME,
    price_by_resource_usd_per_s: Mapping[str, float] | None = None,
) -> ReconciliationReport:
    """Join ledger costs and Modal's bill per (UTC day, value of tag ``tag_name``).

    Args:
        ledger_rows_by_day_and_tag: mappings with ``day``, ``tag``, ``estimated_cost_usd``,
            ``actual_cost_usd`` and optionally ``runs`` (see :func:`ledger_costs_from_runs`).
        billing_report_rows: ``modal.types.BillingReportItem`` objects (or mappings with the same
            fields) from a daily report; objects without the tag count under ``(untagged)``.
        tag_name: the Modal tag whose value identifies our runs' app.
        price_by_resource_usd_per_s: ``settings.cost_model.price_by_resource_usd_per_s``: the ledger's
            charges are split by these rates into ``ledger_by_resource_usd``.

    Returns:
        One row per (day, tag) present on either side, sorted, plus totals.
    """
    rows: dict[tuple[dt.date, str], ReconciliationRow] = {}

    def row_for(day: dt.date, tag: str) -> ReconciliationRow:
        return rows.setdefault((day, tag), ReconciliationRow(day=day, tag=tag))

    for ledger_row in ledger_rows_by_day_and_tag:
        row = row_for(_as_date(ledger_row["day"]), str(ledger_row["tag"]))
        row.runs += int(ledger_row.get("runs") or 0)
        row.estimated_usd += float(ledger_row.get("estimated_cost_usd") or 0)
        row.ledger_actual_usd += float(ledger_row.get("actual_cost_usd") or 0)
    for item in billing_report_rows:
        billed = normalise_billing_item(item)
        row = row_for(billed.day, billed.tags.get(tag_name, UNTAGGED))
        row.billed_usd += billed.cost_usd
        for resource, cost in billed.cost_by_resource_usd.items():
            row.billed_by_resource_usd[resource] = (
                row.billed_by_resource_usd.get(resource, 0.0) + cost
            )

    rates = dict(price_by_resource_usd_per_s or {})
    per_s = sum(rates.values())
    for row in rows.values():
        if per_s > 0:
            row.ledger_by_resource_usd = {
                name: row.ledger_actual_usd * rate / per_s for name, rate in rates.items()
            }
    ordered = [rows[key]._finish() for key in sorted(rows)]
    totals = ReconciliationRow(day=None, tag="total")
    for row in ordered:
        totals.runs += row.runs
        totals.estimated_usd += row.estimated_usd
        totals.ledger_actual_usd += row.ledger_actual_usd
        totals.billed_usd += row.billed_usd
        for resource, cost in row.billed_by_resource_usd.items():
            totals.billed_by_resource_usd[resource] = (
                totals.billed_by_resource_usd.get(resource, 0.0) + cost
            )
        for resource, cost in row.ledger_by_resource_usd.items():
            totals.ledger_by_resource_usd[resource] = (
                totals.ledger_by_resource_usd.get(resource, 0.0) + cost
            )
    return ReconciliationReport(tag_name=tag_name, rows=ordered, totals=totals._finish())


def fetch_modal_billing(
    start: dt.datetime,
    end: dt.datetime | None = None,
    *,
    tag_names: list[str] | None = None,
    workspace: Any | None = None,
) -> list[Any]:
    """Modal's daily billing report for ``[start, end)`` (UTC), with the given tags.

    Wraps ``modal.Workspace.from_context().billing.report(start=, end=, resolution="d",
    tag_names=)``, which returns ``list[modal.types.BillingReportItem]`` (``object_id``,
    ``description``, ``environment_name``, ``interval_start``, ``cost: Decimal``,
    ``cost_by_resource: dict[str, Decimal]``, ``tags``). Needs Modal credentials and the network;
    ``workspace`` lets tests pass a stand-in.
    """
    if workspace is None:
        import modal

        workspace = modal.Workspace.from_context()
    return list(
        workspace.billing.report(
            start=start, end=end, resolution="d", tag_names=list(tag_names or [DEFAULT_TAG_NAME])
        )
    )


def load_billing_report(path: Path) -> list[Any]:
    """A billing report saved as JSON (the fields of ``BillingReportItem``, Decimals as strings)
    back as ``modal.types.BillingReportItem`` objects."""
    from modal.types import BillingReportItem

    return [
        BillingReportItem(
            object_id=raw["object_id"],
            description=raw["description"],
            environment_name=raw["environment_name"],
            interval_start=dt.datetime.fromisoformat(raw["interval_start"]),
            cost=Decimal(raw["cost"]),
            cost_by_resource={k: Decimal(v) for k, v in raw.get("cost_by_resource", {}).items()},
            tags=dict(raw.get("tags", {})),
        )
        for raw in json.loads(Path(path).read_text())
    ]


def save_billing_report(items: Iterable[Any], path: Path) -> None:
    """Record a report (e.g. from :func:`fetch_modal_billing`) for replay with
    :func:`load_billing_report`."""
    data = [
        {
            "object_id": _field(item, "object_id"),
            "description": _field(item, "description"),
            "environment_name": _field(item, "environment_name"),
            "interval_start": _field(item, "interval_start").isoformat(),
            "cost": str(_field(item, "cost")),
            "cost_by_resource": {
                k: str(v) for k, v in dict(_field(item, "cost_by_resource", {})).items()
            },
            "tags": dict(_field(item, "tags", {})),
        }
        for item in items
    ]
    Path(path).write_text(json.dumps(data, indent=2) + "\n")
