"""``boundary-inference``: the command line.

Command names, options and ``--json`` fields are a contract other tools script against: add, never
rename. Exit codes: 0 succeeded or skipped, 3 rejected, 1 failed, 2 usage, configuration or
connection problem (one line on stderr, no traceback).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from boundary_inference.cli.context import (
    flow_run_url,
    load_services,
    load_settings,
    use_prefect,
)
from boundary_inference.cli.errors import OneLineErrors, SubmissionCutShort, operator_problem
from boundary_inference.cli.ledger import ledger_app
from boundary_inference.cli.output import (
    JsonOpt,
    age,
    console,
    print_json,
    print_table,
    short_id,
    usd,
)

if TYPE_CHECKING:  # imported lazily at run time: `--help` must not pay for the services
    pass


app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    help="GPU batch inference that cannot run away with your money.",
)
breaker_app = typer.Typer(no_args_is_help=True, help="Inspect or reset the circuit breaker.")
app.add_typer(breaker_app, name="breaker")
app.add_typer(ledger_app, name="ledger")


@app.callback()
def _refuse_bad_configuration(ctx: typer.Context) -> None:
    """Every command starts by refusing a configuration that cannot work (exit 2)."""
    if ctx.resilient_parsing or "--help" in sys.argv[1:]:
        return
    load_settings()


@app.command()
def demo(
    frames: Annotated[int, typer.Option(help="Frames in the synthetic video.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic video.")] = 7,
) -> None:
    """The main job: every safeguard, end to end, on the embedded services."""
    from boundary_inference.cli.demo import run_demo

    server = use_prefect()
    raise typer.Exit(
        run_demo(frames=frames, seed=seed, console=console, ui_url=_prefect_ui_url(server))
    )


@contextmanager
def _ledger_has_the_outcome(video_id: str) -> Iterator[None]:
    try:
        yield
    except Exception as error:
        reason = operator_problem(error)
        if reason is None:
            raise
        raise SubmissionCutShort(
            f"{reason} (the ledger holds what was decided: boundary-inference runs --video"
            f" {video_id})"
        ) from error


def _prefect_ui_url(server: Any) -> str | None:
    if server is not None:
        return str(server.ui_url)
    from prefect.settings import get_current_settings

    return get_current_settings().ui_url


@app.command()
def submit(
    video_id: str,
    frames_version: Annotated[str, typer.Option(help="Frames version (dedup key).")] = "v1",
    model_version: Annotated[str, typer.Option(help="Model version (dedup key).")] = (
        "builtin-textdiff-v1"
    ),
    pairs: Annotated[
        str | None, typer.Option(help='Frame pairs as JSON, e.g. "[[0,1],[1,2]]". Default: all.')
    ] = None,
    force: Annotated[bool, typer.Option(help="Re-run even if a run exists (recorded).")] = False,
    priority: Annotated[str, typer.Option(help="high, normal or low.")] = "high",
    tenant: Annotated[str | None, typer.Option(help="Tenant id.")] = None,
    no_wait: Annotated[
        bool,
        typer.Option(
            "--no-wait",
            help="Create a run of the boundary-inference/default deployment and exit: print its"
            " flow run id and UI link (the local worker runs it; cancellable from the UI).",
        ),
    ] = False,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="Run the flow in this process instead of as a deployment run (debugging: no"
            " worker, but the UI cannot cancel it and the deployment's limit does not count it).",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Run one video's job as a run of the boundary-inference/default deployment and wait for
    its outcome (exit 0/3/1 as documented; Ctrl-C cancels the job); --no-wait exits once the run
    is created; --in-process runs the flow here."""
    from boundary_inference.pairs import RequestJsonError, loads_request_json, max_json_chars

    settings = load_settings()
    frame_pairs = None
    if pairs is not None:
        # Bounded before json.loads (which recurses): too deep, too large, NaN or not JSON is a
        # usage error, one line. What it means (shape, ranges) is the flow's validation.
        try:
            frame_pairs = loads_request_json(
                pairs, what="--pairs", max_chars=max_json_chars(settings.max_frame_pairs)
            )
        except RequestJsonError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(2) from error
    identifiers = {
        "video_id": video_id,
        "frames_version": frames_version,
        "model_version": model_version,
        "tenant_id": tenant,
    }
    if any("\x00" in (value or "") for value in identifiers.values()):
        _refuse_unsendable(identifiers, as_json)
    server = use_prefect()
    if not in_process:
        parameters = {
            "video_id": video_id,
            "frames_version": frames_version,
            "model_version": model_version,
            "frame_pairs": frame_pairs,
            "skip_if_exists": not force,
            "priority": priority,
            "tenant_id": tenant,
        }
        _submit_deployment_run(settings, server, parameters, as_json, wait=not no_wait)
        return
    if no_wait:
        typer.echo("error: --no-wait and --in-process cannot be combined", err=True)
        raise typer.Exit(2)
    from flows.boundary_inference import boundary_inference_flow

    with _ledger_has_the_outcome(video_id):
        state = boundary_inference_flow(
            video_id=video_id,
            frames_version=frames_version,
            model_version=model_version,
            frame_pairs=frame_pairs,
            skip_if_exists=not force,
            priority=priority,
            tenant_id=tenant,
            return_state=True,
        )
    _print_outcome(_outcome_from_state(state), flow_run_url(state), as_json)


