"""What every settings class shares: the environment prefix, the sources and the store limits.

Values come from, in order of precedence: keyword arguments, ``BOUNDARY_INFERENCE_*`` environment
variables, a ``.env`` file in the working directory, and the defaults. Every number must be finite
(``inf``, ``nan`` and values that overflow to them are refused), and every count and duration fits
the stores it reaches (:data:`MAX_COUNT`, :data:`MAX_DURATION_S`).
"""

from __future__ import annotations

import re

from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "BOUNDARY_INFERENCE_"
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Counts reach PostgreSQL integer columns and parameters (int4).
MAX_COUNT = 2**31 - 1
# Durations reach PostgreSQL as integer seconds and intervals, and Redis as millisecond expiries
# through the limiter's Lua script (measured on the embedded Redis: 1e13 s accepted, 1e14 s
# refused with "value is not an integer or out of range", failing every admission). int4 seconds,
# about 68 years, is inside every one of those limits.
MAX_DURATION_S = 2**31 - 1
# Byte sizes are bigint (int8) in the ledger.
MAX_BYTES = 2**63 - 1


class SettingsBase(BaseSettings):
    """One concern's fields, read from the same environment as :class:`config.Settings`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        # inf, nan, and numbers that overflow to inf (1e309) are refused for every float field.
        allow_inf_nan=False,
    )
