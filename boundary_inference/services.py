"""Turn :class:`config.Settings` into connected ledger, limiter and executor.

One place decides where state lives:

* ledger: ``ledger_backend`` (``Settings.ledger_target``): ``postgres`` (``database_url``, psycopg),
  ``supabase`` (``supabase_url`` + service-role key, supabase-py RPC) or ``embedded`` PostgreSQL
  under ``state_dir`` (migrations applied on first use); ``auto`` picks them in that order;
* limiter: ``redis_url`` > ``redis_block`` (a saved prefect-redis ``RedisDatabase``) > embedded Redis;
  in a deployment run (worker or serve) the embedded ones only when already running, never started
  (:func:`embedded_refusal`);
* executor: ``local`` (child process on this CPU) or ``modal`` (the deployed GPU function).

Services are cached per process and per settings value, so the tasks of one flow run share
connections.
"""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from boundary_inference.errors import OperatorError
from config import Settings, get_settings

if TYPE_CHECKING:
    from boundary_inference.executor import Executor
    from boundary_inference.ledger import Ledger
    from boundary_inference.limiter import Limiter

_lock = threading.Lock()
_cache: dict[Settings, Services] = {}
_migrated: set[tuple[str, str]] = set()


@dataclass
class Services:
    settings: Settings
    ledger: Ledger
    limiter: Limiter
    executor: Executor


def open_ledger(settings: Settings, *, join_only: bool = False) -> Ledger:
    """The configured ledger; else the state dir's embedded PostgreSQL, started if needed, or
    with ``join_only`` (a deployment run) only when it already runs (never started)."""
    from boundary_inference.ledger import Ledger, PsycopgTransport, SupabaseTransport

    target = settings.ledger_target
    if target == "postgres":
        assert settings.database_url is not None  # enforced by Settings
        dsn = settings.database_url.get_secret_value()
        return Ledger(PsycopgTransport(dsn, settings.db_schema, timeout_s=settings.guard_timeout_s))
    if target == "supabase":
        assert settings.supabase_url and settings.supabase_service_role_key is not None
        return Ledger(
            SupabaseTransport(
                url=settings.supabase_url,
                key=settings.supabase_service_role_key.get_secret_value(),
                schema=settings.db_schema,
                timeout_s=settings.guard_timeout_s,
            )
        )
    dsn = embedded_dsn(settings, join_only=join_only)
    return Ledger(PsycopgTransport(dsn, settings.db_schema, timeout_s=settings.guard_timeout_s))


def embedded_dsn(settings: Settings, *, join_only: bool = False) -> str:
    """Start (or join) the embedded PostgreSQL and make sure the schema is migrated.

    ``join_only``: join the one running under the state dir, or raise :class:`EmbeddedNotAllowed`.
    """
    from boundary_inference.ledger import apply_migrations
    from boundary_inference.local.embedded import running_postgres_dsn, start_postgres

    if join_only:
        running = running_postgres_dsn(Path(settings.state_dir))
        if running is None:
            raise EmbeddedNotAllowed(_missing_store_message("PostgreSQL", settings))
        dsn = running
    else:
        dsn = start_postgres(Path(settings.state_dir)).dsn
    key = (dsn, settings.db_schema)
    if key not in _migrated:
        apply_migrations(dsn, settings.db_schema)
        _migrated.add(key)
    return dsn


def open_limiter(settings: Settings, *, join_only: bool = False) -> Limiter:
    """The configured Redis; else the state dir's embedded one, started if needed, or with
    ``join_only`` (a deployment run) only when it already runs (never started)."""
    from boundary_inference.limiter import Limiter, open_redis_client, redis_client_from_block
    from boundary_inference.local.embedded import running_redis, start_redis

    timeout_s = settings.guard_timeout_s
    if settings.redis_url is not None:
        client = open_redis_client(settings.redis_url.get_secret_value(), timeout_s=timeout_s)
    elif settings.redis_block:
        client = redis_client_from_block(settings.redis_block, timeout_s=timeout_s)
    elif join_only:
        server = running_redis(Path(settings.state_dir))
        if server is None:
            raise EmbeddedNotAllowed(_missing_store_message("Redis", settings))
        client = open_redis_client(server.url, timeout_s=timeout_s)
    else:
        client = open_redis_client(start_redis(Path(settings.state_dir)).url, timeout_s=timeout_s)
    return Limiter(client, prefix=settings.redis_key_prefix)


def start_embedded_stores(settings: Settings) -> None:
    """Start the state dir's embedded PostgreSQL and Redis that ``settings`` leaves unconfigured
    (``flows.serve``, which the developer started: its deployment runs then join them)."""
    from boundary_inference.local.embedded import start_redis

    if settings.database_url is None and not settings.supabase_url:
        embedded_dsn(settings)
    if settings.redis_url is None and not settings.redis_block:
        start_redis(Path(settings.state_dir))


