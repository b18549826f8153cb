"""Synthetic videos with caption text that changes at known frames: ground truth for tests, the
demo and the benchmarks. Truth and pixels are deterministic from the seed; encoded as a real H.264
(or MPEG-4) file."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from modal_app.types import CropBox

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "lazy",
    "dog",
    "caption",
    "river",
    "light",
    "north",
    "table",
    "seven",
    "orange",
    "window",
    "music",
    "paper",
    "garden",
    "silver",
    "coffee",
    "stone",
    "winter",
    "market",
    "bridge",
    "yellow",
]


@dataclass(frozen=True)
class GroundTruth:
    captions: list[str]  # caption text shown on each frame ("" = none)
    crop_box: CropBox  # the caption band
    fps: float

    @property
    def boundary_frames(self) -> list[int]:
        """Frames whose caption differs from the previous frame's."""
        return [i for i in range(1, len(self.captions)) if self.captions[i] != self.captions[i - 1]]

    def labels_for(self, pairs: Sequence[tuple[int, int]]) -> list[bool]:
        """A pair is a boundary iff the caption differs between its two frames."""
        return [self.captions[a] != self.captions[b] for a, b in pairs]


def _captions(rng: np.random.Generator, frame_count: int, mean_caption_frames: int) -> list[str]:
    captions: list[str] = []
    previous = None
    while len(captions) < frame_count:
        length = max(3, int(rng.exponential(mean_caption_frames)))
        if previous != "" and rng.random() < 0.2:
            text = ""  # a gap with no caption
        else:
            text = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 5))))
            if text == previous:
                text += " again"
        captions.extend([text] * length)
        previous = text
    return captions[:frame_count]


def render_frames(
    *,
    seed: int,
    frame_count: int = 300,
    fps: float = 30.0,
    width: int = 320,
    height: int = 180,
    mean_caption_frames: int = 30,
) -> tuple[GroundTruth, Iterator[np.ndarray]]:
    """The truth and the RGB frames (``(height, width, 3)`` uint8) that show it, from the seed.

    Everything here is a pure function of the arguments: same seed, same truth, same pixels.
    """
    rng = np.random.default_rng(seed)
    captions = _captions(rng, frame_count, mean_caption_frames)
    band_top = int(height * 0.74)
    band = CropBox(0, band_top, width, height - band_top)
    truth = GroundTruth(captions=captions, crop_box=band, fps=fps)

    def frames() -> Iterator[np.ndarray]:
        font = ImageFont.load_default(size=max(10, band.height // 2))
        # The background is separable (red varies along x, green along y, blue along x + y), so
        # a frame is built from 1-D rows broadcast over it: exactly the values of the full-grid
        # formulas at a fraction of the cost (rendering used to dominate generating long videos).
        x = np.arange(width)[np.newaxis, :]
        y = np.arange(height)[:, np.newaxis]
        diagonal = ((x + y) % 256).astype(np.uint8)  # uint8 addition below wraps modulo 256
        rendered: dict[str, np.ndarray] = {}
        for i, text in enumerate(captions):
            # A background that moves every frame, so "the picture changed" is not "the caption
            # changed": only the caption band decides a boundary.
            phase = i * 0.15
            pixels = np.empty((height, width, 3), dtype=np.uint8)
            pixels[..., 0] = (127 + 100 * np.sin(x / 23.0 + phase)).astype(np.uint8)
            pixels[..., 1] = (127 + 100 * np.cos(y / 17.0 - phase)).astype(np.uint8)
            np.add(diagonal, np.uint8(i * 3 % 256), out=pixels[..., 2])
            if text not in rendered:
                strip = Image.new("RGB", (band.width, band.height), (16, 16, 16))
                if text:
                    ImageDraw.Draw(strip).text(
                        (band.width // 2, band.height // 2),
                        text,
                        fill=(250, 250, 250),
                        font=font,
                        anchor="mm",
                    )
                rendered[text] = np.asarray(strip)
            pixels[band.y : band.y + band.height, band.x : band.x + band.width] = rendered[text]
            yield pixels

    return truth, frames()


def make_video(
    path: Path,
    *,
    seed: int,
    frame_count: int = 300,
    fps: float = 30.0,
    width: int = 320,
    height: int = 180,
    mean_caption_frames: int = 30,
) -> GroundTruth:
    """Render ``frame_count`` frames (moving background, caption band) to ``path``.

    The truth and the rendered pixels are exact functions of the seed; the encoded bytes are not
    quite: libx264 output was seen to vary slightly between runs with identical input (even with
    one thread), so two files made from one seed decode to frames that agree to within the
    codec's noise (the caption text masks agree exactly), not bit for bit.
    """
    import av

    truth, frames = render_frames(
        seed=seed,
        frame_count=frame_count,
        fps=fps,
        width=width,
        height=height,
        mean_caption_frames=mean_caption_frames,
    )
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        # The codec name is chosen at run time, so the stubs cannot narrow this to a video stream.
        stream: Any = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        for pixels in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return truth
