"""Run leases on the real ledger: an expired lease is never a duplicate; exactly one claimer or
reaper takes a run over; renewals by a watcher that was taken over fail; admissions are recorded
for the limiter's rebuild. Time passing is the database's own clock, or a lease moved into the
past with SQL (never a sleep that a slow machine could outlast)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
import pytest

from boundary_inference.lease import LeaseKeeper
from boundary_inference.ledger import IllegalTransition, Ledger, PsycopgTransport
from tests.support import reserve

KEY = {"video_id": "v1", "tenant_id": "t1", "frames_version": "f1", "model_version": "m1"}


@pytest.fixture
def video(ledger: Ledger) -> None:
    ledger.upsert_video(id="v1", tenant_id="t1", frame_count=100, fps=25.0)


def expire(ledger: Ledger, ledger_dsn: str, run_id: str, seconds_ago: float = 1.0) -> None:
    """The run's watcher stopped renewing ``seconds_ago`` ago (its lease ran out then)."""
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        conn.execute(
            f'UPDATE "{ledger.schema}".boundary_inference_runs'
            " SET lease_expires_at = now() - make_interval(secs => %s) WHERE id = %s",
            (seconds_ago, run_id),
        )


def test_a_live_lease_is_a_duplicate_and_an_expired_one_is_not(
    ledger: Ledger, video: None, ledger_dsn: str
) -> None:
    first = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-a")
    assert first["created"] and first["taken_over"] is False
    run = ledger.get_run(run_id=first["run_id"])
    assert run["lease_owner"] == "flow-a" and run["lease_expires_at"] is not None
    # Another flow within the lease: a duplicate, as before.
    dup = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-b")
    assert dup["run_id"] == first["run_id"] and not dup["created"] and not dup["taken_over"]

    # Its flow died between the claim and the spawn, holding $0.34.
    reserve(ledger, first["run_id"], 0.34)
    expire(ledger, ledger_dsn, first["run_id"])
    again = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-b")
    assert again["created"] and again["run_id"] != first["run_id"]
    assert again["ended_run"]["action"] == "released"
    assert float(again["ended_run"]["amount_usd"]) == pytest.approx(0.34)
    dead = ledger.get_run(run_id=first["run_id"])
    assert dead["status"] == "cancelled" and "lease expired" in dead["error"]
    assert float(ledger.spend_summary()["daily_committed_usd"]) == 0.0


def test_an_expired_running_run_with_a_call_is_handed_over(
    ledger: Ledger, video: None, ledger_dsn: str
) -> None:
    first = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-a", flow_run_id="fr-a")
    ledger.transition_run(run_id=first["run_id"], to_status="running")
    ledger.set_call_id(run_id=first["run_id"], call_id="local-0123456789abcdef")
    expire(ledger, ledger_dsn, first["run_id"])
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-b", flow_run_id="fr-b")
    assert claim == {
        "run_id": first["run_id"],
        "created": False,
        "status": "running",
        "rerun_of": None,
        "taken_over": True,
        "ended_run": None,
        "executor_call_id": "local-0123456789abcdef",
    }
    run = ledger.get_run(run_id=first["run_id"])
    assert (run["lease_owner"], run["flow_run_id"]) == ("flow-b", "fr-b")
    # The old watcher, resumed, is told it lost the run; the new one renews.
    assert (
        ledger.renew_lease(run_id=first["run_id"], owner="flow-a", lease_s=60)["renewed"] is False
    )
    assert ledger.renew_lease(run_id=first["run_id"], owner="flow-b", lease_s=60)["renewed"] is True
    # And a third claimer now sees a watched run: a duplicate.
    third = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-c")
    assert third["taken_over"] is False and third["created"] is False


def test_a_retried_flow_run_takes_its_own_dead_attempt_over(ledger: Ledger, video: None) -> None:
    """Same owner (the flow run id survives a retry) within the lease: its earlier attempt is
    dead, since Prefect runs one attempt at a time."""
    first = ledger.claim_run(**KEY, lease_s=3600, lease_owner="fr-1")
    reserve(ledger, first["run_id"], 0.5)
    again = ledger.claim_run(**KEY, lease_s=3600, lease_owner="fr-1")
    assert again["created"] and again["ended_run"]["action"] == "released"


