"""Where a torch model runs and in which precision: pure decisions, no torch import.

The inputs (is CUDA there, does it do bfloat16) are passed in, so the choice made on a GPU
container is asserted on any machine; :mod:`.runner` feeds them from ``torch.cuda``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "fp16", "bf16")


@dataclass(frozen=True)
class ExecutionPlan:
    """How batches run: on which device, under which autocast dtype, with which copies."""

    device: str  # "cuda" or "cpu"
    autocast_dtype: str | None  # "float16" | "bfloat16" | None (full float32)
    pin_memory: bool  # page-locked host batches: the copy to the GPU is a DMA that can overlap
    non_blocking: bool  # host-to-device copies do not wait for the copy to finish

    @property
    def describe(self) -> str:
        dtype = self.autocast_dtype or "float32"
        return f"{self.device}/{dtype}"


def plan_execution(
    *, cuda_available: bool, bf16_supported: bool, precision: str = "auto"
) -> ExecutionPlan:
    """CUDA whenever it is there (the GPU is what the job pays for), else the CPU.

    On CUDA, ``auto`` is float16 autocast (tensor cores on an A10G; softmax and the features are
    kept in float32 by autocast), ``bf16`` is bfloat16 where the card supports it and float16
    where not. On the CPU everything is float32: CPU autocast to bfloat16 is slower than float32 on
    most CPUs without AMX, and the CPU path is the reference the GPU path is checked against.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if not cuda_available:
        return ExecutionPlan("cpu", None, pin_memory=False, non_blocking=False)
    dtype: str | None
    if precision == "fp32":
        dtype = None
    elif precision == "bf16":
        dtype = "bfloat16" if bf16_supported else "float16"
    else:
        dtype = "float16"
    return ExecutionPlan("cuda", dtype, pin_memory=True, non_blocking=True)
