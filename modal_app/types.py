"""Request and result of one inference job: the contract between the flow, every executor and the
GPU function. Plain dataclasses of JSON-friendly values, so they cross process and Modal boundaries
unchanged (``to_dict``/``from_dict``). No torch, no Modal import here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CropBox:
    """Caption region in pixels: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class InferenceRequest:
    run_id: str
    video_uri: str
    frame_pairs: list[tuple[int, int]]
    model_version: str
    crop_box: CropBox | None = None
    batch_size: int = 256
    # The function stops itself past this many seconds (per attempt): the per-job cost bound.
    deadline_s: float = 3600.0
    # The function ends itself when no batch completes for this long: hang protection.
    heartbeat_timeout_s: float = 120.0
    # What was registered, checked by the function before it decodes or predicts anything: the
    # checkpoint's SHA-256 (``ckpt:`` models) and the video source's fingerprint (size_bytes,
    # content_hash, etag, version_id, modified). None: registered before these were recorded.
    model_sha256: str | None = None
    source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["frame_pairs"] = [list(p) for p in self.frame_pairs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceRequest:
        crop = data.get("crop_box")
        return cls(
            run_id=str(data["run_id"]),
            video_uri=str(data["video_uri"]),
            frame_pairs=[(int(a), int(b)) for a, b in data["frame_pairs"]],
            model_version=str(data["model_version"]),
            crop_box=CropBox(**crop) if crop else None,
            batch_size=int(data.get("batch_size", 256)),
            deadline_s=float(data.get("deadline_s", 3600.0)),
            heartbeat_timeout_s=float(data.get("heartbeat_timeout_s", 120.0)),
            model_sha256=str(data["model_sha256"]) if data.get("model_sha256") else None,
            source=dict(data["source"]) if data.get("source") else None,
        )


@dataclass(frozen=True)
class PairPrediction:
    frame1: int
    frame2: int
    probability: float
    is_boundary: bool


@dataclass(frozen=True)
class InferenceMetrics:
    pairs: int
    frames_decoded: int
    decode_s: float
    model_s: float
    elapsed_s: float
    pairs_per_s: float
    peak_rss_mb: float
    device: str = "cpu"
    # Seconds the model loop waited for a decoded batch (decoding overlaps the model): near 0
    # when decoding keeps up, near elapsed_s - model_s when the model starves.
    decode_wait_s: float = 0.0


@dataclass(frozen=True)
class InferenceResult:
    run_id: str
    model_version: str
    predictions: list[PairPrediction]
    metrics: InferenceMetrics
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InferenceResult:
        return cls(
            run_id=str(data["run_id"]),
            model_version=str(data["model_version"]),
            predictions=[PairPrediction(**p) for p in data["predictions"]],
            metrics=InferenceMetrics(**data["metrics"]),
            extra=dict(data.get("extra", {})),
        )
