"""Model registry: the builtin needs nothing but NumPy, a checkpoint is a real file built here,
unknown versions fail typed, and both models find the caption boundaries of a synthetic video."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modal_app.errors import CheckpointError, UnknownModel
from modal_app.frames import FrameSource
from modal_app.models import (
    BUILTIN,
    BUILTIN_MODEL,
    FEATURES,
    TEXT_THRESHOLD,
    LogisticModel,
    fit_logistic,
    get_model,
    inspect_checkpoint,
    is_known_model_version,
    load_checkpoint,
    pair_features,
)
from modal_app.synthetic import GroundTruth, make_video

SIZE = {"width": 192, "height": 108}


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


def _crops(
    path: Path, truth: GroundTruth, pairs: list[tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, labels) for ``pairs``, in the order given."""
    by_pair: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    for batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, 64):
        for pair, a, b in batch:
            by_pair[pair] = (a, b)
    a = np.stack([by_pair[p][0] for p in pairs])
    b = np.stack([by_pair[p][1] for p in pairs])
    return a, b, np.array(truth.labels_for(pairs))


def _f1(predicted: np.ndarray, actual: np.ndarray) -> float:
    tp = int((predicted & actual).sum())
    fp = int((predicted & ~actual).sum())
    fn = int((~predicted & actual).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("train") / "t.mp4"
    truth = make_video(path, seed=11, frame_count=200, **SIZE)
    pairs = [(i, i + 1) for i in range(199)] + [(i, i + 15) for i in range(0, 185, 3)]
    return _crops(path, truth, pairs)


@pytest.fixture(scope="module")
def held_out(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    path = tmp_path_factory.mktemp("eval") / "e.mp4"
    truth = make_video(path, seed=12, frame_count=240, **SIZE)
    return _crops(path, truth, [(i, i + 1) for i in range(239)])


@pytest.fixture(scope="module")
def models_dir(
    tmp_path_factory: pytest.TempPathFactory, train: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> Path:
    directory = tmp_path_factory.mktemp("models")
    fit_logistic("tiny", *train).save(directory / "tiny.npz")
    return directory


def test_known_versions() -> None:
    assert is_known_model_version(BUILTIN)
    assert is_known_model_version("ckpt:tiny-v2.1_a")
    for bad in ("builtin", "ckpt:", "ckpt:../etc/passwd", "ckpt:a/b", "ckpt:.hidden", ""):
        assert not is_known_model_version(bad), bad


def test_builtin_loads_without_torch() -> None:
    code = (
        "import sys, numpy as np\n"
        "from modal_app.models import BUILTIN, get_model\n"
        "m = get_model(BUILTIN)\n"
        "a = np.zeros((2, 8, 8), np.uint8); b = a.copy(); b[1] = 255\n"
        "p = m.predict_proba(a, b)\n"
        "assert p[0] < 0.5 < p[1], p\n"
        "assert 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_unknown_model_is_a_typed_error() -> None:
    with pytest.raises(UnknownModel, match="'resnet-9000'") as caught:
        get_model("resnet-9000")
    assert caught.value.kind == "unknown_model"
    assert BUILTIN in str(caught.value)


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="models directory"):
        get_model("ckpt:tiny")
    with pytest.raises(CheckpointError, match="does not exist") as caught:
        get_model("ckpt:absent", tmp_path)
    assert caught.value.kind == "checkpoint_error"
    (tmp_path / "garbage.npz").write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="unreadable"):
        get_model("ckpt:garbage", tmp_path)
    header = np.frombuffer(json.dumps({"format": "boundary-logistic-v1"}).encode(), np.uint8)
    np.savez(tmp_path / "wide.npz", weights=np.ones(5, np.float32), bias=0.0, header=header)
    with pytest.raises(CheckpointError, match=r"expected boundary-logistic-v1"):
        get_model("ckpt:wide", tmp_path)
    np.savez(
        tmp_path / "nan.npz", weights=np.array([1, np.nan, 0], np.float32), bias=0.0, header=header
    )
    with pytest.raises(CheckpointError, match="non-finite"):
        get_model("ckpt:nan", tmp_path)
    other = np.frombuffer(json.dumps({"format": "onnx"}).encode(), np.uint8)
    np.savez(tmp_path / "onnx.npz", weights=np.ones(3, np.float32), bias=0.0, header=other)
    with pytest.raises(CheckpointError, match="'onnx'"):
        get_model("ckpt:onnx", tmp_path)


def test_checkpoint_round_trip(models_dir: Path) -> None:
    model = get_model("ckpt:tiny", models_dir)
    again = load_checkpoint(models_dir / "tiny.npz")
    assert model.name == again.name == "tiny"
    assert model.weights.shape == (len(FEATURES),)
    np.testing.assert_array_equal(model.weights, again.weights)
    assert model.bias == again.bias and model.threshold == 0.5
    info = inspect_checkpoint(models_dir / "tiny.npz")  # what the model registry checks
    assert (info.format, info.architecture, info.name) == (
        "boundary-logistic-v1",
        "logistic",
        "tiny",
    )
    path = models_dir / "copy.npz"
    LogisticModel("copy", np.array([1.5, -2.0, 0.25], np.float32), 0.75, 0.4).save(path)
    copy = get_model("ckpt:copy", models_dir)
    np.testing.assert_array_equal(copy.weights, [1.5, -2.0, 0.25])
    assert (copy.bias, copy.threshold) == (pytest.approx(0.75), pytest.approx(0.4))


def _reference_features(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The features written the slow, obvious way, one pair at a time."""
    rows = []
    for x, y in zip(a.astype(np.int64), b.astype(np.int64), strict=True):
        tx, ty = x > TEXT_THRESHOLD, y > TEXT_THRESHOLD
        union, xor = int((tx | ty).sum()), int((tx ^ ty).sum())
        rows.append(
            [
                xor / union if union else 0.0,
                abs(int(tx.sum()) - int(ty.sum())) / x.size,
                float(np.abs(x - y).mean()) / 255.0,
            ]
        )
    return np.array(rows, dtype=np.float32).reshape(-1, 3)


def test_pair_features_match_the_definition() -> None:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (9, 13, 21), dtype=np.uint8)  # odd widths: bit packing pads rows
    b = rng.integers(0, 256, (9, 13, 21), dtype=np.uint8)
    b[0] = a[0]  # identical
    a[1] = 0  # no text in either frame
    b[1] = 100
    b[2] = 255  # text everywhere in b
    np.testing.assert_allclose(pair_features(a, b), _reference_features(a, b), rtol=1e-6)
    assert pair_features(a, b)[0].tolist() == [0.0, 0.0, 0.0]
    assert pair_features(a, b)[1, 0] == 0.0
    assert pair_features(a[:0], b[:0]).shape == (0, 3)
    with pytest.raises(ValueError, match="shape"):
        pair_features(a, b[:, :5])


def test_pair_features_on_real_crops(held_out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, _ = held_out
    np.testing.assert_allclose(pair_features(a, b), _reference_features(a, b), rtol=1e-5)


def test_builtin_finds_the_boundaries(held_out: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, labels = held_out
    assert 3 <= labels.sum() < len(labels) // 4
    p = BUILTIN_MODEL.predict_proba(a, b)
    assert p.shape == (len(labels),) and np.all((p >= 0) & (p <= 1))
    assert _f1(p >= BUILTIN_MODEL.threshold, labels) >= 0.95
    # Calibrated, not just ranked: confident on both sides.
    assert np.median(p[labels]) > 0.9 and np.median(p[~labels]) < 0.1


def test_trained_checkpoint_finds_the_boundaries(
    models_dir: Path, held_out: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    a, b, labels = held_out
    model = get_model("ckpt:tiny", models_dir)
    assert model.weights[0] > 0, "text changing must push towards a boundary"
    p = model.predict_proba(a, b)
    assert _f1(p >= model.threshold, labels) >= 0.9


def test_an_untrained_checkpoint_does_not(
    tmp_path: Path, held_out: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    """The F1 checks above can fail: a model that ignores the text scores badly."""
    a, b, labels = held_out
    LogisticModel("blind", np.zeros(3, np.float32), 1.0).save(tmp_path / "blind.npz")
    model = get_model("ckpt:blind", tmp_path)
    assert _f1(model.predict_proba(a, b) >= model.threshold, labels) < 0.5
