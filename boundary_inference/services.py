"""Turn :class:`config.Settings` into connected ledger, limiter and executor.

One place decides where state lives:

* ledger: ``database_url`` (psycopg) > ``supabase_url`` + service-role key (supabase-py RPC) >
  embedded PostgreSQL under ``state_dir`` (migrations applied on first use);
* limiter: ``redis_url`` > ``redis_block`` (a saved prefect-redis ``RedisDatabase``) > embedded Redis;
* executor: ``local`` (child process on this CPU) or ``modal`` (the deployed GPU function).

Services are cached per process and per settings value, so the tasks of one flow run share
connections.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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


def open_ledger(settings: Settings) -> Ledger:
    from boundary_inference.ledger import Ledger, PsycopgTransport, SupabaseTransport

    if settings.database_url is not None:
        dsn = settings.database_url.get_secret_value()
        return Ledger(PsycopgTransport(dsn, settings.db_schema, timeout_s=settings.guard_timeout_s))
    if settings.supabase_url:
        assert settings.supabase_service_role_key is not None  # enforced by Settings
        return Ledger(
            SupabaseTransport(
                url=settings.supabase_url,
                key=settings.supabase_service_role_key.get_secret_value(),
                schema=settings.db_schema,
                timeout_s=settings.guard_timeout_s,
            )
        )
    dsn = embedded_dsn(settings)
    return Ledger(PsycopgTransport(dsn, settings.db_schema, timeout_s=settings.guard_timeout_s))


def embedded_dsn(settings: Settings) -> str:
    """Start (or join) the embedded PostgreSQL and make sure the schema is migrated."""
    from boundary_inference.embedded import start_postgres
    from boundary_inference.ledger import apply_migrations

    dsn = start_postgres(Path(settings.state_dir)).dsn
    key = (dsn, settings.db_schema)
    if key not in _migrated:
        apply_migrations(dsn, settings.db_schema)
        _migrated.add(key)
    return dsn


def open_limiter(settings: Settings) -> Limiter:
    from boundary_inference.limiter import Limiter, open_redis_client, redis_client_from_block

    timeout_s = settings.guard_timeout_s
    if settings.redis_url is not None:
        client = open_redis_client(settings.redis_url.get_secret_value(), timeout_s=timeout_s)
    elif settings.redis_block:
        client = redis_client_from_block(settings.redis_block, timeout_s=timeout_s)
    else:
        from boundary_inference.embedded import start_redis

        client = open_redis_client(start_redis(Path(settings.state_dir)).url, timeout_s=timeout_s)
    return Limiter(client, prefix=settings.redis_key_prefix)


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


def get_services(settings: Settings | None = None) -> Services:
    """Connected services for ``settings`` (default: from the environment), cached per process."""
    settings = settings or get_settings()
    with _lock:
        cached = _cache.get(settings)
        if cached is not None:
            return cached
    services = Services(
        settings=settings,
        ledger=open_ledger(settings),
        limiter=open_limiter(settings),
        executor=open_executor(settings),
    )
    with _lock:
        return _cache.setdefault(settings, services)


def reset_services() -> None:
    """Forget cached connections (tests that restart servers)."""
    with _lock:
        _cache.clear()
        _migrated.clear()
