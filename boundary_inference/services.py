"""Turn :class:`config.Settings` into connected ledger, limiter and executor.

One place decides where state lives:

* ledger: ``ledger_backend`` (``Settings.ledger_target``): ``postgres`` (``database_url``, psycopg),
  ``supabase`` (``supabase_url`` + service-role key, supabase-py RPC) or ``embedded`` PostgreSQL
  under ``state_dir`` (migrations applied on first use); ``auto`` picks them in that order;
* limiter: ``redis_url`` > ``redis_block`` (a saved prefect-redis ``RedisDatabase``) > embedded Redis;
* executor: ``local`` (child process on this CPU) or ``modal`` (the deployed GPU function).

Services are cached per process and per settings value, so the tasks of one flow run share
connections.
"""

from __future__ import annotations

import sys
import tempfile
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


class EmbeddedNotAllowed(RuntimeError):
    """A deployment run would start embedded servers that its configuration did not ask for."""


def embedded_refusal(settings: Settings) -> str | None:
    """Why this process may not start the embedded servers ``settings`` would need, or None.

    A flow run started by a worker or ``serve`` (a deployment run) runs where Prefect put it:
    a worker's temporary working directory is deleted after the run, with any relative state dir
    in it, and the daemons started there would outlive it, serving a ledger nobody reads. So
    such a run uses embedded servers only when told: an absolute ``state_dir`` set explicitly,
    or ``allow_embedded`` (and even then never a relative state dir inside Prefect's temporary
    directory). The CLI, the demo and tests (no deployment) keep the embedded default.
    """
    needs = [
        name
        for name, configured in (
            ("PostgreSQL", settings.ledger_target != "embedded"),
            ("Redis", settings.redis_url is not None or bool(settings.redis_block)),
        )
        if not configured
    ]
    if not needs or _deployment_id() is None:
        return None
    state_dir = Path(settings.state_dir)
    if state_dir.is_absolute() and "state_dir" in settings.model_fields_set:
        return None
    if settings.allow_embedded:
        resolved = state_dir.resolve()
        temporary = _prefect_temporary_dir(resolved)
        if temporary is None:
            return None
        return (
            f"state_dir {str(state_dir)!r} resolves to {resolved}, inside Prefect's temporary"
            f" working directory {temporary}, deleted after this run: set"
            " BOUNDARY_INFERENCE_STATE_DIR to an absolute path"
        )
    return (
        f"this flow run comes from a deployment (a worker or serve) and would start an embedded"
        f" {' and '.join(needs)} under {str(state_dir)!r}: configure"
        " BOUNDARY_INFERENCE_DATABASE_URL and BOUNDARY_INFERENCE_REDIS_URL, or set"
        " BOUNDARY_INFERENCE_STATE_DIR to an absolute path (the one the CLI uses), or"
        " BOUNDARY_INFERENCE_ALLOW_EMBEDDED=true"
    )


def _deployment_id() -> str | None:
    # Only a process that imported Prefect can be inside a flow run; the CLI's reading commands
    # do not pay Prefect's import for this question.
    if "prefect" not in sys.modules:
        return None
    from prefect.runtime import deployment

    deployment_id = deployment.id  # the running flow run's deployment, None outside of one
    return str(deployment_id) if deployment_id else None


def _prefect_temporary_dir(path: Path) -> Path | None:
    """The process worker's per-run directory (``tempfile.TemporaryDirectory(suffix="prefect")``)
    that ``path`` lies in, if any."""
    temp_root = Path(tempfile.gettempdir()).resolve()
    for parent in [path, *path.parents]:
        if parent.parent == temp_root and parent.name.endswith("prefect"):
            return parent
    return None


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