def _print_outcome(outcome: dict[str, Any], url: str | None, as_json: bool) -> NoReturn:
    """The outcome as ``submit`` prints it (``--json``: SUBMIT_FIELDS, the URL, every detail),
    and its documented exit code."""
    if as_json:
        print_json(
            {k: outcome.get(k) for k in SUBMIT_FIELDS} | {"flow_run_url": url, "details": outcome}
        )
    else:
        colour = {"succeeded": "green", "skipped": "cyan", "rejected": "yellow"}.get(
            str(outcome["status"]), "red"
        )
        console.print(f"[{colour}]{outcome['status']}[/{colour}]: {outcome.get('message')}")
        if outcome.get("rejection_type"):
            console.print(f"  rejection_type: {outcome['rejection_type']}")
        if outcome.get("run_id") is not None:
            console.print(f"  run_id: {outcome['run_id']}")
        for key in ("estimated_cost_usd", "worst_case_cost_usd", "actual_cost_usd"):
            if outcome.get(key) is not None:
                console.print(f"  {key}: {usd(outcome[key])}")
        if outcome.get("rejection_id"):
            console.print(f"  acknowledge: boundary-inference ack {outcome['rejection_id']}")
        if url:
            console.print(f"  Prefect UI: {url}", soft_wrap=True)
    raise typer.Exit(_exit_code(outcome))


def _submit_deployment_run(
    settings: Any, server: Any, parameters: dict[str, Any], as_json: bool, *, wait: bool
) -> None:
    """Create the deployment run; without ``wait`` print where to follow it, else wait for its
    outcome and print it as an in-process run's."""
    from boundary_inference.cli.jobs import JobInterrupted, create_job, wait_for_job
    from boundary_inference.job_runs import DEPLOYMENT

    job = create_job(settings, server, parameters)
    if not wait:
        if as_json:
            print_json(
                {
                    "flow_run_id": str(job.flow_run_id),
                    "flow_run_url": job.url,
                    "state": job.state_name,
                    "deployment": DEPLOYMENT,
                    "worker_pid": job.worker.pid if job.worker else None,
                }
            )
            return
        console.print(f"created: flow run {job.flow_run_id} ({job.state_name}) of {DEPLOYMENT}")
        if job.url:
            console.print(f"  Prefect UI: {job.url}", soft_wrap=True)
        console.print(
            "  outcome: boundary-inference runs --video " + str(parameters["video_id"]),
            soft_wrap=True,
        )
        return
    if not as_json:
        console.print(
            f"[dim]flow run {job.flow_run_id} of {DEPLOYMENT}: waiting for its outcome"
            " (Ctrl-C cancels the job)[/dim]",
            soft_wrap=True,
        )
    try:
        with _ledger_has_the_outcome(str(parameters["video_id"])):
            finished = wait_for_job(job, notice=lambda line: typer.echo(line, err=True))
    except JobInterrupted as interrupted:
        typer.echo(
            f"interrupted: {interrupted}; its watch cancels the call and settles the seconds"
            " used (boundary-inference runs --video " + str(parameters["video_id"]) + ")",
            err=True,
        )
        raise typer.Exit(130) from None
    _print_outcome(finished.outcome, finished.url, as_json)


