"""Inference benchmark on a synthetic video: prints numbers, asserts nothing.

``python -m benches.inference [--pairs N] [--json]`` renders a video of ``N + 1`` frames with known
caption changes, predicts its ``N`` consecutive pairs, and reports:

* quality of the builtin model against the generator's truth: precision, recall, F1 (goal >= 0.95);
* throughput: pairs per second on this CPU, the whole job (decode + model + bookkeeping);
* ``total / decode-only``: the job's time over a pass of the frame source alone (decoding and
  cropping exactly the frames the job needs, nothing else) (goal <= 1.5);
* ``model / one pass``: model time per batch over the time of one trivial NumPy reduction
  (``ndarray.sum``) over the same stacked crops: how many "reads of the bytes" the model costs
  (goal <= 3);
* where torch sees a CUDA device, pairs/s of a checkpoint model at batch sizes 64..512 with the
  same math in torch (host-to-device copies included); otherwise the reason it was not measured.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modal_app.frames import FrameSource
from modal_app.models import BUILTIN, TEXT_THRESHOLD, LogisticModel, fit_logistic, get_model
from modal_app.predictor import run_inference
from modal_app.quality import boundary_quality
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import InferenceRequest

GOALS = {"f1_min": 0.95, "total_over_decode_max": 1.5, "model_over_one_pass_max": 3.0}
GPU_BATCH_SIZES = (64, 128, 256, 512)


def _decode_only_s(path: Path, truth: GroundTruth, pairs: list[tuple[int, int]], bs: int) -> float:
    started = time.perf_counter()
    for _batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, bs):
        pass
    return time.perf_counter() - started


def _model_vs_one_pass(
    model: LogisticModel, path: Path, truth: GroundTruth, pairs: list[tuple[int, int]], bs: int
) -> tuple[float, float]:
    """(model seconds, one-reduction seconds) summed over the same stacked batches."""
    model_s = one_pass_s = 0.0
    for batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, bs):
        a = np.stack([item[1] for item in batch])
        b = np.stack([item[2] for item in batch])
        t0 = time.perf_counter()
        model.predict_proba(a, b)
        t1 = time.perf_counter()
        int(a.sum()) + int(b.sum())
        t2 = time.perf_counter()
        model_s += t1 - t0
        one_pass_s += t2 - t1
    return model_s, one_pass_s


def _checkpoint(workdir: Path, seed: int) -> Path:
    """A small logistic checkpoint fitted on another synthetic video (as a user would ship one)."""
    path = workdir / "train.mp4"
    truth = make_video(path, seed=seed + 1000, frame_count=300)
    pairs = [(i, i + 1) for i in range(299)] + [(i, i + 15) for i in range(0, 285, 3)]
    a_list, b_list, used = [], [], []
    for batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, 128):
        for pair, a, b in batch:
            used.append(pair)
            a_list.append(a)
            b_list.append(b)
    labels = np.array(truth.labels_for(used))
    models_dir = workdir / "models"
    models_dir.mkdir(exist_ok=True)
    fit_logistic("bench", np.stack(a_list), np.stack(b_list), labels).save(models_dir / "bench.npz")
    return models_dir


def _gpu_throughput(
    model: LogisticModel, path: Path, truth: GroundTruth, pairs: list[tuple[int, int]]
) -> dict[str, Any]:
    """Pairs/s of ``model`` in torch on CUDA per batch size, or why it was not measured."""
    try:
        import torch  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return {"available": False, "reason": "no GPU available: torch is not installed"}
    if not torch.cuda.is_available():
        return {"available": False, "reason": "no GPU available: torch sees no CUDA device"}
    device = torch.device("cuda")
    weights = torch.tensor(model.weights, dtype=torch.float32, device=device)
    bias = float(model.bias)

    def predict(a: Any, b: Any) -> Any:
        # The math of models.pair_features, in torch (checked against it below).
        n = a.shape[0]
        flat_a, flat_b = a.reshape(n, -1), b.reshape(n, -1)
        pixels = float(flat_a.shape[1])
        text_a, text_b = flat_a > TEXT_THRESHOLD, flat_b > TEXT_THRESHOLD
        union = (text_a | text_b).sum(1).float()
        xor = (text_a ^ text_b).sum(1).float()
        changed = torch.where(union > 0, xor / union.clamp(min=1), torch.zeros_like(union))
        presence = (text_a.sum(1) - text_b.sum(1)).abs().float() / pixels
        mean_abs = (flat_a.to(torch.int16) - flat_b.to(torch.int16)).abs().sum(1).float()
        features = torch.stack([changed, presence, mean_abs / pixels / 255.0], dim=1)
        return torch.sigmoid(features @ weights + bias)

    # Decoded once, held in host memory: this measures the model on the GPU, not the decoder.
    sample = pairs[: min(len(pairs), 8192)]
    a_list: list[np.ndarray] = []
    b_list: list[np.ndarray] = []
    for batch in FrameSource(path, truth.crop_box).iter_pairs(sample, 512):
        a_list.extend(item[1] for item in batch)
        b_list.extend(item[2] for item in batch)
    host_a = torch.from_numpy(np.stack(a_list)).pin_memory()
    host_b = torch.from_numpy(np.stack(b_list)).pin_memory()
    check = predict(host_a[:64].to(device), host_b[:64].to(device)).cpu().numpy()
    reference = model.predict_proba(host_a[:64].numpy(), host_b[:64].numpy())
    max_diff = float(np.abs(check - reference).max())
    rates: dict[str, float] = {}
    for size in GPU_BATCH_SIZES:
        predict(host_a[:size].to(device), host_b[:size].to(device))  # warm-up
        torch.cuda.synchronize()
        started = time.perf_counter()
        for start in range(0, len(sample), size):
            a = host_a[start : start + size].to(device, non_blocking=True)
            b = host_b[start : start + size].to(device, non_blocking=True)
            predict(a, b).cpu()
        torch.cuda.synchronize()
        rates[str(size)] = len(sample) / (time.perf_counter() - started)
    return {
        "available": True,
        "device": torch.cuda.get_device_name(0),
        "pairs": len(sample),
        "pairs_per_s_by_batch_size": rates,
        "max_abs_diff_vs_numpy": max_diff,
    }


def run_inference_bench(
    pairs: int = 25000,
    *,
    seed: int = 7,
    batch_size: int = 256,
    workdir: Path | None = None,
    gpu: bool = True,
) -> dict[str, Any]:
    """Run the benchmark and return its numbers (see the module docstring for each)."""
    if pairs < 1:
        raise ValueError("pairs must be >= 1")
    with tempfile.TemporaryDirectory(prefix="bi-bench-") as scratch:
        work = Path(workdir) if workdir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        path = work / "bench.mp4"
        started = time.perf_counter()
        truth = make_video(path, seed=seed, frame_count=pairs + 1)
        generate_s = time.perf_counter() - started
        frame_pairs = [(i, i + 1) for i in range(pairs)]
        request = InferenceRequest(
            "bench", str(path), frame_pairs, BUILTIN, truth.crop_box, batch_size
        )

        decode_only_s = _decode_only_s(path, truth, frame_pairs, batch_size)  # also warms caches
        started = time.perf_counter()
        result = run_inference(request)
        total_s = time.perf_counter() - started
        model_s, one_pass_s = _model_vs_one_pass(
            get_model(BUILTIN), path, truth, frame_pairs, batch_size
        )

        models_dir = _checkpoint(work, seed)
        checkpoint = get_model("ckpt:bench", models_dir)
        ckpt_result = run_inference(
            InferenceRequest(
                "bench-ckpt", str(path), frame_pairs, "ckpt:bench", truth.crop_box, batch_size
            ),
            models_dir=models_dir,
        )
        if gpu:
            gpu_numbers = _gpu_throughput(checkpoint, path, truth, frame_pairs)
        else:
            gpu_numbers = {"available": False, "reason": "GPU measurement not requested"}

    actual = truth.labels_for(frame_pairs)
    metrics = result.metrics
    return {
        "pairs": pairs,
        "frame_size": [truth.crop_box.width, truth.crop_box.y + truth.crop_box.height],
        "crop": [truth.crop_box.width, truth.crop_box.height],
        "boundaries": int(sum(actual)),
        "generate_s": generate_s,
        "builtin": boundary_quality([p.is_boundary for p in result.predictions], actual),
        "checkpoint": boundary_quality([p.is_boundary for p in ckpt_result.predictions], actual),
        "total_s": total_s,
        "pairs_per_s": pairs / total_s,
        "checkpoint_pairs_per_s": pairs / ckpt_result.metrics.elapsed_s,
        "frames_decoded": metrics.frames_decoded,
        "job_decode_s": metrics.decode_s,
        "job_model_s": metrics.model_s,
        "decode_only_s": decode_only_s,
        "total_over_decode": total_s / decode_only_s,
        "model_s": model_s,
        "one_pass_s": one_pass_s,
        "model_over_one_pass": model_s / one_pass_s if one_pass_s > 0 else float("inf"),
        "peak_rss_mb": metrics.peak_rss_mb,
        "gpu": gpu_numbers,
        "goals": GOALS,
    }


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def format_report(numbers: dict[str, Any]) -> str:
    builtin, ckpt, gpu = numbers["builtin"], numbers["checkpoint"], numbers["gpu"]
    goals = numbers["goals"]
    lines = [
        f"synthetic set: {numbers['pairs']} consecutive pairs, {numbers['boundaries']} boundaries,"
        f" frames {numbers['frame_size'][0]}x{numbers['frame_size'][1]},"
        f" crop {numbers['crop'][0]}x{numbers['crop'][1]} (video rendered in {numbers['generate_s']:.1f} s)",
        f"builtin model: precision {builtin['precision']:.4f}  recall {builtin['recall']:.4f}"
        f"  F1 {builtin['f1']:.4f}"
        f"  (goal >= {goals['f1_min']}: {_verdict(builtin['f1'] >= goals['f1_min'])})",
        f"checkpoint model (fitted on another video): precision {ckpt['precision']:.4f}"
        f"  recall {ckpt['recall']:.4f}  F1 {ckpt['f1']:.4f}",
        f"CPU throughput: {numbers['pairs_per_s']:.0f} pairs/s builtin"
        f" ({numbers['total_s']:.2f} s for {numbers['pairs']} pairs),"
        f" {numbers['checkpoint_pairs_per_s']:.0f} pairs/s checkpoint;"
        f" {numbers['frames_decoded']} frames decoded; peak RSS {numbers['peak_rss_mb']:.0f} MB",
        f"total / decode-only: {numbers['total_s']:.2f} s / {numbers['decode_only_s']:.2f} s"
        f" = {numbers['total_over_decode']:.2f}"
        f"  (goal <= {goals['total_over_decode_max']}:"
        f" {_verdict(numbers['total_over_decode'] <= goals['total_over_decode_max'])})",
        f"model / one pass over the crops (ndarray.sum): {numbers['model_s']:.3f} s /"
        f" {numbers['one_pass_s']:.3f} s = {numbers['model_over_one_pass']:.2f}"
        f"  (goal <= {goals['model_over_one_pass_max']}:"
        f" {_verdict(numbers['model_over_one_pass'] <= goals['model_over_one_pass_max'])})",
    ]
    if gpu.get("available"):
        rates = "  ".join(
            f"bs {size}: {rate:.0f} pairs/s"
            for size, rate in gpu["pairs_per_s_by_batch_size"].items()
        )
        lines.append(
            f"GPU ({gpu['device']}), checkpoint model in torch, {gpu['pairs']} pairs: {rates}"
            f"  (max |torch - numpy| = {gpu['max_abs_diff_vs_numpy']:.2e})"
        )
    else:
        lines.append(f"GPU: {gpu['reason']}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benches.inference", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--pairs", type=int, default=25000, help="consecutive frame pairs (default 25000)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="keep the video and checkpoint here"
    )
    parser.add_argument("--no-gpu", action="store_true", help="skip the GPU measurement")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.add_argument(
        "--model", default=None, help="benchmark this torch checkpoint (ckpt:<name>) instead"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="where --model lives")
    parser.add_argument("--gpu-pairs", type=int, default=20_000, help="pairs per GPU batch size")
    parser.add_argument("--compile", action="store_true", help="also measure torch.compile")
    args = parser.parse_args(argv)
    if args.model is not None:
        return _model_main(args)
    numbers = run_inference_bench(
        args.pairs,
        seed=args.seed,
        batch_size=args.batch_size,
        workdir=args.workdir,
        gpu=not args.no_gpu,
    )
    print(json.dumps(numbers, indent=2) if args.json else format_report(numbers))
    return 0


def _model_main(args: argparse.Namespace) -> int:
    """``--model``: the torch checkpoint benchmark (:mod:`benches.inference_model`)."""
    import importlib.util

    from modal_app.errors import CheckpointError

    if importlib.util.find_spec("torch") is None:
        print("--model needs the torch extra: pip install -e '.[torch]' (./run.sh bench does it)")
        return 2
    from benches.inference_model import format_model_report, run_model_bench
    from config import get_settings

    models_dir = args.models_dir or get_settings().models_dir
    try:
        numbers = run_model_bench(
            args.model,
            Path(models_dir),
            pairs=args.pairs,
            gpu_pairs=args.gpu_pairs,
            batch_size=args.batch_size,
            seed=args.seed,
            compile_module=args.compile,
            gpu=not args.no_gpu,
            workdir=args.workdir,
        )
    except CheckpointError as error:
        print(f"cannot benchmark {args.model}: {error}")
        return 2
    print(json.dumps(numbers, indent=2) if args.json else format_model_report(numbers))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
