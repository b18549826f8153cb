"""Training the bundled ResNet pair model on synthetic caption videos, on whatever device is here.

``train_synthetic`` renders training videos (:mod:`modal_app.synthetic`: known caption changes,
a moving background), decodes their caption crops with the same :class:`FrameSource` inference
uses, trains on balanced batches of the 5 pair classes, writes a checkpoint, and scores it on
held-out videos (other seeds) through :func:`modal_app.predictor.run_inference`: the whole
inference path, checkpoint loading included. ``boundary-inference models train-synthetic`` is
its command line.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from modal_app.frames import FrameSource
from modal_app.quality import boundary_quality
from modal_app.synthetic import GroundTruth, make_video
from modal_app.torch_models.checkpoint import apply_lora, save_torch_checkpoint
from modal_app.torch_models.resnet_pair import BOUNDARY_CLASSES, CLASSES, build, default_config
from modal_app.torch_models.runner import cpu_threads
from modal_app.types import InferenceRequest

F1_GOAL = 0.95
# LoRA on the last two stages' convolutions: where a pretrained backbone would be adapted.
LORA_TARGETS = ("layer3.0.conv1", "layer3.0.conv2", "layer4.0.conv1", "layer4.0.conv2")


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "resnet18"
    input_size: tuple[int, int] = (32, 160)
    steps: int = 150
    batch_size: int = 32
    learning_rate: float = 2e-3
    train_videos: int = 3
    eval_videos: int = 2
    frames_per_video: int = 600
    video_width: int = 320
    video_height: int = 180
    lora_rank: int = 0
    seed: int = 0
    eval_batch_size: int = 128


@dataclass
class TrainReport:
    checkpoint: str
    format: str
    model_version: str
    config: dict[str, Any]
    train_pairs: int
    steps: int
    final_loss: float
    train_s: float
    eval_pairs: int
    eval_boundaries: int
    precision: float
    recall: float
    f1: float
    eval_pairs_per_s: float
    eval_decode_s: float
    eval_model_s: float
    device: str
    losses: list[float] = field(default_factory=list)

    @property
    def meets_goal(self) -> bool:
        return self.f1 >= F1_GOAL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["f1_goal"] = F1_GOAL
        data["meets_goal"] = self.meets_goal
        return data


def pair_class(captions: Sequence[str], f1: int, f2: int) -> int:
    """Index in :data:`CLASSES` of a pair, from what the two frames show."""
    first, second = captions[f1], captions[f2]
    if not first and not second:
        return CLASSES.index("empty_empty")
    if not first:
        return CLASSES.index("empty_valid")
    if not second:
        return CLASSES.index("valid_empty")
    return CLASSES.index("same" if first == second else "different")


def decode_crops(path: Path, truth: GroundTruth) -> np.ndarray:
    """Every frame's caption crop, ``(frames, h, w)`` uint8, decoded as inference decodes."""
    count = len(truth.captions)
    crops: list[np.ndarray | None] = [None] * count
    pairs = [(i, i + 1) for i in range(count - 1)]
    for batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, 256):
        for (f1, f2), a, b in batch:
            crops[f1], crops[f2] = a, b
    return np.stack([c for c in crops if c is not None])


@dataclass
class _Video:
    crops: np.ndarray
    pairs: np.ndarray  # (m, 2) frame indices
    labels: np.ndarray  # (m,) class indices


