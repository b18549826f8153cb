"""The main job: the real flow on the embedded services, showing each safeguard once.

1. an admitted run that finds the caption boundaries (F1 against the synthetic truth);
2. the same submission again: skipped as a duplicate;
3. a forced re-run: refused by the per-video cooldown;
4. a job whose worst case exceeds the per-job cap: refused before anything is decoded;
5. a bad request: refused by validation;
then the rejections table and where to look in the Prefect UI.
"""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

MODEL = "builtin-textdiff-v1"
NEW_MODEL = "ckpt:lecture-large-v1"  # registered, never run: no calibration


def _f1(predicted: list[bool], truth: list[bool]) -> tuple[float, float, float]:
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, truth, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, truth, strict=True))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _submit(console: Console, title: str, **params: Any) -> dict[str, Any]:
    """One job as every job runs: a run of the deployment, which the state dir's worker runs."""
    from boundary_inference.cli.jobs import create_job, wait_for_job
    from config import get_settings

    console.rule(f"[bold]{title}")
    started = time.monotonic()
    job = create_job(get_settings(), None, params)  # the deployment's defaults fill the rest
    finished = wait_for_job(job, notice=console.print)
    outcome = finished.outcome
    colour = {"succeeded": "green", "skipped": "cyan", "rejected": "yellow"}.get(
        str(outcome.get("status")), "red"
    )
    console.print(
        f"  -> [{colour}]{outcome.get('status')}[/{colour}]"
        + (f" ({outcome['rejection_type']})" if outcome.get("rejection_type") else "")
        + f": {outcome.get('message')}  [dim]{time.monotonic() - started:.1f} s,"
        f" flow run {finished.flow_run_id} '{finished.state_name}'[/dim]"
    )
    return outcome


