"""config.Settings: defaults, environment overrides, and refusal of incoherent configurations."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError

from config import Settings


def test_defaults_are_the_seed_numbers() -> None:
    s = Settings(_env_file=None)
    assert (s.video_cooldown_s, s.global_rate_limit_jobs, s.global_rate_window_s) == (600, 20, 3600)
    assert (s.queue_depth_alert, s.queue_depth_block) == (20, 50)
    assert (s.breaker_failure_threshold, s.breaker_window_s, s.breaker_open_s) == (5, 3600, 3600)
    assert (s.max_cost_per_job_usd, s.daily_spend_alert_usd, s.monthly_budget_usd) == (
        1.0,
        20.0,
        100.0,
    )
    assert s.gpu_price_usd_per_hour == 1.10 and s.default_throughput_pairs_per_s == 100.0
    assert (s.max_frame_pairs, s.gpu_timeout_s, s.scaledown_window_s) == (100_000, 3600, 300)
    assert (s.max_containers, s.gpu_retries) == (5, 2)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_VIDEO_COOLDOWN_S", "42")
    monkeypatch.setenv("BOUNDARY_INFERENCE_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    s = Settings(_env_file=None)
    assert s.video_cooldown_s == 42
    assert isinstance(s.redis_url, SecretStr)
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()


def test_worst_case_arithmetic() -> None:
    s = Settings(_env_file=None)
    # 10,000 pairs at 100 pairs/s: expected 30 + 100 s; deadline 3x = 390 s; 3 attempts, each
    # up to 120 s start-up + 390 s + 30 s abort grace; then the 300 s idle tail.
    assert s.deadline_s(10_000, 100.0) == pytest.approx(390.0)
    assert s.worst_case_cost_usd(10_000, 100.0) == pytest.approx(
        3 * (120 + 390 + 30) * 1.10 / 3600 + 300 * 1.10 / 3600
    )
    assert s.watch_limit_s(390.0) == pytest.approx(3 * (120 + 390 + 30))
    # A finished job is charged its seconds plus the start-up and tail, never above its worst case.
    assert s.billed_cost_usd(100.0) == pytest.approx((100 + 30 + 300) * 1.10 / 3600)
    assert s.billed_cost_usd(3 * (390 + 30)) <= s.worst_case_cost_usd(10_000, 100.0)
    assert s.deadline_s(1, 100.0) == s.min_deadline_s  # floor for tiny jobs
    assert s.deadline_s(10_000_000, 100.0) == s.gpu_timeout_s  # capped by Modal's timeout
    assert s.worst_case_cost_usd(s.max_admissible_pairs, 100.0) <= s.max_cost_per_job_usd
    assert s.worst_case_cost_usd(s.max_admissible_pairs + 1, 100.0) > s.max_cost_per_job_usd


def test_unreachable_cost_cap_is_refused_like_the_original_bug() -> None:
    # The original: 200k frames / 100 pairs/s = $0.61 expected < $1.00 cap: the check never fires.
    with pytest.raises(ValidationError, match="can never refuse a job"):
        Settings(_env_file=None, max_frame_pairs=1_000)
    assert Settings(_env_file=None, max_frame_pairs=1_000, allow_unreachable_cost_cap=True)


def test_unbounded_worst_case_is_refused() -> None:
    with pytest.raises(ValidationError, match="more than daily_budget_usd"):
        Settings(_env_file=None, gpu_retries=10, gpu_timeout_s=86_400)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"daily_budget_usd": 200.0}, "exceeds monthly_budget_usd"),
        ({"queue_depth_alert": 60}, "queue_depth_alert"),
        ({"heartbeat_timeout_s": 3600}, "heartbeat_timeout_s"),
        ({"supabase_url": "https://x.supabase.co"}, "supabase_service_role_key"),
        ({"redis_url": "redis://x", "redis_block": "b"}, "not both"),
        ({"db_schema": "Bad-Schema"}, "SQL identifier"),
    ],
)
def test_incoherent_settings_are_refused(overrides: dict, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        Settings(_env_file=None, **overrides)


def test_warning_when_only_the_deadline_keeps_a_job_under_the_cap() -> None:
    (warning,) = Settings(_env_file=None).coherence_warnings()
    assert "per-job deadline" in warning
