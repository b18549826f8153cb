"""Flow parameters exactly as a caller sent them: every problem becomes a recorded rejection.

A deployment run's parameters are whatever the caller sent (``prefect deployment run --param``,
the UI's form, the API). Prefect binds them to the flow function's signature before the flow
starts: a missing required parameter there is a ``ParameterBindError`` and the run ends
``Crashed`` with nothing recorded. :func:`bind_leniently` gives the engine a function with the
same parameters, all optional, so binding always succeeds; the flow's own code then refuses
what is missing or of the wrong type as a ``validation_failed`` rejection (ledger row, event,
artifact). The documented signature stays what Prefect shows: deployments, the UI's run form and
its "required" marks come from it.

Types are checked here (with pydantic, lax: ``"false"`` is a bool, ``7`` is not a str); the
content of a value (identifier grammar, frame ranges) is :mod:`tasks.validate`'s. Parameters
listed in ``unchecked`` reach the flow untouched (their shape is validated there).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any

from pydantic import TypeAdapter, ValidationError

Rejecter = Callable[[dict[str, Any], list[str]], Any]


def bind_leniently(flow: Any, reject: Rejecter, *, unchecked: Iterable[str] = ()) -> Any:
    """Make ``flow`` accept any subset of its parameters; ``reject(parameters, problems)`` runs
    inside the flow run instead of the flow body when a parameter is missing or mistyped."""
    documented = flow.fn
    signature = inspect.signature(documented)
    hints = typing.get_type_hints(documented)
    required = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty]
    skip = set(unchecked)
    adapters = {
        name: TypeAdapter(hints[name])
        for name in signature.parameters
        if name in hints and name not in skip
    }

    def lenient(**parameters: Any) -> Any:
        problems: list[str] = []
        missing = [n for n in required if parameters.get(n) is None]
        if missing:
            problems.append(f"missing required parameter(s): {', '.join(missing)}")
        checked = dict(parameters)
        for name, adapter in adapters.items():
            if name in missing or name not in parameters:
                continue
            try:
                checked[name] = adapter.validate_python(parameters[name])
            except ValidationError as error:
                reason = "; ".join(e["msg"] for e in error.errors()[:3])
                problems.append(f"{name}={parameters[name]!r}: {reason}")
        if problems:
            return reject(parameters, problems)
        return documented(**checked)

    # Every parameter optional and keyword-only: binding never fails, the body decides.
    lenient.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[
            p.replace(
                kind=inspect.Parameter.KEYWORD_ONLY,
                default=None if p.default is inspect.Parameter.empty else p.default,
            )
            for p in signature.parameters.values()
        ]
    )
    lenient.__name__ = documented.__name__
    lenient.__qualname__ = documented.__qualname__
    lenient.__module__ = documented.__module__
    lenient.__doc__ = documented.__doc__
    # Prefect reads the parameter schema from the flow object, which still wraps ``documented``
    # (flow.__wrapped__); only the engine's binding goes through ``fn``.
    flow.fn = lenient
    return flow
