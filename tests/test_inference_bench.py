"""The inference benchmark runs end to end at a tiny size and returns sane numbers."""

from __future__ import annotations

import json
import math

import pytest

from benches.inference import format_report, main, run_inference_bench


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


def test_bench_at_a_tiny_size(capsys: pytest.CaptureFixture[str]) -> None:
    numbers = run_inference_bench(120, seed=3)
    assert numbers["pairs"] == 120
    assert numbers["frames_decoded"] == 121
    for model in ("builtin", "checkpoint"):
        quality = numbers[model]
        assert 0.0 <= quality["precision"] <= 1.0 and 0.0 <= quality["recall"] <= 1.0
        assert quality["tp"] + quality["fn"] == numbers["boundaries"] > 0
    assert numbers["builtin"]["f1"] >= 0.9
    for key in ("pairs_per_s", "total_s", "decode_only_s", "model_s", "one_pass_s"):
        assert math.isfinite(numbers[key]) and numbers[key] > 0, key
    assert numbers["total_over_decode"] == pytest.approx(
        numbers["total_s"] / numbers["decode_only_s"]
    )
    assert numbers["model_over_one_pass"] == pytest.approx(
        numbers["model_s"] / numbers["one_pass_s"]
    )
    gpu = numbers["gpu"]
    assert gpu["available"] or gpu["reason"].startswith("no GPU available")
    report = format_report(numbers)
    assert "F1" in report and "pairs/s" in report and "GPU" in report

    assert main(["--pairs", "40", "--json", "--no-gpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["pairs"] == 40 and printed["gpu"]["available"] is False
