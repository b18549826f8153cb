"""config.Settings: defaults, environment overrides, refusal of incoherent configurations, and
the split into one class per concern with the environment names of the flat class kept."""

from __future__ import annotations

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import EnvSettingsSource

from config import Settings
from config.base import SettingsBase
from config.connections import ConnectionSettings, LedgerConnectionSettings
from config.execution import ExecutionSettings
from config.guards import GuardSettings
from config.monitor import MonitorSettings
from config.pricing import PricingSettings
from config.settings import (
    MAX_COUNT,
    MAX_DURATION_S,
    configuration_problems,
    settings_for_recording,
)
from config.timeouts import TimeoutSettings


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: pure checks, no server (saves 10-20 s alone)."""


def test_defaults_are_the_seed_numbers() -> None:
    s = Settings(_env_file=None)
    assert (s.video_cooldown_s, s.global_rate_limit_jobs, s.global_rate_window_s) == (600, 20, 3600)
    assert (s.queue_depth_alert, s.queue_depth_block) == (20, 50)
    assert (s.breaker_failure_threshold, s.breaker_window_s, s.breaker_open_s) == (5, 3600, 3600)
    # The daily alert sits below the daily budget that caps committed spend (at $20 it could
    # never fire); the monthly tiers are seed 000's 25/50/75% of a $100 month.
    assert (s.max_cost_per_job_usd, s.daily_spend_alert_usd, s.monthly_budget_usd) == (
        1.0,
        15.0,
        100.0,
    )
    assert s.monthly_spend_alert_tiers_usd == (25.0, 50.0, 75.0)
    assert (s.failure_rate_alert, s.job_burst_alert) == (0.20, 50)
    assert (s.calibration_runs, s.calibration_min_runs, s.calibration_percentile) == (20, 5, 0.2)
    assert s.gpu_price_usd_per_hour == 1.1016 and s.default_throughput_pairs_per_s == 100.0
    assert (s.max_frame_pairs, s.gpu_timeout_s, s.scaledown_window_s) == (100_000, 3600, 300)
    assert (s.max_containers, s.gpu_retries) == (5, 2)


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_VIDEO_COOLDOWN_S", "42")
    monkeypatch.setenv("BOUNDARY_INFERENCE_REDIS_URL", "redis://:hunter2@localhost:6379/0")
    s = Settings(_env_file=None)
    assert s.video_cooldown_s == 42
    assert isinstance(s.redis_url, SecretStr)
    assert "hunter2" not in repr(s) and "hunter2" not in s.model_dump_json()


# One A10G container-second as Modal bills it (modal.com/pricing), by hand: GPU $0.000306 +
# 2 cores x $0.0000131 + 8 GiB x $0.00000222 = 0.000306 + 0.0000262 + 0.00001776.
CONTAINER_USD_PER_S = 0.00034996


def test_a_container_second_is_billed_for_gpu_cpu_and_memory() -> None:
    s = Settings(_env_file=None)
    assert s.cost_model.price_by_resource_usd_per_s == pytest.approx(
        {"A10G": 0.000306, "CPU": 0.0000262, "Memory": 0.00001776}
    )
    assert s.cost_model.price_usd_per_s == pytest.approx(CONTAINER_USD_PER_S)
    # The function requests exactly what is priced, with an equal limit: never billed above it.
    from modal_app.modal_config import function_options

    options = function_options(s)
    assert options["cpu"] == (2.0, 2.0) and options["memory"] == (8192, 8192)
    # As modal 1.6.4 sends them: request and limit equal (a limit of 0 would mean "none").
    from modal._resources import convert_fn_config_to_resources_config

    sent = convert_fn_config_to_resources_config(
        cpu=options["cpu"], memory=options["memory"], gpu=options["gpu"]
    )
    assert (sent.milli_cpu, sent.milli_cpu_max) == (2000, 2000)
    assert (sent.memory_mb, sent.memory_mb_max) == (8192, 8192)


def test_worst_case_arithmetic() -> None:
    s = Settings(_env_file=None)
    # 10,000 pairs at 100 pairs/s: expected 30 + 100 s; deadline 3x = 390 s; 3 attempts, each
    # up to 120 s start-up + 390 s + 30 s abort grace; then the 300 s idle tail.
    assert s.cost_model.deadline_s(10_000, 100.0) == pytest.approx(390.0)
    assert s.cost_model.worst_case_cost_usd(10_000, 100.0) == pytest.approx(
        (3 * (120 + 390 + 30) + 300) * CONTAINER_USD_PER_S
    )
    assert s.cost_model.watch_limit_s(390.0) == pytest.approx(3 * (120 + 390 + 30))
    # A finished job is charged its seconds plus the start-up and tail, never above its worst case.
    assert s.cost_model.billed_cost_usd(100.0) == pytest.approx(
        (100 + 30 + 300) * CONTAINER_USD_PER_S
    )
    assert s.cost_model.billed_cost_usd(3 * (390 + 30)) <= s.cost_model.worst_case_cost_usd(
        10_000, 100.0
    )
    assert s.cost_model.deadline_s(1, 100.0) == s.min_deadline_s  # floor for tiny jobs
    assert (
        s.cost_model.deadline_s(10_000_000, 100.0) == s.gpu_timeout_s
    )  # capped by Modal's timeout
    assert s.cost_model.worst_case_cost_usd(s.max_admissible_pairs, 100.0) <= s.max_cost_per_job_usd
    assert (
        s.cost_model.worst_case_cost_usd(s.max_admissible_pairs + 1, 100.0) > s.max_cost_per_job_usd
    )


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


# The class, through the environment as an operator sets it: each (variables, fragment) must be
# refused at construction with a one-line reason.
REFUSED_ENVIRONMENTS: list[tuple[dict[str, str], str]] = [
    # Non-finite numbers: "config" printed "None" and every submit failed as guard_unavailable.
    ({"DAILY_BUDGET_USD": "inf", "MONTHLY_BUDGET_USD": "inf"}, "finite number"),
    ({"DEADLINE_FACTOR": "inf"}, "finite number"),
    ({"DEADLINE_FACTOR": "nan"}, "finite number"),
    ({"MAX_COST_PER_JOB_USD": "NaN"}, "finite number"),
    ({"GPU_PRICE_USD_PER_HOUR": "1e309"}, "finite number"),  # overflows to inf when read
    ({"TENANT_DAILY_BUDGET_USD": "inf"}, "finite number"),
    ({"MONTHLY_SPEND_ALERT_TIERS_USD": "[25, Infinity]"}, "finite number"),
    # Finite inputs whose products overflow.
    ({"GPU_PRICE_USD_PER_HOUR": "1e308"}, "overflows"),
    # Beyond what the stores accept: the limiter's Lua script failed every admission.
    ({"VIDEO_COOLDOWN_S": "100000000000000"}, "less than or equal to 2147483647"),
    ({"GLOBAL_RATE_WINDOW_S": "100000000000000"}, "less than or equal"),
    ({"MAX_FRAME_PAIRS": "99999999999999999999"}, "less than or equal"),
    ({"BREAKER_WINDOW_S": "1e20"}, "BREAKER_WINDOW_S"),
    ({"POLL_INTERVAL_S": "1e6"}, "less than or equal"),
    # Alerts that can never fire.
    ({"DAILY_SPEND_ALERT_USD": "20"}, "could never fire"),
    ({"DAILY_SPEND_ALERT_USD": "25"}, "could never fire"),
    ({"MONTHLY_SPEND_ALERT_TIERS_USD": "[25, 50, 100]"}, "[100.0] not below monthly_budget_usd"),
    ({"MONTHLY_SPEND_ALERT_TIERS_USD": "[50, 25]"}, "positive and increasing"),
    ({"FAILURE_RATE_ALERT": "1"}, "less than 1"),
    ({"QUEUE_COUNTS_PREFECT_BACKLOG": "false"}, "queue_depth_block (50) can never be reached"),
    ({"BREAKER_FAILURE_THRESHOLD": "101"}, "circuit could never open"),
    ({"TENANT_DAILY_BUDGET_USD": "30"}, "could never refuse anything"),
    ({"TENANT_MONTHLY_BUDGET_USD": "150"}, "could never refuse anything"),
    ({"CALIBRATION_MIN_RUNS": "50"}, "calibration could never apply"),
    # Settings under which no job can ever be admitted.
    ({"DEADLINE_FACTOR": "1000"}, "no job can ever be admitted"),
    ({"MIN_DEADLINE_S": "100000"}, "no job can ever be admitted"),
    ({"DEFAULT_THROUGHPUT_PAIRS_PER_S": "1e-300"}, "no job can ever be admitted"),
    ({"TENANT_DAILY_BUDGET_USD": "0.1"}, "above tenant_daily_budget_usd"),
    # Identifiers: matched whole (re.match with $ accepted a trailing newline).
    ({"DEFAULT_TENANT_ID": "demo\n"}, "U+000A (LINE FEED)"),
    ({"DB_SCHEMA": "boundary_inference\n"}, "SQL identifier"),
    ({"REDIS_KEY_PREFIX": "bi\n"}, "SQL identifier"),
    ({"QUEUE_PREFECT_DEPLOYMENT": "boundary-inference"}, "flow-name/deployment-name"),
    ({"CALIBRATION_PERCENTILE": "0.9"}, "less than or equal to 0.5"),
]


@pytest.mark.parametrize(
    ("variables", "fragment"),
    REFUSED_ENVIRONMENTS,
    ids=[",".join(v) + f"={'/'.join(v.values())}" for v, _ in REFUSED_ENVIRONMENTS],
)
def test_configurations_that_cannot_work_are_refused(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], fragment: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(f"BOUNDARY_INFERENCE_{name}", value)
    with pytest.raises(ValidationError) as error:
        Settings(_env_file=None)
    problems = configuration_problems(error.value)
    assert any(fragment in line for line in problems), problems
    assert all("\n" not in line for line in problems)


def test_every_float_setting_refuses_infinity_and_every_int_an_overflow(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built for the class: no numeric field of Settings can be set to a value its stores cannot
    hold, whatever fields are added later."""
    checked = 0
    for name, info in Settings.model_fields.items():
        annotation = str(info.annotation)
        if "float" in annotation:
            values = ["inf", "-inf", "nan", "1e309"]
            if "tuple" in annotation:
                values = ["[1, Infinity]"]
        elif info.annotation is int:
            # Past int8 (the widest ledger column); int4 fields stop at MAX_COUNT (below).
            values = [str(2**63), str(10**30)]
        else:
            continue
        for value in values:
            monkeypatch.setenv(f"BOUNDARY_INFERENCE_{name.upper()}", value)
            with pytest.raises(ValidationError) as error:
                Settings(_env_file=None)
            assert any(name in line for line in configuration_problems(error.value)), (name, value)
            checked += 1
        monkeypatch.delenv(f"BOUNDARY_INFERENCE_{name.upper()}")
    assert checked > 40
    int4 = [n for n, f in Settings.model_fields.items() if f.annotation is int and "bytes" not in n]
    for name in int4:  # counts and durations: PostgreSQL integer, Redis expiries
        monkeypatch.setenv(f"BOUNDARY_INFERENCE_{name.upper()}", str(MAX_COUNT + 1))
        with pytest.raises(ValidationError):
            Settings(_env_file=None)
        monkeypatch.delenv(f"BOUNDARY_INFERENCE_{name.upper()}")


