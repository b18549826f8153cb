"""The ledger: PostgreSQL state behind every safeguard.

Every state change a guard depends on is one atomic SQL function (``migrations/``), called through
:class:`Ledger` over one of two transports that send the same JSON:

* :class:`PsycopgTransport`: direct PostgreSQL (embedded, local, Supabase direct/pooler);
* :class:`SupabaseTransport`: Supabase PostgREST RPC with the service-role key.

Results are the functions' JSON objects, typed by the ``TypedDict``s of
:mod:`boundary_inference.ledger.results` (re-exported here: :class:`ClaimResult`, :class:`RunRow`...).

Every failure is a :class:`LedgerError`; :class:`LedgerUnavailable` means the answer is unknown
(connection lost, timeout), which guards treat as a refusal: fail closed.

Example:
    >>> from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
    >>> apply_migrations(dsn, "boundary_inference")  # doctest: +SKIP
    >>> ledger = Ledger(PsycopgTransport(dsn, "boundary_inference", timeout_s=5))  # doctest: +SKIP
    >>> ledger.queue_depth()  # doctest: +SKIP
    {'queued': 0, 'running': 0, 'total': 0}
"""

from boundary_inference.ledger import results
from boundary_inference.ledger.api import Ledger
from boundary_inference.ledger.errors import (
    IllegalTransition,
    LedgerError,
    LedgerUnavailable,
    MigrationError,
    RunNotFound,
)
from boundary_inference.ledger.migrate import apply_migrations
from boundary_inference.ledger.psycopg_transport import PsycopgTransport
from boundary_inference.ledger.results import *  # noqa: F403 - every result type, named once in results.__all__
from boundary_inference.ledger.supabase_transport import SupabaseTransport
from boundary_inference.ledger.transport import Transport

__all__ = [
    "IllegalTransition",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "MigrationError",
    "PsycopgTransport",
    "RunNotFound",
    "SupabaseTransport",
    "Transport",
    "apply_migrations",
    *results.__all__,
]
