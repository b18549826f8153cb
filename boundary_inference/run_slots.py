"""A per-state-dir cap on concurrent flow runs against the embedded Prefect server.

The embedded server keeps its state in SQLite, which takes one writer at a time. Fifty ``submit``
processes at once each open a flow run, a dozen task runs and their state changes: the server
answers ``503``/``database is locked`` faster than Prefect's client retries can absorb, and a
submission ends in a traceback although the ledger's decision was sound. A submission waits for
one of a few slots instead, so a burst queues rather than fails.

A slot is an exclusive ``flock`` on one of ``SLOTS`` files under ``state/prefect/run-slots/``: the
kernel releases it when its holder exits, however it exits (``kill -9`` included), so a dead
submission never keeps a slot. Nothing is asked of the server to take one. It bounds only the
embedded server: against a Prefect server of your own (``PREFECT_API_URL``) no slot is taken.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from boundary_inference.locks import try_lock

# Four flow runs at once keep the embedded server's SQLite under its lock timeout on a 2-core
# machine (measured: 50 at once gave 22 failed submissions without slots); more gains nothing,
# since SQLite serialises the writes anyway.
SLOTS = 4
_POLL_S = 0.05  # between tries while every slot is taken (jittered: no lock-step wake-ups)


@contextmanager
def run_slot(directory: Path, *, slots: int = SLOTS) -> Iterator[int]:
    """Hold one of ``slots`` slots under ``directory`` for the body; yields the slot's index.

    Waits (without a deadline: the holders are bounded by their own job limits, and a dead holder
    frees its slot at once) until a slot is free.
    """
    if slots < 1:
        raise ValueError(f"slots must be at least 1, got {slots}")
    directory.mkdir(parents=True, exist_ok=True)
    start = random.randrange(slots)  # noqa: S311 - spreads first tries; not a secret
    while True:
        for offset in range(slots):
            index = (start + offset) % slots
            with try_lock(directory / f"slot-{index}") as fd:
                if fd is None:
                    continue
                yield index  # leaving the with closes the only descriptor: the lock is released
                return
        time.sleep(_POLL_S * (0.5 + random.random()))  # noqa: S311 - jitter, not a secret
