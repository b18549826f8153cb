"""Frame source: real decoding of real files, caption crop, each frame decoded once, bounded cache,
and a typed error for every way a video can be wrong."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from modal_app.errors import (
    CorruptVideo,
    EmptyCrop,
    FrameOutOfRange,
    InferenceError,
    VideoNotFound,
)
from modal_app.frames import FrameSource, probe_video
from modal_app.synthetic import GroundTruth, make_video
from modal_app.types import CropBox

FRAMES = 90
WIDTH, HEIGHT = 192, 108


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect (saves 10-20 s)."""


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    path = tmp_path_factory.mktemp("frames") / "v.mp4"
    return path, make_video(path, seed=21, frame_count=FRAMES, width=WIDTH, height=HEIGHT)


@pytest.fixture(scope="module")
def grey_frames(video: tuple[Path, GroundTruth]) -> list[np.ndarray]:
    """Every frame, whole, converted by FFmpeg's own scaler: the reference the source must match."""
    with av.open(str(video[0])) as container:
        return [f.to_ndarray(format="gray") for f in container.decode(container.streams.video[0])]


def _collect(
    source: FrameSource, pairs: list[tuple[int, int]], batch_size: int
) -> list[list[tuple[tuple[int, int], np.ndarray, np.ndarray]]]:
    return list(source.iter_pairs(pairs, batch_size))


def test_probe(video: tuple[Path, GroundTruth]) -> None:
    info = probe_video(video[0])
    assert (info.frame_count, info.width, info.height) == (FRAMES, WIDTH, HEIGHT)
    assert info.fps == pytest.approx(30.0)


def test_crop_is_the_caption_band_in_grey(
    video: tuple[Path, GroundTruth], grey_frames: list[np.ndarray]
) -> None:
    path, truth = video
    box = truth.crop_box
    pairs = [(i, i + 1) for i in range(FRAMES - 1)]
    for batch in _collect(FrameSource(path, box), pairs, 16):
        for (f1, f2), a, b in batch:
            assert a.shape == b.shape == (box.height, box.width) and a.dtype == np.uint8
            expected_a = grey_frames[f1][box.y : box.y + box.height, box.x : box.x + box.width]
            expected_b = grey_frames[f2][box.y : box.y + box.height, box.x : box.x + box.width]
            np.testing.assert_array_equal(a, expected_a)
            np.testing.assert_array_equal(b, expected_b)


def test_no_crop_gives_the_whole_frame_and_a_partial_crop_is_clipped(
    video: tuple[Path, GroundTruth], grey_frames: list[np.ndarray]
) -> None:
    path, _ = video
    ((_, whole, _),) = _collect(FrameSource(path, None), [(3, 4)], 8)[0]
    np.testing.assert_array_equal(whole, grey_frames[3])
    box = CropBox(x=WIDTH - 10, y=-5, width=50, height=20)
    ((_, corner, _),) = _collect(FrameSource(path, box), [(3, 4)], 8)[0]
    np.testing.assert_array_equal(corner, grey_frames[3][0:15, WIDTH - 10 : WIDTH])


def test_consecutive_pairs_decode_each_frame_once_and_hold_two(
    video: tuple[Path, GroundTruth],
) -> None:
    path, truth = video
    source = FrameSource(path, truth.crop_box)
    pairs = [(i, i + 1) for i in range(FRAMES - 1)]
    batches = _collect(source, pairs, 32)
    assert [len(b) for b in batches] == [32, 32, FRAMES - 1 - 64]
    assert [pair for batch in batches for pair, _, _ in batch] == pairs
    assert source.stats.frames_decoded == FRAMES  # N + 1 frames for N pairs
    assert source.stats.decoded_indices == list(range(FRAMES))
    assert source.stats.peak_cached_frames <= 2
    assert source.stats.decode_s > 0
    # Shared frames are shared: the second frame of a pair is the first frame of the next.
    flat = [item for batch in batches for item in batch]
    for (_, _, b), (_, a, _) in itertools.pairwise(flat):
        np.testing.assert_array_equal(a, b)


