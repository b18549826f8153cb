"""Run slots bound concurrent flow runs on the embedded Prefect server, across real processes.

Each holder is a separate Python process that enters a slot, says so with a file, and stays until
the test tells it to leave: nothing here depends on how fast this machine is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from boundary_inference.run_slots import run_slot

HOLDER = """
import sys, time
from pathlib import Path
from boundary_inference.run_slots import run_slot
slots_dir, marks, name = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
with run_slot(slots_dir, slots=2):
    (marks / f"in-{name}").touch()
    while not (marks / f"leave-{name}").exists():
        time.sleep(0.01)
    (marks / f"in-{name}").unlink()
"""


def _inside(marks: Path) -> set[str]:
    return {p.name.removeprefix("in-") for p in marks.glob("in-*")}


def _wait_for(check, what: str, timeout_s: float = 120.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
    return result


def test_at_most_the_slot_count_hold_and_a_killed_holder_frees_its_slot(tmp_path: Path) -> None:
    slots_dir, marks = tmp_path / "slots", tmp_path / "marks"
    marks.mkdir()
    names = [f"h{i}" for i in range(5)]
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(slots_dir), str(marks), name],
            cwd=Path(__file__).resolve().parents[1],
        )
        for name in names
    }
    try:
        first = _wait_for(lambda: _inside(marks) if len(_inside(marks)) == 2 else None, "2 holders")
        # Everyone else has had time to try (they poll every ~50 ms); nobody got a third slot.
        time.sleep(1.0)
        assert _inside(marks) == first

        killed = sorted(first)[0]
        os.kill(procs[killed].pid, signal.SIGKILL)  # its slot must come back without it
        procs[killed].wait(timeout=30)
        (marks / f"in-{killed}").unlink()
        _wait_for(lambda: len(_inside(marks)) == 2, "a waiter to take the killed holder's slot")
        seen = set(first)
        while len(seen) < len(names):
            current = _inside(marks)
            seen |= current
            assert len(current) <= 2, current
            for name in current - {killed}:
                (marks / f"leave-{name}").touch()
            time.sleep(0.02)
        for name in names:
            (marks / f"leave-{name}").touch()
        for name, proc in procs.items():
            assert proc.wait(timeout=60) == (-signal.SIGKILL if name == killed else 0), name
        assert seen == set(names)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()


def test_a_slot_is_free_again_after_its_holder_leaves(tmp_path: Path) -> None:
    with run_slot(tmp_path, slots=1) as first:
        assert first == 0
    with run_slot(tmp_path, slots=1) as again:
        assert again == 0


def test_no_slots_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"), run_slot(tmp_path, slots=0):
        pass