def test_running_without_a_call_id_is_charged_its_worst_case(
    ledger: Ledger, video: None, ledger_dsn: str
) -> None:
    first = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-a")
    reserve(ledger, first["run_id"], 0.5)
    ledger.transition_run(
        run_id=first["run_id"], to_status="running", fields={"reserved_cost_usd": 0.5}
    )
    expire(ledger, ledger_dsn, first["run_id"])
    again = ledger.claim_run(**KEY, lease_s=60, lease_owner="flow-b")
    assert again["created"]
    assert again["ended_run"] == {
        "run_id": first["run_id"],
        "was": "running",
        "action": "charged_worst_case",
        "amount_usd": 0.5,
    }
    spend = ledger.spend_summary()
    assert float(spend["daily_actual_usd"]) == pytest.approx(0.5)


def test_claims_without_a_lease_keep_the_old_rule(ledger: Ledger, video: None) -> None:
    first = ledger.claim_run(**KEY)
    assert ledger.get_run(run_id=first["run_id"])["lease_expires_at"] is None
    assert ledger.claim_run(**KEY)["created"] is False
    assert ledger.expired_leases() == []  # no age given: nothing legacy is stale


def test_of_fifty_claimers_of_an_expired_run_one_creates_and_none_skips_wrongly(
    ledger: Ledger, ledger_dsn: str, video: None, ledger_schema: str
) -> None:
    dead = ledger.claim_run(**KEY, lease_s=60, lease_owner="dead")
    reserve(ledger, dead["run_id"], 0.34)
    expire(ledger, ledger_dsn, dead["run_id"])
    start = threading.Barrier(50)

    def claim(i: int) -> dict[str, Any]:
        own = Ledger(PsycopgTransport(ledger_dsn, ledger_schema, timeout_s=30))
        try:
            start.wait(60)
            return own.claim_run(**KEY, lease_s=60, lease_owner=f"flow-{i}")
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=50) as pool:
        claims = list(pool.map(claim, range(50)))
    created = [c for c in claims if c["created"]]
    assert len(created) == 1
    # Everyone else sees the new, watched run: a true duplicate.
    assert {c["run_id"] for c in claims} == {created[0]["run_id"]}
    assert ledger.get_run(run_id=dead["run_id"])["status"] == "cancelled"
    assert float(ledger.spend_summary()["daily_committed_usd"]) == 0.0


def test_expired_leases_and_exactly_one_taker(
    ledger: Ledger, ledger_dsn: str, video: None, ledger_schema: str
) -> None:
    live = ledger.claim_run(**KEY, lease_s=60, lease_owner="alive")
    other = ledger.claim_run(**{**KEY, "frames_version": "f2"}, lease_s=60, lease_owner="dead")
    expire(ledger, ledger_dsn, other["run_id"], seconds_ago=30)
    (row,) = ledger.expired_leases()
    assert row["id"] == other["run_id"] and 29 < float(row["expired_for_s"]) < 300
    assert row["running_for_s"] is None  # never started
    assert ledger.take_expired_lease(run_id=live["run_id"], owner="r", lease_s=60)["taken"] is False

    start = threading.Barrier(20)

    def take(i: int) -> bool:
        own = Ledger(PsycopgTransport(ledger_dsn, ledger_schema, timeout_s=30))
        try:
            start.wait(60)
            return bool(
                own.take_expired_lease(run_id=other["run_id"], owner=f"reaper-{i}", lease_s=60)[
                    "taken"
                ]
            )
        finally:
            own.close()

    with ThreadPoolExecutor(max_workers=20) as pool:
        assert sum(pool.map(take, range(20))) == 1
    assert ledger.expired_leases() == []  # taken: leased again to its taker


def test_end_abandoned_run_only_by_its_taker(ledger: Ledger, ledger_dsn: str, video: None) -> None:
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="dead")
    reserve(ledger, claim["run_id"], 0.2)
    expire(ledger, ledger_dsn, claim["run_id"])
    assert ledger.take_expired_lease(run_id=claim["run_id"], owner="reaper", lease_s=60)["taken"]
    assert not ledger.end_abandoned_run(run_id=claim["run_id"], owner="other", reason="x")["ended"]
    ended = ledger.end_abandoned_run(run_id=claim["run_id"], owner="reaper", reason="no watcher")
    assert ended["ended"] and ended["action"] == "released"
    assert ledger.get_run(run_id=claim["run_id"])["status"] == "cancelled"


