"""Every limit and connection in one place: :class:`Settings`, the union of one class per concern.

Each concern is its own module and class, read from the same ``BOUNDARY_INFERENCE_*`` environment
(:mod:`config.base`): :mod:`config.connections`, :mod:`config.guards`, :mod:`config.pricing`,
:mod:`config.timeouts`, :mod:`config.execution`, :mod:`config.monitor`. Code that needs one concern
may take the narrower class; :class:`Settings` holds every field, flat (``settings.x``), and the
checks that span concerns. The arithmetic of money is the cost model (:mod:`config.cost_model`,
:attr:`Settings.cost_model`).

Each field carries its unit in its name and a one-line reason in its description. Values come from,
in order of precedence: keyword arguments, ``BOUNDARY_INFERENCE_*`` environment variables, a ``.env``
file in the working directory, and the defaults (the seed document's numbers).

Incoherent configurations are refused at construction (``ValueError`` with the reason); merely
surprising ones are reported by :meth:`Settings.coherence_warnings`. See README "Configuration".
Every number must be finite (``inf``, ``nan`` and values that overflow to them are refused), and
every count and duration fits the stores it reaches (:data:`MAX_COUNT`, :data:`MAX_DURATION_S`).
:func:`configuration_problems` turns a refusal into one line per problem.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from pydantic import ValidationError, model_validator

from config.base import ENV_PREFIX, MAX_BYTES, MAX_COUNT, MAX_DURATION_S
from config.connections import ConnectionSettings, LedgerConnectionSettings, resolve_ledger_backend
from config.cost_model import CostModel, price_by_resource_usd_per_s
from config.execution import ExecutionSettings
from config.guards import GuardSettings
from config.monitor import MonitorSettings
from config.pricing import PricingSettings
from config.timeouts import TimeoutSettings

__all__ = [
    "ENV_PREFIX",
    "MAX_BYTES",
    "MAX_COUNT",
    "MAX_DURATION_S",
    "IncoherentConfiguration",
    "Settings",
    "configuration_problems",
    "get_settings",
    "resolve_ledger_backend",
    "settings_for_recording",
]


class IncoherentConfiguration(ValueError):
    """Settings whose combination leaves a safeguard dead, admits no job, or leaves money
    unbounded. ``problems``: one sentence each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("incoherent configuration:\n  - " + "\n  - ".join(problems))
        self.problems = problems


