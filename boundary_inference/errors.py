"""The package's error tree: what a caller catches is a kind of failure, never a list of classes.

    BoundaryInferenceError
    ├── StoreUnavailable   a guard's store failed or cannot answer now (the ledger, Redis, the
    │                      Prefect backlog count, the executor): the guard fails closed, as
    │                      ``guard_unavailable``, and nothing is spawned
    └── OperatorError      a problem the operator fixes (a setting, a missing server, a bad
                           registration or request): one line on the CLI, exit 2, no traceback

Each adapter maps its driver's errors (psycopg, redis, httpx, Modal) to one of these at its own
edge; nothing above the adapters matches a driver's class, let alone its name.
"""

from __future__ import annotations


class BoundaryInferenceError(Exception):
    """Root of every error this package raises on purpose."""


class StoreUnavailable(BoundaryInferenceError):
    """A safeguard's store could not decide (unreachable, too slow, failed the call): the
    safeguard refuses (fails closed) and nothing is spawned."""


class OperatorError(BoundaryInferenceError):
    """A problem the operator fixes: the message says what and where, in one line."""
