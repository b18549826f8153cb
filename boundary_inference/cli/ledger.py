"""``boundary-inference ledger``: how big the ledger is, whether its budget totals agree with the
reservations, and prediction retention.

Exit codes as for the rest of the CLI: 0 done, 1 the check found drift, 2 usage error.
"""

from __future__ import annotations

import datetime as dt
import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from boundary_inference.cli.context import load_settings
from boundary_inference.cli.output import JsonOpt, console, print_json

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not pay for them
    from boundary_inference.ledger import Ledger
    from config import Settings

ledger_app = typer.Typer(
    no_args_is_help=True, help="Ledger size, budget totals check and repair, prediction retention."
)
errors = Console(stderr=True)
SinceOpt = Annotated[
    str | None, typer.Option(help="First UTC day (YYYY-MM-DD); its whole month is included.")
]


def _open_ledger() -> tuple[Settings, Ledger]:
    from boundary_inference.services import open_ledger

    settings = load_settings()
    return settings, open_ledger(settings)


def _day(value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError as error:
        errors.print(f"[red]--since must be YYYY-MM-DD[/red]: {value!r}")
        raise typer.Exit(2) from error


def _mib(value: Any) -> str:
    return f"{int(value or 0) / 2**20:,.1f}"


@ledger_app.command("size")
def size(as_json: JsonOpt = False) -> None:
    """Rows and bytes (with indexes and TOAST) of every ledger table, largest first."""
    _, ledger = _open_ledger()
    try:
        rows = ledger.ledger_size()
    finally:
        ledger.close()
    if as_json:
        print_json(rows)
        return
    table = Table(title=f"ledger size (schema {ledger.schema})")
    for column in ("table", "rows", "total MiB", "table MiB", "index MiB"):
        table.add_column(column, justify="left" if column == "table" else "right")
    for row in rows:
        table.add_row(
            str(row["table"]),
            f"{int(row['rows']):,}",
            _mib(row["total_bytes"]),
            _mib(row["table_bytes"]),
            _mib(row["index_bytes"]),
        )
    console.print(table)
    console.print(f"total: {_mib(sum(int(r['total_bytes']) for r in rows))} MiB")


@ledger_app.command("check")
def check(since: SinceOpt = None, as_json: JsonOpt = False) -> None:
    """Compare the budget totals with the reservations (default: this month). Exit 1 on drift."""
    _, ledger = _open_ledger()
    try:
        result = ledger.budget_totals_drift(since=_day(since), limit=50)
    finally:
        ledger.close()
    if as_json:
        print_json(result)
    elif result["ok"]:
        console.print(
            f"[green]ok[/green]: {result['checked_rows']} totals rows since {result['since']}"
            " agree with the reservations"
        )
    else:
        console.print(
            f"[red]drift[/red]: {result['drift_rows']} totals rows since {result['since']}"
            " disagree with the reservations; repair with `boundary-inference ledger"
            " rebuild-totals`"
        )
        for row in result["drift"]:
            console.print(f"  {row}")
    raise typer.Exit(0 if result["ok"] else 1)


@ledger_app.command("rebuild-totals")
def rebuild_totals(since: SinceOpt = None, as_json: JsonOpt = False) -> None:
    """Recompute the budget totals from the reservations (default: all of history)."""
    _, ledger = _open_ledger()
    try:
        result = ledger.budget_totals_rebuild(since=_day(since))
    finally:
        ledger.close()
    if as_json:
        print_json(result)
        return
    console.print(
        f"rebuilt {result['written']} totals rows (replaced {result['deleted']})"
        f" from {result['since'] or 'the first reservation'} on"
    )


@ledger_app.command("prune-predictions")
def prune_predictions(
    keep_days: Annotated[
        int | None,
        typer.Option(min=0, help="Keep this many days (default: predictions_retention_days)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Delete predictions saved longer ago than the retention, oldest first, in bounded calls."""
    from tasks.ledger_upkeep import prune_predictions as prune

    settings, ledger = _open_ledger()
    days = keep_days if keep_days is not None else settings.predictions_retention_days
    if days is None:
        ledger.close()
        errors.print(
            "[red]no retention[/red]: pass --keep-days or set"
            " BOUNDARY_INFERENCE_PREDICTIONS_RETENTION_DAYS"
        )
        raise typer.Exit(2)
    try:
        result = prune(ledger, keep_days=days, max_calls=sys.maxsize)
    finally:
        ledger.close()
    result["keep_days"] = days
    if as_json:
        print_json(result)
        return
    console.print(
        f"deleted the predictions of {result['runs']} runs ({result['chunks']} chunks) saved more"
        f" than {days} days ago"
    )