def _refuse_unsendable(identifiers: dict[str, str | None], as_json: bool) -> NoReturn:
    """Refuse, record and exit 3 for an identifier Prefect cannot carry to the flow.

    U+0000 cannot be stored in PostgreSQL text or jsonb: a Prefect server on PostgreSQL (this
    one, or Cloud) answers 503 to a flow run whose parameters hold it, before any flow code runs,
    so the flow's own validation would never record the refusal. Refused here instead, the same
    way the flow would (validation_failed, a printable stand-in for the id).
    """
    from config.identifiers import display_identifier, identifier_problem

    problem = next(
        identifier_problem(kind, value)
        for kind, value in identifiers.items()
        if value is not None and "\x00" in value
    )
    message = f"{problem} (refused before Prefect: U+0000 cannot travel in flow parameters)"
    tenant = identifiers["tenant_id"]
    rejection_id = load_services().ledger.log_rejection(
        rejection_type="validation_failed",
        message=message,
        video_id=display_identifier(identifiers["video_id"]),
        tenant_id=display_identifier(tenant) if tenant is not None else None,
    )
    outcome = {
        "status": "rejected",
        "rejection_type": "validation_failed",
        "message": message,
        "run_id": None,
        "estimated_cost_usd": None,
        "actual_cost_usd": None,
        "rejection_id": str(rejection_id),
    }
    if as_json:
        print_json({k: outcome.get(k) for k in SUBMIT_FIELDS} | {"details": outcome})
    else:
        console.print(f"[yellow]rejected[/yellow]: {message}")
        console.print("  rejection_type: validation_failed")
        console.print(f"  acknowledge: boundary-inference ack {rejection_id}")
    raise typer.Exit(_exit_code(outcome))


SUBMIT_FIELDS = (
    "status",
    "rejection_type",
    "message",
    "run_id",
    "estimated_cost_usd",
    "actual_cost_usd",
)


def _exit_code(outcome: dict[str, Any]) -> int:
    """The documented exit code of an outcome (one table: boundary_inference.outcome.EXIT_CODES);
    a status this CLI does not know is a failure."""
    from boundary_inference.outcome import EXIT_CODES, OutcomeStatus

    try:
        return EXIT_CODES[OutcomeStatus(str(outcome["status"]))]
    except ValueError:
        return EXIT_CODES[OutcomeStatus.FAILED]


def _outcome_from_state(state: Any) -> dict[str, Any]:
    from boundary_inference.outcome import outcome_of

    outcome = outcome_of(state)
    if outcome is not None:
        return outcome
    return {"status": "failed", "message": state.message or state.name, "run_id": None}


