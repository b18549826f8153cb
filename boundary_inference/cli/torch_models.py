"""``boundary-inference models train-synthetic``: a reference torch checkpoint made on this machine.

Trains the bundled ResNet pair model (:mod:`modal_app.torch_models.train`) on synthetic caption
videos, writes ``.pt`` or ``.safetensors``, and reports F1 on held-out synthetic videos. Needs the
torch extra (``pip install -e '.[torch]'``; ``./run.sh`` installs it for this command).
Registered on the registry's ``models`` group (``boundary_inference.cli.models``) in ``cli.py``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def _input_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise typer.BadParameter(f"{text!r} is not HEIGHTxWIDTH, e.g. 32x160") from error
    if height < 8 or width < 8:
        raise typer.BadParameter("input size is at least 8x8")
    return height, width


def train_synthetic(
    out: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint to write, .pt or .safetensors (default: <models_dir>/synthetic-r18.pt)."
        ),
    ] = None,
    backbone: str = typer.Option("resnet18", help="resnet18 or resnet50."),
    input_size: str = typer.Option("32x160", help="Crops are resized to HEIGHTxWIDTH."),
    steps: int = typer.Option(150, min=1, help="Training steps."),
    batch_size: int = typer.Option(32, min=2, help="Pairs per training step."),
    learning_rate: float = typer.Option(2e-3, help="AdamW learning rate (cosine to zero)."),
    train_videos: int = typer.Option(3, min=1, help="Synthetic training videos."),
    eval_videos: int = typer.Option(2, min=1, help="Held-out synthetic videos for the F1."),
    frames: int = typer.Option(600, min=20, help="Frames per synthetic video."),
    lora_rank: int = typer.Option(0, min=0, help="LoRA rank (peft) on layer3/4; 0: no adapters."),
    seed: int = typer.Option(0, help="Seed of the videos, the sampling and the weights."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Train the ResNet pair model on synthetic videos; write the checkpoint; print held-out F1."""
    if importlib.util.find_spec("torch") is None:
        typer.echo("train-synthetic needs the torch extra: pip install -e '.[torch]'", err=True)
        raise typer.Exit(2)
    from config import get_settings
    from modal_app.torch_models.train import TrainConfig
    from modal_app.torch_models.train import train_synthetic as train

    if backbone not in ("resnet18", "resnet50"):
        raise typer.BadParameter("resnet18 or resnet50", param_hint="--backbone")
    target = out or Path(get_settings().models_dir) / "synthetic-r18.pt"
    if target.suffix not in (".pt", ".safetensors"):
        raise typer.BadParameter("a checkpoint is .pt or .safetensors", param_hint="--out")
    config = TrainConfig(
        backbone=backbone,
        input_size=_input_size(input_size),
        steps=steps,
        batch_size=batch_size,
        learning_rate=learning_rate,
        train_videos=train_videos,
        eval_videos=eval_videos,
        frames_per_video=frames,
        lora_rank=lora_rank,
        seed=seed,
    )
    log = (lambda line: print(line, file=sys.stderr)) if as_json else typer.echo
    report = train(config, target, log=log)
    if as_json:
        data = report.to_dict()
        data.pop("losses")
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        return
    verdict = "ok" if report.meets_goal else "MISSED"
    typer.echo(
        f"held-out: {report.eval_pairs} pairs, {report.eval_boundaries} boundaries: precision"
        f" {report.precision:.4f}  recall {report.recall:.4f}  F1 {report.f1:.4f}"
        f" (goal >= 0.95: {verdict})"
    )
    typer.echo(
        f"inference on {report.device}: {report.eval_pairs_per_s:.1f} pairs/s including decode;"
        f" decode {report.eval_decode_s:.2f} s, model {report.eval_model_s:.2f} s"
    )
    typer.echo(
        f"register it: boundary-inference models add {report.model_version} --file {target}"
        " [--to modal]"
    )
