"""The watchdogs' timers: an injectable way to run an action after some of the job's time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# Runs ``action`` once, ``delay_s`` of the job's time from now, on a thread of its own; the thread
# is named ``name``. The watchdogs take their waits from here, with their clock, so that a test
# moves time itself: a watch then fires because the test said time passed, never because this
# machine stalled a thread. In production it is :func:`daemon_timer` (real waits).
StartTimer = Callable[[float, Callable[[], None], str], Cancellable]


def daemon_timer(delay_s: float, action: Callable[[], None], name: str) -> threading.Timer:
    timer = threading.Timer(delay_s, action)
    timer.name = name
    timer.daemon = True
    timer.start()
    return timer
