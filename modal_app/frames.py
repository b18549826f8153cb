"""Read the frames a request needs, once each, cropped to the caption region, in bounded memory.

Frames are decoded in order; a decoded frame is kept only while a pending pair still needs it, so
consecutive pairs (which share all but one frame) decode N+1 frames for N pairs and hold two.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modal_app.errors import CorruptVideo, EmptyCrop, FrameOutOfRange, VideoNotFound
from modal_app.types import CropBox


@dataclass(frozen=True)
class VideoInfo:
    frame_count: int
    fps: float
    width: int
    height: int
    codec: str = ""


def _open(path: Path) -> Any:
    import av

    if not path.exists():
        raise VideoNotFound(f"video file not found: {path}")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise CorruptVideo(f"cannot decode {path}: {error}") from error


def probe_video(path: Path | str) -> VideoInfo:
    """Frame count (counted by demuxing when the container does not say), fps and size."""
    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            raise CorruptVideo(f"{path} has no video stream")
        stream = container.streams.video[0]
        count = int(stream.frames or 0)
        if count <= 0:
            count = sum(1 for packet in container.demux(stream) if packet.size)
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        return VideoInfo(
            count, fps, int(stream.codec_context.width), int(stream.codec_context.height)
        )
    except CorruptVideo:
        raise
    except Exception as error:
        raise CorruptVideo(f"cannot read {path}: {error}") from error
    finally:
        container.close()


def inspect_video(path: Path | str) -> VideoInfo:
    """What registration records, checked harder than :func:`probe_video`.

    A video stream must exist (an audio-only file is refused), every packet is counted (a file
    cut short holds fewer than its header declares: refused), and the first frame must decode.
    Raises :class:`CorruptVideo` or :class:`VideoNotFound`.
    """
    import av

    path = Path(path)
    container = _open(path)
    try:
        if not container.streams.video:
            audio = " (it has only audio)" if container.streams.audio else ""
            raise CorruptVideo(f"{path.name} has no video stream{audio}")
        stream = container.streams.video[0]
        declared = int(stream.frames or 0)
        packets = sum(1 for packet in container.demux(stream) if packet.size)
        codec = str(stream.codec_context.name or "")
        width, height = int(stream.codec_context.width), int(stream.codec_context.height)
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
    except CorruptVideo:
        raise
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise CorruptVideo(f"cannot read {path.name}: {error}") from error
    finally:
        container.close()
    if packets == 0:
        raise CorruptVideo(f"{path.name} has a video stream with no frames")
    if declared and packets < declared:
        raise CorruptVideo(
            f"{path.name} declares {declared} frames but holds {packets}: the file is cut short"
        )
    if width <= 0 or height <= 0:
        raise CorruptVideo(f"{path.name} has no frame size ({width}x{height})")
    container = _open(path)
    try:
        first = next(container.decode(video=0), None)
    except (av.error.FFmpegError, OSError, ValueError) as error:
        raise CorruptVideo(f"{path.name}: the first frame does not decode: {error}") from error
    finally:
        container.close()
    if first is None:
        raise CorruptVideo(f"{path.name}: no frame decodes")
    return VideoInfo(declared or packets, fps, width, height, codec)


@dataclass
class DecodeStats:
    frames_decoded: int = 0
    decode_s: float = 0.0
    peak_cached_frames: int = 0
    decoded_indices: list[int] = field(default_factory=list)


def _crop_bounds(crop: CropBox | None, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the crop clipped to the frame; the whole frame without a crop."""
    if crop is None:
        return 0, 0, width, height
    x0, y0 = max(0, crop.x), max(0, crop.y)
    x1, y1 = min(width, crop.x + crop.width), min(height, crop.y + crop.height)
    if crop.width <= 0 or crop.height <= 0 or x1 <= x0 or y1 <= y0:
        raise EmptyCrop(f"crop box {crop} is empty within a {width}x{height} frame")
    return x0, y0, x1, y1


def _crop(image: np.ndarray, crop: CropBox | None) -> np.ndarray:
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _crop_bounds(crop, width, height)
    return image[y0:y1, x0:x1]