def test_only_needed_frames_are_converted_and_the_cache_stays_bounded(
    video: tuple[Path, GroundTruth],
) -> None:
    path, truth = video
    sparse = FrameSource(path, truth.crop_box)
    _collect(sparse, [(2, 5), (5, 9), (40, 41)], 8)
    assert sparse.stats.decoded_indices == [2, 5, 9, 40, 41]
    # Frame 0 is needed until the end, each other frame once: the cache never holds more than 2.
    anchored = FrameSource(path, truth.crop_box)
    _collect(anchored, [(0, k) for k in range(1, FRAMES)], 16)
    assert anchored.stats.frames_decoded == FRAMES
    assert anchored.stats.peak_cached_frames == 2
    # A window of 10: a frame waits at most for the 10 decoded after it.
    window = FrameSource(path, truth.crop_box)
    _collect(window, [(i, i + 10) for i in range(FRAMES - 10)], 16)
    assert window.stats.frames_decoded == FRAMES
    assert 10 <= window.stats.peak_cached_frames <= 11


def test_unordered_reversed_and_repeated_pairs(
    video: tuple[Path, GroundTruth], grey_frames: list[np.ndarray]
) -> None:
    path, _ = video
    pairs = [(30, 31), (7, 3), (1, 2), (30, 31), (12, 50)]
    source = FrameSource(path, None)
    batches = _collect(source, pairs, 2)
    assert all(1 <= len(batch) <= 2 for batch in batches)
    seen = [item for batch in batches for item in batch]
    assert Counter(pair for pair, _, _ in seen) == Counter(pairs)
    for (f1, f2), a, b in seen:
        np.testing.assert_array_equal(a, grey_frames[f1])
        np.testing.assert_array_equal(b, grey_frames[f2])
    # Eight distinct frames, each converted once although 30 and 31 serve two pairs.
    assert source.stats.decoded_indices == [1, 2, 3, 7, 12, 30, 31, 50]


def test_empty_pairs_decode_nothing(video: tuple[Path, GroundTruth]) -> None:
    source = FrameSource(video[0], None)
    assert _collect(source, [], 8) == []
    assert source.stats.frames_decoded == 0


# --- typed errors ---------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(VideoNotFound, match="not found") as caught:
        _collect(FrameSource(missing, None), [(0, 1)], 8)
    assert caught.value.kind == "video_not_found"
    with pytest.raises(VideoNotFound):
        probe_video(missing)


@pytest.mark.parametrize("content", ["garbage", "empty", "truncated"])
def test_corrupt_file(content: str, video: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    if content == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, np.uint8).tobytes())
    elif content == "empty":
        bad.write_bytes(b"")
    else:
        data = video[0].read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptVideo) as caught:
        _collect(FrameSource(bad, None), [(0, 1)], 8)
    assert caught.value.kind == "corrupt_video"
    with pytest.raises(CorruptVideo):
        probe_video(bad)


@pytest.mark.parametrize(
    "box",
    [
        CropBox(0, 0, 0, 10),  # no width
        CropBox(0, 0, 10, -1),  # negative height
        CropBox(WIDTH + 5, 0, 20, 20),  # right of the frame
        CropBox(0, HEIGHT, 20, 20),  # below the frame
        CropBox(-50, 0, 40, 20),  # left of the frame
    ],
)
def test_empty_crop(box: CropBox, video: tuple[Path, GroundTruth]) -> None:
    with pytest.raises(EmptyCrop) as caught:
        _collect(FrameSource(video[0], box), [(0, 1)], 8)
    assert caught.value.kind == "empty_crop"


@pytest.mark.parametrize("pair", [(0, FRAMES), (FRAMES - 1, FRAMES + 100), (-1, 3)])
def test_frame_out_of_range(pair: tuple[int, int], video: tuple[Path, GroundTruth]) -> None:
    source = FrameSource(video[0], video[1].crop_box)
    with pytest.raises(FrameOutOfRange) as caught:
        _collect(source, [(0, 1), pair], 1)
    assert caught.value.kind == "frame_out_of_range"
    if min(pair) >= 0:
        assert f"only {FRAMES} frames" in str(caught.value)


def test_every_error_is_an_inference_error_with_a_distinct_kind() -> None:
    kinds = {cls.kind for cls in (VideoNotFound, CorruptVideo, EmptyCrop, FrameOutOfRange)}
    assert len(kinds) == 4
    for cls in (VideoNotFound, CorruptVideo, EmptyCrop, FrameOutOfRange):
        assert issubclass(cls, InferenceError)
