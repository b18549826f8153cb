"""Safeguard: the video source is still what was registered, before any quota is taken.

A file: same size and modification time (``os.stat``; a file truncated, replaced by a directory,
deleted or turned into a symlink loop is refused). A remote object: same size and ETag (or version,
or Last-Modified), from one cheap request (S3 HeadObject, a one-byte ranged GET for a URL). A row
registered before fingerprints were recorded is only checked for existence (local files).

Refused as ``validation_failed`` ("source changed since registration"); a store that cannot be
reached is ``guard_unavailable`` (nothing is known, nothing is spawned). The function checks
again when it opens the source, so a change after admission is a typed failure, not a run.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from boundary_inference.ledger import VideoRow
from boundary_inference.outcome import Rejected, RejectionType
from boundary_inference.videos import crop_problem, fingerprint_of
from config import Settings
from modal_app import sources
from modal_app.errors import InferenceError, SourceUnavailable
from modal_app.modal_config import models_mount_path
from tasks._common import GUARD, guard_task


def _changed(video_id: str, reason: str) -> Rejected:
    return Rejected(
        RejectionType.VALIDATION_FAILED,
        f"video {video_id!r}: source changed since registration: {reason}; register it again"
        " with `boundary-inference videos add`",
    )


@guard_task(name="check-source", tags=GUARD)
def check_source(video: VideoRow, settings: Settings) -> dict[str, Any] | Rejected:
    """The registered fingerprint to send with the request (empty when none), or the refusal."""
    video_id = str(video.get("id"))
    uri = str(video.get("source_uri") or "")
    try:
        ref = sources.parse(uri)
    except InferenceError as error:
        return Rejected(RejectionType.VALIDATION_FAILED, f"video {video_id!r}: {error}")
    crop, width, height = video.get("crop_box"), video.get("width"), video.get("height")
    if crop and width and height:
        problem = crop_problem(crop, int(width), int(height))
        if problem:
            return Rejected(RejectionType.VALIDATION_FAILED, f"video {video_id!r}: {problem}")
    fingerprint = {k: v for k, v in fingerprint_of(video).items() if v is not None}
    if ref.is_local and settings.executor == "modal":
        assert ref.path is not None
        mount = PurePosixPath(models_mount_path(settings))
        if not PurePosixPath(str(ref.path)).is_relative_to(mount):
            return Rejected(
                RejectionType.VALIDATION_FAILED,
                f"video {video_id!r} is a file on this machine ({uri}), which the Modal function"
                " cannot read: register an s3://, https:// or supabase:// source",
            )
        return fingerprint  # a path in the container's Volume: the function checks it
    if not fingerprint:
        if ref.is_local and not os.path.exists(Path(str(ref.path))):
            return _changed(video_id, f"{uri} does not exist")
        return fingerprint
    try:
        current = sources.stat(uri, sources.StorageConfig.from_settings(settings))
    except SourceUnavailable as error:
        return Rejected(
            RejectionType.GUARD_UNAVAILABLE,
            f"video {video_id!r}: cannot reach its store to check it ({error}); nothing was spawned",
        )
    except InferenceError as error:
        return _changed(video_id, str(error))
    differences = sources.changes(fingerprint, current)
    if differences:
        return _changed(video_id, "; ".join(differences))
    return fingerprint
