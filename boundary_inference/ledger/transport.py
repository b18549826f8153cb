"""The one seam between the ledger API and a database: call a SQL function, get its JSON back.

Private module; :class:`Transport` is re-exported for type hints.
"""

from __future__ import annotations

import math
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


def reject_non_finite(fn: str, params: dict[str, Any]) -> None:
    """Refuse NaN/inf anywhere in ``params`` the same way on every transport (``BI400``).

    JSON has no NaN (httpx refuses to encode it) and a numeric parameter would store it: decided
    here, before sending, so both transports answer a NaN with the same error.
    """
    from boundary_inference.ledger.errors import LedgerError

    stack: list[Any] = list(params.items())
    while stack:
        name, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            raise LedgerError(f"{fn}: {name} is not a finite number: {value!r}", code="BI400")
        if isinstance(value, dict):
            stack.extend((f"{name}.{k}", v) for k, v in value.items())
        elif isinstance(value, list | tuple):
            stack.extend((f"{name}[{i}]", v) for i, v in enumerate(value))
