"""The run as one state machine: a job's phase only moves forward, what it took is one record, and
the run row's statuses are the ledger's own. Pure: no servers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from config import Settings
from flows.run.job import NEXT, Admissions, IllegalTransition, Job, Phase
from flows.run.row import RunStatus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def prefect_harness() -> None:
    """No Prefect API: nothing here runs a flow or a task."""


def _job() -> Job:
    return Job(None, Settings(), "v1", "t1")


def test_a_job_starts_guarding_with_nothing_taken() -> None:
    job = _job()
    assert job.phase is Phase.GUARDING
    assert job.admissions == Admissions(limiter_slot=False, budget_reservation=False)
    assert not job.spawned


@pytest.mark.parametrize(
    "path",
    [
        [Phase.CLAIMED, Phase.SPAWNED, Phase.SETTLED],  # admitted, ran, settled
        [Phase.CLAIMED, Phase.CLOSED],  # refused after the claim
        [Phase.CLOSED],  # refused before any run row
        [Phase.SPAWNED, Phase.SETTLED],  # took over a live call
    ],
)
def test_the_phases_a_run_goes_through(path: list[Phase]) -> None:
    job = _job()
    for phase in path:
        job.move(phase)
    assert job.phase is path[-1]
    assert job.spawned is (Phase.SPAWNED in path)


@pytest.mark.parametrize(
    ("path", "illegal"),
    [
        ([Phase.CLAIMED, Phase.SPAWNED], Phase.CLOSED),  # a spawned job is never "refused"
        ([Phase.CLAIMED, Phase.SPAWNED], Phase.CLAIMED),  # never backwards
        ([Phase.CLOSED], Phase.SPAWNED),  # a refused job never spawns
        ([Phase.CLAIMED, Phase.SPAWNED, Phase.SETTLED], Phase.SETTLED),  # settled once
        ([], Phase.SETTLED),  # nothing to settle before a spawn
        ([Phase.CLAIMED], Phase.CLAIMED),
    ],
)
def test_an_illegal_move_is_refused_and_changes_nothing(path: list[Phase], illegal: Phase) -> None:
    job = _job()
    for phase in path:
        job.move(phase)
    before = job.phase
    with pytest.raises(IllegalTransition, match=f"{before} -> {illegal}"):
        job.move(illegal)
    assert job.phase is before


def test_ends_are_final_and_every_phase_is_reachable() -> None:
    assert NEXT[Phase.CLOSED] == NEXT[Phase.SETTLED] == frozenset()
    reachable = {Phase.GUARDING}
    frontier = [Phase.GUARDING]
    while frontier:
        for nxt in NEXT[frontier.pop()] - reachable:
            reachable.add(nxt)
            frontier.append(nxt)
    assert reachable == set(Phase)


def test_settled_ends_a_spawned_job_once() -> None:
    job = _job()
    job.move(Phase.CLAIMED)
    job.move(Phase.SPAWNED)
    assert job.settled() is True  # the first ending writes the row
    assert job.settled() is False  # a second (the flow's store-error handler) writes nothing
    assert job.phase is Phase.SETTLED and job.spawned


def test_undo_after_the_spawn_gives_nothing_back() -> None:
    # What a spawned job took, it uses: the admissions stay recorded as taken.
    job = _job()
    job.admissions.limiter_slot = job.admissions.budget_reservation = True
    job.move(Phase.SPAWNED)
    job.undo_admissions()
    assert job.admissions == Admissions(limiter_slot=True, budget_reservation=True)


def _sql_run_statuses() -> set[str]:
    core = (ROOT / "migrations" / "20261124000001_core.sql").read_text()
    check = re.search(
        r"status\s+text NOT NULL DEFAULT 'queued' CHECK \(status IN \((.*?)\)\)", core, re.S
    )
    assert check is not None
    return set(re.findall(r"'(\w+)'", check.group(1)))


def test_run_statuses_are_the_ledgers_own() -> None:
    assert {str(status) for status in RunStatus} == _sql_run_statuses()
