"""Execution: where inference runs (a local process or Modal), on which GPU, with which models
and batch sizes, and how many pairs one save of predictions carries."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from config.base import MAX_COUNT, SettingsBase


class ExecutionSettings(SettingsBase):
    """The executor, the shape of the GPU function, and the models."""

    executor: Literal["local", "modal"] = Field(
        "local", description="Where inference runs: a local CPU child process, or Modal."
    )
    gpu: str = Field("A10G", description="Modal GPU type for the inference function.")
    batch_size: int = Field(256, ge=1, le=65_536, description="Frame pairs per model batch.")
    max_containers: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Modal autoscaler ceiling: bounds cold-start storms and spend rate.",
    )
    models_dir: Path = Field(
        Path("models"), description="Checkpoint directory (the Modal Volume mount in production)."
    )
    torch_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Autocast of torch models on CUDA (auto: fp16); the CPU always runs fp32.",
    )
    torch_compile: bool = Field(
        False, description="torch.compile torch models (measure with bench first: compile time)."
    )
    model_factory_prefixes: str = Field(
        "modal_app.torch_models",
        description="Comma-separated module prefixes a checkpoint's architecture factory may come"
        " from. Loading a factory runs its code: list only modules you deploy and trust.",
    )
    model_python_sources: str = Field(
        "",
        description="Comma-separated local Python packages added to the Modal image (a team's"
        " own architecture modules); they must also be under model_factory_prefixes.",
    )
    backfill_video_runs: Literal["deployment", "subflow"] = Field(
        "deployment",
        description="How a backfill runs each video: a run of boundary-inference/default (where"
        " the deployment's runs run; the UI cancels it, the deployment's limit counts it), or a"
        " subflow in the backfill's own process (backfill_flow called as a Python function).",
    )
    predictions_batch_pairs: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Frame pairs per save_predictions call: one packed chunk, one bounded request.",
    )
