"""Flow parameters exactly as a caller sent them: every problem becomes a recorded rejection.

A deployment run's parameters are whatever the caller sent (``prefect deployment run --param``,
the UI's form, the API). Prefect binds them to the flow function's signature before the flow
starts: a missing required parameter there is a ``ParameterBindError``, an unknown one a
``SignatureMismatchError``, and the run ends ``Crashed`` with nothing recorded.
:func:`bind_leniently` gives the engine a callable with the same parameters, all optional (and
the unknown names a run carries), so binding always succeeds; the flow's own code then refuses
what is unknown, missing or of the wrong type as a ``validation_failed`` rejection (ledger row,
event, artifact). The documented signature stays what Prefect shows: deployments, the UI's run form and
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


class _LenientFn:
    """What the engine binds and calls instead of the documented function.

    Its signature is the documented one with every parameter optional and keyword-only, plus, in
    a deployment run's process, the names the run actually carries: Prefect compares a run's
    parameter names with the signature before any flow code runs (an unknown name there is a
    ``SignatureMismatchError`` and a ``Crashed`` run), so the names are read (one API call, through
    ``prefect.runtime.flow_run.parameters``) and accepted here, then refused by :meth:`__call__`.
    """

    def __init__(self, documented: Callable[..., Any], reject: Rejecter, unchecked: set[str]):
        self._documented = documented
        self._reject = reject
        signature = inspect.signature(documented)
        hints = typing.get_type_hints(documented)
        self._names = list(signature.parameters)
        self._required = [
            n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty
        ]
        self._adapters = {
            name: TypeAdapter(hints[name])
            for name in signature.parameters
            if name in hints and name not in unchecked
        }
        self._base = signature.replace(
            parameters=[
                p.replace(
                    kind=inspect.Parameter.KEYWORD_ONLY,
                    default=None if p.default is inspect.Parameter.empty else p.default,
                )
                for p in signature.parameters.values()
            ]
        )
        self.__name__ = documented.__name__
        self.__qualname__ = documented.__qualname__
        self.__module__ = documented.__module__
        self.__doc__ = documented.__doc__

    @property
    def __signature__(self) -> inspect.Signature:
        from prefect.runtime import flow_run

        sent = set(flow_run.parameters or {}) - set(self._names)
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None)
            for name in sorted(sent)
            if name.isidentifier()
        ]
        return self._base.replace(parameters=[*self._base.parameters.values(), *extra])

    def __call__(self, **parameters: Any) -> Any:
        problems: list[str] = []
        unknown = sorted(n for n, v in parameters.items() if n not in self._names and v is not None)
        if unknown:
            problems.append(
                f"unknown parameter(s): {', '.join(unknown)} (the flow takes"
                f" {', '.join(self._names)})"
            )
        missing = [n for n in self._required if parameters.get(n) is None]
        if missing:
            problems.append(f"missing required parameter(s): {', '.join(missing)}")
        checked = {n: v for n, v in parameters.items() if n in self._names}
        for name, adapter in self._adapters.items():
            if name in missing or name not in checked:
                continue
            try:
                # Strict: "false" or 0 is not a boolean here. A lax coercion would turn the
                # string "false" into a forced, billed re-run.
                checked[name] = adapter.validate_python(checked[name], strict=True)
            except ValidationError as error:
                reason = "; ".join(e["msg"] for e in error.errors()[:3])
                problems.append(f"{name}={checked[name]!r}: {reason}")
        if problems:
            return self._reject(parameters, problems)
        return self._documented(**checked)


def bind_leniently(flow: Any, reject: Rejecter, *, unchecked: Iterable[str] = ()) -> Any:
    """Make ``flow`` accept any parameters; ``reject(parameters, problems)`` runs inside the flow
    run instead of the flow body when one is unknown, missing or mistyped."""
    # Prefect reads the parameter schema (deployments, the UI's form) from the flow object, which
    # still wraps the documented function (flow.__wrapped__); only the engine's binding and call
    # go through ``fn``.
    flow.fn = _LenientFn(flow.fn, reject, set(unchecked))
    return flow
