"""The bundled architecture: a ResNet (torchvision's 18 or 50) on a pair of caption crops.

Input: two batches of grey caption crops, ``uint8`` tensors of shape ``(n, h, w)``. They are
resized to the configured ``input_size`` and fused into one 3-channel image: frame 1, frame 2 and
their absolute difference (the system this replaces used an OCR rendering as the third channel;
the difference carries the same "what changed" signal without an OCR engine). The pooled ResNet
features are joined with a few spatial features computed on the crops at their own resolution
(how much text each frame shows, how much of it changed, how wide it spans), and a small head
gives logits over :data:`CLASSES`.

This module is one user of the factory interface of :mod:`.checkpoint`: ``build(config)``
returns a module whose ``forward(frames1, frames2)`` takes ``uint8`` crops and returns logits.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

CLASSES = ("same", "different", "empty_empty", "empty_valid", "valid_empty")
# A boundary is any change of what the caption shows, text appearing and disappearing included.
BOUNDARY_CLASSES = ("different", "empty_valid", "valid_empty")
FACTORY = "modal_app.torch_models.resnet_pair:build"
BACKBONES = ("resnet18", "resnet50")
TEXT_LEVEL = 180.0 / 255.0  # grey level above which a pixel counts as caption text (as the builtin)
SPATIAL_FEATURES = (
    "text_fraction_1",
    "text_fraction_2",
    "changed_text_fraction",
    "mean_abs_diff",
    "text_columns_1",
    "text_columns_2",
)


def default_config(
    backbone: str = "resnet18", input_size: tuple[int, int] = (48, 480)
) -> dict[str, Any]:
    """The config a checkpoint of this architecture carries (JSON-friendly values only)."""
    return {
        "architecture": FACTORY,
        "backbone": backbone,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "classes": list(CLASSES),
        "boundary_classes": list(BOUNDARY_CLASSES),
        "head_hidden": 64,
        "threshold": 0.5,
        "lora": None,
    }


def spatial_features(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, 6) float32 features of two (n, h, w) batches in [0, 1]; see :data:`SPATIAL_FEATURES`."""
    a, b = a.float(), b.float()
    text_a, text_b = a > TEXT_LEVEL, b > TEXT_LEVEL
    union = (text_a | text_b).flatten(1).sum(1).float()
    changed = (text_a ^ text_b).flatten(1).sum(1).float() / union.clamp(min=1.0)
    return torch.stack(
        [
            text_a.flatten(1).float().mean(1),
            text_b.flatten(1).float().mean(1),
            changed,
            (a - b).abs().flatten(1).mean(1),
            text_a.any(1).float().mean(1),
            text_b.any(1).float().mean(1),
        ],
        dim=1,
    )


def _backbone(name: str) -> tuple[nn.Module, int]:
    from torchvision import models

    if name == "resnet18":
        net: Any = models.resnet18(weights=None)
    elif name == "resnet50":
        net = models.resnet50(weights=None)
    else:
        raise ValueError(f"backbone {name!r} is not one of {', '.join(BACKBONES)}")
    width = int(net.fc.in_features)
    net.fc = nn.Identity()
    return net, width


class PairResNet(nn.Module):
    """Logits over the configured classes for pairs of grey caption crops."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        height, width = (int(v) for v in config["input_size"])
        if height < 8 or width < 8:
            raise ValueError(f"input_size {config['input_size']} is too small (at least 8x8)")
        self.input_size = (height, width)
        self.backbone, features = _backbone(str(config["backbone"]))
        hidden = int(config.get("head_hidden", 64))
        classes = len(config["classes"])
        self.spatial_norm = nn.BatchNorm1d(len(SPATIAL_FEATURES))
        self.head = nn.Sequential(
            nn.Linear(features + len(SPATIAL_FEATURES), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )
        # A direct path from the spatial features to the logits: they separate most pairs on
        # their own, so a fresh model is useful after a few dozen steps while the ResNet learns
        # what they miss (text replaced by text of the same extent, noise in the background).
        self.spatial_head = nn.Linear(len(SPATIAL_FEATURES), classes)

    def forward(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        a = frames1.float() / 255.0
        b = frames2.float() / 255.0
        spatial = spatial_features(a, b)
        pair = torch.stack([a, b, (a - b).abs()], dim=1)
        if tuple(pair.shape[-2:]) != self.input_size:
            pair = F.interpolate(pair, size=self.input_size, mode="bilinear", align_corners=False)
        # Centred around 0 with roughly unit spread: what the (untrained) BatchNorm stem expects.
        pair = (pair - 0.5) / 0.25
        pooled = self.backbone(pair)
        spatial = self.spatial_norm(spatial)
        joined = torch.cat([pooled, spatial.to(pooled.dtype)], dim=1)
        logits: torch.Tensor = self.head(joined) + self.spatial_head(spatial).to(pooled.dtype)
        return logits


def build(config: dict[str, Any]) -> nn.Module:
    """The factory named by ``architecture`` in this family's checkpoints."""
    return PairResNet(config)
