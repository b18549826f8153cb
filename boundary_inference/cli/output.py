"""How the CLI prints: one console, tables, JSON, money, ids and ages as an operator reads them."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def usd(value: Any) -> str:
    """Money as the operator reads it: $0.4037, not 0.40367228957763895."""
    return "" if value is None or value == "" else f"${float(value):.4f}"


def short_id(value: Any) -> str:
    """The first 8 characters of a uuid: what the tables show and ``ack`` accepts."""
    return str(value)[:8] if value else ""


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(title: str, rows: Sequence[Mapping[str, Any]], columns: list[str]) -> None:
    table = Table(title=title)
    for column in columns:
        # An id is what `ack` and people copy: never cut, whatever the terminal's width.
        short = column == "id"
        table.add_column(column, no_wrap=short, min_width=8 if short else None)
    for row in rows:
        table.add_row(*["" if row.get(c) is None else str(row.get(c)) for c in columns])
    console.print(table)


def age(created_at: Any) -> str:
    from boundary_inference.timefmt import age_s, format_age

    return format_age(age_s(created_at, datetime.now(UTC))) or str(created_at)
