"""Safeguard: the model is known. A builtin code model always is; a ``ckpt:`` model only once
registered (``boundary-inference models add``), and only where this executor reads it: the file
in the models directory (local executor) or the models Volume (Modal). A swapped file is caught
again by the function, which checks the registered SHA-256 before it runs."""

from __future__ import annotations

from pathlib import Path
from typing import Never

from boundary_inference.ledger import Ledger, ModelRow
from boundary_inference.model_registry import local_location, volume_location
from boundary_inference.outcome import Rejected, RejectionType
from config import Settings
from modal_app.models import BUILTIN, checkpoint_name, checkpoint_path
from tasks._common import GUARD, guard_task


def _invalid(message: str) -> Rejected:
    return Rejected(RejectionType.VALIDATION_FAILED, message)


# What check_model returns for the builtin code model, which has no registry row: ``{}``.
NoModelRow = dict[str, Never]


@guard_task(name="check-model", tags=GUARD)
def check_model(
    ledger: Ledger, settings: Settings, model_version: str
) -> ModelRow | NoModelRow | Rejected:
    """The registry row of ``model_version`` (``{}`` for a builtin model), or the refusal."""
    if model_version == BUILTIN or checkpoint_name(model_version) is None:
        return {}  # the builtin, or a name the validation already refused
    row = ledger.get_model(model_version=model_version)
    if row is None:
        return _invalid(
            f"model_version {model_version!r} is not registered: register its checkpoint with"
            f" `boundary-inference models add {model_version} --file PATH`"
        )
    locations = list(row.get("locations") or [])
    if settings.executor == "modal":
        if volume_location(settings) not in locations:
            return _invalid(
                f"{model_version} is registered but not in the Modal Volume"
                f" {volume_location(settings).split(':', 1)[1]!r}: run `boundary-inference models"
                f" add {model_version} --file PATH --to modal`"
            )
        return row
    path = checkpoint_path(Path(settings.models_dir).resolve(), model_version)
    if not path.is_file():
        where = "registered elsewhere" if local_location(settings) not in locations else "missing"
        return _invalid(
            f"{model_version}: its checkpoint file {path} is {where}: run `boundary-inference"
            f" models add {model_version} --file PATH`"
        )
    if path.stat().st_size != int(row["size_bytes"]):
        return _invalid(
            f"{model_version}: {path} changed since registration (size {row['size_bytes']} ->"
            f" {path.stat().st_size} bytes)"
        )
    return row
