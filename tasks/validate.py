"""Safeguard: the request is well formed, the video exists and belongs to the tenant, and every
frame pair (all of them, not a sample) satisfies ``0 <= f1 < f2 < frame_count``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from boundary_inference.outcome import Rejected, RejectionType
from modal_app.types import CropBox
from tasks._common import GUARD, guard_task

FRAMES_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MODEL_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


@dataclass(frozen=True)
class ValidRequest:
    video_id: str
    tenant_id: str
    frames_version: str
    model_version: str
    source_uri: str
    frame_count: int
    crop_box: CropBox | None
    frame_pairs: list[tuple[int, int]]


def _invalid(message: str, **details: Any) -> Rejected:
    return Rejected(RejectionType.VALIDATION_FAILED, message, details=details)


def check_pairs(pairs: Any, frame_count: int) -> tuple[list[tuple[int, int]] | None, str | None]:
    """Every pair checked, vectorised: returns (pairs, None) or (None, reason)."""
    if not isinstance(pairs, list | tuple) or len(pairs) == 0:
        return None, "frame_pairs must be a non-empty list of [f1, f2] pairs"
    try:
        array = np.asarray(pairs)
    except ValueError:
        return None, "frame_pairs must be a list of [f1, f2] pairs of integers"
    if array.ndim != 2 or array.shape[1] != 2:
        return None, f"frame_pairs must be [f1, f2] pairs; got an array of shape {array.shape}"
    if array.dtype.kind not in "iu":
        return None, f"frame indices must be integers; got {array.dtype.name} values"
    bad = np.flatnonzero(
        (array[:, 0] < 0) | (array[:, 0] >= array[:, 1]) | (array[:, 1] >= frame_count)
    )
    if bad.size:
        i = int(bad[0])
        f1, f2 = int(array[i, 0]), int(array[i, 1])
        return None, (
            f"{bad.size} of {len(array)} frame pairs violate 0 <= f1 < f2 < frame_count"
            f" ({frame_count}); first is #{i}: [{f1}, {f2}]"
        )
    return [(int(a), int(b)) for a, b in array.tolist()], None


_SPEC_KEYS = {"start", "stop", "step", "gap"}


def _range_spec(spec: dict[str, Any], frame_count: int) -> tuple[range | None, str | None]:
    """``{"start", "stop", "step", "gap"}`` -> first frames of the pairs ``(f, f + gap)``.

    A compact form for large jobs: Prefect refuses flow-run parameters over 512 KB, about 30,000
    explicit pairs. Defaults: start 0, step 1, gap 1, stop = frame_count - gap (every pair that fits).
    """
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        return (
            None,
            f"frame_pairs spec has unknown keys {sorted(unknown)}; allowed {sorted(_SPEC_KEYS)}",
        )
    values = {k: spec[k] for k in _SPEC_KEYS if k in spec}
    if any(not isinstance(v, int) or isinstance(v, bool) for v in values.values()):
        return None, "frame_pairs spec values must be integers"
    gap = values.get("gap", 1)
    step = values.get("step", 1)
    start = values.get("start", 0)
    stop = values.get("stop", frame_count - gap)
    if gap < 1 or step < 1:
        return None, "frame_pairs spec needs gap >= 1 and step >= 1"
    pairs = range(start, stop, step)
    if len(pairs) == 0:
        return None, "frame_pairs spec selects no pairs (frame_pairs must be non-empty)"
    if start < 0 or pairs[-1] + gap >= frame_count:
        return None, (
            f"frame_pairs spec start={start}, stop={stop}, step={step}, gap={gap} violates"
            f" 0 <= f1 < f2 < frame_count ({frame_count}): last pair"
            f" [{pairs[-1]}, {pairs[-1] + gap}]"
        )
    return pairs, None


def _source_missing(uri: str) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return not Path(parsed.path if parsed.scheme else uri).exists()
    return False  # remote sources (s3://, modal volume paths) are checked by the executor


@guard_task(name="validate-request", tags=GUARD)
def validate_request(
    video: dict[str, Any] | None,
    *,
    video_id: str,
    tenant_id: str,
    frames_version: str,
    model_version: str,
    frame_pairs: Any,
    max_frame_pairs: int,
    known_model: bool,
    check_source_exists: bool,
) -> ValidRequest | Rejected:
    """Refuse anything that would fail on the GPU, before it costs anything."""
    if not isinstance(frames_version, str) or not FRAMES_VERSION.match(frames_version):
        return _invalid(f"frames_version {frames_version!r} must match {FRAMES_VERSION.pattern}")
    if not isinstance(model_version, str) or not MODEL_VERSION.match(model_version):
        return _invalid(f"model_version {model_version!r} must match {MODEL_VERSION.pattern}")
    if not known_model:
        return _invalid(f"model_version {model_version!r} is not a known model")
    if video is None:
        return _invalid(f"video {video_id!r} is not registered (boundary-inference videos add)")
    if video["tenant_id"] != tenant_id:
        # Same message as a missing video: do not reveal another tenant's video ids.
        return _invalid(f"video {video_id!r} is not registered (boundary-inference videos add)")
    frame_count = int(video["frame_count"])
    if frame_pairs is None:
        frame_pairs = {"start": 0, "step": 1, "gap": 1}
    spec: range | None = None
    if isinstance(frame_pairs, dict):
        spec, reason = _range_spec(frame_pairs, frame_count)
        if spec is None:
            return _invalid(reason or "invalid frame_pairs spec", frame_count=frame_count)
        count = len(spec)
    else:
        count = len(frame_pairs) if isinstance(frame_pairs, list | tuple) else 0
    if count > max_frame_pairs:
        return Rejected(
            RejectionType.FRAME_COUNT_EXCEEDED,
            f"{count} frame pairs requested; the limit is {max_frame_pairs} (max_frame_pairs)",
            details={"pairs": count, "max_frame_pairs": max_frame_pairs},
        )
    if spec is not None:
        assert isinstance(frame_pairs, dict)
        gap = int(frame_pairs.get("gap", 1))
        frame_pairs = [(i, i + gap) for i in spec]
    pairs, reason = check_pairs(frame_pairs, frame_count)
    if pairs is None:
        return _invalid(reason or "invalid frame_pairs", frame_count=frame_count)
    source_uri = str(video.get("source_uri") or "")
    if not source_uri:
        return _invalid(f"video {video_id!r} has no source_uri")
    if check_source_exists and _source_missing(source_uri):
        return _invalid(f"video {video_id!r}: source {source_uri!r} does not exist")
    crop = video.get("crop_box")
    return ValidRequest(
        video_id=video_id,
        tenant_id=tenant_id,
        frames_version=frames_version,
        model_version=model_version,
        source_uri=source_uri,
        frame_count=frame_count,
        crop_box=CropBox(**crop) if crop else None,
        frame_pairs=pairs,
    )
