"""Every limit and connection in one place.

Each field carries its unit in its name and a one-line reason in its description. Values come from,
in order of precedence: keyword arguments, ``BOUNDARY_INFERENCE_*`` environment variables, a ``.env``
file in the working directory, and the defaults below (the seed document's numbers).

Incoherent configurations are refused at construction (``ValueError`` with the reason); merely
surprising ones are reported by :meth:`Settings.coherence_warnings`. See README "Configuration".
Every number must be finite (``inf``, ``nan`` and values that overflow to them are refused), and
every count and duration fits the stores it reaches (:data:`MAX_COUNT`, :data:`MAX_DURATION_S`).
:func:`configuration_problems` turns a refusal into one line per problem.
"""

from __future__ import annotations

import itertools
import math
import re
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from config.identifiers import identifier_problem

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
ENV_PREFIX = "BOUNDARY_INFERENCE_"
# Counts reach PostgreSQL integer columns and parameters (int4).
MAX_COUNT = 2**31 - 1
# Durations reach PostgreSQL as integer seconds and intervals, and Redis as millisecond expiries
# through the limiter's Lua script (measured on the embedded Redis: 1e13 s accepted, 1e14 s
# refused with "value is not an integer or out of range", failing every admission). int4 seconds,
# about 68 years, is inside every one of those limits.
MAX_DURATION_S = 2**31 - 1
# Byte sizes are bigint (int8) in the ledger.
MAX_BYTES = 2**63 - 1


