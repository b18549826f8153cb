"""Run leases: the flow watching a live run renews its lease in the ledger every few seconds.

A lease is a time in the database's clock (``lease_expires_at = now() + run_lease_s``), set when
the run is claimed and pushed forward by :class:`LeaseKeeper`, a daemon thread of the flow process.
It dies with that process: a ``kill -9``, a lost machine, a frozen process stop renewing, and
``run_lease_s`` later the run is known to have no watcher. Then a claim of the same key takes it
over (ending it, or reattaching to its call) and the reaper asks its call what happened; neither
ever calls it a duplicate.

A watcher whose lease was taken over while it was stalled learns it at its next renewal
(``renewed=false``): it raises :class:`LeaseLost` and stops, without cancelling the call (its new
watcher owns it) and without settling (its new watcher settles it once).
"""

from __future__ import annotations

import logging
import threading
import uuid

from boundary_inference.errors import BoundaryInferenceError
from boundary_inference.ledger import Ledger

logger = logging.getLogger(__name__)


class LeaseLost(BoundaryInferenceError):
    """Another watcher holds this run now (its lease had expired): stop watching it, and neither
    cancel nor settle it."""


def lease_owner(flow_run_id: object | None) -> str:
    """The lease holder's name: the flow run id (a retried flow run is the same holder, and takes
    its own dead attempt's run over), or a random one outside a flow run."""
    return str(flow_run_id) if flow_run_id else f"process:{uuid.uuid4().hex}"


class LeaseKeeper:
    """Renews one run's lease every ``renew_every_s`` on a daemon thread, until stopped.

    A failed renewal (the ledger unreachable) changes nothing: the lease runs out on its own if the
    ledger stays away longer than ``lease_s``. Only an answer ``renewed=false`` means the lease was
    lost. Tests drive :meth:`renew_once` directly instead of starting the thread.
    """

    def __init__(
        self, ledger: Ledger, run_id: str, owner: str, *, lease_s: float, renew_every_s: float
    ) -> None:
        self.ledger = ledger
        self.run_id = run_id
        self.owner = owner
        self.lease_s = float(lease_s)
        self.renew_every_s = float(renew_every_s)
        self.renewals = 0
        self._lost = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    def start(self) -> LeaseKeeper:
        self._thread = threading.Thread(
            target=self._run, name=f"lease-{self.run_id[:8]}", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stopped.wait(self.renew_every_s):
                if not self.renew_once():
                    return
        finally:
            # psycopg keeps one connection per thread: this thread's dies with it.
            close = getattr(
                getattr(self.ledger, "transport", None), "close_thread_connection", None
            )
            if callable(close):
                close()

    def renew_once(self) -> bool:
        """Renew now; False once the lease is lost (the run ended or was taken over)."""
        if self.lost:
            return False
        try:
            answer = self.ledger.renew_lease(
                run_id=self.run_id, owner=self.owner, lease_s=self.lease_s
            )
        except Exception as error:  # unknown: keep trying; the lease bounds how long
            logger.warning("lease of run %s not renewed: %s", self.run_id, error)
            return True
        if answer.get("renewed"):
            self.renewals += 1
            return True
        if answer.get("status") in ("queued", "running"):
            # Live, but held by another owner: we were taken over while stalled.
            logger.error(
                "run %s was taken over by %s: this flow stops watching it",
                self.run_id,
                answer.get("owner"),
            )
            self._lost.set()
            return False
        return True  # it ended (its flow settled it): nothing left to hold

    def check(self) -> None:
        """Raise :class:`LeaseLost` once another watcher holds the run."""
        if self.lost:
            raise LeaseLost(f"run {self.run_id} was taken over by another watcher")

    def confirm(self) -> None:
        """Renew now and raise :class:`LeaseLost` if the run is no longer ours (before settling)."""
        self.renew_once()
        self.check()

    def stop(self, *, release: bool = False) -> None:
        """Stop renewing. ``release``: let the lease expire now (the run, if still live, has no
        watcher any more: the next claim or reaper pass need not wait for it)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.renew_every_s + 5)
        if release and not self.lost:
            try:
                self.ledger.renew_lease(run_id=self.run_id, owner=self.owner, lease_s=0)
            except Exception as error:
                logger.warning("lease of run %s not released (it expires): %s", self.run_id, error)
