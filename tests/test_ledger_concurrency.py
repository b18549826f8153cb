"""The atomic functions under real contention: many threads, then many separate processes.

Each caller has its own connection, and all callers are released by one barrier, so the calls
race inside the server. Counts must be exact: one creator, 40 reservations, one probe.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest

from benches.ledger import concurrency_figures, race
from boundary_inference.ledger import Ledger
from tests.support import RUN_KEY as KEY
from tests.support import T0, in_threads, try_reserve

BREAKER: dict[str, Any] = {"name": "modal", "threshold": 5, "window_s": 3600}


def open_breaker(ledger: Ledger) -> None:
    for i in range(5):
        ledger.breaker_record(**BREAKER, ok=False, now=T0 + dt.timedelta(seconds=i))
    assert ledger.breaker_status(name="modal", now=T0)["state"] == "open"


# --- threads --------------------------------------------------------------------------------------


def test_50_threads_claim_one_key_exactly_one_creates(ledger: Ledger) -> None:
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)
    results = in_threads(ledger, [lambda lg: lg.claim_run(**KEY, pairs=99)] * 50)
    assert sum(r["created"] for r in results) == 1
    assert len({r["run_id"] for r in results}) == 1
    assert ledger.queue_depth()["total"] == 1


def test_50_threads_force_claim_after_success_one_rerun(ledger: Ledger) -> None:
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)
    first = ledger.claim_run(**KEY)["run_id"]
    ledger.transition_run(run_id=first, to_status="running")
    ledger.transition_run(run_id=first, to_status="succeeded")
    results = in_threads(ledger, [lambda lg: lg.claim_run(**KEY, force=True)] * 50)
    assert sum(r["created"] for r in results) == 1
    assert {r["rerun_of"] for r in results} == {first}
    assert len(ledger.list_runs(video_id="v1")) == 2


def test_100_reservations_of_50_cents_against_20_dollars_threads(ledger: Ledger) -> None:
    def call(lg: Ledger) -> list[dict]:
        caps = {"daily_cap_usd": 20.0, "monthly_cap_usd": 100.0}
        return [try_reserve(lg, 0.5, caps=caps, now=T0, run_id=uuid.uuid4()) for _ in range(2)]

    results = [r for pair in in_threads(ledger, [call] * 50) for r in pair]
    assert len(results) == 100
    assert sum(r["ok"] for r in results) == 40
    assert {r["reason"] for r in results if not r["ok"]} == {"daily_cap"}
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 20.0


def test_same_run_reserved_concurrently_is_charged_once(ledger: Ledger) -> None:
    run_id = str(uuid.uuid4())
    results = in_threads(
        ledger,
        [
            lambda lg: lg.reserve_budget(
                run_id=run_id,
                tenant_id="t1",
                amount_usd=1.0,
                daily_cap_usd=20.0,
                monthly_cap_usd=100.0,
                now=T0,
            )
        ]
        * 20,
    )
    assert all(r["ok"] for r in results)
    assert sum(not r["idempotent"] for r in results) == 1
    assert ledger.spend_summary(now=T0)["daily_committed_usd"] == 1.0


def test_20_threads_half_open_exactly_one_probe(ledger: Ledger) -> None:
    open_breaker(ledger)
    later = T0 + dt.timedelta(seconds=3700)
    results = in_threads(
        ledger,
        [lambda lg: lg.breaker_check(**BREAKER, open_s=3600, acquire_probe=True, now=later)] * 20,
    )
    assert sum(r["probe"] for r in results) == 1
    assert sum(r["allowed"] for r in results) == 1
    assert {r["state"] for r in results if not r["allowed"]} == {"half_open"}


def test_20_threads_record_failures_open_exactly_at_threshold(ledger: Ledger) -> None:
    results = in_threads(ledger, [lambda lg: lg.breaker_record(**BREAKER, ok=False, now=T0)] * 20)
    # The row lock serializes the records: the counts seen are 1..20, each exactly once.
    assert sorted(r["failures_in_window"] for r in results) == list(range(1, 21))
    assert ledger.breaker_status(name="modal", now=T0)["state"] == "open"


# --- separate processes ---------------------------------------------------------------------------


@pytest.mark.slow
def test_separate_processes_race_claims_reservations_and_probe(
    ledger: Ledger, ledger_dsn: str
) -> None:
    """5 spawned processes x 10 threads, each caller on its own connection."""
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)
    open_breaker(ledger)
    claims, reservations, probes = race(
        ledger_dsn,
        ledger.schema,
        [
            ("claim_run", [KEY] * 50),
            (
                "reserve_budget",
                [
                    {
                        "run_id": str(uuid.uuid4()),
                        "tenant_id": "t1",
                        "amount_usd": 0.5,
                        "daily_cap_usd": 20.0,
                        "monthly_cap_usd": 100.0,
                        "now": T0,
                    }
                    for _ in range(100)
                ],
            ),
            (
                "breaker_check",
                [
                    {
                        **BREAKER,
                        "open_s": 3600,
                        "acquire_probe": True,
                        "now": T0 + dt.timedelta(seconds=3700),
                    }
                ]
                * 20,
            ),
        ],
        processes=5,
        threads=10,
    )
    for phase in (claims, reservations, probes):
        assert not [r for r in phase["results"] if "error" in r]
    assert len(claims["results"]) == 50
    assert sum(r["created"] for r in claims["results"]) == 1
    assert len(reservations["results"]) == 100
    assert sum(r["ok"] for r in reservations["results"]) == 40
    assert len(probes["results"]) == 20
    assert sum(r["probe"] for r in probes["results"]) == 1


@pytest.mark.slow
def test_concurrency_figures_uses_a_scratch_schema(ledger: Ledger, ledger_dsn: str) -> None:
    figures = concurrency_figures(ledger_dsn, ledger.schema, processes=2, threads=10)
    assert figures["claims_50_creators"] == 1
    assert figures["claims_50_distinct_run_ids"] == 1
    assert figures["reservations_100x0.50_cap20_ok"] == 40
    assert figures["breaker_probe_20_granted"] == 1
    assert figures["error_count"] == 0
    assert figures["seconds"] > 0
    # The named schema was not written to.
    assert ledger.list_runs() == [] and ledger.spend_summary()["monthly_committed_usd"] == 0