@app.command()
def runs(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
    video: Annotated[str | None, typer.Option(help="Only this video.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Recent runs with their status and cost."""
    rows = load_services().ledger.list_runs(limit=limit, video_id=video)
    if as_json:
        print_json(rows)
        return
    # What the table shows: the run rows with display columns added (or shortened).
    shown: list[dict[str, Any]] = [
        {
            **row,
            "age": age(row["created_at"]),
            "id": short_id(row["id"]),
            "estimated": usd(row["estimated_cost_usd"]),
            "actual": usd(row["actual_cost_usd"]),
        }
        for row in rows
    ]
    print_table(
        "runs",
        shown,
        [
            "id",
            "age",
            "video_id",
            "model_version",
            "status",
            "pairs",
            "estimated",
            "actual",
            "executor_call_id",
        ],
    )


@app.command("rejections")
def rejections_cmd(
    all_: Annotated[bool, typer.Option("--all", help="Include acknowledged ones.")] = False,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """What was refused, why, and at what estimate (unacknowledged only unless --all)."""
    rows = load_services().ledger.list_rejections(unacknowledged_only=not all_, limit=limit)
    if as_json:
        print_json(rows)
        return
    shown: list[dict[str, Any]] = [
        {
            **row,
            "age": age(row["created_at"]),
            "id": short_id(row["id"]),
            "estimate": usd(row["estimated_cost_usd"]),
        }
        for row in rows
    ]
    print_table(
        "rejections",
        shown,
        [
            "id",
            "age",
            "rejection_type",
            "video_id",
            "frame_count",
            "estimate",
            "acknowledged",
            "message",
        ],
    )


@app.command()
def ack(
    rejection_ids: Annotated[
        list[str], typer.Argument(help="Ids as `rejections` shows them: any unique prefix.")
    ],
    by: Annotated[str, typer.Option(help="Who acknowledges.")] = "cli",
) -> None:
    """Acknowledge rejections by id or by a unique prefix of it (the 8 characters shown).

    Exit 0 when every one was acknowledged now; 1 when one was unknown or already acknowledged;
    2 when an id is malformed or its prefix matches several rejections."""
    import re

    ledger = load_services().ledger
    failed, unusable = 0, 0
    for given in rejection_ids:
        prefix = given.strip().lower()
        if not re.fullmatch(r"[0-9a-f-]{1,36}", prefix):
            console.print(f"{given}: not a rejection id (hex digits and dashes, as shown)")
            unusable += 1
            continue
        matches = ledger.find_rejections_by_prefix(prefix=prefix, limit=10)
        if len(matches) > 1:
            shown = ", ".join(str(m["id"]) for m in matches[:5])
            console.print(f"{given}: ambiguous, {len(matches)}+ rejections start so ({shown}...)")
            unusable += 1
            continue
        if not matches:
            console.print(f"{given}: no rejection has this id")
            failed += 1
            continue
        rejection_id = str(matches[0]["id"])
        done = ledger.acknowledge_rejection(id=rejection_id, by=by)
        acknowledged = bool(done.get("acknowledged")) if isinstance(done, dict) else bool(done)
        console.print(
            f"{rejection_id}: {'acknowledged' if acknowledged else 'already acknowledged'}"
        )
        failed += 0 if acknowledged else 1
    raise typer.Exit(2 if unusable else 1 if failed else 0)


@app.command()
def estimate(
    pairs: int,
    model_version: Annotated[str, typer.Option(help="Model whose throughput to use.")] = (
        "builtin-textdiff-v1"
    ),
    as_json: JsonOpt = False,
) -> None:
    """What a job of PAIRS frame pairs would cost, expected and worst case."""
    from tasks.cost import calibrated_throughput
    from tasks.cost import estimate as compute

    settings = load_settings()
    throughput, source = calibrated_throughput(load_services().ledger, settings, model_version)
    est = compute(settings, pairs, throughput, source).to_dict()
    est["admissible"] = est["worst_case_cost_usd"] <= settings.max_cost_per_job_usd
    if as_json:
        print_json(est)
        return
    print_table("estimate", [{"field": k, "value": v} for k, v in est.items()], ["field", "value"])


@app.command()
def spend(
    days: Annotated[int, typer.Option(help="Days of history.")] = 7,
    as_json: JsonOpt = False,
) -> None:
    """Today's and this month's spend against the budgets, and a daily report."""
    settings = load_settings()
    ledger = load_services().ledger
    summary = ledger.spend_summary()
    by_day = ledger.spend_by_day(days=days)
    data = {
        "summary": summary,
        "daily_budget_usd": settings.daily_budget_usd,
        "monthly_budget_usd": settings.monthly_budget_usd,
        "by_day": by_day,
    }
    if as_json:
        print_json(data)
        return
    console.print(
        f"today: committed ${float(summary.get('daily_committed_usd') or 0):.4f}"
        f" of ${settings.daily_budget_usd:.2f};"
        f" month: ${float(summary.get('monthly_committed_usd') or 0):.4f}"
        f" of ${settings.monthly_budget_usd:.2f}"
    )
    if by_day:
        print_table("spend by day", by_day, list(by_day[0].keys()))


@breaker_app.command("status")
def breaker_status(as_json: JsonOpt = False) -> None:
    """State of the GPU circuit breaker."""
    from tasks.breaker import BREAKER_NAME

    settings = load_settings()
    status = load_services().ledger.breaker_status(
        name=BREAKER_NAME, window_s=settings.breaker_window_s
    )
    if as_json:
        print_json(status)
        return
    print_table(
        "breaker", [{"field": k, "value": v} for k, v in status.items()], ["field", "value"]
    )


@breaker_app.command("reset")
def breaker_reset() -> None:
    """Close the circuit by hand (after fixing what tripped it)."""
    from tasks.breaker import BREAKER_NAME

    load_services().ledger.breaker_reset(name=BREAKER_NAME)
    console.print(f"breaker {BREAKER_NAME} closed")


@app.command()
def migrate(
    dsn: Annotated[
        str | None,
        typer.Option(
            help="Postgres DSN; default: the configured ledger's (database_url, or the embedded"
            " one). A Supabase ledger needs it: the project's direct or session-pooler DSN."
        ),
    ] = None,
) -> None:
    """Apply the SQL migrations (idempotent) to the configured ledger and print what was applied."""
    from boundary_inference.ledger import apply_migrations
    from boundary_inference.services import embedded_dsn

    settings = load_settings()
    if dsn is None:
        target = settings.ledger_target
        if target == "supabase":
            # PostgREST cannot run DDL, and migrating the embedded database instead would report
            # success while the project stays empty.
            typer.echo(
                "error: the ledger is on Supabase (BOUNDARY_INFERENCE_SUPABASE_URL) and migrations"
                " cannot go through its Data API: pass --dsn postgresql://... (the project's"
                " direct connection or session pooler, port 5432), or set"
                " BOUNDARY_INFERENCE_DATABASE_URL",
                err=True,
            )
            raise typer.Exit(2)
        dsn = (
            settings.database_url.get_secret_value()
            if target == "postgres" and settings.database_url is not None
            else embedded_dsn(settings)
        )
    applied = apply_migrations(dsn, settings.db_schema)
    held = _applied_migrations(dsn, settings.db_schema)
    latest = held[-1] if held else "none"
    console.print(
        f"schema {settings.db_schema}: {len(held)} migrations applied (latest {latest});"
        f" this run applied {', '.join(applied) if applied else 'none (already up to date)'}"
    )


def _applied_migrations(dsn: str, schema: str) -> list[str]:
    """What the database holds: the names in ``<schema>.schema_migrations``, oldest first."""
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True, connect_timeout=10) as conn:
        table = sql.Identifier(schema, "schema_migrations")
        query = sql.SQL("SELECT name FROM {} ORDER BY name").format(table)
        return [str(row[0]) for row in conn.execute(query).fetchall()]


@app.command("config")
def config_cmd(as_json: JsonOpt = False) -> None:
    """Show the effective limits (secrets masked) and any warnings."""
    settings = load_settings()
    data = json.loads(settings.model_dump_json())
    data["derived"] = {
        "gpu_price_usd_per_s": settings.cost_model.gpu_price_usd_per_s,
        "price_usd_per_s": settings.cost_model.price_usd_per_s,
        "price_by_resource_usd_per_s": settings.cost_model.price_by_resource_usd_per_s,
        "gpu_attempts": settings.gpu_attempts,
        "absolute_ceiling_usd": settings.cost_model.absolute_ceiling_usd,
        "max_admissible_pairs": settings.max_admissible_pairs,
        "smallest_job_worst_case_usd": settings.cost_model.worst_case_cost_usd(
            1, settings.default_throughput_pairs_per_s
        ),
        "longest_job_s": settings.longest_job_s,
        "max_live_runs": settings.max_live_runs,
    }
    data["warnings"] = settings.coherence_warnings()
    if as_json:
        print_json(data)
        return
    for key, value in data.items():
        console.print(f"{key}: {value}")


@app.command()
def reconcile(
    since: Annotated[str, typer.Option(help="First UTC day, YYYY-MM-DD.")],
    until: Annotated[
        str | None, typer.Option(help="Day after the last, YYYY-MM-DD (default: now).")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="A saved Modal billing report (JSON) instead of Modal's.")
    ] = None,
    save: Annotated[
        Path | None, typer.Option(help="Also save the report fetched from Modal here.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The ledger's estimates and charges against Modal's bill, per UTC day and app tag."""
    from boundary_inference.billing import (
        fetch_modal_billing,
        ledger_costs_from_runs,
        load_billing_report,
        save_billing_report,
    )
    from boundary_inference.billing import reconcile as join

    try:
        start = datetime.fromisoformat(since).replace(tzinfo=UTC)
        end = datetime.fromisoformat(until).replace(tzinfo=UTC) if until else None
    except ValueError as error:
        console.print(f"[red]bad date[/red]: {error}")
        raise typer.Exit(2) from error
    settings = load_settings()
    if report is not None:
        bill = load_billing_report(report)
    else:
        try:
            bill = fetch_modal_billing(start, end)
        except Exception as error:  # no token, no network: say so, never guess
            console.print(f"[red]cannot read Modal's billing report[/red]: {error}")
            raise typer.Exit(1) from error
        if save is not None:
            save_billing_report(bill, save)
    runs = load_services().ledger.runs_finished_between(start=start, end=end)
    result = join(
        ledger_costs_from_runs(runs, tag=settings.modal_app_name),
        bill,
        price_by_resource_usd_per_s=settings.cost_model.price_by_resource_usd_per_s,
    )
    if as_json:
        print_json(result.to_dict())
        return
    columns = ["day", "tag", "runs", "estimated_usd", "ledger_actual_usd", "billed_usd"]
    rows = [r.to_dict() for r in [*result.rows, result.totals]]
    for row in rows:
        for key in ("estimated_usd", "ledger_actual_usd", "billed_usd"):
            row[key] = f"{row[key]:.4f}"
        row["estimated_usd"] += _pct(row["estimate_error_pct"])
        row["ledger_actual_usd"] += _pct(row["actual_error_pct"])
    print_table(f"ledger vs Modal bill (tag {result.tag_name})", rows, columns)
    # The totals as Modal splits its bill: a resource line that disagrees points at its price
    # setting (Modal names a GPU by its type; the recorded or fetched names are shown as they are).
    ledger, billed = result.totals.ledger_by_resource_usd, result.totals.billed_by_resource_usd
    by_resource = [
        {
            "resource": name,
            "ledger_usd": f"{ledger.get(name, 0.0):.4f}",
            "billed_usd": f"{billed.get(name, 0.0):.4f}",
        }
        for name in [*ledger, *(n for n in billed if n not in ledger)]
    ]
    print_table("totals by resource", by_resource, ["resource", "ledger_usd", "billed_usd"])


def _pct(error_pct: float | None) -> str:
    return "" if error_pct is None else f" ({error_pct:+.1f}%)"


# --- Monitor and automations (appended by the operations work) ---------------------------------

automations_app = typer.Typer(no_args_is_help=True, help="Alert automations on the Prefect server.")
app.add_typer(automations_app, name="automations")


@app.command()
def monitor(as_json: JsonOpt = False) -> None:
    """Run the rejection monitor once: open rejections, spend, failure rate, queue, alerts."""
    use_prefect()
    from flows.rejection_monitor import ALERT_ACTIONS, rejection_monitor_flow

    summary = rejection_monitor_flow()
    if as_json:
        print_json(summary)
        return
    for row in summary["rejections_by_type"]:
        row["total_estimated_cost_usd"] = usd(row.get("total_estimated_cost_usd"))
    print_table(
        "unacknowledged rejections by type",
        summary["rejections_by_type"],
        ["type", "count", "oldest_age", "newest_age", "total_estimated_cost_usd"],
    )
    rate = summary["failure_rate_24h"]
    console.print(
        f"spend today ${summary['daily_spend_usd']:.4f} of ${summary['daily_budget_usd']:.2f},"
        f" month ${summary['monthly_spend_usd']:.4f} of ${summary['monthly_budget_usd']:.2f};"
        f" failure rate 24 h {'n/a' if rate is None else f'{rate:.0%}'};"
        f" jobs last hour {summary['jobs_last_hour']}; queue depth {summary['queue_depth']}"
    )
    console.print("alerts: " + (", ".join(summary["events"]) or "none"))
    for key in summary["alerts"]:
        console.print(f"  what to do ({key}): {ALERT_ACTIONS[key]}")


@automations_app.command("apply")
def automations_apply(
    block: Annotated[
        str,
        typer.Option(help="Saved notification block: NAME, or BLOCK-TYPE-SLUG/NAME."),
    ] = "boundary-inference-alerts",
    directory: Annotated[
        Path | None, typer.Option(help="Definitions folder (default: the shipped automations/).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or update the shipped alert automations, notifying through BLOCK."""
    from boundary_inference.automations import NotificationBlockNotFound, apply_automations

    use_prefect()
    try:
        applied = apply_automations(block, directory)
    except NotificationBlockNotFound as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(2) from error
    rows = [{"name": a.name, "id": str(a.id), "action": a.action} for a in applied]
    if as_json:
        print_json(rows)
        return
    print_table("automations", rows, ["name", "action", "id"])


# --- Registries: videos and models (boundary_inference.cli.videos, cli_models) ----------------

from boundary_inference.cli.models import models_app  # noqa: E402
from boundary_inference.cli.torch_models import train_synthetic  # noqa: E402
from boundary_inference.cli.videos import videos_app  # noqa: E402

models_app.command("train-synthetic")(train_synthetic)

app.add_typer(videos_app, name="videos")
app.add_typer(models_app, name="models")


# --- Embedded servers (boundary_inference.cli.services) -----------------------------------------

from boundary_inference.cli.services import services_app  # noqa: E402

app.add_typer(services_app, name="services")


def main() -> None:
    import warnings

    # pgserver's platformdirs asks for XDG_RUNTIME_DIR, unset in many shells: noise on every line.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    app()


if __name__ == "__main__":
    main()