def _training_pairs(truth: GroundTruth, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Every consecutive pair plus as many pairs a few frames apart (more changes to learn from)."""
    count = len(truth.captions)
    consecutive = [(i, i + 1) for i in range(count - 1)]
    spread = [
        (int(i), int(min(count - 1, i + rng.integers(2, 31))))
        for i in rng.integers(0, count - 2, count)
    ]
    pairs = np.array(consecutive + spread, dtype=np.int64)
    labels = np.array(
        [pair_class(truth.captions, int(a), int(b)) for a, b in pairs], dtype=np.int64
    )
    return pairs, labels


def _balanced_batch(
    videos: list[_Video], batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Half boundary pairs, half not (boundaries are a few percent of real pairs)."""
    boundary = {CLASSES.index(c) for c in BOUNDARY_CLASSES}
    a_list, b_list, y_list = [], [], []
    for k in range(batch_size):
        video = videos[int(rng.integers(len(videos)))]
        wanted = k % 2 == 0
        mask = np.isin(video.labels, list(boundary)) == wanted
        choices = np.flatnonzero(mask)
        if len(choices) == 0:
            choices = np.arange(len(video.labels))
        index = int(rng.choice(choices))
        f1, f2 = video.pairs[index]
        a_list.append(video.crops[f1])
        b_list.append(video.crops[f2])
        y_list.append(video.labels[index])
    return np.stack(a_list), np.stack(b_list), np.array(y_list, dtype=np.int64)


def train_synthetic(
    config: TrainConfig,
    out: Path,
    *,
    workdir: Path | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> TrainReport:
    """Train, write ``out`` (``.pt`` or ``.safetensors``), evaluate on held-out videos."""
    from modal_app.predictor import run_inference

    out = Path(out)
    torch.set_num_threads(cpu_threads())  # trains on the CPU
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    with tempfile.TemporaryDirectory(prefix="bi-train-") as scratch:
        work = Path(workdir) if workdir is not None else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        size = {"width": config.video_width, "height": config.video_height}
        videos: list[_Video] = []
        for k in range(config.train_videos):
            path = work / f"train-{k}.mp4"
            truth = make_video(
                path,
                seed=10_000 + config.seed * 100 + k,
                frame_count=config.frames_per_video,
                **size,
            )
            pairs, labels = _training_pairs(truth, rng)
            videos.append(_Video(decode_crops(path, truth), pairs, labels))
        log(
            f"training data: {config.train_videos} videos x {config.frames_per_video} frames,"
            f" {sum(len(v.labels) for v in videos)} labelled pairs"
        )

        model_config = default_config(config.backbone, config.input_size)
        model_config["name"] = out.stem
        module = build(model_config)
        if config.lora_rank > 0:
            model_config["lora"] = {
                "r": config.lora_rank,
                "alpha": 2 * config.lora_rank,
                "target_modules": list(LORA_TARGETS),
            }
            module = apply_lora(module, model_config["lora"])
            # The adapters, the head and the norms learn; the convolutions they adapt stay fixed.
            for name, parameter in module.named_parameters():
                parameter.requires_grad = (
                    "lora_" in name
                    or not name.startswith("backbone.")
                    or ("bn" in name or "downsample.1" in name)
                )
        trainable = [p for p in module.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=1e-4)
        # No warm-up: short CPU runs need the full rate from the first step; cosine to zero.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, config.steps))
        module.train()
        losses: list[float] = []
        started = time.perf_counter()
        for step in range(config.steps):
            a, b, y = _balanced_batch(videos, config.batch_size, rng)
            logits = module(torch.from_numpy(a), torch.from_numpy(b))
            loss = F.cross_entropy(logits, torch.from_numpy(y))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]  # torch's Tensor.backward is untyped
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            if (step + 1) % max(1, config.steps // 10) == 0 or step + 1 == config.steps:
                recent = losses[-max(1, config.steps // 10) :]
                log(f"step {step + 1}/{config.steps}: loss {sum(recent) / len(recent):.4f}")
        train_s = time.perf_counter() - started
        module.eval()
        save_torch_checkpoint(module, model_config, out)
        fmt = "safetensors" if out.suffix == ".safetensors" else "torch-pt"
        log(f"checkpoint written: {out} ({fmt}), trained in {train_s:.0f} s")

        predicted: list[bool] = []
        actual: list[bool] = []
        eval_s = decode_s = model_s = 0.0
        device = "cpu"
        for k in range(config.eval_videos):
            path = work / f"eval-{k}.mp4"
            truth = make_video(
                path,
                seed=20_000 + config.seed * 100 + k,
                frame_count=config.frames_per_video,
                **size,
            )
            eval_pairs: list[tuple[int, int]] = [
                (i, i + 1) for i in range(config.frames_per_video - 1)
            ]
            result = run_inference(
                InferenceRequest(
                    f"eval-{k}",
                    str(path),
                    eval_pairs,
                    f"ckpt:{out.stem}",
                    truth.crop_box,
                    config.eval_batch_size,
                ),
                models_dir=out.parent,
            )
            predicted += [p.is_boundary for p in result.predictions]
            actual += truth.labels_for(eval_pairs)
            eval_s += result.metrics.elapsed_s
            decode_s += result.metrics.decode_s
            model_s += result.metrics.model_s
            device = result.metrics.device
    quality = boundary_quality(predicted, actual)
    precision, recall, f1 = quality["precision"], quality["recall"], quality["f1"]
    return TrainReport(
        checkpoint=str(out),
        format=fmt,
        model_version=f"ckpt:{out.stem}",
        config=model_config,
        train_pairs=sum(len(v.labels) for v in videos),
        steps=config.steps,
        final_loss=float(np.mean(losses[-max(1, config.steps // 10) :]))
        if losses
        else float("nan"),
        train_s=train_s,
        eval_pairs=len(actual),
        eval_boundaries=int(sum(actual)),
        precision=precision,
        recall=recall,
        f1=f1,
        eval_pairs_per_s=len(actual) / eval_s if eval_s > 0 else float("nan"),
        eval_decode_s=decode_s,
        eval_model_s=model_s,
        device=device,
        losses=losses,
    )
