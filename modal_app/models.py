"""Model registry keyed by ``model_version``.

* ``builtin-textdiff-v1`` needs no weights: it binarises the bright caption text in the crop and
  measures how much of the text changed between the two frames (XOR over union of text pixels),
  mapped through a calibrated logistic to a probability.
* ``ckpt:<name>`` loads the one file ``<models_dir>/<name>.{npz,pt,safetensors}``:
  - ``.npz``: a logistic classifier over the same pair features (NumPy alone reads it);
  - ``.pt`` / ``.safetensors``: a torch model (:mod:`modal_app.torch_models`, the ``torch``
    extra), whose architecture is named in the checkpoint's config; it runs on CUDA when the
    machine has it.

Every executor (the local worker and the Modal function alike) loads models here, and
:func:`inspect_checkpoint` is how a file is checked before it is registered. torch is imported
only for a torch checkpoint.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat as stat_mode
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from modal_app.errors import CheckpointError, UnknownModel

BUILTIN = "builtin-textdiff-v1"
_CKPT = re.compile(r"^ckpt:([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
TEXT_THRESHOLD = 180  # grey level above which a crop pixel counts as caption text
FEATURES = ("changed_text_fraction", "text_presence_delta", "mean_abs_diff")


def is_known_model_version(model_version: str) -> bool:
    """Cheap check used at admission: a builtin name, or a well-formed checkpoint reference."""
    return model_version == BUILTIN or bool(_CKPT.match(model_version))


def _popcount_rows(packed: np.ndarray) -> np.ndarray:
    """Set bits per row of a (n, k) uint8 array, as int64."""
    if hasattr(np, "bitwise_count"):  # NumPy >= 2.0
        return np.asarray(np.bitwise_count(packed).sum(axis=1, dtype=np.int64))
    return np.asarray(_POPCOUNT[packed].sum(axis=1, dtype=np.int64))


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Features of a batch of pairs: arrays of shape (n, h, w) uint8 -> (n, 3) float32.

    * changed_text_fraction: text pixels in exactly one frame / text pixels in either (0 if none);
    * text_presence_delta: |text pixels of a - text pixels of b| / pixels of a frame;
    * mean_abs_diff: mean |a - b| / 255.

    Text masks are packed eight pixels to a byte and counted with a popcount, and |a - b| is taken
    in uint8 (max - min): a few passes over the bytes instead of a dozen over int16/bool copies.
    """
    if a.shape != b.shape:
        raise ValueError(f"pair batches differ in shape: {a.shape} vs {b.shape}")
    n = len(a)
    if n == 0:
        return np.zeros((0, len(FEATURES)), dtype=np.float32)
    flat_a = a.reshape(n, -1)
    flat_b = b.reshape(n, -1)
    pixels = float(flat_a.shape[1])
    text_a = np.packbits(flat_a > TEXT_THRESHOLD, axis=1)
    text_b = np.packbits(flat_b > TEXT_THRESHOLD, axis=1)
    union = _popcount_rows(text_a | text_b)
    xor = _popcount_rows(text_a ^ text_b)
    changed = np.where(union > 0, xor / np.maximum(union, 1), 0.0)
    presence = np.abs(_popcount_rows(text_a) - _popcount_rows(text_b)) / pixels
    abs_diff = np.maximum(flat_a, flat_b) - np.minimum(flat_a, flat_b)
    mean_abs = abs_diff.sum(axis=1, dtype=np.uint64) / pixels / 255.0
    return np.stack([changed, presence, mean_abs], axis=1).astype(np.float32)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))
    return result


