"""What a job checks before it decodes or predicts anything, in every executor.

1. The checkpoint is the one registered: its SHA-256 equals the request's ``model_sha256`` (a
   swapped, truncated or re-uploaded file is :class:`~modal_app.errors.ChecksumMismatch`).
2. The video is the one registered: a local file is checked in place (size and SHA-256), a
   remote one is downloaded with a size cap and checked (ETag, size, SHA-256), by
   :func:`modal_app.sources.materialize`.

Both are user errors (no retry can fix them), returned as a typed failure by the GPU function; a
store that does not answer is :class:`~modal_app.errors.SourceUnavailable`, raised and retried.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from modal_app import sources
from modal_app.errors import CheckpointError, ChecksumMismatch
from modal_app.models import checkpoint_name, checkpoint_path
from modal_app.types import InferenceRequest


def verify_checkpoint(
    model_version: str,
    sha256: str | None,
    models_dir: Path | None,
    on_chunk: sources.OnChunk | None = None,
) -> None:
    """Refuse a checkpoint whose content is not the registered one (no-op for builtin models).

    Hashed in streamed chunks; each calls ``on_chunk`` (the function's heartbeat: a large
    checkpoint can take longer to hash than ``heartbeat_timeout_s``, and a stuck read still stalls).
    """
    if checkpoint_name(model_version) is None or not sha256:
        return
    if models_dir is None:
        raise CheckpointError(f"{model_version} needs a models directory")
    path = checkpoint_path(models_dir, model_version)
    try:
        found = sources.sha256_file(path, on_chunk).removeprefix(sources.HASH_PREFIX)
    except OSError as error:
        raise CheckpointError(f"checkpoint {path} cannot be read: {error}") from error
    expected = sha256.removeprefix(sources.HASH_PREFIX)
    if found != expected:
        raise ChecksumMismatch(
            f"checkpoint {path.name} is not the registered {model_version}: sha256 {expected[:16]}..."
            f" registered, {found[:16]}... found"
        )


@contextmanager
def prepared(
    request: InferenceRequest,
    *,
    models_dir: Path | None,
    storage: sources.StorageConfig,
    max_source_bytes: int,
    work_dir: Path | None = None,
    on_chunk: sources.OnChunk | None = None,
) -> Iterator[InferenceRequest]:
    """The request with its video as a checked local file; a download is removed afterwards."""
    verify_checkpoint(request.model_version, request.model_sha256, models_dir, on_chunk)
    remote = not sources.parse(request.video_uri).is_local
    scratch = Path(tempfile.mkdtemp(prefix="bi-source-", dir=work_dir)) if remote else None
    try:
        path = sources.materialize(
            request.video_uri,
            storage,
            work_dir=scratch or Path(tempfile.gettempdir()),
            max_bytes=max_source_bytes,
            expected=request.source,
            on_chunk=on_chunk,
        )
        yield replace(request, video_uri=str(path))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
