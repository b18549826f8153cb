"""``boundary-inference models add|list``: the model registry on the command line.

``models add ckpt:<name> --file PATH`` exits 0 with the registered row, 2 with one line on stderr
for a checkpoint that does not load or a name already taken by another file, 1 when the Modal
Volume could not be reached. See :mod:`boundary_inference.model_registry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

models_app = typer.Typer(no_args_is_help=True, help="Register and list checkpoints.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@models_app.command("add")
def models_add(
    model_version: Annotated[str, typer.Argument(help="ckpt:<name>, the model_version to run.")],
    file: Annotated[Path, typer.Option("--file", help="The checkpoint file.")],
    to: Annotated[
        str | None,
        typer.Option("--to", help="local (models directory) or modal (models Volume)."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Check that a checkpoint loads, put it where the executor reads it, and record its hash."""
    from boundary_inference.cli.context import load_services, load_settings
    from boundary_inference.cli.output import console, print_json
    from boundary_inference.ledger import LedgerError
    from boundary_inference.model_registry import register_model
    from boundary_inference.videos import RegistrationError

    settings = load_settings()
    try:
        row = register_model(
            load_services().ledger, settings, model_version=model_version, file=file, destination=to
        )
    except RegistrationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error
    except LedgerError as error:
        typer.echo(f"error: the ledger refused the model: {error.message}", err=True)
        raise typer.Exit(2 if error.code in ("BI400", "BI409") else 1) from error
    if as_json:
        print_json(row)
        return
    verb = "registered" if row.get("created") else "already registered"
    console.print(
        f"{verb} {model_version}: {row['format']}, {row['size_bytes']} bytes, sha256"
        f" {str(row['sha256'])[:16]}..., in {', '.join(row.get('locations') or [])}"
    )


@models_app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Registered checkpoints (builtin code models need no registration)."""
    from boundary_inference.cli.context import load_services
    from boundary_inference.cli.output import print_json, print_table

    rows = load_services().ledger.list_models()
    if as_json:
        print_json(rows)
        return
    shown = [
        {**row, "sha256": row["sha256"][:16] + "...", "locations": ", ".join(row["locations"])}
        for row in rows
    ]
    print_table(
        "models",
        shown,
        ["model_version", "format", "size_bytes", "sha256", "locations", "created_at"],
    )
