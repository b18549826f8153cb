"""The one seam between the ledger API and a database: call a SQL function, get its JSON back.

Private module; :class:`Transport` is re-exported for type hints.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

#: A JSON value as both transports see it (parameters in, results out).
JSON = Any


@runtime_checkable
class Transport(Protocol):
    """Calls one ledger SQL function by name with ``p_*`` parameters.

    ``params`` holds JSON-compatible values only (str, int, float, bool, None, dict, list); the
    result is the function's jsonb value decoded to Python. Implementations raise only
    :class:`~boundary_inference.ledger.errors.LedgerError` (and subclasses).
    """

    schema: str

    def call(self, fn: str, params: dict[str, Any]) -> JSON:
        """Run ``schema.fn(p_a => ..., ...)`` and return its JSON result."""
        ...

    def close(self) -> None:
        """Release connections (idempotent)."""
        ...