def open_executor(settings: Settings) -> Executor:
    if settings.executor == "modal":
        from boundary_inference.executor.modal import ModalExecutor

        return ModalExecutor.from_settings(settings)
    from boundary_inference.executor import LocalExecutor

    # Always passed, existing or not: `models add` may create it after this process started.
    return LocalExecutor(
        Path(settings.state_dir).resolve() / "jobs",
        models_dir=Path(settings.models_dir).resolve(),
    )


class EmbeddedNotAllowed(OperatorError):
    """A deployment run lacks a store or an executor that its configuration must name."""


# What each store is configured by, in the order services reads them.
_STORE_SETTINGS = {
    "PostgreSQL": "BOUNDARY_INFERENCE_DATABASE_URL (or BOUNDARY_INFERENCE_SUPABASE_URL with its"
    " service-role key)",
    "Redis": "BOUNDARY_INFERENCE_REDIS_URL (or BOUNDARY_INFERENCE_REDIS_BLOCK)",
}


def _missing_store_message(store: str, settings: Settings) -> str:
    state_dir = Path(settings.state_dir).resolve()
    return (
        f"{_STORE_SETTINGS[store]} is not set, and no embedded {store} is running under the"
        f" state dir {str(state_dir)!r} (BOUNDARY_INFERENCE_STATE_DIR); a deployment run never"
        " starts one"
    )


def embedded_refusal(settings: Settings) -> str | None:
    """Why a deployment run may not run with ``settings``, or None (and None outside one).

    A flow run started by a worker or ``serve`` (a deployment run) may run on another host, in a
    container or in a worker's temporary directory: embedded servers it started there would be a
    second ledger and a second rate window, so dedup, budgets, cooldowns and the rate limit would
    hold per host. Such a run therefore never starts one. It uses the stores its configuration
    names (URLs, a Redis block) or, for local development, the embedded servers already running
    under a state dir it can reach (started by the CLI or ``flows.serve``). The executor must be
    named too: the default, a local CPU child process, would run a GPU-priced job on the worker's
    CPU. The CLI, the demo and tests (no deployment) keep the embedded defaults.
    """
    if _deployment_id() is None:
        return None
    from boundary_inference.local.embedded import running_postgres_dsn, running_redis

    state_dir = Path(settings.state_dir)
    problems = []
    if settings.ledger_target == "embedded" and running_postgres_dsn(state_dir) is None:
        problems.append(_missing_store_message("PostgreSQL", settings))
    if settings.redis_url is None and not settings.redis_block and running_redis(state_dir) is None:
        problems.append(_missing_store_message("Redis", settings))
    if "executor" not in settings.model_fields_set:
        problems.append(
            "BOUNDARY_INFERENCE_EXECUTOR is not set: a deployment run uses the executor its"
            " configuration names (modal; local only for a CPU setup), never the default local"
            " CPU executor at a GPU price"
        )
    return "; ".join(problems) or None


def _deployment_id() -> str | None:
    # Only a process that imported Prefect can be inside a flow run; the CLI's reading commands
    # do not pay Prefect's import for this question.
    if "prefect" not in sys.modules:
        return None
    import prefect.context
    from prefect.runtime import deployment

    override = "PREFECT__RUNTIME__DEPLOYMENT__ID" in os.environ  # prefect.runtime's own override
    inherited = getattr(prefect.context, "_deployment_id", None)  # set for nested runs
    context = prefect.context.FlowRunContext.get()
    if context is not None and context.flow_run is not None and not override:
        if inherited is not None and inherited.get() is not None:
            return str(inherited.get())
        # What deployment.id answers, without its detour: when the run in context has no
        # deployment (a flow called in-process), it reads that same run back from the API, with
        # a new client each time (35 ms here, twice per first job of a process).
        found = context.flow_run.deployment_id
        return str(found) if found else None
    deployment_id = deployment.id  # the running flow run's deployment, None outside of one
    return str(deployment_id) if deployment_id else None


def get_services(settings: Settings | None = None) -> Services:
    """Connected services for ``settings`` (default: from the environment), cached per process.

    Raises :class:`EmbeddedNotAllowed` when :func:`embedded_refusal` says so.
    """
    settings = settings or get_settings()
    with _lock:
        cached = _cache.get(settings)
        if cached is not None:
            return cached
    refusal = embedded_refusal(settings)
    if refusal is not None:
        raise EmbeddedNotAllowed(refusal)
    # Checked above, joined here: a daemon that stopped in between is refused, never restarted.
    join_only = _deployment_id() is not None
    services = Services(
        settings=settings,
        ledger=open_ledger(settings, join_only=join_only),
        limiter=open_limiter(settings, join_only=join_only),
        executor=open_executor(settings),
    )
    with _lock:
        return _cache.setdefault(settings, services)


def reset_services() -> None:
    """Forget cached connections (tests that restart servers)."""
    with _lock:
        _cache.clear()
        _migrated.clear()
