"""Synthetic videos with caption text that changes at known frames: ground truth for tests, the
demo and the benchmarks. Deterministic from the seed; encoded as a real H.264 (or MPEG-4) file."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from modal_app.types import CropBox

_WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "caption", "river", "light", "north", "table", "seven", "orange", "window", "music", "paper", "garden", "silver", "coffee", "stone", "winter", "market", "bridge", "yellow"]


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
    """Render ``frame_count`` frames (moving background, caption band) to ``path``."""
    import av

    rng = np.random.default_rng(seed)
    captions = _captions(rng, frame_count, mean_caption_frames)
    band_top = int(height * 0.74)
    band = CropBox(0, band_top, width, height - band_top)
    font = ImageFont.load_default(size=max(10, band.height // 2))
    yy, xx = np.mgrid[0:height, 0:width]
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "veryfast"}
        else:
            stream.bit_rate = 4_000_000
        rendered: dict[str, Image.Image] = {}
        for i, text in enumerate(captions):
            # A background that moves every frame, so "the picture changed" is not "the caption
            # changed": only the caption band decides a boundary.
            phase = i * 0.15
            red = (127 + 100 * np.sin(xx / 23.0 + phase)).astype(np.uint8)
            green = (127 + 100 * np.cos(yy / 17.0 - phase)).astype(np.uint8)
            blue = ((xx + yy + i * 3) % 256).astype(np.uint8)
            image = Image.fromarray(np.dstack([red, green, blue]), "RGB")
            if text not in rendered:
                strip = Image.new("RGB", (band.width, band.height), (16, 16, 16))
                if text:
                    draw = ImageDraw.Draw(strip)
                    draw.text(
                        (band.width // 2, band.height // 2),
                        text,
                        fill=(250, 250, 250),
                        font=font,
                        anchor="mm",
                    )
                rendered[text] = strip
            image.paste(rendered[text], (band.x, band.y))
            frame = av.VideoFrame.from_image(image)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return GroundTruth(captions=captions, crop_box=band, fps=fps)