# Pydantic collects fields from the last base to the first: this order keeps the admission limits
# and the money first, as before the split (fields are validated, and refusals listed, in it).
class Settings(
    MonitorSettings,
    ConnectionSettings,
    ExecutionSettings,
    TimeoutSettings,
    PricingSettings,
    GuardSettings,
):
    """Limits, prices and connections for the boundary-inference project: every concern's fields,
    and the checks across them."""

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        problems = self.coherence_errors()
        if problems:
            raise IncoherentConfiguration(problems)
        return self

    # --- Derived numbers across concerns ----------------------------------------------------------
    @property
    def cost_model(self) -> CostModel:
        """The cost model with these prices and limits (a property, not cached: ``model_copy``
        would carry a cached one over with stale numbers)."""
        return CostModel(
            gpu=self.gpu,
            price_by_resource_usd_per_s=price_by_resource_usd_per_s(
                gpu=self.gpu,
                gpu_price_usd_per_hour=self.gpu_price_usd_per_hour,
                cpu_cores=self.cpu_cores,
                cpu_price_usd_per_core_s=self.cpu_price_usd_per_core_s,
                memory_mib=self.memory_mib,
                memory_price_usd_per_gib_s=self.memory_price_usd_per_gib_s,
            ),
            attempts=self.gpu_attempts,
            cold_start_s=self.cold_start_s,
            startup_timeout_s=self.startup_timeout_s,
            abort_grace_s=self.abort_grace_s,
            scaledown_window_s=self.scaledown_window_s,
            deadline_factor=self.deadline_factor,
            min_deadline_s=self.min_deadline_s,
            gpu_timeout_s=self.gpu_timeout_s,
        )

    @property
    def longest_job_s(self) -> float:
        """The longest an admitted job can be watched, under the per-job cap."""
        return self.cost_model.longest_job_s(self.max_cost_per_job_usd)

    @property
    def max_admissible_pairs(self) -> int:
        """Largest job whose worst case fits under the per-job cap at the default throughput."""
        return self.cost_model.max_admissible_pairs(
            self.max_cost_per_job_usd, self.max_frame_pairs, self.default_throughput_pairs_per_s
        )

    @property
    def max_live_runs(self) -> int:
        """Most runs the ledger can hold live at once: those admitted within the longest job,
        plus one per flow run the deployment runs between its claim and its admission."""
        return self.admitted_within(self.longest_job_s) + self.deployment_concurrency_limit

    def coherence_errors(self) -> list[str]:
        """Configurations under which a safeguard is silently dead, no job can ever be admitted,
        or money is unbounded."""
        cost = self.cost_model
        errors: list[str] = []
        # Derived numbers first: finite inputs can still overflow (a price of 1e308/h).
        smallest_worst = cost.worst_case_cost_usd(1, self.default_throughput_pairs_per_s)
        derived = {
            "the absolute ceiling of one job": cost.absolute_ceiling_usd,
            "the worst case of the smallest job": smallest_worst,
            "the worst case of the largest job": cost.worst_case_cost_usd(
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
        errors += self.calibration_errors()
        errors += self.timeout_errors()
        errors += self.connection_errors()
        return errors

    def _cost_errors(self, smallest_worst: float) -> list[str]:
        """Money unbounded, a cap that can never refuse, or caps that admit no job at all."""
        cost = self.cost_model
        errors: list[str] = []
        largest_worst = cost.worst_case_cost_usd(
            self.max_frame_pairs, self.default_throughput_pairs_per_s
        )
        if largest_worst <= self.max_cost_per_job_usd and not self.allow_unreachable_cost_cap:
            errors.append(
                f"max_cost_per_job_usd=${self.max_cost_per_job_usd:.2f} can never refuse a job: the"
                f" largest admissible job ({self.max_frame_pairs} pairs) has a worst case of only"
                f" ${largest_worst:.2f}. Lower the cap, raise max_frame_pairs, or set"
                " allow_unreachable_cost_cap=true if the frame limit is meant to be the binding one."
            )
        if cost.absolute_ceiling_usd > self.daily_budget_usd:
            errors.append(
                f"one job whose deadline failed could cost ${cost.absolute_ceiling_usd:.2f}"
                f" ({self.gpu_attempts} attempts x ({self.startup_timeout_s} s start-up +"
                f" {self.gpu_timeout_s} s timeout + {self.abort_grace_s:.0f} s abort grace) at"
                f" ${cost.price_usd_per_s * 3600:.4f}/h + idle tail), more than daily_budget_usd="
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
                deadline = cost.deadline_s(1, self.default_throughput_pairs_per_s)
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
        failable = self.admitted_within(self.breaker_window_s + self.longest_job_s)
        if self.breaker_failure_threshold > failable:
            errors.append(
                f"breaker_failure_threshold ({self.breaker_failure_threshold}) can never be"
                f" reached: at most {failable} jobs can end within breaker_window_s"
                f" ({self.breaker_window_s} s) at {self.global_rate_limit_jobs} admissions per"
                f" {self.global_rate_window_s} s, so the circuit could never open"
            )
        return errors

    def coherence_warnings(self) -> list[str]:
        """Legal but worth saying out loud (printed by `boundary-inference config`)."""
        cost = self.cost_model
        warnings: list[str] = []
        if cost.absolute_ceiling_usd > self.max_cost_per_job_usd:
            warnings.append(
                f"Modal's timeout alone allows ${cost.absolute_ceiling_usd:.2f} per job, above the"
                f" ${self.max_cost_per_job_usd:.2f} cap: the per-job deadline enforced inside the"
                " function is what keeps a job under the cap."
            )
        return warnings


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


def settings_for_recording() -> Settings:
    """When the settings are refused, the connection settings alone, so that the refusal can
    still be recorded in the ledger (a flow run refused for its configuration leaves a row).

    Every other field keeps its default and nothing is validated: use it to reach the ledger,
    never to decide anything. Raises ``ValidationError`` if the connection settings are bad too.
    """
    connection = LedgerConnectionSettings()  # type: ignore[call-arg]  # from the environment
    return Settings.model_construct(**dict(connection))


def get_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit overrides on top (tests, CLI flags)."""
    return Settings(**overrides)  # type: ignore[arg-type]