class IncoherentConfiguration(ValueError):
    """Settings whose combination leaves a safeguard dead, admits no job, or leaves money
    unbounded. ``problems``: one sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("incoherent configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


class Settings(BaseSettings):
    """Limits, prices and connections for the boundary-inference project."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # inf, nan, and numbers that overflow to inf (1e309) are refused for every float field.
        allow_inf_nan=False,
    )

    # --- Admission limits -------------------------------------------------------------------------
    video_cooldown_s: int = Field(
        600,
        ge=0,
        le=MAX_DURATION_S,
        description="A video may be submitted at most once per this many seconds.",
    )
    global_rate_limit_jobs: int = Field(
        20,
        ge=1,
        le=MAX_COUNT,
        description="At most this many admitted jobs per rate window, all tenants.",
    )
    global_rate_window_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="Length of the sliding window for the global rate limit.",
    )
    queue_depth_alert: int = Field(
        20,
        ge=1,
        le=MAX_COUNT,
        description="Jobs waiting or live (Prefect backlog + queued + running) at which an alert"
        " event is emitted.",
    )
    queue_depth_block: int = Field(
        50,
        ge=1,
        le=MAX_COUNT,
        description="Jobs waiting or live (Prefect backlog + queued + running) at which new jobs"
        " are refused.",
    )
    queue_counts_prefect_backlog: bool = Field(
        True,
        description="Count the flow runs waiting in Prefect for queue_prefect_deployment"
        " (Scheduled, Late, Pending, AwaitingConcurrencySlot) in the queue depth, besides the"
        " ledger's live runs.",
    )
    queue_prefect_deployment: str = Field(
        "boundary-inference/default",
        description="The deployment ('flow/deployment') whose waiting flow runs are the backlog.",
    )
    deployment_concurrency_limit: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Flow runs of that deployment Prefect runs at once (prefect.yaml"
        " concurrency_limit); the rest wait in Prefect.",
    )
    breaker_failure_threshold: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Failures inside the breaker window that open the circuit.",
    )
    breaker_window_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="Only failures this recent count towards opening the circuit.",
    )
    breaker_open_s: int = Field(
        3600,
        ge=1,
        le=MAX_DURATION_S,
        description="An open circuit lets one probe job through after this long.",
    )
    max_frame_pairs: int = Field(
        100_000,
        ge=1,
        le=MAX_COUNT,
        description="Largest job accepted; bounds decode work and the estimate.",
    )

    # --- Money ------------------------------------------------------------------------------------
    max_cost_per_job_usd: float = Field(
        1.00, gt=0, description="A job whose worst-case cost exceeds this is refused."
    )
    daily_budget_usd: float = Field(
        20.0, gt=0, description="Reservations of one UTC day may not exceed this (global)."
    )
    daily_spend_alert_usd: float = Field(
        15.0,
        gt=0,
        description="The monitor raises an alert when today's committed spend exceeds this; below"
        " daily_budget_usd, which caps committed spend (at or above it, it could never fire).",
    )
    monthly_budget_usd: float = Field(
        100.0, gt=0, description="Reservations of one UTC month may not exceed this (global)."
    )
    # NoDecode: read "25,50,75" (or "[25, 50, 75]", or the "(25.0, 50.0, 75.0)" that str() of the
    # value gives, as the Modal image's baked environment writes it) by _tiers below, not as JSON.
    monthly_spend_alert_tiers_usd: Annotated[tuple[float, ...], NoDecode] = Field(
        (25.0, 50.0, 75.0),
        max_length=10,
        description="The monitor raises the monthly-spend alert when this month's committed spend"
        " reaches a tier (comma-separated in the environment); each below monthly_budget_usd.",
    )
    tenant_daily_budget_usd: float | None = Field(
        None, gt=0, description="Optional per-tenant daily cap; None means only the global cap."
    )
    tenant_monthly_budget_usd: float | None = Field(
        None, gt=0, description="Optional per-tenant monthly cap; None means only the global cap."
    )
    # Modal bills a container by the second for its GPU, its CPU cores and its memory, each the
    # greater of what the function requests and what it uses (https://modal.com/pricing, read
    # 2026-12: A10G $0.000306/s, CPU $0.0000131 per physical core per s, memory $0.00000222 per
    # GiB per s). The function requests cpu_cores and memory_mib with equal limits
    # (modal_app.modal_config.function_options), so usage can never bill above them.
    gpu_price_usd_per_hour: float = Field(
        1.1016,
        gt=0,
        description="GPU price per hour (Modal's pricing page: A10G $0.000306/s = $1.1016/h).",
    )
    cpu_price_usd_per_core_s: float = Field(
        0.0000131,
        ge=0,
        description="Modal's CPU price per physical core per second (pricing page).",
    )
    memory_price_usd_per_gib_s: float = Field(
        0.00000222, ge=0, description="Modal's memory price per GiB per second (pricing page)."
    )
    cpu_cores: float = Field(
        2.0,
        gt=0,
        le=64,
        description="Physical cores the function requests, and its limit: billed per second.",
    )
    memory_mib: int = Field(
        8192,
        ge=128,
        le=1_048_576,
        description="Memory the function requests, and its limit (MiB): billed per GiB-second.",
    )

    # --- Estimate and GPU function ----------------------------------------------------------------
    default_throughput_pairs_per_s: float = Field(
        100.0, gt=0, description="Throughput assumed until recent runs calibrate it."
    )
    calibration_runs: int = Field(
        20,
        ge=1,
        le=1000,
        description="Recent succeeded runs of a (model, executor, GPU type) whose throughput"
        " calibrates its estimate.",
    )
    calibration_min_runs: int = Field(
        5,
        ge=1,
        le=1000,
        description="Succeeded runs needed before calibration replaces the default throughput.",
    )
    calibration_percentile: float = Field(
        0.2,
        ge=0.0,
        le=0.5,
        description="The estimate uses this low percentile of recent throughput (0.2: slower than"
        " 80% of recent runs), so the deadline derived from it covers slow runs.",
    )
    calibration_max_rise: float = Field(
        1.5,
        ge=1.0,
        le=100.0,
        description="One run can raise the calibrated throughput by at most this factor (a slow"
        " run lowers it without limit).",
    )
    cold_start_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="Container start and model load, billed before the first pair.",
    )
    deadline_factor: float = Field(
        3.0, ge=1.0, description="A job is stopped after this many times its expected duration."
    )
    min_deadline_s: int = Field(
        120,
        ge=1,
        le=MAX_DURATION_S,
        description="Floor for the per-job deadline so tiny jobs are not cut short.",
    )
    gpu_timeout_s: int = Field(
        3600, ge=10, le=86_400, description="Modal's hard per-attempt timeout (server max 24 h)."
    )
    scaledown_window_s: int = Field(
        300, ge=2, le=3600, description="Idle seconds a warm container is kept (and billed)."
    )
    max_containers: int = Field(
        5,
        ge=1,
        le=MAX_COUNT,
        description="Modal autoscaler ceiling: bounds cold-start storms and spend rate.",
    )
    gpu_retries: int = Field(
        2, ge=0, le=10, description="Modal-side retries; the only retry layer around GPU work."
    )
    startup_timeout_s: int = Field(
        120,
        ge=10,
        le=3600,
        description="Modal's limit on container start (image, snapshot restore, model load) per"
        " attempt; start-up runs before the per-job deadline starts, so it is bounded here.",
    )
    abort_grace_s: float = Field(
        30.0,
        ge=1.0,
        le=3600,
        description="Seconds an attempt that ignores its deadline or heartbeat abort (stuck in"
        " native code) gets before the container exits; billed, so part of the worst case.",
    )
    heartbeat_timeout_s: int = Field(
        120,
        ge=5,
        le=86_400,
        description="The GPU function ends itself after this long without progress.",
    )
    batch_size: int = Field(256, ge=1, le=65_536, description="Frame pairs per model batch.")
    gpu: str = Field("A10G", description="Modal GPU type for the inference function.")

    # --- Connections ------------------------------------------------------------------------------
    database_url: SecretStr | None = Field(
        None, description="Postgres DSN (local, or Supabase direct/pooler). None: embedded."
    )
    supabase_url: str | None = Field(
        None, description="Supabase project URL; with the service-role key, uses PostgREST RPC."
    )
    supabase_service_role_key: SecretStr | None = Field(
        None, description="Supabase service-role key (server side only, never logged)."
    )
    db_schema: str = Field(
        "boundary_inference",
        description="Postgres schema holding the ledger tables: a schema of its own (public and"
        " the schemas PostgreSQL or Supabase own are refused).",
    )
    ledger_backend: Literal["auto", "postgres", "supabase", "embedded"] = Field(
        "auto",
        description="Where the ledger lives: postgres (database_url), supabase (PostgREST RPC"
        " with supabase_url + the service-role key), embedded (PostgreSQL under state_dir), or"
        " auto: database_url if set, else Supabase if supabase_url is set, else embedded. The"
        " Supabase URL/key also serve supabase:// videos: name the backend to keep the ledger"
        " elsewhere.",
    )
    redis_url: SecretStr | None = Field(None, description="Redis URL. None: embedded Redis.")
    redis_block: str | None = Field(
        None, description="Name of a saved prefect-redis RedisDatabase block to use instead."
    )
    redis_key_prefix: str = Field("bi", description="Prefix of every Redis key we write.")
    state_dir: Path = Field(
        Path(".state"), description="Where the embedded PostgreSQL and Redis keep their data."
    )
    guard_timeout_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="A ledger/limiter/Prefect API call slower than this counts as unavailable.",
    )

    # --- Execution --------------------------------------------------------------------------------
    executor: Literal["local", "modal"] = Field(
        "local", description="Where inference runs: a local CPU child process, or Modal."
    )
    modal_app_name: str = Field("boundary-inference", description="Deployed Modal app name.")
    modal_class_name: str = Field("BoundaryInference", description="Modal class in the app.")
    modal_environment_name: str | None = Field(
        None,
        description="Modal environment of the deployed app (None: the token's default, as"
        " `modal deploy` without -e); deploy with `modal deploy -e NAME` to the same one.",
    )
    models_dir: Path = Field(
        Path("models"), description="Checkpoint directory (the Modal Volume mount in production)."
    )
    torch_precision: Literal["auto", "fp32", "fp16", "bf16"] = Field(
        "auto",
        description="Autocast of torch models on CUDA (auto: fp16); the CPU always runs fp32.",
    )
    torch_compile: bool = Field(
        False, description="torch.compile torch models (measure with bench first: compile time)."
    )
    model_factory_prefixes: str = Field(
        "modal_app.torch_models",
        description="Comma-separated module prefixes a checkpoint's architecture factory may come"
        " from. Loading a factory runs its code: list only modules you deploy and trust.",
    )
    model_python_sources: str = Field(
        "",
        description="Comma-separated local Python packages added to the Modal image (a team's"
        " own architecture modules); they must also be under model_factory_prefixes.",
    )
    poll_interval_s: float = Field(
        2.0, gt=0, le=300, description="How often the flow polls a running job for progress."
    )
    cancel_check_s: float = Field(
        3.0,
        gt=0,
        le=300,
        description="How often a flow watching a call asks the Prefect API whether its flow run"
        " (or the backfill above it) was cancelled, to cancel the call and stop paying.",
    )
    spawn_confirm_s: float = Field(
        300.0,
        ge=0,
        le=MAX_DURATION_S,
        description="After a spawn whose answer was lost (a connection error or timeout after"
        " sending), how long the watcher looks for the call by its run id (the call records its"
        " id when it starts) before it fences the run and charges its worst case.",
    )
    default_tenant_id: str = Field("demo", description="Tenant used when a request names none.")
    stale_queued_s: int = Field(
        3600,
        ge=60,
        le=MAX_DURATION_S,
        description="A run still queued after this long lost its flow between claim and spawn;"
        " the monitor cancels it and releases its reservation.",
    )
    stale_margin_s: int = Field(
        600,
        ge=0,
        le=MAX_DURATION_S,
        description="Added to the longest possible watch before a running run counts as stale"
        " (its call is cancelled, its worst case charged).",
    )
    run_lease_s: float = Field(
        60.0,
        ge=1.0,
        le=3600.0,
        description="A live run's lease: its flow renews it every run_lease_s / 6 (database clock);"
        " once it has expired the run has no watcher, and a new claim or the reaper takes it over.",
    )

    # --- Registries: video sources and checkpoints -----------------------------------------------
    video_max_bytes: int = Field(
        8 * 1024**3,
        ge=1,
        le=MAX_BYTES,
        description="Largest video source accepted at registration and downloaded by the function.",
    )
    video_max_pixels: int = Field(
        7680 * 4320,
        ge=1,
        le=MAX_COUNT,
        description="Largest frame (width x height) accepted at registration: bounds decode memory.",
    )
    checkpoint_max_bytes: int = Field(
        4 * 1024**3,
        ge=1,
        le=MAX_BYTES,
        description="Largest checkpoint file `models add` accepts.",
    )
    source_timeout_s: float = Field(
        10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="Connect/read timeout for a video store (S3, HTTPS, Supabase).",
    )
    s3_endpoint_url: str | None = Field(
        None,
        description="S3-compatible endpoint for s3:// sources (Wasabi, R2, MinIO); None: AWS.",
    )
    s3_region: str | None = Field(None, description="Region for s3:// sources.")
    s3_access_key_id: SecretStr | None = Field(
        None, description="S3 key id; None: boto3's chain (AWS_ACCESS_KEY_ID, ~/.aws, a role)."
    )
    s3_secret_access_key: SecretStr | None = Field(None, description="S3 secret key.")
    sources_secret_name: str | None = Field(
        None,
        description="Modal Secret attached to the GPU function that holds the store credentials"
        " (e.g. BOUNDARY_INFERENCE_S3_ACCESS_KEY_ID, ..._SECRET_ACCESS_KEY); never in a request.",
    )

    # --- Ledger size -------------------------------------------------------------------------------
    predictions_batch_pairs: int = Field(
        5000,
        ge=1,
        le=100_000,
        description="Frame pairs per save_predictions call: one packed chunk, one bounded request.",
    )
    predictions_retention_days: int | None = Field(
        None,
        ge=0,
        description="Predictions saved longer ago than this are deleted by the monitor; None keeps"
        " them forever (runs, spend and rejections are kept either way).",
    )

    # --- Monitor ----------------------------------------------------------------------------------
    failure_rate_alert: float = Field(
        0.20,
        ge=0.0,
        lt=1.0,
        description="The monitor alerts when failed + timed-out runs exceed this fraction of the"
        " runs finished in the last 24 h (below 1: a rate never exceeds 1).",
    )
    job_burst_alert: int = Field(
        50, ge=0, le=MAX_COUNT, description="The monitor alerts above this many runs in an hour."
    )

    # Escape hatch for the original bug's shape: refuse by default, allow when deliberate.
    allow_unreachable_cost_cap: bool = Field(
        False, description="Accept a per-job cap that no admissible job can ever exceed."
    )

    @field_validator("db_schema", "redis_key_prefix")
    @classmethod
    def _identifier(cls, value: str) -> str:
        # fullmatch: re.match with $ also accepts a trailing newline.
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError(
                f"{value!r} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)"
            )
        return value

    @field_validator("db_schema")
    @classmethod
    def _own_schema(cls, value: str) -> str:
        return _own_schema(value)

    @property
    def ledger_target(self) -> Literal["postgres", "supabase", "embedded"]:
        """The ledger backend ``ledger_backend`` resolves to."""
        return resolve_ledger_backend(self.ledger_backend, self.database_url, self.supabase_url)

    @field_validator("monthly_spend_alert_tiers_usd", mode="before")
    @classmethod
    def _tiers(cls, value: Any) -> Any:
        if isinstance(value, str):
            inner = value.strip().removeprefix("[").removesuffix("]")
            inner = inner.removeprefix("(").removesuffix(")")
            return tuple(part.strip() for part in inner.split(",") if part.strip())
        return value

    @field_validator("default_tenant_id")
    @classmethod
    def _tenant(cls, value: str) -> str:
        problem = identifier_problem("tenant_id", value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("queue_prefect_deployment")
    @classmethod
    def _deployment(cls, value: str) -> str:
        flow_name, _, deployment = value.partition("/")
        if not flow_name or not deployment or "/" in deployment or value != value.strip():
            raise ValueError(f"{value!r} must be 'flow-name/deployment-name'")
        return value

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        problems = self.coherence_errors()
        if problems:
            raise IncoherentConfiguration(problems)
        return self

    # --- Derived numbers (one formula each, used by the estimate and the audits) -------------------
    @property
    def gpu_price_usd_per_s(self) -> float:
        return self.gpu_price_usd_per_hour / 3600.0

    def price_by_resource_usd_per_s(self) -> dict[str, float]:
        """One container-second, by the resource names of Modal's ``cost_by_resource``."""
        return {
            self.gpu: self.gpu_price_usd_per_s,
            "CPU": self.cpu_cores * self.cpu_price_usd_per_core_s,
            "Memory": self.memory_mib / 1024.0 * self.memory_price_usd_per_gib_s,
        }

    @property
    def price_usd_per_s(self) -> float:
        """What one second of one container costs: GPU + CPU cores + memory. Every estimate,
        reservation and settlement multiplies seconds by this."""
        return sum(self.price_by_resource_usd_per_s().values())

    @property
    def gpu_attempts(self) -> int:
        """Invocations one logical job may cost: the first try plus Modal's retries."""
        return 1 + self.gpu_retries

    def expected_duration_s(self, pairs: int, throughput_pairs_per_s: float) -> float:
        return self.cold_start_s + pairs / throughput_pairs_per_s

    def deadline_s(self, pairs: int, throughput_pairs_per_s: float) -> float:
        """Per-attempt deadline the GPU function enforces on itself, capped by Modal's timeout."""
        expected = self.expected_duration_s(pairs, throughput_pairs_per_s)
        return min(
            float(self.gpu_timeout_s),
            max(float(self.min_deadline_s), expected * self.deadline_factor),
        )

    def attempt_limit_s(self, deadline_s: float) -> float:
        """Billed seconds one attempt can reach: its start-up (bounded by ``startup_timeout_s``,
        before the deadline clock starts), its deadline, and the grace an abort gets."""
        return self.startup_timeout_s + deadline_s + self.abort_grace_s

    def worst_case_gpu_s(self, deadline_s: float) -> float:
        """Billed seconds of the worst job: every attempt to its limit, then the idle tail."""
        return self.gpu_attempts * self.attempt_limit_s(deadline_s) + self.scaledown_window_s

    def worst_case_cost_usd(self, pairs: int, throughput_pairs_per_s: float) -> float:
        """Every attempt starts as slowly as allowed, runs to its deadline and ignores its abort
        for the whole grace; then the idle tail is billed."""
        deadline = self.deadline_s(pairs, throughput_pairs_per_s)
        return self.worst_case_gpu_s(deadline) * self.price_usd_per_s

    @property
    def lease_renew_s(self) -> float:
        """How often a flow renews its run's lease: five renewals may fail before it expires."""
        return self.run_lease_s / 6.0

    def watch_limit_s(self, deadline_s: float) -> float:
        """How long the flow watches a call before it cancels it as lost: every attempt to its
        limit. Past it the call is stuck (a crash-looping container, a start-up that never
        ends); cancelling it is what keeps Modal's endless retry of crashed containers bounded."""
        return self.gpu_attempts * self.attempt_limit_s(deadline_s)

    def billed_cost_usd(self, gpu_s: float) -> float:
        """What to charge a finished job: its measured GPU seconds plus the start-up and idle tail
        that Modal bills around them but no call can observe. Conservative (a reused warm
        container pays neither); the billing reconciliation measures the difference."""
        return (gpu_s + self.cold_start_s + self.scaledown_window_s) * self.price_usd_per_s

    @property
    def absolute_ceiling_usd(self) -> float:
        """What one job could cost if its own deadline failed: every attempt to Modal's timeout."""
        return self.worst_case_gpu_s(float(self.gpu_timeout_s)) * self.price_usd_per_s

    @property
    def longest_job_s(self) -> float:
        """The longest an admitted job can be watched: every attempt to its limit, for the
        longest deadline a job under the per-job cap can get (or Modal's timeout)."""
        by_timeout = self.watch_limit_s(float(self.gpu_timeout_s))
        by_cap = self.max_cost_per_job_usd / self.price_usd_per_s - self.scaledown_window_s
        return max(0.0, min(by_timeout, by_cap))

    def _admitted_within(self, seconds: float) -> int:
        """Most jobs the global rate limit admits in any interval of ``seconds``."""
        windows = max(1, math.ceil(seconds / self.global_rate_window_s))
        return self.global_rate_limit_jobs * windows

    @property
    def max_live_runs(self) -> int:
        """Most runs the ledger can hold live at once: those admitted within the longest job,
        plus one per flow run the deployment runs between its claim and its admission."""
        return self._admitted_within(self.longest_job_s) + self.deployment_concurrency_limit

    def coherence_errors(self) -> list[str]:
        """Configurations under which a safeguard is silently dead, no job can ever be admitted,
        or money is unbounded."""
        errors: list[str] = []
        # Derived numbers first: finite inputs can still overflow (a price of 1e308/h).
        smallest_worst = self.worst_case_cost_usd(1, self.default_throughput_pairs_per_s)
        derived = {
            "the absolute ceiling of one job": self.absolute_ceiling_usd,
            "the worst case of the smallest job": smallest_worst,
            "the worst case of the largest job": self.worst_case_cost_usd(
                self.max_frame_pairs, self.default_throughput_pairs_per_s
            ),
        }
        overflowed = [name for name, value in derived.items() if not math.isfinite(value)]
        if overflowed:
            return [
                f"{', '.join(overflowed)} overflows to a non-finite amount: price, durations and"
                " throughput are out of any usable range"
            ]
        errors += self._cost_errors(smallest_worst)
        errors += self._dead_safeguard_errors()
        if self.cold_start_s > self.startup_timeout_s:
            errors.append(
                f"cold_start_s ({self.cold_start_s:g}) exceeds startup_timeout_s"
                f" ({self.startup_timeout_s}): Modal would kill every start the estimate expects"
            )
        if self.heartbeat_timeout_s >= self.gpu_timeout_s:
            errors.append(
                f"heartbeat_timeout_s ({self.heartbeat_timeout_s}) must be below gpu_timeout_s"
                f" ({self.gpu_timeout_s}), or a hang is only caught by the hard timeout"
            )
        if self.supabase_url and self.supabase_service_role_key is None:
            errors.append("supabase_url is set but supabase_service_role_key is not")
        if self.ledger_backend == "postgres" and self.database_url is None:
            errors.append("ledger_backend=postgres needs database_url")
        if self.ledger_backend == "supabase" and not self.supabase_url:
            errors.append(
                "ledger_backend=supabase needs supabase_url and supabase_service_role_key"
            )
        if self.redis_url is not None and self.redis_block:
            errors.append("set redis_url or redis_block, not both")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            errors.append("set both s3_access_key_id and s3_secret_access_key, or neither")
        return errors

    def _cost_errors(self, smallest_worst: float) -> list[str]:
        """Money unbounded, a cap that can never refuse, or caps that admit no job at all."""
        errors: list[str] = []
        largest_worst = self.worst_case_cost_usd(
            self.max_frame_pairs, self.default_throughput_pairs_per_s
        )
        if largest_worst <= self.max_cost_per_job_usd and not self.allow_unreachable_cost_cap:
            errors.append(
                f"max_cost_per_job_usd=${self.max_cost_per_job_usd:.2f} can never refuse a job: the"
                f" largest admissible job ({self.max_frame_pairs} pairs) has a worst case of only"
                f" ${largest_worst:.2f}. Lower the cap, raise max_frame_pairs, or set"
                " allow_unreachable_cost_cap=true if the frame limit is meant to be the binding one."
            )
        if self.absolute_ceiling_usd > self.daily_budget_usd:
            errors.append(
                f"one job whose deadline failed could cost ${self.absolute_ceiling_usd:.2f}"
                f" ({self.gpu_attempts} attempts x ({self.startup_timeout_s} s start-up +"
                f" {self.gpu_timeout_s} s timeout + {self.abort_grace_s:.0f} s abort grace) at"
                f" ${self.price_usd_per_s * 3600:.4f}/h + idle tail), more than daily_budget_usd="
                f"${self.daily_budget_usd:.2f}: lower gpu_timeout_s or gpu_retries."
            )
        if self.daily_budget_usd > self.monthly_budget_usd:
            errors.append(
                f"daily_budget_usd (${self.daily_budget_usd}) exceeds monthly_budget_usd"
                f" (${self.monthly_budget_usd})"
            )
        # The smallest job (one pair, uncalibrated) must fit under every cap, or nothing can run:
        # e.g. a deadline_factor so large that every deadline is Modal's whole timeout.
        caps = {
            "max_cost_per_job_usd": self.max_cost_per_job_usd,
            "daily_budget_usd": self.daily_budget_usd,
            "monthly_budget_usd": self.monthly_budget_usd,
            "tenant_daily_budget_usd": self.tenant_daily_budget_usd,
            "tenant_monthly_budget_usd": self.tenant_monthly_budget_usd,
        }
        for name, cap in caps.items():
            if cap is not None and smallest_worst > cap:
                deadline = self.deadline_s(1, self.default_throughput_pairs_per_s)
                errors.append(
                    f"no job can ever be admitted: the smallest job (1 pair) has a worst case of"
                    f" ${smallest_worst:.4f} ({self.gpu_attempts} attempts x ({self.startup_timeout_s}"
                    f" s start-up + {deadline:.0f} s deadline + {self.abort_grace_s:g} s grace) +"
                    f" {self.scaledown_window_s} s idle tail), above {name}=${cap:g}. Lower"
                    " deadline_factor, min_deadline_s, gpu_retries or the start-up limits."
                )
        return errors

    def _dead_safeguard_errors(self) -> list[str]:
        """Alerts and limits that the other limits make unreachable: they would never fire."""
        errors: list[str] = []
        if self.daily_spend_alert_usd >= self.daily_budget_usd:
            errors.append(
                f"daily_spend_alert_usd (${self.daily_spend_alert_usd:g}) is not below"
                f" daily_budget_usd (${self.daily_budget_usd:g}), which caps committed spend: the"
                " alert (spend above it) could never fire"
            )
        tiers = self.monthly_spend_alert_tiers_usd
        if any(t <= 0 for t in tiers) or any(b <= a for a, b in itertools.pairwise(tiers)):
            errors.append(
                f"monthly_spend_alert_tiers_usd {list(tiers)} must be positive and increasing"
            )
        dead_tiers = [t for t in tiers if t >= self.monthly_budget_usd]
        if dead_tiers:
            errors.append(
                f"monthly_spend_alert_tiers_usd {dead_tiers} not below monthly_budget_usd"
                f" (${self.monthly_budget_usd:g}), which caps committed spend: could never fire"
            )
        for tenant_name, tenant_cap, name, cap in (
            (
                "tenant_daily_budget_usd",
                self.tenant_daily_budget_usd,
                "daily_budget_usd",
                self.daily_budget_usd,
            ),
            (
                "tenant_monthly_budget_usd",
                self.tenant_monthly_budget_usd,
                "monthly_budget_usd",
                self.monthly_budget_usd,
            ),
        ):
            if tenant_cap is not None and tenant_cap > cap:
                errors.append(
                    f"{tenant_name} (${tenant_cap:g}) is above {name} (${cap:g}): the global cap"
                    " always refuses first, so the tenant cap could never refuse anything"
                )
        if (
            self.tenant_daily_budget_usd is not None
            and self.tenant_monthly_budget_usd is not None
            and self.tenant_daily_budget_usd > self.tenant_monthly_budget_usd
        ):
            errors.append(
                f"tenant_daily_budget_usd (${self.tenant_daily_budget_usd:g}) exceeds"
                f" tenant_monthly_budget_usd (${self.tenant_monthly_budget_usd:g})"
            )
        if self.queue_depth_alert > self.queue_depth_block:
            errors.append(
                f"queue_depth_alert ({self.queue_depth_alert}) must not exceed queue_depth_block"
                f" ({self.queue_depth_block})"
            )
        unreachable = [
            f"{name} ({value})"
            for name, value in (
                ("queue_depth_alert", self.queue_depth_alert),
                ("queue_depth_block", self.queue_depth_block),
            )
            if value > self.max_live_runs
        ]
        if not self.queue_counts_prefect_backlog and unreachable:
            errors.append(
                f"{' and '.join(unreachable)} can never be reached: without the Prefect backlog"
                " (queue_counts_prefect_backlog=false) the queue depth counts only the ledger's"
                f" live runs, at most {self.max_live_runs} (the rate limit admits"
                f" {self.global_rate_limit_jobs} per {self.global_rate_window_s} s, a job lasts at"
                f" most {self.longest_job_s:.0f} s, and {self.deployment_concurrency_limit} flow"
                " runs of the deployment run at once)"
            )
        # Failures inside one breaker window come from jobs admitted within that window plus the
        # longest job before it; the rate limit bounds how many those can be.
        failable = self._admitted_within(self.breaker_window_s + self.longest_job_s)
        if self.breaker_failure_threshold > failable:
            errors.append(
                f"breaker_failure_threshold ({self.breaker_failure_threshold}) can never be"
                f" reached: at most {failable} jobs can end within breaker_window_s"
                f" ({self.breaker_window_s} s) at {self.global_rate_limit_jobs} admissions per"
                f" {self.global_rate_window_s} s, so the circuit could never open"
            )
        if self.calibration_min_runs > self.calibration_runs:
            errors.append(
                f"calibration_min_runs ({self.calibration_min_runs}) exceeds calibration_runs"
                f" ({self.calibration_runs}), the runs it reads: calibration could never apply"
            )
        return errors

    def coherence_warnings(self) -> list[str]:
        """Legal but worth saying out loud (printed by `boundary-inference config`)."""
        warnings: list[str] = []
        if self.absolute_ceiling_usd > self.max_cost_per_job_usd:
            warnings.append(
                f"Modal's timeout alone allows ${self.absolute_ceiling_usd:.2f} per job, above the"
                f" ${self.max_cost_per_job_usd:.2f} cap: the per-job deadline enforced inside the"
                " function is what keeps a job under the cap."
            )
        return warnings

    @cached_property
    def max_admissible_pairs(self) -> int:
        """Largest job whose worst case fits under the per-job cap at the default throughput."""
        lo, hi = 0, self.max_frame_pairs
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if (
                self.worst_case_cost_usd(mid, self.default_throughput_pairs_per_s)
                <= self.max_cost_per_job_usd
            ):
                lo = mid
            else:
                hi = mid - 1
        return lo


def configuration_problems(error: ValidationError) -> list[str]:
    """One line per problem of refused settings, naming the environment variable: what
    ``boundary-inference`` prints (exit 2) and the flow records (``guard_unavailable``)."""
    lines: list[str] = []
    for item in error.errors():
        cause = (item.get("ctx") or {}).get("error")
        if isinstance(cause, IncoherentConfiguration):
            lines += cause.problems
            continue
        loc = [str(part) for part in item.get("loc", ())]
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:
            lines.append(message)
            continue
        field = loc[0]
        where = f"{field} ({ENV_PREFIX}{field.upper()})"
        if len(loc) > 1:
            where += f" item {'.'.join(loc[1:])}"
        secret = "SecretStr" in str(getattr(Settings.model_fields.get(field), "annotation", ""))
        shown = "" if secret or "input" not in item else f" = {_short(item['input'])}"
        lines.append(f"{where}{shown}: {message}")
    return [" ".join(line.split()) for line in lines]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _ConnectionSettings(BaseSettings):
    """Only what reaching the ledger needs, read from the same environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )
    database_url: SecretStr | None = None
    supabase_url: str | None = None
    supabase_service_role_key: SecretStr | None = None
    db_schema: str = "boundary_inference"
    ledger_backend: Literal["auto", "postgres", "supabase", "embedded"] = "auto"
    state_dir: Path = Path(".state")

    @field_validator("db_schema")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.fullmatch(value):
            raise ValueError(f"{value!r} is not a lower-case SQL identifier")
        return _own_schema(value)


def _own_schema(value: str) -> str:
    from migrations import reserved_schema_problem

    problem = reserved_schema_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def resolve_ledger_backend(
    backend: str, database_url: SecretStr | None, supabase_url: str | None
) -> Literal["postgres", "supabase", "embedded"]:
    """``auto``: database_url, else Supabase when its URL is set, else embedded (the rule before
    ``ledger_backend`` existed, so existing environments keep their ledger)."""
    if backend == "postgres":
        return "postgres"
    if backend == "supabase":
        return "supabase"
    if backend == "embedded":
        return "embedded"
    if database_url is not None:
        return "postgres"
    return "supabase" if supabase_url else "embedded"


def settings_for_recording() -> Settings:
    """When the settings are refused, the connection settings alone, so that the refusal can
    still be recorded in the ledger (a flow run refused for its configuration leaves a row).

    Every other field keeps its default and nothing is validated: use it to reach the ledger,
    never to decide anything. Raises ``ValidationError`` if the connection settings are bad too.
    """
    connection = _ConnectionSettings()
    return Settings.model_construct(**dict(connection))


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top (tests, CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
