"""Model registry keyed by ``model_version``.

* ``builtin-textdiff-v1`` needs no weights: it binarises the bright caption text in the crop and
  measures how much of the text changed between the two frames (XOR over union of text pixels),
  mapped through a calibrated logistic to a probability.
* ``ckpt:<name>`` loads ``<models_dir>/<name>.npz``: a logistic classifier over the same pair
  features, a real checkpoint format that NumPy alone can read (and torch can run on a GPU).

One implementation of the math, in NumPy, serves every executor (the local worker and the Modal
function alike): the features are a few byte-wise passes over small caption crops, cheap next to
decoding. ``modal_app.bench`` times the same math in torch on a GPU, where one is available.
"""

from __future__ import annotations

import errno
import json
import os
import re
import stat as stat_mode
from collections.abc import Callable
from dataclasses import dataclass
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
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


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


# Checkpoint formats by file suffix: the loader of each, in the order a ``ckpt:<name>`` is looked
# up in the models directory. Another family registers its suffix and loader here; the registry
# (``models add``) and the function's checksum check go through these functions only.
CHECKPOINT_LOADERS: dict[str, Callable[[Path], Any]] = {".npz": load_checkpoint}


@dataclass(frozen=True)
class CheckpointInfo:
    format: str  # what the file says it is, e.g. "boundary-logistic-v1"
    suffix: str  # its file suffix, which selects the loader


def checkpoint_name(model_version: str) -> str | None:
    """``ckpt:<name>`` -> ``<name>``; None for anything else."""
    match = _CKPT.match(model_version)
    return match.group(1) if match else None


def checkpoint_path(models_dir: Path, model_version: str) -> Path:
    """Where a ``ckpt:`` model's file is: ``<name><suffix>`` for the first known suffix present."""
    name = checkpoint_name(model_version)
    if name is None:
        raise UnknownModel(f"{model_version!r} is not a checkpoint reference (ckpt:<name>)")
    candidates = [Path(models_dir) / f"{name}{suffix}" for suffix in CHECKPOINT_LOADERS]
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


def inspect_checkpoint(path: Path) -> CheckpointInfo:
    """Load ``path`` as the function would and say what it is; raises ``CheckpointError``."""
    model = load_checkpoint_file(path)
    return CheckpointInfo(str(getattr(model, "format", path.suffix.lstrip("."))), path.suffix)


def get_model(model_version: str, models_dir: Path | None = None) -> LogisticModel:
    if model_version == BUILTIN:
        return BUILTIN_MODEL
    if checkpoint_name(model_version) is not None:
        if models_dir is None:
            raise CheckpointError(f"{model_version} needs a models directory")
        model: LogisticModel = load_checkpoint_file(
            checkpoint_path(Path(models_dir), model_version)
        )
        return model
    raise UnknownModel(f"unknown model_version {model_version!r}; known: {BUILTIN}, ckpt:<name>")


Predictor = Callable[[np.ndarray, np.ndarray], Any]
