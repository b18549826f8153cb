"""Typed errors of the inference payload. ``kind`` is stable: executors classify failures by it.

Two families matter to the bill:

* :class:`UserInputError` -- the request itself is wrong (a missing or changed video, a bad
  checkpoint or checksum, an empty crop, a frame out of range). Another attempt on the same input
  fails the same way, so the function *returns* these as a typed failure instead of raising them:
  Modal's retry policy retries every raised exception, and each retry is billed.
* a deadline, a hang, out of memory and any other exception (a code error) would also repeat:
  returned typed too (``modal_app.app.RETRYABLE_KINDS``). Only a storage service that does not
  answer (:class:`SourceUnavailable`) and attempt bookkeeping that cannot be written are raised,
  and Modal's retry policy applies to them.
"""

from __future__ import annotations


class InferenceError(Exception):
    kind = "inference_error"


class UserInputError(InferenceError):
    """An error no retry can fix: returned as a typed failure, billed once, not retried."""

    kind = "user_input_error"


class VideoNotFound(UserInputError):
    kind = "video_not_found"


class CorruptVideo(UserInputError):
    kind = "corrupt_video"


class EmptyCrop(UserInputError):
    kind = "empty_crop"


class FrameOutOfRange(UserInputError):
    kind = "frame_out_of_range"


class UnknownModel(UserInputError):
    kind = "unknown_model"


class CheckpointError(UserInputError):
    kind = "checkpoint_error"


class ChecksumMismatch(CheckpointError):
    """The checkpoint file is not the one registered (swapped, truncated, re-uploaded)."""

    kind = "checksum_mismatch"


class VideoChanged(UserInputError):
    """The video source is no longer what was registered (size, time, ETag or content hash)."""

    kind = "video_changed"


class InvalidSource(UserInputError):
    """A source URI this code cannot read (an unknown scheme, credentials in the URI)."""

    kind = "invalid_source"


class SourceTooLarge(UserInputError):
    kind = "source_too_large"


class SourceAccessDenied(UserInputError):
    """The store refused the credentials or the URL (an expired presigned URL, a wrong key)."""

    kind = "source_access_denied"


class SourceUnavailable(InferenceError):
    """The store could not be reached or answered 5xx: another attempt may well succeed."""

    kind = "source_unavailable"


class DeadlineExceeded(InferenceError):
    """The job ran past its per-job deadline: the bound on its cost."""

    kind = "deadline_exceeded"


class Stalled(InferenceError):
    """No batch completed for the heartbeat timeout: a hang."""

    kind = "stalled"


class NoCuda(InferenceError):
    """A GPU was requested and the container has no CUDA device: refused before any model is
    loaded, never run on the CPU at the GPU's price."""

    kind = "no_cuda"


def is_user_error(error: BaseException) -> bool:
    """Whether another attempt on the same input cannot succeed (see the module docstring)."""
    return isinstance(error, UserInputError)
