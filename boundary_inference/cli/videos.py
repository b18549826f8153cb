"""``boundary-inference videos add|list``: the video registry on the command line.

``videos add`` exits 0 with the registered row, 2 with one line on stderr for anything refused (a
source that is not a readable video, a crop box not inside the frame, a bad id), 1 when the store
could not be reached. See :mod:`boundary_inference.videos` for what is checked and recorded.
"""

from __future__ import annotations

from typing import Annotated

import typer

videos_app = typer.Typer(no_args_is_help=True, help="Register and list videos.")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@videos_app.command("add")
def videos_add(
    video_id: str,
    source: Annotated[
        str,
        typer.Option(
            help="The video: a path, s3://bucket/key, https://... (e.g. presigned) or"
            " supabase://bucket/path."
        ),
    ],
    tenant: Annotated[str | None, typer.Option(help="Tenant id.")] = None,
    crop: Annotated[
        str | None,
        typer.Option(help="Caption crop box x,y,width,height in pixels, inside the frame."),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Register a video: frames, size, codec and content hash are read from the source."""
    from boundary_inference.cli.context import load_services, load_settings
    from boundary_inference.cli.output import console, print_json
    from boundary_inference.ledger import LedgerError
    from boundary_inference.videos import RegistrationError, register_video

    settings = load_settings()
    try:
        row = register_video(
            load_services().ledger,
            settings,
            video_id=video_id,
            source=source,
            tenant_id=tenant,
            crop=crop,
        )
    except RegistrationError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(error.exit_code) from error
    except LedgerError as error:
        typer.echo(f"error: the ledger refused the video: {error.message}", err=True)
        raise typer.Exit(2 if error.code in ("BI400", "BI403") else 1) from error
    if as_json:
        print_json(row)
        return
    console.print(
        f"registered {video_id}: {row['frame_count']} frames at {float(row['fps']):.2f} fps,"
        f" {row['width']}x{row['height']} {row.get('codec') or ''}, {row['size_bytes']} bytes"
    )


@videos_app.command("list")
def videos_list(
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's videos.")] = None,
    limit: Annotated[int, typer.Option(help="How many, by id.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """Registered videos with what was recorded about their source."""
    from boundary_inference.cli.context import load_services
    from boundary_inference.cli.output import print_json, print_table

    rows = load_services().ledger.list_videos(tenant_id=tenant, limit=limit)
    if as_json:
        print_json(rows)
        return
    shown = [
        {**row, "size": f"{row['width']}x{row['height']}" if row["width"] else ""} for row in rows
    ]
    print_table(
        "videos",
        shown,
        ["id", "tenant_id", "frame_count", "size", "codec", "size_bytes", "crop_box", "source_uri"],
    )
