"""The torch model family on the CPU: a checkpoint trained here by ``models train-synthetic``
finds caption boundaries through every entry point (get_model, the predictor, the Modal function
body, the benchmark); both file formats load without unpickling code; a factory outside the
allowed prefixes is never imported; a team's own architecture loads when allowed; LoRA adapters
round-trip; and the device and autocast choices for a GPU container are asserted here."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import modal_app.models as models
from benches.__main__ import bench_app
from modal_app.app import run_call
from modal_app.errors import CheckpointError
from modal_app.frames import FrameSource
from modal_app.modal_config import FAILED
from modal_app.models import get_model, inspect_checkpoint
from modal_app.predictor import run_inference
from modal_app.synthetic import GroundTruth, make_video
from modal_app.torch_models.checkpoint import (
    build_module,
    load_torch_checkpoint,
    resolve_factory,
    save_torch_checkpoint,
)
from modal_app.torch_models.device import ExecutionPlan, plan_execution
from modal_app.torch_models.resnet_pair import default_config
from modal_app.torch_models.runner import TorchPairModel, plan_for_this_machine
from modal_app.types import InferenceRequest

BYO_STATE = {"scale": torch.tensor(20.0), "bias": torch.tensor(-6.0)}
BYO_CONFIG: dict[str, Any] = {
    "architecture": "tests.byo_arch:build",
    "classes": ["same", "boundary"],
    "boundary_classes": ["boundary"],
    "threshold": 0.5,
}


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


@pytest.fixture(autouse=True)
def _fresh_model_cache() -> None:
    models._TORCH_CACHE.clear()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("torch-eval") / "held-out.mp4"
    return path, make_video(path, seed=4242, frame_count=241)


def _f1(predicted: list[bool], actual: list[bool]) -> float:
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(a and not p for p, a in zip(predicted, actual, strict=True))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _request(
    video: tuple[Path, GroundTruth], model_version: str, **changes: Any
) -> InferenceRequest:
    fields: dict[str, Any] = {
        "run_id": "torch-1",
        "video_uri": str(video[0]),
        "frame_pairs": [(i, i + 1) for i in range(240)],
        "model_version": model_version,
        "crop_box": video[1].crop_box,
        "batch_size": 32,
    }
    fields.update(changes)
    return InferenceRequest(**fields)


def _crops(video: tuple[Path, GroundTruth], count: int = 48) -> tuple[np.ndarray, np.ndarray]:
    pairs = [(i, i + 1) for i in range(count)]
    a, b = [], []
    for batch in FrameSource(video[0], video[1].crop_box).iter_pairs(pairs, 64):
        a += [item[1] for item in batch]
        b += [item[2] for item in batch]
    return np.stack(a), np.stack(b)


# --- The reference checkpoint, made by the CLI ----------------------------------------------------


@pytest.mark.slow  # trains, or starts a child process with torch: seconds each
def test_train_synthetic_writes_a_checkpoint_that_finds_boundaries(
    reference_checkpoint: tuple[Path, dict[str, Any]],
) -> None:
    models_dir, report = reference_checkpoint
    assert report["checkpoint"] == str(models_dir / "ref.pt") and report["format"] == "torch-pt"
    assert report["model_version"] == "ckpt:ref"
    assert report["config"]["architecture"] == "modal_app.torch_models.resnet_pair:build"
    assert report["config"]["backbone"] == "resnet18"
    assert report["eval_boundaries"] >= 3 and report["eval_pairs"] == 239
    assert report["f1"] >= 0.85, report  # held-out video, decoded and scored by the predictor
    assert report["f1_goal"] == 0.95 and report["meets_goal"] == (report["f1"] >= 0.95)
    assert report["device"] == "cpu/float32"
    info = inspect_checkpoint(models_dir / "ref.pt")
    assert (info.format, info.architecture, info.name) == (
        "torch-pt",
        "modal_app.torch_models.resnet_pair:build",
        "ref",
    )
    assert info.parameters > 11_000_000  # a real ResNet18


def test_the_modal_function_body_runs_the_checkpoint_on_a_new_video(
    reference_checkpoint: tuple[Path, dict[str, Any]], held_out: tuple[Path, GroundTruth]
) -> None:
    models_dir, _ = reference_checkpoint
    store: dict[str, Any] = {}
    request = _request(held_out, "ckpt:ref")
    out = run_call(request.to_dict(), store=store, max_attempts=3, models_dir=models_dir)
    predicted = [p["is_boundary"] for p in out["predictions"]]
    actual = held_out[1].labels_for(request.frame_pairs)
    assert sum(actual) >= 3
    assert _f1(predicted, actual) >= 0.8
    assert out["metrics"]["device"] == "cpu/float32"
    assert store["torch-1"]["state"] == "succeeded" and store["torch-1"]["done"] == 240


def test_an_untrained_model_of_the_same_architecture_does_not(
    tmp_path: Path, held_out: tuple[Path, GroundTruth]
) -> None:
    """The F1 checks above can fail: the same architecture without training scores badly."""
    torch.manual_seed(0)
    config = default_config("resnet18", (16, 64))
    save_torch_checkpoint(build_module(config, ("modal_app",)), config, tmp_path / "blank.pt")
    request = _request(held_out, "ckpt:blank")
    result = run_inference(request, models_dir=tmp_path)
    predicted = [p.is_boundary for p in result.predictions]
    assert _f1(predicted, held_out[1].labels_for(request.frame_pairs)) < 0.5


# --- Formats and what a checkpoint may not do -----------------------------------------------------


def test_pt_and_safetensors_load_to_the_same_model(
    reference_checkpoint: tuple[Path, dict[str, Any]],
    held_out: tuple[Path, GroundTruth],
    tmp_path: Path,
) -> None:
    models_dir, _ = reference_checkpoint
    loaded = load_torch_checkpoint(models_dir / "ref.pt")
    save_torch_checkpoint(loaded.module, loaded.config, tmp_path / "same.safetensors")
    info = inspect_checkpoint(tmp_path / "same.safetensors")
    assert info.format == "safetensors" and info.config == loaded.config
    a, b = _crops(held_out)
    from_pt = get_model("ckpt:ref", models_dir).predict_proba(a, b)
    from_st = get_model("ckpt:same", tmp_path).predict_proba(a, b)
    np.testing.assert_array_equal(from_pt, from_st)
    assert from_pt.shape == (48,) and np.all((from_pt >= 0) & (from_pt <= 1))


def test_a_pt_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return os.mkdir, (str(marker),)

    config = default_config("resnet18", (16, 64))
    torch.save({"config": config, "model_state_dict": {}, "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights only") as caught:
        get_model("ckpt:evil", tmp_path)
    assert caught.value.kind == "checkpoint_error"
    assert not marker.exists()


def test_a_factory_outside_the_allowed_prefixes_is_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, held_out: tuple[Path, GroundTruth]
) -> None:
    from safetensors.torch import save_file

    save_file(
        BYO_STATE, str(tmp_path / "team.safetensors"), metadata={"config": json.dumps(BYO_CONFIG)}
    )
    monkeypatch.delitem(sys.modules, "tests.byo_arch", raising=False)
    with pytest.raises(CheckpointError, match="not allowed"):
        get_model("ckpt:team", tmp_path)
    assert "tests.byo_arch" not in sys.modules  # refused before any import: no code ran
    for reference in ("os:system", "modal_app.torch_models_evil.x:build", "subprocess:run"):
        with pytest.raises(CheckpointError, match="not allowed"):
            resolve_factory(reference)
    with pytest.raises(CheckpointError, match="not a factory reference"):
        resolve_factory("../../x.py:build")

    # The team's operator allows their package: the same file now loads and finds boundaries.
    monkeypatch.setenv(
        "BOUNDARY_INFERENCE_MODEL_FACTORY_PREFIXES", "modal_app.torch_models, tests.byo_arch"
    )
    info = inspect_checkpoint(tmp_path / "team.safetensors")
    assert (info.format, info.architecture, info.parameters) == (
        "safetensors",
        "tests.byo_arch:build",
        2,
    )
    request = _request(held_out, "ckpt:team")
    result = run_inference(request, models_dir=tmp_path)
    predicted = [p.is_boundary for p in result.predictions]
    assert _f1(predicted, held_out[1].labels_for(request.frame_pairs)) >= 0.95


def test_broken_checkpoints_are_typed_refusals(tmp_path: Path) -> None:
    config = default_config("resnet18", (16, 64))
    module = build_module(config, ("modal_app",))
    state = module.state_dict()

    def write(name: str, payload: Any) -> str:
        torch.save(payload, tmp_path / f"{name}.pt")
        return f"ckpt:{name}"

    cases = {
        write("nodict", [1, 2, 3]): "config, model_state_dict",
        write("noarch", {"config": {"classes": ["a"]}, "model_state_dict": state}): "lacks",
        write(
            "wrongarch", {"config": default_config("resnet50", (16, 64)), "model_state_dict": state}
        ): "does not fit",
        write(
            "badclasses",
            {"config": {**config, "boundary_classes": ["nope"]}, "model_state_dict": state},
        ): "boundary_classes",
        write(
            "nan",
            {
                "config": config,
                "model_state_dict": {
                    **state,
                    "head.0.bias": torch.full_like(state["head.0.bias"], float("nan")),
                },
            },
        ): "non-finite",
    }
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "nodict.pt").read_bytes()[:40])
    cases["ckpt:truncated"] = "unreadable"
    (tmp_path / "nometa.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    cases["ckpt:nometa"] = "unreadable as safetensors"
    for version, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            get_model(version, tmp_path)
    # Two files for one name: which one runs must never be a guess.
    (tmp_path / "nodict.npz").write_bytes(b"")
    with pytest.raises(CheckpointError, match="ambiguous"):
        get_model("ckpt:nodict", tmp_path)
    with pytest.raises(CheckpointError, match="suffix"):
        inspect_checkpoint(tmp_path / "model.onnx")


@pytest.mark.slow  # trains, or starts a child process with torch: seconds each
def test_lora_adapters_round_trip(tmp_path: Path, held_out: tuple[Path, GroundTruth]) -> None:
    config = {
        **default_config("resnet18", (16, 64)),
        "lora": {"r": 4, "alpha": 8, "target_modules": ["layer4.0.conv1"]},
    }
    torch.manual_seed(1)
    module = build_module(config, ("modal_app",))
    lora_keys = [k for k in module.state_dict() if "lora_" in k]
    assert lora_keys and all("layer4.0.conv1" in k for k in lora_keys)
    with torch.no_grad():  # peft starts B at zero; make the adapter change the output
        for name, parameter in module.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    module.eval()
    save_torch_checkpoint(module, config, tmp_path / "adapted.safetensors")
    a, b = _crops(held_out, 16)
    reference = TorchPairModel(
        "x", module, config, plan_execution(cuda_available=False, bf16_supported=False)
    )
    loaded = get_model("ckpt:adapted", tmp_path)
    np.testing.assert_allclose(loaded.predict_proba(a, b), reference.predict_proba(a, b), atol=1e-6)
    assert inspect_checkpoint(tmp_path / "adapted.safetensors").config["lora"]["r"] == 4


# --- Device and precision -------------------------------------------------------------------------


def test_a_gpu_container_runs_the_model_on_cuda_in_fp16() -> None:
    cuda = plan_execution(cuda_available=True, bf16_supported=True)
    assert cuda == ExecutionPlan("cuda", "float16", pin_memory=True, non_blocking=True)
    assert (
        plan_execution(cuda_available=True, bf16_supported=True, precision="bf16").autocast_dtype
        == "bfloat16"
    )
    assert (
        plan_execution(cuda_available=True, bf16_supported=False, precision="bf16").autocast_dtype
        == "float16"
    )
    assert (
        plan_execution(cuda_available=True, bf16_supported=True, precision="fp32").autocast_dtype
        is None
    )
    cpu = plan_execution(cuda_available=False, bf16_supported=False, precision="fp16")
    assert cpu == ExecutionPlan("cpu", None, pin_memory=False, non_blocking=False)
    with pytest.raises(ValueError, match="precision"):
        plan_execution(cuda_available=True, bf16_supported=True, precision="int8")
    # What this process's torch would choose, with a GPU and without one.
    assert (
        plan_for_this_machine(cuda_available=lambda: True, bf16_supported=lambda: False).device
        == "cuda"
    )
    assert plan_for_this_machine().device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_the_function_body_moves_the_model_to_cuda_when_torch_sees_a_gpu(
    reference_checkpoint: tuple[Path, dict[str, Any]],
    held_out: tuple[Path, GroundTruth],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With CUDA reported present, loading goes to the GPU: on this machine, which has no NVIDIA
    driver, that is where it fails (on a GPU container it is where it runs)."""
    if torch.cuda.is_available():  # a real GPU: the job itself is the proof
        out = run_call(
            _request(held_out, "ckpt:ref").to_dict(),
            store={},
            max_attempts=3,
            models_dir=reference_checkpoint[0],
        )
        assert out["metrics"]["device"] == "cuda/float16"
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    store: dict[str, Any] = {}
    out = run_call(
        _request(held_out, "ckpt:ref").to_dict(),
        store=store,
        max_attempts=3,
        models_dir=reference_checkpoint[0],
    )
    # A failure that would repeat is returned typed after one attempt (never left to Modal's
    # retries): here torch's own error from moving the model to CUDA.
    failed = out[FAILED]
    assert failed["kind"] == "code_error" and failed["attempts"] == 1, failed
    assert re.search(r"(?i)cuda|nvidia|driver", failed["message"]), failed


