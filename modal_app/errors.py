"""Typed errors of the inference payload. ``kind`` is stable: executors classify failures by it."""

from __future__ import annotations


class InferenceError(Exception):
    kind = "inference_error"


class VideoNotFound(InferenceError):
    kind = "video_not_found"


class CorruptVideo(InferenceError):
    kind = "corrupt_video"


class EmptyCrop(InferenceError):
    kind = "empty_crop"


class FrameOutOfRange(InferenceError):
    kind = "frame_out_of_range"


class UnknownModel(InferenceError):
    kind = "unknown_model"


class CheckpointError(InferenceError):
    kind = "checkpoint_error"


class DeadlineExceeded(InferenceError):
    """The job ran past its per-job deadline: the bound on its cost."""

    kind = "deadline_exceeded"


class Stalled(InferenceError):
    """No batch completed for the heartbeat timeout: a hang."""

    kind = "stalled"
