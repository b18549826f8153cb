"""Torch checkpoints: read without running code from the file, built by an allow-listed factory.

Two file formats hold the same thing, a JSON-friendly ``config`` and the module's state dict:

* ``.pt``: ``torch.save({"config": config, "model_state_dict": state_dict})``, the format of the
  system this replaces. Read with ``torch.load(weights_only=True)``: tensors and plain containers
  only, never an arbitrary pickle (a file that needs more is refused, not executed);
* ``.safetensors``: the tensors, with the config as JSON under the ``config`` metadata key.

The config names its architecture: ``architecture`` is ``"package.module:callable"``, a factory
``callable(config) -> torch.nn.Module`` whose ``forward(frames1, frames2)`` takes two ``uint8``
batches of grey crops ``(n, h, w)`` and returns logits ``(n, len(config["classes"]))``. Importing
that module runs its code, so a factory is imported only when its module is under one of the
allowed prefixes (setting ``model_factory_prefixes``, default: this package only). The bundled
ResNet family is one such factory (:data:`.resnet_pair.FACTORY`).

Optional LoRA adapters (``config["lora"] = {"r", "alpha", "target_modules", "dropout"}``) are
injected with peft before the state dict is loaded, for any architecture.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from modal_app.errors import CheckpointError

FORMAT_PT = "torch-pt"
FORMAT_SAFETENSORS = "safetensors"
SUFFIXES = {".pt": FORMAT_PT, ".safetensors": FORMAT_SAFETENSORS}
DEFAULT_FACTORY_PREFIXES = ("modal_app.torch_models",)
_FACTORY = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):([A-Za-z_][A-Za-z0-9_]*)$"
)
_REQUIRED = ("architecture", "classes", "boundary_classes")


@dataclass(frozen=True)
class TorchCheckpoint:
    """A checkpoint read and its module built (weights loaded, on the CPU, in eval mode)."""

    path: Path
    format: str
    config: dict[str, Any]
    module: nn.Module

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


def parse_prefixes(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"a.b, c"`` (the setting's form) or a sequence -> ``("a.b", "c")``."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(item.strip() for item in items if item.strip())


def _allowed(module: str, prefixes: Sequence[str]) -> bool:
    return any(module == p or module.startswith(p.rstrip(".") + ".") for p in prefixes)


def resolve_factory(
    architecture: str, prefixes: Sequence[str] = DEFAULT_FACTORY_PREFIXES
) -> Callable[[dict[str, Any]], nn.Module]:
    """The callable named ``module:callable``, imported only if its module is allow-listed."""
    match = _FACTORY.match(architecture)
    if not match:
        raise CheckpointError(
            f"architecture {architecture!r} is not a factory reference 'package.module:callable'"
        )
    module_name, attribute = match.groups()
    if not _allowed(module_name, prefixes):
        raise CheckpointError(
            f"architecture factory {architecture!r} is not allowed: its module is not under"
            f" {', '.join(prefixes) or '(no prefix)'} (setting BOUNDARY_INFERENCE_MODEL_FACTORY_PREFIXES)"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise CheckpointError(
            f"architecture module {module_name!r} cannot be imported: {error}"
        ) from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise CheckpointError(
            f"architecture {architecture!r}: {attribute!r} is not a callable of {module_name}"
        )
    return cast("Callable[[dict[str, Any]], nn.Module]", factory)


def validate_config(config: Any, path: Path) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path} has no config object")
    missing = [key for key in _REQUIRED if key not in config]
    if missing:
        raise CheckpointError(f"checkpoint {path} config lacks {', '.join(missing)}")
    classes = config["classes"]
    boundary = config["boundary_classes"]
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise CheckpointError(f"checkpoint {path}: classes must be a non-empty list of names")
    if not (isinstance(boundary, list) and boundary and set(boundary) <= set(classes)):
        raise CheckpointError(
            f"checkpoint {path}: boundary_classes {boundary!r} must be a non-empty subset of {classes!r}"
        )
    threshold = config.get("threshold", 0.5)
    if not isinstance(threshold, int | float) or not 0.0 < float(threshold) < 1.0:
        raise CheckpointError(f"checkpoint {path}: threshold {threshold!r} is not in (0, 1)")
    return config


def apply_lora(module: nn.Module, lora: dict[str, Any]) -> nn.Module:
    """Inject LoRA adapters (peft) into ``module``'s layers named in ``lora["target_modules"]``."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=int(lora["r"]),
        lora_alpha=int(lora.get("alpha", 2 * int(lora["r"]))),
        lora_dropout=float(lora.get("dropout", 0.0)),
        target_modules=list(lora["target_modules"]),
    )
    return inject_adapter_in_model(config, module)


def build_module(config: dict[str, Any], prefixes: Sequence[str]) -> nn.Module:
    factory = resolve_factory(str(config["architecture"]), prefixes)
    try:
        module = factory(config)
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(
            f"architecture {config['architecture']!r} failed to build: {error}"
        ) from error
    if not isinstance(module, nn.Module):
        raise CheckpointError(
            f"architecture {config['architecture']!r} returned {type(module).__name__}, not a torch.nn.Module"
        )
    if config.get("lora"):
        module = apply_lora(module, dict(config["lora"]))
    return module


def _read(path: Path) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    fmt = SUFFIXES.get(path.suffix)
    if fmt is None:
        raise CheckpointError(f"checkpoint {path} is not .pt or .safetensors")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if fmt == FORMAT_PT:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for code, RuntimeError for a bad zip
            raise CheckpointError(
                f"checkpoint {path} is unreadable as weights only: {error}"
            ) from error
        if not isinstance(data, dict) or "model_state_dict" not in data or "config" not in data:
            raise CheckpointError(f"checkpoint {path} is not a {{config, model_state_dict}} dict")
        config, state = data["config"], data["model_state_dict"]
    else:
        from safetensors import SafetensorError, safe_open
        from safetensors.torch import load_file

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
            state = load_file(str(path))
            config = json.loads(metadata["config"])
        except (SafetensorError, OSError, KeyError, ValueError) as error:
            raise CheckpointError(
                f"checkpoint {path} is unreadable as safetensors with a config: {error}"
            ) from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} has a state dict that is not all tensors")
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"checkpoint {path} has non-finite values in {name}")
    return fmt, validate_config(config, path), state


def load_torch_checkpoint(
    path: Path, prefixes: Sequence[str] = DEFAULT_FACTORY_PREFIXES
) -> TorchCheckpoint:
    """Read, build and load a checkpoint on the CPU; every way it can be wrong is a CheckpointError."""
    path = Path(path)
    fmt, config, state = _read(path)
    module = build_module(config, prefixes)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:  # missing/unexpected keys, shape mismatches
        raise CheckpointError(
            f"checkpoint {path} does not fit {config['architecture']}: {error}"
        ) from error
    module.eval()
    return TorchCheckpoint(path, fmt, config, module)


def save_torch_checkpoint(module: nn.Module, config: dict[str, Any], path: Path) -> Path:
    """Write ``module``'s weights and ``config`` as ``.pt`` or ``.safetensors`` (by suffix)."""
    path = Path(path)
    fmt = SUFFIXES.get(path.suffix)
    if fmt is None:
        raise ValueError(f"{path}: a checkpoint is .pt or .safetensors")
    json.dumps(config)  # the config must stay plain data (weights_only reads nothing else)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if fmt == FORMAT_PT:
        torch.save({"config": config, "model_state_dict": state}, tmp)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"config": json.dumps(config)})
    tmp.replace(path)  # a reader never sees half a checkpoint
    return path
