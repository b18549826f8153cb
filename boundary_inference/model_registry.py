"""The model registry: ``models add ckpt:<name> --file PATH`` and what admission asks of it.

Registering a checkpoint:

1. the name follows the identifier grammar and is a ``ckpt:<name>`` reference (builtin code
   models, ``builtin-textdiff-v1``, are known without registration);
2. the file is copied once into a private temporary file, hashed (SHA-256) on the way, and that
   copy is loaded exactly as the function loads it (:func:`modal_app.models.inspect_checkpoint`:
   any format behind the one loader, every weight checked). An empty, truncated, wrongly formatted
   or non-finite checkpoint, a directory or a symlink loop is refused here;
3. the copy is put where the executor reads it: the models directory (local executor; renamed into
   place only once the ledger accepted it) or the models Volume (Modal; ``batch_upload``);
4. the ledger records name, format, size, hash and location (``register_model``): a name keeps
   its content forever (a model version is a dedup key), the same file again only adds a location.

The request carries the registered hash, and the function checks the file against it before it
runs (:func:`modal_app.inputs.verify_checkpoint`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from boundary_inference.ledger import Ledger, LedgerError, ModelRegistration
from boundary_inference.videos import RegistrationError
from config import Settings
from config.identifiers import identifier_problem
from modal_app import sources
from modal_app.modal_config import models_volume_name
from modal_app.models import (
    BUILTIN,
    CHECKPOINT_LOADERS,
    checkpoint_name,
    checkpoint_path,
    inspect_checkpoint,
)

LOCAL_PREFIX = "local:"
VOLUME_PREFIX = "modal-volume:"


def local_location(settings: Settings) -> str:
    return LOCAL_PREFIX + str(Path(settings.models_dir).resolve())


def volume_location(settings: Settings) -> str:
    return VOLUME_PREFIX + models_volume_name(settings)


def _check_name(model_version: str) -> str:
    problem = identifier_problem("model_version", model_version)
    if problem:
        raise RegistrationError(problem)
    if model_version == BUILTIN:
        raise RegistrationError(f"{BUILTIN} is built in: it needs no registration")
    name = checkpoint_name(model_version)
    if name is None:
        raise RegistrationError(
            f"model version {model_version!r} must be ckpt:<name> (letters, digits, '.', '_', '-';"
            " at most 64)"
        )
    return name


def _private_copy(source: Path, scratch: Path, max_bytes: int) -> tuple[Path, int, str]:
    """Copy ``source`` once (the bytes hashed are the bytes loaded and placed)."""
    suffix = source.suffix
    if suffix not in CHECKPOINT_LOADERS:
        raise RegistrationError(
            f"{source.name}: unknown checkpoint format {suffix!r}; known: {', '.join(CHECKPOINT_LOADERS)}"
        )
    try:
        size = sources.stat_local(source).size_bytes  # a loop, a directory, a missing file
    except Exception as error:
        raise RegistrationError(f"checkpoint {error}") from error
    if size == 0:
        raise RegistrationError(f"checkpoint {source} is empty")
    if size > max_bytes:
        raise RegistrationError(
            f"checkpoint {source} is {size} bytes, over checkpoint_max_bytes ({max_bytes})"
        )
    copy = scratch / f"checkpoint{suffix}"
    with open(source, "rb") as src, open(copy, "wb") as dst:
        shutil.copyfileobj(src, dst, sources.CHUNK_BYTES)
    digest = sources.sha256_file(copy).removeprefix(sources.HASH_PREFIX)
    return copy, copy.stat().st_size, digest


def register_model(
    ledger: Ledger,
    settings: Settings,
    *,
    model_version: str,
    file: Path,
    destination: str | None = None,
    volume_from_name: Callable[..., Any] | None = None,
) -> ModelRegistration:
    """Check, place and record a checkpoint; returns its ledger row (with ``created``).

    ``destination``: ``local`` or ``modal`` (default: the configured executor).
    ``volume_from_name``: ``modal.Volume.from_name`` (injectable for tests).
    """
    name = _check_name(model_version)
    destination = destination or settings.executor
    if destination not in ("local", "modal"):
        raise RegistrationError(f"destination must be local or modal, not {destination!r}")
    with tempfile.TemporaryDirectory(prefix="bi-model-") as scratch:
        copy, size, digest = _private_copy(Path(file), Path(scratch), settings.checkpoint_max_bytes)
        try:
            info = inspect_checkpoint(copy)
        except Exception as error:  # CheckpointError, or whatever a format's loader raises
            raise RegistrationError(
                f"{file} is not a loadable checkpoint: {str(error).replace(str(copy), file.name)}"
            ) from error
        existing = ledger.get_model(model_version=model_version)
        if existing and existing.get("sha256") != digest:
            raise RegistrationError(
                f"{model_version} is already registered with another file (sha256"
                f" {str(existing.get('sha256'))[:12]}...); register the new file under a new name"
            )
        file_name = f"{name}{copy.suffix}"
        record = {
            "model_version": model_version,
            "format": info.format,
            "size_bytes": size,
            "sha256": digest,
            "file_name": file_name,
            "details": {"source_file": str(Path(file).name)},
        }
        if destination == "local":
            return _place_locally(ledger, settings, record, copy, model_version)
        return _upload_to_volume(ledger, settings, record, copy, volume_from_name)


def _register(ledger: Ledger, record: Mapping[str, Any], location: str) -> ModelRegistration:
    try:
        return ledger.register_model(**record, location=location)
    except LedgerError as error:
        if error.code == "BI409":
            raise RegistrationError(error.message) from error
        raise


def _place_locally(
    ledger: Ledger, settings: Settings, record: Mapping[str, Any], copy: Path, model_version: str
) -> ModelRegistration:
    models_dir = Path(settings.models_dir).resolve()
    models_dir.mkdir(parents=True, exist_ok=True)
    dest = models_dir / str(record["file_name"])
    found = checkpoint_path(models_dir, model_version)
    if found != dest and os.path.lexists(found):
        raise RegistrationError(
            f"{found} already exists for {model_version} in another format; remove it first"
        )
    staged = models_dir / f".{record['file_name']}.{os.getpid()}.tmp"
    shutil.copyfile(copy, staged)
    try:
        row = _register(ledger, record, local_location(settings))
        # Renamed into place only once the ledger accepted this content: a refused file never
        # replaces a registered one.
        os.replace(staged, dest)
    finally:
        staged.unlink(missing_ok=True)
    return row


def _upload_to_volume(
    ledger: Ledger,
    settings: Settings,
    record: Mapping[str, Any],
    copy: Path,
    volume_from_name: Callable[..., Any] | None,
) -> ModelRegistration:
    if volume_from_name is None:
        import modal

        volume_from_name = modal.Volume.from_name
    name = models_volume_name(settings)
    try:
        volume = volume_from_name(name, create_if_missing=True)
        # force: a file left by an upload whose registration failed is replaced, not an error.
        with volume.batch_upload(force=True) as batch:
            batch.put_file(copy, f"/{record['file_name']}")
    except Exception as error:  # no token, no network: nothing was registered
        raise RegistrationError(
            f"cannot upload to the Modal Volume {name!r}: {type(error).__name__}: {error}",
            exit_code=1,
        ) from error
    return _register(ledger, record, volume_location(settings))
