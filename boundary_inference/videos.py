"""The video registry: what ``videos add`` checks, measures and records.

A video is registered only if a job on it could run:

* its id and tenant follow the identifier grammar;
* its source can be read by scheme (a path, ``s3://``, ``https://``, ``supabase://``:
  :mod:`modal_app.sources`), is a regular file or object, not empty and not over
  ``video_max_bytes``;
* it is a video: a video stream (not audio only), every declared frame present (not cut short),
  the first frame decodable, a frame no larger than ``video_max_pixels``;
* its crop box is four integers, inside the frame, of positive size.

Recorded: frame count, fps, width, height, codec, byte size, the content's SHA-256, and what
admission compares later: the modification time of a file, or the ETag / version / Last-Modified
of a remote object. Anything refused raises :class:`RegistrationError` (one line, an exit code).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from boundary_inference.errors import OperatorError
from boundary_inference.ledger import Ledger, VideoRow
from config import Settings
from config.identifiers import identifier_problem
from modal_app import sources
from modal_app.errors import InferenceError, SourceUnavailable
from modal_app.frames import VideoInfo, inspect_video

# Columns of a video row that identify the registered source (compared at admission, sent to the
# function): see modal_app.sources.SourceStat.
FINGERPRINT_FIELDS = ("size_bytes", "content_hash", "etag", "version_id", "modified")
_CROP_PART = re.compile(r"-?[0-9]{1,9}")


class RegistrationError(OperatorError):
    """A video or checkpoint that cannot be registered. ``exit_code``: 2 for a bad input, 1 for a
    store that could not be reached (try again)."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_crop(text: str) -> dict[str, int]:
    """``"x,y,width,height"`` in pixels, four integers; anything else is refused."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 4 or not all(_CROP_PART.fullmatch(part) for part in parts):
        raise RegistrationError(
            f"--crop {text!r} must be four integers x,y,width,height (pixels), e.g. 0,600,1280,120"
        )
    x, y, width, height = (int(part) for part in parts)
    return {"x": x, "y": y, "width": width, "height": height}


def crop_problem(crop: Mapping[str, Any], width: int | None, height: int | None) -> str | None:
    """Why ``crop`` cannot be used on a ``width`` x ``height`` frame (None: it can)."""
    values = [crop.get(key) for key in ("x", "y", "width", "height")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return f"crop box {dict(crop)} must be four integers"
    x, y, w, h = (int(v) for v in values)  # type: ignore[arg-type]
    if x < 0 or y < 0:
        return f"crop box starts at ({x}, {y}): x and y must be >= 0"
    if w <= 0 or h <= 0:
        return f"crop box is {w}x{h}: width and height must be > 0"
    if (width is not None and x + w > width) or (height is not None and y + h > height):
        return (
            f"crop box x={x}, y={y}, width={w}, height={h} is not inside the"
            f" {width}x{height} frame (it reaches x={x + w}, y={y + h})"
        )
    return None


@dataclass(frozen=True)
class Measured:
    """What registration measured of a source."""

    uri: str
    info: VideoInfo
    stat: sources.SourceStat
    content_hash: str

    def row_fields(self) -> dict[str, Any]:
        return {
            "frame_count": self.info.frame_count,
            "fps": self.info.fps,
            "source_uri": self.uri,
            "width": self.info.width,
            "height": self.info.height,
            "codec": self.info.codec or None,
            "content_hash": self.content_hash,
            **{k: v for k, v in self.stat.fingerprint().items() if v is not None},
        }


def _normalise(source: str) -> str:
    """A local path becomes absolute, symlinks resolved: the row names one file for good."""
    ref = sources.parse(source)
    if not ref.is_local:
        return source
    assert ref.path is not None
    sources.stat_local(ref.path.expanduser())  # a loop, a directory, a missing file: said here
    return str(ref.path.expanduser().resolve())


def measure(source: str, settings: Settings) -> Measured:
    """Read the source once and measure it; raises :class:`RegistrationError`."""
    config = sources.StorageConfig.from_settings(settings)
    try:
        uri = _normalise(source)
        stat = sources.stat(uri, config)
        _check_size(stat.size_bytes, settings)
        if sources.parse(uri).is_local:
            path = Path(uri)
            content_hash = sources.sha256_file(path)
            again = sources.stat_local(path)
            if sources.changes(stat.fingerprint(), again):
                raise RegistrationError(f"{uri} changed while it was being registered; try again")
            info = inspect_video(path)
        else:
            with tempfile.TemporaryDirectory(prefix="bi-register-") as scratch:
                fetched = sources.fetch_to(
                    uri,
                    config,
                    Path(scratch) / "source.video",
                    max_bytes=settings.video_max_bytes,
                    expected=stat.fingerprint(),
                )
                content_hash = fetched.content_hash
                info = inspect_video(fetched.path)
    except SourceUnavailable as error:
        raise RegistrationError(f"cannot reach the video store: {error}", exit_code=1) from error
    except InferenceError as error:
        raise RegistrationError(f"cannot register {source}: {error}") from error
    if info.width * info.height > settings.video_max_pixels:
        raise RegistrationError(
            f"{source}: frames of {info.width}x{info.height} exceed video_max_pixels"
            f" ({settings.video_max_pixels})"
        )
    return Measured(uri, info, stat, content_hash)


def _check_size(size_bytes: int, settings: Settings) -> None:
    if size_bytes == 0:
        raise RegistrationError("the video source is empty (0 bytes)")
    if size_bytes > settings.video_max_bytes:
        raise RegistrationError(
            f"the video source is {size_bytes} bytes, over video_max_bytes"
            f" ({settings.video_max_bytes})"
        )


def register_video(
    ledger: Ledger,
    settings: Settings,
    *,
    video_id: str,
    source: str,
    tenant_id: str | None = None,
    crop: str | Mapping[str, Any] | None = None,
) -> VideoRow:
    """Check, measure and record a video; returns its ledger row."""
    tenant = tenant_id or settings.default_tenant_id
    for kind, value in (("video_id", video_id), ("tenant_id", tenant)):
        problem = identifier_problem(kind, value)
        if problem:
            raise RegistrationError(problem)
    crop_box = parse_crop(crop) if isinstance(crop, str) else (dict(crop) if crop else None)
    if crop_box is not None:  # the shape first: no need to read a large video to refuse "-5"
        problem = crop_problem(crop_box, None, None)
        if problem:
            raise RegistrationError(problem)
    measured = measure(source, settings)
    if crop_box is not None:
        problem = crop_problem(crop_box, measured.info.width, measured.info.height)
        if problem:
            raise RegistrationError(problem)
    return ledger.upsert_video(
        id=video_id, tenant_id=tenant, crop_box=crop_box, **measured.row_fields()
    )


def fingerprint_of(video: Mapping[str, Any]) -> dict[str, Any]:
    """The registered fingerprint in a video row (values None when it predates fingerprints)."""
    return {name: video.get(name) for name in FINGERPRINT_FIELDS}
