"""A loaded torch pair model on its device: the object :func:`modal_app.predictor.run_inference`
drives, with the same two methods as the NumPy models (``predict_proba`` and ``threshold``).

``prepare`` runs on the decoding thread (it turns a batch into page-locked tensors on CUDA), so
the compute thread only issues a non-blocking copy and the forward pass. On the CPU the same code
runs without pinning or autocast.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from modal_app.torch_models.device import ExecutionPlan, plan_execution


def cpu_threads() -> int:
    """torch's intra-op threads on the CPU: every core but one, which decoding keeps busy.

    Measured here (2 cores, other processes running): a training step took 0.94 s with one
    thread and 5.5 s with two, OpenMP's spinning threads fighting the rest of the machine.
    """
    return max(1, (os.cpu_count() or 1) - 1)


def _bf16_supported() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def plan_for_this_machine(
    precision: str = "auto",
    *,
    cuda_available: Callable[[], bool] | None = None,
    bf16_supported: Callable[[], bool] | None = None,
) -> ExecutionPlan:
    """:func:`.device.plan_execution` fed from this process's torch (looked up at each call)."""
    cuda = bool((cuda_available or torch.cuda.is_available)())
    bf16 = cuda and bool((bf16_supported or _bf16_supported)())
    return plan_execution(cuda_available=cuda, bf16_supported=bf16, precision=precision)


class TorchPairModel:
    """Boundary probability = the softmax mass of the config's boundary classes."""

    def __init__(
        self,
        name: str,
        module: nn.Module,
        config: dict[str, Any],
        plan: ExecutionPlan,
        *,
        compile_module: bool = False,
    ) -> None:
        self.name = name
        self.config = config
        self.plan = plan
        self.threshold = float(config.get("threshold", 0.5))
        self.device = torch.device(plan.device)
        self.autocast_dtype = getattr(torch, plan.autocast_dtype) if plan.autocast_dtype else None
        classes = list(config["classes"])
        self._boundary = torch.tensor(
            [classes.index(c) for c in config["boundary_classes"]], device=self.device
        )
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads())
        module = module.to(self.device).eval()
        # Optional: compiled graphs help a GPU most and cost a compile per input shape; off
        # unless the setting says so (see `bench --inference --model ... --compile`).
        self.module: Any = torch.compile(module) if compile_module else module

    @property
    def device_name(self) -> str:
        return self.plan.describe

    def prepare(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Host tensors for one batch; page-locked when the copy goes to a GPU."""
        ta, tb = (
            torch.from_numpy(np.ascontiguousarray(a)),
            torch.from_numpy(np.ascontiguousarray(b)),
        )
        if self.plan.pin_memory:
            ta, tb = ta.pin_memory(), tb.pin_memory()
        return ta, tb

    def predict_proba(
        self, a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor
    ) -> np.ndarray:
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            a, b = self.prepare(np.asarray(a), np.asarray(b))
        if len(a) == 0:
            return np.zeros(0, dtype=np.float32)
        a = a.to(self.device, non_blocking=self.plan.non_blocking)
        b = b.to(self.device, non_blocking=self.plan.non_blocking)
        with (
            torch.inference_mode(),
            torch.autocast(
                device_type=self.device.type,
                dtype=self.autocast_dtype or torch.float32,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            logits = self.module(a, b)
        probabilities = torch.softmax(logits.float(), dim=1)
        boundary = probabilities.index_select(1, self._boundary).sum(1).clamp(0.0, 1.0)
        return boundary.cpu().numpy().astype(np.float32)
