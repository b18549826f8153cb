"""Safeguard: the request is well formed, the video exists and belongs to the tenant, and every
frame pair (all of them, not a sample) satisfies ``0 <= f1 < f2 < frame_count``.

Identifiers follow one grammar (:mod:`config.identifiers`), checked before anything
reads the ledger with them; frame pairs are parsed by :mod:`boundary_inference.pairs` (bounded,
non-recursive) and made a set: duplicates are dropped and counted before the estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from boundary_inference.ledger import Ledger, VideoRow
from boundary_inference.outcome import Rejected, RejectionType
from boundary_inference.pairs import PairsProblem, parse_frame_pairs
from config.identifiers import coerce_identifier, identifier_problem
from modal_app.types import CropBox
from tasks._common import GUARD, guard_task


@dataclass(frozen=True)
class ValidRequest:
    video_id: str
    tenant_id: str
    frames_version: str
    model_version: str
    source_uri: str
    frame_count: int
    crop_box: CropBox | None
    # Distinct pairs, in the order first asked for: what is estimated, billed and run.
    frame_pairs: list[tuple[int, int]]
    requested_pairs: int = 0
    duplicate_pairs: int = 0


def _invalid(message: str, **details: Any) -> Rejected:
    return Rejected(RejectionType.VALIDATION_FAILED, message, details=details)


def identifier_rejection(**identifiers: Any) -> Rejected | None:
    """The first identifier (``video_id=...``, ``tenant_id=...``, ``frames_version=...``,
    ``model_version=...``) that breaks the grammar, as a rejection; None when all pass.

    Pure, and run before any store is read with them: an id with a NUL byte once reached
    PostgreSQL and came back as ``guard_unavailable`` instead of a refusal of the request.
    """
    for kind, value in identifiers.items():
        problem = identifier_problem(kind, coerce_identifier(value))
        if problem is not None:
            return _invalid(problem, field=kind)
    return None


def _source_missing(uri: str) -> bool:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return not Path(parsed.path if parsed.scheme else uri).exists()
    return False  # remote sources (s3://, modal volume paths) are checked by the executor


PRIORITIES = ("high", "normal", "low")


def flag_rejection(skip_if_exists: Any, priority: Any) -> Rejected | None:
    """The request's flags: ``priority`` one of :data:`PRIORITIES`, ``skip_if_exists`` a bool."""
    if not isinstance(priority, str) or priority not in PRIORITIES:
        return Rejected(RejectionType.VALIDATION_FAILED, f"priority must be one of {PRIORITIES}")
    if not isinstance(skip_if_exists, bool):
        # bool("false") is True and bool(0) is False: guess neither, a re-run is a paid decision.
        return Rejected(
            RejectionType.VALIDATION_FAILED,
            f"skip_if_exists must be true or false; got {type(skip_if_exists).__name__}",
        )
    return None


def is_known_model(model_version: Any) -> bool:
    """The builtin model or a well-formed ``ckpt:<name>`` (whether it is registered is
    tasks.model_registry's question)."""
    # Imported when asked, as the flow did: modal_app.models brings numpy and the model code.
    from modal_app.models import is_known_model_version

    return isinstance(model_version, str) and bool(is_known_model_version(model_version))


@guard_task(name="load-video", tags=GUARD)
def load_video(ledger: Ledger, video_id: str) -> VideoRow | None:
    """The registered video (its frame count, source and crop), or None: one ledger read."""
    return ledger.get_video(id=video_id)


@guard_task(name="validate-request", tags=GUARD)
def validate_request(
    video: VideoRow | None,
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
    refused = identifier_rejection(
        video_id=video_id,
        tenant_id=tenant_id,
        frames_version=frames_version,
        model_version=model_version,
    )
    if refused is not None:
        return refused
    if not known_model:
        return _invalid(f"model_version {model_version!r} is not a known model")
    if video is None:
        return _invalid(f"video {video_id!r} is not registered (boundary-inference videos add)")
    if video["tenant_id"] != tenant_id:
        # Same message as a missing video: do not reveal another tenant's video ids.
        return _invalid(f"video {video_id!r} is not registered (boundary-inference videos add)")
    frame_count = int(video["frame_count"])
    parsed = parse_frame_pairs(frame_pairs, frame_count=frame_count, max_pairs=max_frame_pairs)
    if isinstance(parsed, PairsProblem):
        if parsed.too_many:
            return Rejected(
                RejectionType.FRAME_COUNT_EXCEEDED,
                parsed.reason,
                details={"pairs": parsed.requested, "max_frame_pairs": max_frame_pairs},
            )
        return _invalid(parsed.reason, frame_count=frame_count)
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
        frame_pairs=parsed.pairs,
        requested_pairs=parsed.requested,
        duplicate_pairs=parsed.duplicates,
    )