def run_demo(
    *,
    frames: int = 300,
    seed: int = 7,
    console: Console | None = None,
    ui_url: str | None = None,
) -> int:
    console = console or Console()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from boundary_inference.model_registry import register_model
    from boundary_inference.services import get_services
    from boundary_inference.videos import register_video
    from config import get_settings
    from modal_app.models import BUILTIN_MODEL
    from modal_app.synthetic import make_video

    settings = get_settings()
    t0 = time.monotonic()
    console.print(
        "[bold]boundary-inference demo[/bold]: the real flow, real PostgreSQL and Redis"
        f" under {Path(settings.state_dir).resolve()}, a local CPU executor; each job a run"
        " of the boundary-inference/default deployment, run by the state dir's worker."
    )
    services = get_services(settings)
    ledger = services.ledger
    console.print(f"  services ready in {time.monotonic() - t0:.1f} s")

    videos_dir = Path(settings.state_dir).resolve() / "videos"
    videos_dir.mkdir(parents=True, exist_ok=True)
    # A new id per demo run, so every run shows the whole story (dedup and cooldown are per video),
    # and two demos started in the same second in one checkout do not collide.
    video_id = f"demo-{time.strftime('%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path = videos_dir / f"{video_id}.mp4"
    truth = make_video(path, seed=seed, frame_count=frames)
    crop = truth.crop_box
    # The registry measures the file: frames, size, codec, and the fingerprint admission checks.
    register_video(
        ledger,
        settings,
        video_id=video_id,
        source=str(path),
        crop=f"{crop.x},{crop.y},{crop.width},{crop.height}",
    )
    console.print(
        f"  synthetic video {path.name}: {frames} frames, {len(truth.boundary_frames)} caption"
        " changes"
    )
    base = {"video_id": video_id, "frames_version": "v1", "model_version": MODEL}

    first = _submit(console, "1. submit: admitted and run", **base)
    ok = first.get("status") == "succeeded"
    if ok:
        predictions = ledger.get_predictions(run_id=first["run_id"])
        pairs = [(int(p["frame1"]), int(p["frame2"])) for p in predictions]
        labels = truth.labels_for(pairs)
        precision, recall, f1 = _f1([bool(p["is_boundary"]) for p in predictions], labels)
        console.print(
            f"  boundaries: precision {precision:.3f}, recall {recall:.3f}, [bold]F1 {f1:.3f}[/bold]"
            f" over {len(pairs)} pairs; estimated ${first['estimated_cost_usd']:.4f},"
            f" worst case ${first['worst_case_cost_usd']:.4f}, measured"
            f" ${first['actual_cost_usd']:.4f} (at the A10G price)"
        )
    second = _submit(console, "2. the same submission again: a duplicate", **base)
    third = _submit(
        console, "3. forced re-run (skip_if_exists=False)", **base, skip_if_exists=False
    )

    # A real checkpoint, registered (hashed, placed in the models directory) like any other.
    if ledger.get_model(model_version=NEW_MODEL) is None:
        new_model = videos_dir / "lecture-large-v1.npz"
        BUILTIN_MODEL.save(new_model)
        register_model(
            ledger, settings, model_version=NEW_MODEL, file=new_model, destination="local"
        )
    long_id = f"{video_id}-lecture"
    ledger.upsert_video(
        id=long_id,
        tenant_id=settings.default_tenant_id,
        frame_count=216_000,
        fps=30.0,
        source_uri=str(path),
        crop_box=None,
    )
    console.print(
        f"  (registered {long_id}: metadata of a 2-hour lecture, 216,000 frames. It goes to a new"
        f" checkpoint, {NEW_MODEL}, with no runs to calibrate its speed, so the estimate assumes"
        f" the A10G figure of {settings.default_throughput_pairs_per_s:.0f} pairs/s. The job is"
        " refused before a single frame is read.)"
    )
    fourth = _submit(
        console,
        "4. a job over the per-job cost cap",
        video_id=long_id,
        frames_version="v1",
        model_version=NEW_MODEL,
        frame_pairs={"start": 0, "stop": 200_000, "step": 5},  # 40,000 pairs
    )
    fifth = _submit(
        console,
        "5. a bad request: a frame pair past the end of the video",
        **{**base, "frames_version": "v2"},
        frame_pairs=[[0, 1], [10, frames + 5]],
    )

    console.rule("[bold]rejections (unacknowledged)")
    rows = [
        r
        for r in ledger.list_rejections(unacknowledged_only=True, limit=20)
        if str(r.get("video_id", "")).startswith(video_id)
    ]
    table = Table()
    for column in ("rejection_type", "video_id", "frame_count", "estimated_cost_usd", "message"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            str(row["rejection_type"]),
            str(row["video_id"]),
            str(row.get("frame_count") or ""),
            f"${cost:.4f}" if (cost := row["estimated_cost_usd"]) else "",
            str(row["message"])[:90],
        )
    console.print(table)

    expected = [
        (first, "succeeded", None),
        (second, "skipped", None),
        (third, "rejected", "cooldown"),
        (fourth, "rejected", "cost_exceeded"),
        (fifth, "rejected", "validation_failed"),
    ]
    all_ok = all(
        o.get("status") == status and (kind is None or o.get("rejection_type") == kind)
        for o, status, kind in expected
    )
    console.rule("[bold]where to look")
    ui = ui_url or "(the Prefect UI of your PREFECT_API_URL's server)"
    console.print(
        "  CLI:        boundary-inference runs | rejections | ack <id> | spend | breaker status\n"
        f"  Prefect UI: {ui} -> Runs: search '{video_id}'; each run is named"
        " <video>-<frames>-<model>-<flow run id>. A run's Artifacts tab holds its estimate and"
        " progress (admitted) or its rejection and the `ack` command; Event Feed shows"
        " 'boundary-inference.job.rejected'. The runs stay there (`boundary-inference services"
        " status` shows the server; `services stop` stops it).",
        soft_wrap=True,
    )
    console.print(
        f"demo {'[green]OK[/green]' if all_ok else '[red]FAILED[/red]'} in"
        f" {time.monotonic() - t0:.1f} s"
    )
    return 0 if all_ok else 1
