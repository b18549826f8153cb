"""What every command starts from: the settings (refused as one line each), the services, the
Prefect API to use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not pay for the services
    from boundary_inference.services import Services


def load_settings() -> Any:
    from pydantic import ValidationError

    from config import get_settings
    from config.settings import configuration_problems

    try:
        return get_settings()
    except ValidationError as error:
        # One line per problem, unwrapped, on stderr: scripts and people read them the same way.
        for problem in configuration_problems(error):
            typer.echo(f"configuration error: {problem}", err=True)
        raise typer.Exit(2) from error


def load_services() -> Services:
    from boundary_inference.services import get_services

    return get_services(load_settings())


def use_prefect() -> Any:
    """Before the first flow run of this process: Prefect's API is ``PREFECT_API_URL`` (or a
    profile's) when set, else the state dir's embedded Prefect server, started once and shared by
    every CLI process. Returns the embedded server, or None."""
    from boundary_inference.local.prefect_server import use_embedded_prefect

    return use_embedded_prefect(Path(load_settings().state_dir))


def flow_run_url(state: Any) -> str | None:
    """Where a flow run shows in the UI of whichever Prefect server ran it."""
    return flow_run_link(getattr(state.state_details, "flow_run_id", None))


def flow_run_link(flow_run_id: object) -> str | None:
    """The UI page of flow run ``flow_run_id`` on the Prefect server this process uses."""
    from prefect.settings import get_current_settings

    ui_url = get_current_settings().ui_url
    return f"{ui_url.rstrip('/')}/runs/flow-run/{flow_run_id}" if flow_run_id and ui_url else None