def test_renewal_moves_the_lease_in_the_database_clock(
    ledger: Ledger, ledger_dsn: str, video: None
) -> None:
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="me")
    expire(ledger, ledger_dsn, claim["run_id"])  # it ran out, but nobody took it over yet
    keeper = LeaseKeeper(ledger, claim["run_id"], "me", lease_s=120, renew_every_s=20)
    assert keeper.renew_once() and not keeper.lost and keeper.renewals == 1
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:
        (left_s,) = conn.execute(
            f"SELECT extract(epoch FROM lease_expires_at - now())"
            f' FROM "{ledger.schema}".boundary_inference_runs WHERE id = %s',
            (claim["run_id"],),
        ).fetchone()
    assert 100 < float(left_s) <= 120
    # Released: expires now, so a claimer need not wait for it.
    keeper.stop(release=True)
    assert ledger.expired_leases()[0]["id"] == claim["run_id"]


def test_a_watcher_taken_over_learns_it_at_its_next_renewal(
    ledger: Ledger, ledger_dsn: str, video: None
) -> None:
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="slow")
    keeper = LeaseKeeper(ledger, claim["run_id"], "slow", lease_s=60, renew_every_s=10)
    expire(ledger, ledger_dsn, claim["run_id"])
    assert ledger.take_expired_lease(run_id=claim["run_id"], owner="reaper", lease_s=60)["taken"]
    assert keeper.renew_once() is False and keeper.lost
    with pytest.raises(Exception, match="taken over"):
        keeper.confirm()
    # A run that simply ended (its own flow settled it) is not "lost".
    done = LeaseKeeper(ledger, claim["run_id"], "reaper", lease_s=60, renew_every_s=10)
    ledger.transition_run(run_id=claim["run_id"], to_status="cancelled")
    assert done.renew_once() and not done.lost


def test_the_keeper_thread_renews_until_stopped(ledger: Ledger, video: None) -> None:
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="me")
    renewed = threading.Event()

    class Counting:
        def renew_lease(self, **kw: Any) -> dict[str, Any]:
            answer = ledger.renew_lease(**kw)
            renewed.set()
            return answer

    keeper = LeaseKeeper(Counting(), claim["run_id"], "me", lease_s=60, renew_every_s=0.01)
    keeper.start()
    assert renewed.wait(60)
    keeper.stop()
    assert keeper.renewals >= 1 and not keeper.lost


def test_admissions_are_recorded_for_the_rebuild(
    ledger: Ledger, ledger_dsn: str, video: None
) -> None:
    a = ledger.claim_run(**KEY)
    b = ledger.claim_run(**{**KEY, "frames_version": "f2"})
    c = ledger.claim_run(**{**KEY, "frames_version": "f3"})
    for claim in (a, b, c):
        ledger.record_admission(run_id=claim["run_id"])
    first_at = ledger.get_run(run_id=a["run_id"])["admitted_at"]
    ledger.record_admission(run_id=a["run_id"])  # idempotent: the first time stays
    assert ledger.get_run(run_id=a["run_id"])["admitted_at"] == first_at
    ledger.transition_run(run_id=c["run_id"], to_status="rejected")  # refunded by its flow
    with psycopg.connect(ledger_dsn, autocommit=True) as conn:  # b was admitted 30 min ago
        conn.execute(
            f'UPDATE "{ledger.schema}".boundary_inference_runs'
            " SET admitted_at = now() - interval '30 minutes' WHERE id = %s",
            (b["run_id"],),
        )
    recent = ledger.recent_admissions(window_s=3600)
    assert [r["run_id"] for r in recent] == [a["run_id"], b["run_id"]]  # newest first
    assert 1795 < float(recent[1]["age_s"]) < 1900 and recent[0]["video_id"] == "v1"
    assert [r["run_id"] for r in ledger.recent_admissions(window_s=600)] == [a["run_id"]]
    with pytest.raises(IllegalTransition):
        ledger.record_admission(run_id=c["run_id"])


def test_the_keeper_thread_closes_its_connection(ledger: Ledger, video: None) -> None:
    """One connection per thread in psycopg: a worker running many flows must not keep one per
    finished lease keeper."""
    claim = ledger.claim_run(**KEY, lease_s=60, lease_owner="me")
    transport = ledger.transport
    assert isinstance(transport, PsycopgTransport)
    ledger.ping()
    before = len(transport._connections)
    keeper = LeaseKeeper(ledger, claim["run_id"], "me", lease_s=60, renew_every_s=0.01)
    keeper.start()
    while keeper.renewals == 0:
        time.sleep(0.01)
    assert len(transport._connections) == before + 1
    keeper.stop()
    assert len(transport._connections) == before