@dataclass(frozen=True)
class LogisticModel:
    """p = sigmoid(features . weights + bias); the builtin is a hand-calibrated instance."""

    name: str
    weights: np.ndarray
    bias: float
    threshold: float = 0.5
    format: ClassVar[str] = "boundary-logistic-v1"

    def predict_proba(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return _sigmoid(pair_features(a, b) @ self.weights + self.bias)

    def save(self, path: Path) -> None:
        header = {
            "name": self.name,
            "features": list(FEATURES),
            "threshold": self.threshold,
            "format": "boundary-logistic-v1",
        }
        np.savez(
            path,
            weights=self.weights.astype(np.float32),
            bias=np.float32(self.bias),
            header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
        )


# Calibrated on synthetic captions: identical text re-encoded changes < 10 % of text pixels, a new
# caption (or text appearing/disappearing) changes > 60 %; the midpoint sits at 0.3.
BUILTIN_MODEL = LogisticModel(BUILTIN, np.array([20.0, 0.0, 0.0], dtype=np.float32), -6.0)


def _require_regular_file(path: Path) -> None:
    """A checkpoint is a regular file (symlinks followed); say precisely what it is otherwise."""
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise CheckpointError(f"checkpoint {path} is a symlink loop") from error
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise CheckpointError(f"checkpoint {path} does not exist") from error
        raise CheckpointError(f"checkpoint {path} cannot be read: {error.strerror}") from error
    if not stat_mode.S_ISREG(info.st_mode):
        kind = "a directory" if stat_mode.S_ISDIR(info.st_mode) else "not a regular file"
        raise CheckpointError(f"checkpoint {path} is {kind}")
    if info.st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty")


def load_checkpoint(path: Path) -> LogisticModel:
    _require_regular_file(path)
    try:
        with np.load(path) as data:
            header = json.loads(bytes(data["header"]).decode())
            weights = np.asarray(data["weights"], dtype=np.float32)
            bias = float(data["bias"])
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from error
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint {path} has a header that is not a JSON object")
    if not (np.all(np.isfinite(weights)) and np.isfinite(bias)):
        raise CheckpointError(f"checkpoint {path} has non-finite weights or bias")
    if header.get("format") != "boundary-logistic-v1" or weights.shape != (len(FEATURES),):
        raise CheckpointError(
            f"checkpoint {path} has format {header.get('format')!r} and"
            f" weights {weights.shape}; expected boundary-logistic-v1, ({len(FEATURES)},)"
        )
    return LogisticModel(
        str(header.get("name", path.stem)), weights, bias, float(header.get("threshold", 0.5))
    )


def fit_logistic(
    name: str,
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = 500,
    lr: float = 1.0,
) -> LogisticModel:
    """Gradient descent on the pair features: how the tests build a real checkpoint."""
    x = pair_features(a, b).astype(np.float64)
    y = labels.astype(np.float64)
    w = np.zeros(x.shape[1])
    bias = 0.0
    for _ in range(steps):
        p = _sigmoid(x @ w + bias)
        w -= lr * (x.T @ (p - y)) / len(y)
        bias -= lr * float(np.mean(p - y))
    return LogisticModel(name, w.astype(np.float32), bias)


TORCH_SUFFIXES = (".pt", ".safetensors")


def _torch_options() -> tuple[tuple[str, ...], str, bool]:
    """(factory prefixes, precision, compile) from the settings, read when a torch model loads."""
    from config import get_settings
    from modal_app.torch_models.checkpoint import parse_prefixes

    settings = get_settings()
    prefixes = parse_prefixes(settings.model_factory_prefixes)
    return prefixes, settings.torch_precision, settings.torch_compile


def _require_torch(path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise CheckpointError(
            f"checkpoint {path} is a torch checkpoint and torch is not installed here"
            " (pip install -e '.[torch]')"
        )


# Torch models are loaded once per file version per process (a Modal container serves many
# jobs): keyed by path, size and modification time, so a replaced file is read again.
_TORCH_CACHE: dict[tuple[str, int, int], Any] = {}


def load_torch_model(path: Path) -> Any:
    """A torch checkpoint (:mod:`modal_app.torch_models`) on this machine's device, cached."""
    _require_regular_file(path)
    _require_torch(path)
    from modal_app.torch_models.checkpoint import load_torch_checkpoint
    from modal_app.torch_models.runner import TorchPairModel, plan_for_this_machine

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _TORCH_CACHE:
        prefixes, precision, compile_module = _torch_options()
        loaded = load_torch_checkpoint(path, prefixes)
        name = str(loaded.config.get("name", path.stem))
        _TORCH_CACHE.clear()  # one model resident at a time: GPU memory is the scarce part
        _TORCH_CACHE[key] = TorchPairModel(
            name,
            loaded.module,
            loaded.config,
            plan_for_this_machine(precision),
            compile_module=compile_module,
        )
    return _TORCH_CACHE[key]


# Checkpoint formats by file suffix: the loader of each, in the order a ``ckpt:<name>`` is looked
# up in the models directory. Another family registers its suffix and loader here; the registry
# (``models add``) and the function's checksum check go through these functions only.
CHECKPOINT_LOADERS: dict[str, Callable[[Path], Any]] = {
    ".npz": load_checkpoint,
    ".pt": load_torch_model,
    ".safetensors": load_torch_model,
}


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` found: enough to register the file and trust it loads."""

    format: str  # "boundary-logistic-v1" (.npz), "torch-pt" (.pt) or "safetensors"
    suffix: str  # its file suffix, which selects the loader
    architecture: str = "logistic"  # or the torch factory "package.module:callable"
    name: str = ""
    threshold: float = 0.5
    parameters: int = 0
    config: dict[str, Any] = field(default_factory=dict)


def checkpoint_name(model_version: str) -> str | None:
    """``ckpt:<name>`` -> ``<name>``; None for anything else."""
    match = _CKPT.match(model_version)
    return match.group(1) if match else None


def _candidates(models_dir: Path, model_version: str) -> list[Path]:
    name = checkpoint_name(model_version)
    if name is None:
        raise UnknownModel(f"{model_version!r} is not a checkpoint reference (ckpt:<name>)")
    return [Path(models_dir) / f"{name}{suffix}" for suffix in CHECKPOINT_LOADERS]


def checkpoint_path(models_dir: Path, model_version: str) -> Path:
    """Where a ``ckpt:`` model's file is: ``<name><suffix>`` for the first known suffix present."""
    candidates = _candidates(models_dir, model_version)
    return next((path for path in candidates if os.path.lexists(path)), candidates[0])


def load_checkpoint_file(path: Path) -> Any:
    """Load a checkpoint of any known format (chosen by its suffix), every weight checked."""
    loader = CHECKPOINT_LOADERS.get(path.suffix)
    if loader is None:
        raise CheckpointError(
            f"checkpoint {path.name} has suffix {path.suffix!r}; known formats:"
            f" {', '.join(CHECKPOINT_LOADERS)}"
        )
    return loader(path)


def inspect_checkpoint(path: Path | str) -> CheckpointInfo:
    """Load ``path`` as the function would and say what it is; raises ``CheckpointError``.

    For a torch checkpoint: weights read without unpickling code, the architecture's factory
    checked against the allowed prefixes and built, the state dict loaded strictly, all on the
    CPU (nothing cached, no GPU touched). Torch checkpoints need the torch extra.
    """
    path = Path(path)
    if path.suffix not in TORCH_SUFFIXES:
        model = load_checkpoint_file(path)
        return CheckpointInfo(
            str(getattr(model, "format", path.suffix.lstrip("."))),
            path.suffix,
            name=str(getattr(model, "name", path.stem)),
            threshold=float(getattr(model, "threshold", 0.5)),
            parameters=len(FEATURES) + 1,
        )
    _require_regular_file(path)
    _require_torch(path)
    from modal_app.torch_models.checkpoint import load_torch_checkpoint

    prefixes, _, _ = _torch_options()
    loaded = load_torch_checkpoint(path, prefixes)
    return CheckpointInfo(
        loaded.format,
        path.suffix,
        architecture=str(loaded.config["architecture"]),
        name=str(loaded.config.get("name", path.stem)),
        threshold=float(loaded.config.get("threshold", 0.5)),
        parameters=loaded.parameters,
        config=dict(loaded.config),
    )


def get_model(model_version: str, models_dir: Path | None = None) -> Any:
    """The model for ``model_version``: ``predict_proba(a, b)`` and ``threshold``, at least."""
    if model_version == BUILTIN:
        return BUILTIN_MODEL
    if checkpoint_name(model_version) is not None:
        if models_dir is None:
            raise CheckpointError(f"{model_version} needs a models directory")
        present = [p for p in _candidates(Path(models_dir), model_version) if os.path.lexists(p)]
        if len(present) > 1:  # which file runs must never be a guess
            names = ", ".join(p.name for p in present)
            raise CheckpointError(f"checkpoint {model_version} is ambiguous: {names}")
        return load_checkpoint_file(checkpoint_path(Path(models_dir), model_version))
    raise UnknownModel(f"unknown model_version {model_version!r}; known: {BUILTIN}, ckpt:<name>")
