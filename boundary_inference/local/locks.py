"""Non-blocking ``flock`` on a file: the one lock helper of the embedded servers and run slots.

An ``flock`` belongs to an open file description, and the kernel drops it when its holder exits,
however it exits (``kill -9`` included): a dead starter or submission never keeps a lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def try_lock(path: Path) -> Iterator[int | None]:
    """An fd holding an exclusive flock on ``path`` for the body, or None when another open file
    description holds it. Closing the fd (on leaving the body) releases the lock."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            yield None
            return
        yield fd
    finally:
        os.close(fd)


def lock_held(path: Path) -> bool:
    """Whether another open file description holds ``path``'s flock (probed, released at once).

    Call it under a lock that keeps other starters out: a probe briefly holds the lock, and a
    starter probing at the same moment would take the probe for an owner.
    """
    if not path.exists():
        return False
    with try_lock(path) as fd:
        return fd is None
