"""Benchmark of a torch checkpoint: ``./run.sh bench --inference --model ckpt:NAME``.

Prints numbers, asserts nothing. On a held-out synthetic video (a seed no training run uses):

* quality against the generator's truth: precision, recall, F1 (goal >= 0.95);
* on the CPU, the whole job through :func:`modal_app.predictor.run_inference` (decoding
  included): pairs/s, decode seconds (on the decoding thread), model seconds, and how long the
  model waited for decoded batches (decoding overlaps the model);
* where torch sees CUDA: the same job on the GPU in fp16 autocast at batch sizes 64..512,
  decoding included (pairs/s per size), after one warm-up batch per size; otherwise why not;
* optionally (``--compile``) the same CPU job with ``torch.compile``: compile cost and pairs/s.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modal_app.errors import CheckpointError
from modal_app.quality import boundary_quality
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import InferenceRequest

F1_GOAL = 0.95
GPU_BATCH_SIZES = (64, 128, 256, 512)
BENCH_SEED = 7  # train-synthetic renders seeds 10000+ (training) and 20000+ (its own check)


def _job(model: Any, path: Path, truth: GroundTruth, pairs: list[tuple[int, int]], bs: int) -> Any:
    from modal_app.predictor import run_inference

    request = InferenceRequest("bench-model", str(path), pairs, "bench", truth.crop_box, bs)
    return run_inference(request, model=model)


def _figures(result: Any) -> dict[str, float]:
    m = result.metrics
    return {
        "pairs": m.pairs,
        "elapsed_s": m.elapsed_s,
        "pairs_per_s": m.pairs_per_s,
        "decode_s": m.decode_s,
        "model_s": m.model_s,
        "decode_wait_s": m.decode_wait_s,
    }


def load_models(
    model_version: str, models_dir: Path
) -> tuple[Callable[[str, str, bool], Any], dict[str, Any]]:
    """A builder of the checkpoint on a given plan, and its config; CheckpointError if unusable."""
    import re

    from config import get_settings
    from modal_app.models import checkpoint_path
    from modal_app.torch_models.checkpoint import load_torch_checkpoint, parse_prefixes
    from modal_app.torch_models.device import plan_execution
    from modal_app.torch_models.runner import TorchPairModel

    match = re.fullmatch(r"ckpt:([A-Za-z0-9][A-Za-z0-9._-]{0,63})", model_version)
    if not match:
        raise CheckpointError(f"--model takes ckpt:<name>, not {model_version!r}")
    path = checkpoint_path(models_dir, model_version)
    if not path.exists():
        raise CheckpointError(f"no checkpoint {match.group(1)}.{{pt,safetensors}} in {models_dir}")
    if path.suffix == ".npz":
        raise CheckpointError(
            f"{path} is a NumPy logistic checkpoint; --model benchmarks torch ones"
        )
    prefixes = parse_prefixes(get_settings().model_factory_prefixes)
    config = load_torch_checkpoint(path, prefixes).config

    def build(device: str, precision: str, compile_module: bool) -> Any:
        loaded = load_torch_checkpoint(path, prefixes)
        plan = plan_execution(
            cuda_available=device == "cuda", bf16_supported=False, precision=precision
        )
        return TorchPairModel(
            path.stem, loaded.module, loaded.config, plan, compile_module=compile_module
        )

    return build, config


def cuda_status() -> tuple[bool, str]:
    import torch

    if not torch.cuda.is_available():
        return False, "no GPU available: torch sees no CUDA device"
    return True, torch.cuda.get_device_name(0)


def run_model_bench(
    model_version: str,
    models_dir: Path,
    *,
    pairs: int = 1500,
    gpu_pairs: int = 20_000,
    batch_size: int = 64,
    seed: int = BENCH_SEED,
    compile_module: bool = False,
    gpu: bool = True,
    workdir: Path | None = None,
) -> dict[str, Any]:
    build, config = load_models(model_version, Path(models_dir))
    with tempfile.TemporaryDirectory(prefix="bi-bench-model-") as scratch:
        work = Path(workdir) if workdir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        cuda, _ = cuda_status()
        frames = max(pairs, gpu_pairs if gpu and cuda else 0) + 1
        path = work / "held-out.mp4"
        started = time.perf_counter()
        truth = make_video(path, seed=seed, frame_count=frames)
        generate_s = time.perf_counter() - started
        cpu_pairs = [(i, i + 1) for i in range(pairs)]
        actual = truth.labels_for(cpu_pairs)

        cpu_model = build("cpu", "fp32", False)
        _job(cpu_model, path, truth, cpu_pairs[: min(batch_size, pairs)], batch_size)  # warm-up
        result = _job(cpu_model, path, truth, cpu_pairs, batch_size)
        numbers: dict[str, Any] = {
            "model_version": model_version,
            "architecture": config.get("architecture"),
            "backbone": config.get("backbone"),
            "input_size": config.get("input_size"),
            "crop": [truth.crop_box.width, truth.crop_box.height],
            "boundaries": int(sum(actual)),
            "generate_s": generate_s,
            "batch_size": batch_size,
            "quality": boundary_quality([p.is_boundary for p in result.predictions], actual),
            "cpu": _figures(result),
            "f1_goal": F1_GOAL,
        }
        if compile_module:
            compiled = build("cpu", "fp32", True)
            t0 = time.perf_counter()
            _job(compiled, path, truth, cpu_pairs[:batch_size], batch_size)
            compile_s = time.perf_counter() - t0
            numbers["cpu_compiled"] = {
                **_figures(_job(compiled, path, truth, cpu_pairs, batch_size)),
                "first_batch_s": compile_s,
            }
        numbers["gpu"] = (
            _gpu_sweep(build, path, truth, gpu_pairs)
            if gpu
            else {
                "available": False,
                "reason": "GPU measurement not requested",
            }
        )
    return numbers


def _gpu_sweep(
    build: Callable[[str, str, bool], Any], path: Path, truth: GroundTruth, gpu_pairs: int
) -> dict[str, Any]:
    available, detail = cuda_status()
    if not available:
        return {"available": False, "reason": detail}
    model = build("cuda", "fp16", False)
    pairs = [(i, i + 1) for i in range(gpu_pairs)]
    actual = truth.labels_for(pairs)
    rates: dict[str, dict[str, float]] = {}
    quality: dict[str, float] = {}
    for size in GPU_BATCH_SIZES:
        _job(model, path, truth, pairs[:size], size)  # warm-up: cuDNN picks its kernels
        result = _job(model, path, truth, pairs, size)
        rates[str(size)] = _figures(result)
        quality = boundary_quality([p.is_boundary for p in result.predictions], actual)
    return {
        "available": True,
        "device": detail,
        "precision": "fp16",
        "pairs": gpu_pairs,
        "by_batch_size": rates,
        "quality_fp16": quality,
    }


def format_model_report(numbers: dict[str, Any]) -> str:
    q, cpu = numbers["quality"], numbers["cpu"]
    verdict = "ok" if q["f1"] >= numbers["f1_goal"] else "MISSED"
    lines = [
        f"model {numbers['model_version']}: {numbers['architecture']} ({numbers['backbone']},"
        f" input {numbers['input_size'][0]}x{numbers['input_size'][1]}), crop"
        f" {numbers['crop'][0]}x{numbers['crop'][1]}, batch {numbers['batch_size']}",
        f"held-out synthetic video: {cpu['pairs']} consecutive pairs, {numbers['boundaries']}"
        f" boundaries: precision {q['precision']:.4f}  recall {q['recall']:.4f}  F1 {q['f1']:.4f}"
        f"  (goal >= {numbers['f1_goal']}: {verdict})",
        f"CPU: {cpu['pairs_per_s']:.1f} pairs/s including decode ({cpu['elapsed_s']:.2f} s);"
        f" decode {cpu['decode_s']:.2f} s (decoding thread), model {cpu['model_s']:.2f} s,"
        f" model waited {cpu['decode_wait_s']:.2f} s for frames;"
        f" decode/model = {cpu['decode_s'] / cpu['model_s'] if cpu['model_s'] else float('inf'):.3f}",
    ]
    if "cpu_compiled" in numbers:
        c = numbers["cpu_compiled"]
        lines.append(
            f"CPU, torch.compile: {c['pairs_per_s']:.1f} pairs/s (model {c['model_s']:.2f} s);"
            f" first batch incl. compile {c['first_batch_s']:.1f} s"
        )
    gpu = numbers["gpu"]
    if gpu.get("available"):
        rates = "  ".join(
            f"bs {size}: {f['pairs_per_s']:.0f} pairs/s (model {f['model_s']:.2f} s,"
            f" waited {f['decode_wait_s']:.2f} s)"
            for size, f in gpu["by_batch_size"].items()
        )
        lines.append(
            f"GPU ({gpu['device']}, fp16 autocast, {gpu['pairs']} pairs, decode included): {rates};"
            f" F1 in fp16 {gpu['quality_fp16']['f1']:.4f}"
        )
    else:
        lines.append(f"GPU: {gpu['reason']}")
    return "\n".join(lines)
