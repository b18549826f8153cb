"""One error tree: every error the package raises on purpose is a BoundaryInferenceError, each
guard's store failure a StoreUnavailable (what the flow catches to fail closed), each operator
problem an OperatorError; the CLI tells them and a driver's own errors apart by class, not by
name. Pure: no servers."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import httpx
import psycopg
import pytest
import redis

import boundary_inference
import flows
import tasks
from boundary_inference.cli.errors import operator_problem
from boundary_inference.errors import BoundaryInferenceError, OperatorError, StoreUnavailable
from boundary_inference.executor import ExecutorUnavailable
from boundary_inference.ledger import LedgerError, LedgerUnavailable
from boundary_inference.limiter import LimiterUnavailable
from tasks.queue import BacklogUnavailable


@pytest.fixture
def prefect_harness() -> None:
    """No Prefect API: nothing here runs a flow."""


def _our_exception_classes() -> list[type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for package in (boundary_inference, tasks, flows):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue  # running it is what importing it does
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == info.name:
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return list(found.values())


def test_every_error_of_ours_is_in_the_tree() -> None:
    classes = _our_exception_classes()
    assert len(classes) >= 15  # the walk found them (a broken walk would pass vacuously)
    outside = sorted(
        f"{c.__module__}.{c.__qualname__}"
        for c in classes
        if not issubclass(c, BoundaryInferenceError)
        and c.__module__ != "modal_app.app"  # the GPU payload imports nothing of ours
    )
    assert not outside


@pytest.mark.parametrize(
    "store_error",
    [LedgerError, LedgerUnavailable, LimiterUnavailable, BacklogUnavailable, ExecutorUnavailable],
)
def test_every_store_failure_fails_closed_through_one_base(
    store_error: type[BaseException],
) -> None:
    # flows.boundary_inference catches StoreUnavailable alone: each of these must be one.
    assert issubclass(store_error, StoreUnavailable)
    assert not issubclass(store_error, OperatorError) or store_error.__name__ == "MigrationError"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (LedgerUnavailable("timeout", code="timeout"), "the ledger (PostgreSQL) failed"),
        (LimiterUnavailable("no answer"), "Redis failed"),
        (BacklogUnavailable("Prefect API down"), "Prefect API down"),
        (psycopg.OperationalError("connection refused"), "cannot reach PostgreSQL"),
        (redis.ConnectionError("Error 111"), "cannot reach Redis"),
        (httpx.ConnectError("All connection attempts failed"), "cannot reach the Prefect API"),
    ],
)
def test_the_cli_names_each_kind_in_one_line(error: BaseException, line: str) -> None:
    reason = operator_problem(error)
    assert reason is not None and line in reason and "\n" not in reason


@pytest.mark.parametrize(
    "bug", [KeyError("x"), TypeError("bad"), ZeroDivisionError(), AssertionError("invariant")]
)
def test_a_bug_keeps_its_traceback(bug: BaseException) -> None:
    assert operator_problem(bug) is None


def test_a_class_named_like_a_driver_error_is_not_one() -> None:
    # The old matching by "<module>.<name>" took any class so named for the driver's; by class,
    # only the driver's own (and its subclasses) count.
    fake = type("OperationalError", (Exception,), {"__module__": "psycopg"})
    assert operator_problem(fake("looks like psycopg")) is None
