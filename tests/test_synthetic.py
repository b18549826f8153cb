"""The synthetic videos: deterministic from the seed, and their ground truth is what they show."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from modal_app.frames import FrameSource, probe_video
from modal_app.models import TEXT_THRESHOLD
from modal_app.synthetic import GroundTruth, make_video, render_frames

FRAMES = 150
SIZE = {"width": 192, "height": 108}


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


def _decode_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("syn") / "v.mp4"
    return path, make_video(path, seed=5, frame_count=FRAMES, **SIZE)


def test_same_seed_gives_same_truth_and_same_pixels() -> None:
    truth_a, frames_a = render_frames(seed=5, frame_count=40, **SIZE)
    truth_b, frames_b = render_frames(seed=5, frame_count=40, **SIZE)
    assert truth_a == truth_b
    first, second = [f.copy() for f in frames_a], [f.copy() for f in frames_b]
    assert len(first) == len(second) == 40
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert not np.array_equal(first[0], first[1]), "the background must move every frame"


def test_same_seed_gives_same_truth_and_same_decoded_frames(
    video: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    path, truth = video
    again = make_video(tmp_path / "again.mp4", seed=5, frame_count=FRAMES, **SIZE)
    assert again == truth
    first, second = _decode_rgb(path), _decode_rgb(tmp_path / "again.mp4")
    assert len(first) == len(second) == FRAMES
    band = truth.crop_box
    for a, b in zip(first, second, strict=True):
        # libx264 may differ by codec noise between runs (seen: mean 1.03 of 255, with or
        # without threads); the picture and the text may not.
        assert np.abs(a.astype(np.int16) - b).mean() < 2.5
        text_a = a[band.y :, :, 0] > TEXT_THRESHOLD
        text_b = b[band.y :, :, 0] > TEXT_THRESHOLD
        assert (text_a != text_b).sum() <= 0.01 * text_a.size


def test_decoded_frames_are_the_rendered_frames(video: tuple[Path, GroundTruth]) -> None:
    path, _ = video
    _, rendered = render_frames(seed=5, frame_count=FRAMES, **SIZE)
    for decoded, pixels in zip(_decode_rgb(path), rendered, strict=True):
        assert np.abs(decoded.astype(np.int16) - pixels).mean() < 4.0


def test_another_seed_gives_other_captions(video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    _, truth = video
    other = make_video(tmp_path / "other.mp4", seed=6, frame_count=FRAMES, **SIZE)
    assert other.captions != truth.captions
    assert other.crop_box == truth.crop_box


def test_truth_is_consistent(video: tuple[Path, GroundTruth]) -> None:
    _, truth = video
    assert len(truth.captions) == FRAMES
    boundaries = truth.boundary_frames
    assert boundaries, "a 150-frame video with ~30-frame captions must change caption"
    for i in range(1, FRAMES):
        assert (i in boundaries) == (truth.captions[i] != truth.captions[i - 1])
    pairs = [(i, i + 1) for i in range(FRAMES - 1)]
    assert [i + 1 for i, is_b in enumerate(truth.labels_for(pairs)) if is_b] == boundaries
    # Non-adjacent pairs: a boundary iff the captions differ, whatever lies between.
    assert truth.labels_for([(0, 0), (0, FRAMES - 1)]) == [
        False,
        truth.captions[0] != truth.captions[-1],
    ]


def test_file_has_the_requested_shape(video: tuple[Path, GroundTruth]) -> None:
    path, truth = video
    info = probe_video(path)
    assert (info.frame_count, info.width, info.height) == (FRAMES, 192, 108)
    assert info.fps == pytest.approx(truth.fps)
    box = truth.crop_box
    assert box.x == 0 and box.width == 192 and box.y + box.height == 108 and box.height > 10


def test_caption_band_shows_text_exactly_when_the_truth_says(
    video: tuple[Path, GroundTruth],
) -> None:
    path, truth = video
    pairs = [(i, i + 1) for i in range(FRAMES - 1)]
    crops: dict[int, np.ndarray] = {}
    for batch in FrameSource(path, truth.crop_box).iter_pairs(pairs, 64):
        for (f1, f2), a, b in batch:
            crops[f1], crops[f2] = a, b
    assert sorted(crops) == list(range(FRAMES))
    with_text = [i for i, text in enumerate(truth.captions) if text]
    without = [i for i, text in enumerate(truth.captions) if not text]
    assert with_text
    for i in with_text:
        assert (crops[i] > TEXT_THRESHOLD).sum() > 20, (
            f"frame {i} should show {truth.captions[i]!r}"
        )
    for i in without:
        assert (crops[i] > TEXT_THRESHOLD).sum() == 0, f"frame {i} should show no caption"