def test_a_refusal_is_one_line_per_problem_naming_the_variable_never_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_DATABASE_URL", "postgresql://u:hunter2@db/x")
    monkeypatch.setenv("BOUNDARY_INFERENCE_DAILY_BUDGET_USD", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_DEADLINE_FACTOR", "nan")
    with pytest.raises(ValidationError) as error:
        Settings(_env_file=None)
    problems = configuration_problems(error.value)
    assert len(problems) == 2
    assert problems[0].startswith("daily_budget_usd (BOUNDARY_INFERENCE_DAILY_BUDGET_USD) = 'inf'")
    assert all("hunter2" not in line for line in problems)
    # Incoherent combinations: one line each too.
    with pytest.raises(ValidationError) as error:
        Settings(_env_file=None, daily_spend_alert_usd=30.0, breaker_failure_threshold=500)
    problems = configuration_problems(error.value)
    assert len(problems) == 2 and all("\n" not in line for line in problems)


def test_the_connection_settings_survive_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    """A flow refused for its configuration still records why, in the configured ledger."""
    monkeypatch.setenv("BOUNDARY_INFERENCE_DEADLINE_FACTOR", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_DB_SCHEMA", "tenant_a")
    monkeypatch.setenv("BOUNDARY_INFERENCE_DATABASE_URL", "postgresql://x/y")
    recording = settings_for_recording()
    assert recording.db_schema == "tenant_a"
    assert recording.database_url is not None
    assert recording.database_url.get_secret_value() == "postgresql://x/y"


def test_limits_of_the_stores_are_the_bounds() -> None:
    s = Settings(_env_file=None, video_cooldown_s=MAX_DURATION_S)
    assert s.video_cooldown_s == 2**31 - 1
    s = Settings(_env_file=None, queue_counts_prefect_backlog=False, queue_depth_block=25)
    assert s.max_live_runs == 25  # 20 admitted within the longest job + 5 in the deployment


def test_warning_when_only_the_deadline_keeps_a_job_under_the_cap() -> None:
    (warning,) = Settings(_env_file=None).coherence_warnings()
    assert "per-job deadline" in warning


# Every environment name of the flat Settings class before the split into concerns, its field and
# the repr of its default: generated once from `git show 5d7772e:config/settings.py` (read
# Settings.model_fields, ENV_PREFIX + name.upper()); the split must change none of them.
OLD_ENVIRONMENT: list[tuple[str, str, str]] = [
    ("BOUNDARY_INFERENCE_VIDEO_COOLDOWN_S", "video_cooldown_s", "600"),
    ("BOUNDARY_INFERENCE_GLOBAL_RATE_LIMIT_JOBS", "global_rate_limit_jobs", "20"),
    ("BOUNDARY_INFERENCE_GLOBAL_RATE_WINDOW_S", "global_rate_window_s", "3600"),
    ("BOUNDARY_INFERENCE_QUEUE_DEPTH_ALERT", "queue_depth_alert", "20"),
    ("BOUNDARY_INFERENCE_QUEUE_DEPTH_BLOCK", "queue_depth_block", "50"),
    ("BOUNDARY_INFERENCE_QUEUE_COUNTS_PREFECT_BACKLOG", "queue_counts_prefect_backlog", "True"),
    (
        "BOUNDARY_INFERENCE_QUEUE_PREFECT_DEPLOYMENT",
        "queue_prefect_deployment",
        "'boundary-inference/default'",
    ),
    ("BOUNDARY_INFERENCE_DEPLOYMENT_CONCURRENCY_LIMIT", "deployment_concurrency_limit", "5"),
    ("BOUNDARY_INFERENCE_BREAKER_FAILURE_THRESHOLD", "breaker_failure_threshold", "5"),
    ("BOUNDARY_INFERENCE_BREAKER_WINDOW_S", "breaker_window_s", "3600"),
    ("BOUNDARY_INFERENCE_BREAKER_OPEN_S", "breaker_open_s", "3600"),
    ("BOUNDARY_INFERENCE_MAX_FRAME_PAIRS", "max_frame_pairs", "100000"),
    ("BOUNDARY_INFERENCE_MAX_COST_PER_JOB_USD", "max_cost_per_job_usd", "1.0"),
    ("BOUNDARY_INFERENCE_DAILY_BUDGET_USD", "daily_budget_usd", "20.0"),
    ("BOUNDARY_INFERENCE_DAILY_SPEND_ALERT_USD", "daily_spend_alert_usd", "15.0"),
    ("BOUNDARY_INFERENCE_MONTHLY_BUDGET_USD", "monthly_budget_usd", "100.0"),
    (
        "BOUNDARY_INFERENCE_MONTHLY_SPEND_ALERT_TIERS_USD",
        "monthly_spend_alert_tiers_usd",
        "(25.0, 50.0, 75.0)",
    ),
    ("BOUNDARY_INFERENCE_TENANT_DAILY_BUDGET_USD", "tenant_daily_budget_usd", "None"),
    ("BOUNDARY_INFERENCE_TENANT_MONTHLY_BUDGET_USD", "tenant_monthly_budget_usd", "None"),
    ("BOUNDARY_INFERENCE_GPU_PRICE_USD_PER_HOUR", "gpu_price_usd_per_hour", "1.1016"),
    ("BOUNDARY_INFERENCE_CPU_PRICE_USD_PER_CORE_S", "cpu_price_usd_per_core_s", "1.31e-05"),
    ("BOUNDARY_INFERENCE_MEMORY_PRICE_USD_PER_GIB_S", "memory_price_usd_per_gib_s", "2.22e-06"),
    ("BOUNDARY_INFERENCE_CPU_CORES", "cpu_cores", "2.0"),
    ("BOUNDARY_INFERENCE_MEMORY_MIB", "memory_mib", "8192"),
    (
        "BOUNDARY_INFERENCE_DEFAULT_THROUGHPUT_PAIRS_PER_S",
        "default_throughput_pairs_per_s",
        "100.0",
    ),
    ("BOUNDARY_INFERENCE_CALIBRATION_RUNS", "calibration_runs", "20"),
    ("BOUNDARY_INFERENCE_CALIBRATION_MIN_RUNS", "calibration_min_runs", "5"),
    ("BOUNDARY_INFERENCE_CALIBRATION_PERCENTILE", "calibration_percentile", "0.2"),
    ("BOUNDARY_INFERENCE_CALIBRATION_MAX_RISE", "calibration_max_rise", "1.5"),
    ("BOUNDARY_INFERENCE_COLD_START_S", "cold_start_s", "30.0"),
    ("BOUNDARY_INFERENCE_DEADLINE_FACTOR", "deadline_factor", "3.0"),
    ("BOUNDARY_INFERENCE_MIN_DEADLINE_S", "min_deadline_s", "120"),
    ("BOUNDARY_INFERENCE_GPU_TIMEOUT_S", "gpu_timeout_s", "3600"),
    ("BOUNDARY_INFERENCE_SCALEDOWN_WINDOW_S", "scaledown_window_s", "300"),
    ("BOUNDARY_INFERENCE_MAX_CONTAINERS", "max_containers", "5"),
    ("BOUNDARY_INFERENCE_GPU_RETRIES", "gpu_retries", "2"),
    ("BOUNDARY_INFERENCE_STARTUP_TIMEOUT_S", "startup_timeout_s", "120"),
    ("BOUNDARY_INFERENCE_ABORT_GRACE_S", "abort_grace_s", "30.0"),
    ("BOUNDARY_INFERENCE_HEARTBEAT_TIMEOUT_S", "heartbeat_timeout_s", "120"),
    ("BOUNDARY_INFERENCE_BATCH_SIZE", "batch_size", "256"),
    ("BOUNDARY_INFERENCE_GPU", "gpu", "'A10G'"),
    ("BOUNDARY_INFERENCE_DATABASE_URL", "database_url", "None"),
    ("BOUNDARY_INFERENCE_SUPABASE_URL", "supabase_url", "None"),
    ("BOUNDARY_INFERENCE_SUPABASE_SERVICE_ROLE_KEY", "supabase_service_role_key", "None"),
    ("BOUNDARY_INFERENCE_DB_SCHEMA", "db_schema", "'boundary_inference'"),
    ("BOUNDARY_INFERENCE_LEDGER_BACKEND", "ledger_backend", "'auto'"),
    ("BOUNDARY_INFERENCE_REDIS_URL", "redis_url", "None"),
    ("BOUNDARY_INFERENCE_REDIS_BLOCK", "redis_block", "None"),
    ("BOUNDARY_INFERENCE_REDIS_KEY_PREFIX", "redis_key_prefix", "'bi'"),
    ("BOUNDARY_INFERENCE_STATE_DIR", "state_dir", "PosixPath('.state')"),
    ("BOUNDARY_INFERENCE_GUARD_TIMEOUT_S", "guard_timeout_s", "5.0"),
    ("BOUNDARY_INFERENCE_EXECUTOR", "executor", "'local'"),
    ("BOUNDARY_INFERENCE_MODAL_APP_NAME", "modal_app_name", "'boundary-inference'"),
    ("BOUNDARY_INFERENCE_MODAL_CLASS_NAME", "modal_class_name", "'BoundaryInference'"),
    ("BOUNDARY_INFERENCE_MODAL_ENVIRONMENT_NAME", "modal_environment_name", "None"),
    ("BOUNDARY_INFERENCE_MODELS_DIR", "models_dir", "PosixPath('models')"),
    ("BOUNDARY_INFERENCE_TORCH_PRECISION", "torch_precision", "'auto'"),
    ("BOUNDARY_INFERENCE_TORCH_COMPILE", "torch_compile", "False"),
    (
        "BOUNDARY_INFERENCE_MODEL_FACTORY_PREFIXES",
        "model_factory_prefixes",
        "'modal_app.torch_models'",
    ),
    ("BOUNDARY_INFERENCE_MODEL_PYTHON_SOURCES", "model_python_sources", "''"),
    ("BOUNDARY_INFERENCE_POLL_INTERVAL_S", "poll_interval_s", "2.0"),
    ("BOUNDARY_INFERENCE_CANCEL_CHECK_S", "cancel_check_s", "3.0"),
    ("BOUNDARY_INFERENCE_SPAWN_CONFIRM_S", "spawn_confirm_s", "300.0"),
    ("BOUNDARY_INFERENCE_DEFAULT_TENANT_ID", "default_tenant_id", "'demo'"),
    ("BOUNDARY_INFERENCE_STALE_QUEUED_S", "stale_queued_s", "3600"),
    ("BOUNDARY_INFERENCE_STALE_MARGIN_S", "stale_margin_s", "600"),
    ("BOUNDARY_INFERENCE_RUN_LEASE_S", "run_lease_s", "60.0"),
    ("BOUNDARY_INFERENCE_VIDEO_MAX_BYTES", "video_max_bytes", "8589934592"),
    ("BOUNDARY_INFERENCE_VIDEO_MAX_PIXELS", "video_max_pixels", "33177600"),
    ("BOUNDARY_INFERENCE_CHECKPOINT_MAX_BYTES", "checkpoint_max_bytes", "4294967296"),
    ("BOUNDARY_INFERENCE_SOURCE_TIMEOUT_S", "source_timeout_s", "10.0"),
    ("BOUNDARY_INFERENCE_S3_ENDPOINT_URL", "s3_endpoint_url", "None"),
    ("BOUNDARY_INFERENCE_S3_REGION", "s3_region", "None"),
    ("BOUNDARY_INFERENCE_S3_ACCESS_KEY_ID", "s3_access_key_id", "None"),
    ("BOUNDARY_INFERENCE_S3_SECRET_ACCESS_KEY", "s3_secret_access_key", "None"),
    ("BOUNDARY_INFERENCE_SOURCES_SECRET_NAME", "sources_secret_name", "None"),
    ("BOUNDARY_INFERENCE_PREDICTIONS_BATCH_PAIRS", "predictions_batch_pairs", "5000"),
    ("BOUNDARY_INFERENCE_BACKFILL_VIDEO_RUNS", "backfill_video_runs", "'deployment'"),
    ("BOUNDARY_INFERENCE_PREDICTIONS_RETENTION_DAYS", "predictions_retention_days", "None"),
    ("BOUNDARY_INFERENCE_FAILURE_RATE_ALERT", "failure_rate_alert", "0.2"),
    ("BOUNDARY_INFERENCE_JOB_BURST_ALERT", "job_burst_alert", "50"),
    ("BOUNDARY_INFERENCE_ALLOW_UNREACHABLE_COST_CAP", "allow_unreachable_cost_cap", "False"),
]

# One class per concern; each field is declared in exactly one of them.
CONCERNS: dict[type[SettingsBase], set[str]] = {
    LedgerConnectionSettings: {
        "database_url",
        "supabase_url",
        "supabase_service_role_key",
        "db_schema",
        "ledger_backend",
        "state_dir",
    },
    ConnectionSettings: {
        "redis_url",
        "redis_block",
        "redis_key_prefix",
        "s3_endpoint_url",
        "s3_region",
        "s3_access_key_id",
        "s3_secret_access_key",
        "sources_secret_name",
        "modal_app_name",
        "modal_class_name",
        "modal_environment_name",
    },
    GuardSettings: {
        "video_cooldown_s",
        "global_rate_limit_jobs",
        "global_rate_window_s",
        "queue_depth_alert",
        "queue_depth_block",
        "queue_counts_prefect_backlog",
        "queue_prefect_deployment",
        "deployment_concurrency_limit",
        "breaker_failure_threshold",
        "breaker_window_s",
        "breaker_open_s",
        "max_frame_pairs",
        "max_cost_per_job_usd",
        "daily_budget_usd",
        "monthly_budget_usd",
        "tenant_daily_budget_usd",
        "tenant_monthly_budget_usd",
        "allow_unreachable_cost_cap",
        "default_tenant_id",
        "video_max_bytes",
        "video_max_pixels",
        "checkpoint_max_bytes",
    },
    PricingSettings: {
        "gpu_price_usd_per_hour",
        "cpu_price_usd_per_core_s",
        "memory_price_usd_per_gib_s",
        "cpu_cores",
        "memory_mib",
        "default_throughput_pairs_per_s",
        "calibration_runs",
        "calibration_min_runs",
        "calibration_percentile",
        "calibration_max_rise",
    },
    TimeoutSettings: {
        "cold_start_s",
        "deadline_factor",
        "min_deadline_s",
        "gpu_timeout_s",
        "scaledown_window_s",
        "gpu_retries",
        "startup_timeout_s",
        "abort_grace_s",
        "heartbeat_timeout_s",
        "guard_timeout_s",
        "poll_interval_s",
        "cancel_check_s",
        "spawn_confirm_s",
        "stale_queued_s",
        "stale_margin_s",
        "run_lease_s",
        "source_timeout_s",
    },
    ExecutionSettings: {
        "executor",
        "gpu",
        "batch_size",
        "max_containers",
        "models_dir",
        "torch_precision",
        "torch_compile",
        "model_factory_prefixes",
        "model_python_sources",
        "predictions_batch_pairs",
        "backfill_video_runs",
    },
    MonitorSettings: {
        "daily_spend_alert_usd",
        "monthly_spend_alert_tiers_usd",
        "failure_rate_alert",
        "job_burst_alert",
        "predictions_retention_days",
    },
}


def _declared(cls: type[SettingsBase]) -> set[str]:
    """The fields a class declares itself, not those it inherits."""
    return {name for name in cls.model_fields if name in vars(cls).get("__annotations__", {})}


def test_every_old_environment_name_still_sets_the_same_field_with_the_same_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(OLD_ENVIRONMENT) == len(Settings.model_fields) == 82
    for variable, _, _ in OLD_ENVIRONMENT:
        monkeypatch.setenv(variable, f"sentinel_{variable.lower()}")
    # What pydantic-settings reads from the environment, before validation: name -> field.
    read = EnvSettingsSource(Settings)()
    for variable, field, default in OLD_ENVIRONMENT:
        assert read.get(field) == f"sentinel_{variable.lower()}", (variable, field)
        info = Settings.model_fields[field]
        assert (info.alias, info.validation_alias) == (None, None), field
        assert repr(info.get_default(call_default_factory=True)) == default, field


def test_each_old_environment_name_reaches_its_field_through_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end, one variable at a time: either the field takes the value, or the refusal
    names the field (a value of the wrong type, or a half-set connection)."""
    for variable, field, _ in OLD_ENVIRONMENT:
        sentinel = f"sentinel_{field}"
        monkeypatch.setenv(variable, sentinel)
        problems: list[str] = []
        try:
            value = getattr(Settings(_env_file=None), field)
        except ValidationError as error:
            problems = configuration_problems(error)
        if problems:
            assert any(field in line for line in problems), variable
        else:
            shown = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
            assert shown == sentinel, variable
        monkeypatch.delenv(variable)


def test_each_concern_class_holds_only_its_fields_and_settings_is_their_union() -> None:
    declared = {cls: _declared(cls) for cls in CONCERNS}
    assert declared == CONCERNS
    every = [name for fields in declared.values() for name in fields]
    assert len(every) == len(set(every)), "a field is defined in two concerns"
    assert set(every) == set(Settings.model_fields)
    assert _declared(Settings) == set(), "Settings declares no field of its own"
    assert all(issubclass(Settings, cls) for cls in CONCERNS)


def test_a_concern_class_reads_the_same_environment_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_RUN_LEASE_S", "12")
    monkeypatch.setenv("BOUNDARY_INFERENCE_REDIS_KEY_PREFIX", "Not-An-Identifier")
    timeouts = TimeoutSettings(_env_file=None)  # type: ignore[call-arg]
    assert timeouts.run_lease_s == 12.0 and timeouts.lease_renew_s == 2.0
    with pytest.raises(ValidationError, match="lower-case SQL identifier"):
        ConnectionSettings(_env_file=None)  # type: ignore[call-arg]


def test_the_cost_model_follows_a_copy_with_other_limits() -> None:
    """Not cached on the settings: model_copy(update=...) would carry a stale one over."""
    s = Settings(_env_file=None)
    assert s.cost_model.attempts == 3
    fewer = s.model_copy(update={"gpu_retries": 0, "gpu_price_usd_per_hour": 3.6})
    assert fewer.cost_model.attempts == 1
    assert fewer.cost_model.gpu_price_usd_per_s == pytest.approx(0.001)
    assert fewer.cost_model.watch_limit_s(100.0) == pytest.approx(120 + 100 + 30)