# 8-bit formats whose first plane is the luma at full resolution. Limited ("TV") range luma
# (16..235) is stretched to 0..255 exactly as swscale's conversion to "gray" does (checked equal
# on every pixel of the synthetic videos), so both paths give the same bytes.
_LIMITED_RANGE_LUMA = frozenset({"yuv420p", "yuv422p", "yuv444p", "yuv440p", "nv12", "nv21"})
_FULL_RANGE_LUMA = frozenset({"yuvj420p", "yuvj422p", "yuvj444p", "yuvj440p", "gray"})
_JPEG_RANGE = 2  # AVCOL_RANGE_JPEG
_TV_TO_FULL = np.clip(np.round((np.arange(256) - 16) * 255 / 219), 0, 255).astype(np.uint8)


def _grey_crop(frame: Any, crop: CropBox | None) -> np.ndarray:
    """The crop of a decoded frame as grey levels, converting only the cropped pixels.

    Converting the whole frame to grey first (``to_ndarray(format="gray")``) cost about seven
    times the decoding itself; reading the luma plane and converting the crop does not.
    """
    name = frame.format.name
    if name not in _LIMITED_RANGE_LUMA and name not in _FULL_RANGE_LUMA:
        return np.array(_crop(frame.to_ndarray(format="gray"), crop))
    x0, y0, x1, y1 = _crop_bounds(crop, int(frame.width), int(frame.height))
    plane = frame.planes[0]
    luma = np.frombuffer(plane, dtype=np.uint8).reshape(-1, plane.line_size)[y0:y1, x0:x1]
    if name in _FULL_RANGE_LUMA or getattr(frame, "color_range", 0) == _JPEG_RANGE:
        return np.array(luma)  # a copy: the plane's memory belongs to the decoder
    return _TV_TO_FULL[luma]


class FrameSource:
    """Yields batches of (pair, frame1, frame2) for the given pairs, decoding each frame once."""

    def __init__(self, path: Path | str, crop_box: CropBox | None) -> None:
        self.path = Path(path)
        self.crop_box = crop_box
        self.stats = DecodeStats()

    def iter_pairs(
        self, pairs: Sequence[tuple[int, int]], batch_size: int
    ) -> Iterator[list[tuple[tuple[int, int], np.ndarray, np.ndarray]]]:
        """Batches in the order frames become available (pairs sorted by their later frame)."""
        if not pairs:
            return
        negative = next((pair for pair in pairs if min(pair) < 0), None)
        if negative is not None:
            raise FrameOutOfRange(f"frame pair {negative} has a negative frame index")
        # A pair is ready once its later frame is decoded (pairs need not be ordered f1 < f2).
        order = sorted(range(len(pairs)), key=lambda i: (max(pairs[i]), min(pairs[i])))
        last_use: dict[int, int] = {}
        for rank, i in enumerate(order):
            f1, f2 = pairs[i]
            last_use[f1] = max(last_use.get(f1, -1), rank)
            last_use[f2] = max(last_use.get(f2, -1), rank)
        needed_max = max(last_use)
        cache: dict[int, np.ndarray] = {}
        batch: list[tuple[tuple[int, int], np.ndarray, np.ndarray]] = []
        rank = 0
        container = _open(self.path)
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            index = -1
            started = time.perf_counter()
            try:
                for frame in container.decode(stream):
                    index += 1
                    if index in last_use:
                        cache[index] = _grey_crop(frame, self.crop_box)
                        self.stats.frames_decoded += 1
                        self.stats.decoded_indices.append(index)
                        self.stats.peak_cached_frames = max(
                            self.stats.peak_cached_frames, len(cache)
                        )
                    self.stats.decode_s += time.perf_counter() - started
                    while rank < len(order) and max(pairs[order[rank]]) <= index:
                        pair = pairs[order[rank]]
                        batch.append((pair, cache[pair[0]], cache[pair[1]]))
                        for f in pair:
                            if last_use[f] == rank:
                                cache.pop(f, None)
                        rank += 1
                        if len(batch) >= batch_size:
                            yield batch
                            batch = []
                    if index >= needed_max:
                        break
                    started = time.perf_counter()
            except (EmptyCrop, FrameOutOfRange):
                raise
            except Exception as error:
                if index < 0:
                    raise CorruptVideo(f"cannot decode {self.path}: {error}") from error
                raise CorruptVideo(
                    f"decoding {self.path} failed after frame {index}: {error}"
                ) from error
            if rank < len(order):
                missing = pairs[order[rank]]
                raise FrameOutOfRange(
                    f"frame {max(missing)} requested but {self.path.name} has only {index + 1} frames"
                    f" (valid indices 0..{index})"
                )
            if batch:
                yield batch
        finally:
            container.close()