def test_the_autocast_path_runs_and_agrees_with_float32(
    reference_checkpoint: tuple[Path, dict[str, Any]], held_out: tuple[Path, GroundTruth]
) -> None:
    """The autocast branch, exercised on the CPU with bfloat16 (CUDA takes float16 the same way)."""
    loaded = load_torch_checkpoint(reference_checkpoint[0] / "ref.pt")
    fp32 = TorchPairModel(
        "r", loaded.module, loaded.config, ExecutionPlan("cpu", None, False, False)
    )
    bf16 = TorchPairModel(
        "r", loaded.module, loaded.config, ExecutionPlan("cpu", "bfloat16", False, False)
    )
    a, b = _crops(held_out)
    exact, reduced = fp32.predict_proba(a, b), bf16.predict_proba(a, b)
    assert reduced.dtype == np.float32 and not np.array_equal(exact, reduced)  # it did run in bf16
    assert np.abs(exact - reduced).max() < 0.15
    assert ((exact >= 0.5) == (reduced >= 0.5)).mean() >= 0.95


# --- The benchmark --------------------------------------------------------------------------------


@pytest.mark.slow  # trains, or starts a child process with torch: seconds each
def test_bench_model_prints_quality_throughput_and_the_decode_model_split(
    reference_checkpoint: tuple[Path, dict[str, Any]],
) -> None:
    models_dir, _ = reference_checkpoint
    args = ["--inference", "--model", "ckpt:ref", "--models-dir", str(models_dir)]
    result = CliRunner().invoke(bench_app, [*args, "--pairs", "120", "--json"])
    assert result.exit_code == 0, result.output
    numbers = json.loads(result.stdout)
    assert numbers["cpu"]["pairs"] == 120 and numbers["cpu"]["pairs_per_s"] > 0
    assert numbers["cpu"]["decode_s"] > 0 and numbers["cpu"]["model_s"] > 0
    assert 0 <= numbers["quality"]["f1"] <= 1 and numbers["boundaries"] >= 1
    assert numbers["backbone"] == "resnet18"
    if not torch.cuda.is_available():
        assert numbers["gpu"] == {
            "available": False,
            "reason": "no GPU available: torch sees no CUDA device",
        }
    text = CliRunner().invoke(bench_app, [*args, "--pairs", "40"])
    assert text.exit_code == 0, text.output
    assert "F1" in text.stdout and "pairs/s including decode" in text.stdout
    assert "decode/model" in text.stdout and "GPU" in text.stdout
    missing = CliRunner().invoke(
        bench_app, ["--inference", "--model", "ckpt:absent", "--models-dir", str(models_dir)]
    )
    assert missing.exit_code == 2 and "no checkpoint absent" in missing.stdout


@pytest.mark.slow  # trains, or starts a child process with torch: seconds each
def test_the_local_executor_runs_the_checkpoint_in_its_child_process(
    reference_checkpoint: tuple[Path, dict[str, Any]],
    held_out: tuple[Path, GroundTruth],
    tmp_path: Path,
) -> None:
    from boundary_inference.executor import CallState, LocalExecutor

    executor = LocalExecutor(tmp_path / "jobs", models_dir=reference_checkpoint[0])
    call_id = executor.submit(
        _request(held_out, "ckpt:ref", frame_pairs=[(i, i + 1) for i in range(60)])
    )
    end = time.monotonic() + 240  # bounds a failing test on a loaded machine; measures nothing
    status = executor.poll(call_id, timeout_s=0.5)
    while status.state is CallState.PENDING and time.monotonic() < end:
        status = executor.poll(call_id, timeout_s=0.5)
    assert status.state is CallState.SUCCEEDED, status.failure
    assert status.result is not None and len(status.result.predictions) == 60
    assert status.result.metrics.device == "cpu/float32"
