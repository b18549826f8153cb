"""A team's own architecture, outside ``modal_app``: what a checkpoint's factory may name.

Not a test module: ``tests/test_torch_models.py`` writes a checkpoint whose config says
``"architecture": "tests.byo_arch:build"`` and checks that it loads only when allow-listed.
Two parameters: logits ``[same, boundary]`` from the fraction of caption text that changed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

TEXT_LEVEL = 180


class ChangedText(nn.Module):
    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def forward(self, frames1: torch.Tensor, frames2: torch.Tensor) -> torch.Tensor:
        text_1, text_2 = frames1 > TEXT_LEVEL, frames2 > TEXT_LEVEL
        union = (text_1 | text_2).flatten(1).sum(1).float().clamp(min=1.0)
        changed = (text_1 ^ text_2).flatten(1).sum(1).float() / union
        logit = self.scale * changed + self.bias
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


def build(config: dict[str, Any]) -> nn.Module:
    return ChangedText(config)
