"""Connections: the ledger (PostgreSQL, Supabase or embedded), Redis, the video stores and the
deployed Modal app. Every key and DSN that can hold a password is a ``SecretStr``.

:class:`LedgerConnectionSettings` is only what reaching the ledger needs: when the settings as a
whole are refused, :func:`config.settings.settings_for_recording` reads it alone so that the
refusal can still be recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from config.base import IDENTIFIER, SettingsBase


class LedgerConnectionSettings(SettingsBase):
    """Where the ledger lives."""

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
    state_dir: Path = Field(
        Path(".state"), description="Where the embedded PostgreSQL and Redis keep their data."
    )

    @field_validator("db_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        return _own_schema(_identifier(value))

    @property
    def ledger_target(self) -> Literal["postgres", "supabase", "embedded"]:
        """The ledger backend ``ledger_backend`` resolves to."""
        return resolve_ledger_backend(self.ledger_backend, self.database_url, self.supabase_url)


class ConnectionSettings(LedgerConnectionSettings):
    """Every store and service we connect to."""

    redis_url: SecretStr | None = Field(None, description="Redis URL. None: embedded Redis.")
    redis_block: str | None = Field(
        None, description="Name of a saved prefect-redis RedisDatabase block to use instead."
    )
    redis_key_prefix: str = Field("bi", description="Prefix of every Redis key we write.")
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
    modal_app_name: str = Field("boundary-inference", description="Deployed Modal app name.")
    modal_class_name: str = Field("BoundaryInference", description="Modal class in the app.")
    modal_environment_name: str | None = Field(
        None,
        description="Modal environment of the deployed app (None: the token's default, as"
        " `modal deploy` without -e); deploy with `modal deploy -e NAME` to the same one.",
    )

    @field_validator("redis_key_prefix")
    @classmethod
    def _key_prefix(cls, value: str) -> str:
        return _identifier(value)

    def connection_errors(self) -> list[str]:
        """Connections that are half set, or a backend named without what it needs."""
        errors: list[str] = []
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


def _identifier(value: str) -> str:
    # fullmatch: re.match with $ also accepts a trailing newline.
    if not IDENTIFIER.fullmatch(value):
        raise ValueError(
            f"{value!r} must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63)"
        )
    return value


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
