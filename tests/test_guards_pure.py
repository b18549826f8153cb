"""The admission guards' pure rules, without servers: validation and the cost arithmetic.

The end-to-end refusal tests (tests/test_bad_requests.py, tests/test_flow.py) run these same
functions through Prefect, PostgreSQL and Redis; these pin the rules themselves, fast, with
numbers worked out by hand in the comments.
"""

from __future__ import annotations

from typing import Any

import pytest

from boundary_inference.outcome import Rejected, RejectionType
from config import Settings, get_settings
from tasks.cost import estimate
from tasks.validate import ValidRequest, validate_request

VIDEO: dict[str, Any] = {
    "id": "v1",
    "tenant_id": "t1",
    "frame_count": 10,
    "source_uri": "s3://bucket/v1.mp4",
    "crop_box": {"x": 0, "y": 0, "width": 8, "height": 4},
}


def _validate(video: dict[str, Any] | None = VIDEO, **overrides: Any) -> ValidRequest | Rejected:
    request: dict[str, Any] = {
        "video_id": "v1",
        "tenant_id": "t1",
        "frames_version": "f1",
        "model_version": "builtin-textdiff-v1",
        "frame_pairs": [[0, 1], [1, 2]],
        "max_frame_pairs": 5,
        "known_model": True,
        "check_source_exists": False,
    } | overrides
    return validate_request.fn(video, **request)


def _refusal(result: ValidRequest | Rejected) -> tuple[RejectionType, str]:
    assert isinstance(result, Rejected), result
    return result.rejection_type, result.message


def test_a_valid_request_keeps_its_pairs_as_a_set_and_counts_duplicates() -> None:
    valid = _validate(frame_pairs=[[0, 1], [1, 2], [0, 1]])
    assert isinstance(valid, ValidRequest)
    assert valid.requested_pairs == 3 and valid.duplicate_pairs == 1
    assert valid.frame_count == 10 and valid.crop_box is not None


@pytest.mark.parametrize(
    ("video", "overrides", "kind", "fragment"),
    [
        (None, {}, RejectionType.VALIDATION_FAILED, "is not registered"),
        # Another tenant's video reads exactly like a missing one (ids are not disclosed).
        ({**VIDEO, "tenant_id": "t2"}, {}, RejectionType.VALIDATION_FAILED, "is not registered"),
        (VIDEO, {"known_model": False}, RejectionType.VALIDATION_FAILED, "not a known model"),
        (VIDEO, {"video_id": "v1\n"}, RejectionType.VALIDATION_FAILED, "LINE FEED"),
        (VIDEO, {"frame_pairs": [[1, 1]]}, RejectionType.VALIDATION_FAILED, "violate 0 <= f1 < f2"),
        (
            VIDEO,
            {"frame_pairs": [[8, 10]]},
            RejectionType.VALIDATION_FAILED,
            "violate 0 <= f1 < f2",
        ),
        (VIDEO, {"frame_pairs": [[0, 1]] * 6}, RejectionType.FRAME_COUNT_EXCEEDED, "6"),
        ({**VIDEO, "source_uri": ""}, {}, RejectionType.VALIDATION_FAILED, "no source_uri"),
    ],
    ids=[
        "unregistered",
        "other tenant",
        "unknown model",
        "newline in id",
        "f1 == f2",
        "f2 past the end",
        "too many pairs as sent",
        "no source",
    ],
)
def test_each_bad_request_is_a_typed_refusal(
    video: dict[str, Any] | None, overrides: dict[str, Any], kind: RejectionType, fragment: str
) -> None:
    got_kind, message = _refusal(_validate(video, **overrides))
    assert got_kind is kind
    assert fragment in message, message


def _settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "cold_start_s": 10.0,
        "deadline_factor": 2.0,
        "min_deadline_s": 30.0,
        "gpu_timeout_s": 600,
        "startup_timeout_s": 60.0,
        "abort_grace_s": 5.0,
        "gpu_retries": 2,
        "scaledown_window_s": 20,
        "gpu_price_usd_per_hour": 3.6,  # $0.001 a second
        # CPU and memory unpriced here, so a container-second is the GPU's round $0.001
        # (tests/test_config.py and test_billing.py check the three together).
        "cpu_price_usd_per_core_s": 0.0,
        "memory_price_usd_per_gib_s": 0.0,
        "max_cost_per_job_usd": 1.0,
        "allow_unreachable_cost_cap": True,
    }
    return get_settings(**(base | overrides))


def test_the_cost_arithmetic_worked_by_hand() -> None:
    # 1,000 pairs at 100 pairs/s: expected 10 (cold start) + 10 = 20 s; deadline max(30, 2 x 20)
    # = 40 s; one attempt at most 60 + 40 + 5 = 105 s; three attempts and the 20 s idle tail:
    # 335 s, $0.335 at $0.001/s. The estimate bills the expected 20 s plus the tail: $0.040.
    cost = estimate(_settings(), pairs=1000, throughput=100.0, source="default")
    assert cost.expected_gpu_s == pytest.approx(20.0)
    assert cost.deadline_s == pytest.approx(40.0)
    assert cost.attempts == 3
    assert cost.worst_case_cost_usd == pytest.approx(0.335)
    assert cost.estimated_cost_usd == pytest.approx(0.040)
    assert cost.cap_usd == 1.0


def test_the_deadline_has_a_floor_and_a_ceiling() -> None:
    settings = _settings()
    # 10 pairs: expected 10.1 s, twice that is under the 30 s floor.
    assert estimate(settings, pairs=10, throughput=100.0, source="d").deadline_s == 30.0
    # 100,000 pairs: expected 1,010 s, twice that is over Modal's 600 s timeout.
    assert estimate(settings, pairs=100_000, throughput=100.0, source="d").deadline_s == 600.0


def test_retries_multiply_the_worst_case_and_nothing_else_does() -> None:
    one = estimate(_settings(gpu_retries=0), pairs=1000, throughput=100.0, source="d")
    three = estimate(_settings(gpu_retries=2), pairs=1000, throughput=100.0, source="d")
    # (3 x 105 + 20) / (1 x 105 + 20) of the same price.
    assert three.worst_case_cost_usd / one.worst_case_cost_usd == pytest.approx(335 / 125)
    assert three.estimated_cost_usd == one.estimated_cost_usd
