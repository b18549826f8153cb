"""``python -m benches`` (``./run.sh bench``): the figures the README and docs quote, measured here.

Benches are not part of the runtime package: nothing under ``boundary_inference``, ``tasks`` or
``flows`` imports them (``tests/test_layers.py``), and the wheel a worker installs leaves them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from boundary_inference.cli.context import load_settings, use_prefect
from boundary_inference.cli.output import JsonOpt, console, print_json, print_table

bench_app = typer.Typer(add_completion=False)


@bench_app.command()
def bench(
    as_json: JsonOpt = False,
    inference: bool = typer.Option(
        False,
        "--inference",
        help="Instead: inference on a synthetic video (F1, pairs/s, decode and model ratios).",
    ),
    pairs: int | None = typer.Option(
        None, min=10, help="Frame pairs for --inference (default 25000; 1500 with --model)."
    ),
    model: str | None = typer.Option(
        None, "--model", help="With --inference: benchmark this torch checkpoint (ckpt:<name>)."
    ),
    models_dir: Annotated[
        Path | None, typer.Option(help="Where --model lives (default: settings).")
    ] = None,
    gpu_pairs: int = typer.Option(
        20_000, min=10, help="With --model on CUDA: pairs per batch size."
    ),
    compile_: bool = typer.Option(False, "--compile", help="With --model: also torch.compile."),
    scale: bool = typer.Option(
        False,
        "--scale",
        help="Instead: every ledger call and admissions/s at 0, 100k and 1M runs of history.",
    ),
    rows: str = typer.Option(
        "0,100000,1000000", help="History sizes for --scale (runs), the first 0."
    ),
    admission_s: float = typer.Option(10.0, min=1.0, help="Seconds per admission round (--scale)."),
    submit: bool = typer.Option(
        True,
        "--submit/--no-submit",
        help="Also: concurrent `submit` processes (20 on one key, 50 against 5/h) and one"
        " submission's wall time, CPU and memory against `runs --json`.",
    ),
) -> None:
    """Concurrency figures measured on the real servers (claims, admissions, budget, breaker),
    or with --inference the inference payload's accuracy and throughput on this machine, or with
    --scale the ledger's calls and admissions per second against the size of its history."""
    if scale:
        from benches.scale import format_report, run_scale_bench

        try:
            sizes = [int(v) for v in rows.split(",")]
            report = run_scale_bench(load_settings(), sizes=sizes, admission_s=admission_s)
        except ValueError as error:
            console.print(f"[red]--rows[/red]: {error}")
            raise typer.Exit(2) from error
        if as_json:
            print_json(report)
        else:
            console.print(format_report(report), highlight=False, soft_wrap=True)
        return
    if inference:
        from benches.inference import main as inference_bench

        args = ["--pairs", str(pairs or (1500 if model else 25_000))]
        if model is not None:
            args += ["--model", model, "--gpu-pairs", str(gpu_pairs)]
            args += ["--models-dir", str(models_dir)] if models_dir else []
            args += ["--compile"] if compile_ else []
        raise typer.Exit(inference_bench([*args, *(["--json"] if as_json else [])]))
    from benches.report import run_bench

    # The fault figures run flows (the reaper): on the state dir's embedded Prefect server, never
    # a temporary one per process (it gave up after 20 s on a loaded machine).
    use_prefect()
    figures = run_bench(load_settings())
    if submit:
        from benches.submit import submit_figures

        figures.update(submit_figures(load_settings()))
    if as_json:
        print_json(figures)
        return
    print_table(
        "concurrency", [{"figure": k, "value": v} for k, v in figures.items()], ["figure", "value"]
    )


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    bench_app()


if __name__ == "__main__":
    main()
