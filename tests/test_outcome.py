"""outcome_of reads a flow state's outcome, even when the state came back without its data.

Pure: Prefect state objects built here, no server.
"""

from __future__ import annotations

from prefect.states import Completed, Failed

from boundary_inference.outcome import (
    JobFailed,
    RejectionType,
    outcome_of,
    refusal_message,
    skip_message,
)


def test_the_outcome_is_the_states_data() -> None:
    outcome = {"status": "succeeded", "message": "3 pairs", "run_id": "r1"}
    assert outcome_of(Completed(data=outcome)) == outcome
    failed = {"status": "failed", "message": "user_code: boom", "run_id": "r2"}
    assert outcome_of(Failed(data=JobFailed(failed))) == failed


def test_a_standard_state_without_its_data_still_tells_its_status_and_rejection_type() -> None:
    # The states runs end in now: standard names, the outcome in the message.
    rejected = Completed(message=refusal_message(RejectionType.COOLDOWN, "video v1 ran 12 s ago"))
    rejected.data = None
    got = outcome_of(rejected)
    assert got is not None and rejected.name == "Completed"
    assert (got["status"], got["rejection_type"]) == ("rejected", "cooldown")
    assert got["message"] == "video v1 ran 12 s ago"

    outage = Failed(message=refusal_message(RejectionType.GUARD_UNAVAILABLE, "redis: refused"))
    outage.data = None
    got = outcome_of(outage)
    assert got is not None and outage.name == "Failed"
    assert (got["status"], got["rejection_type"]) == ("rejected", "guard_unavailable")

    skipped = Completed(message=skip_message("run r1 exists"))
    skipped.data = None
    assert outcome_of(skipped) == {
        "status": "skipped",
        "message": "run r1 exists",
        "note": "the flow run's outcome data was not returned; read from its state",
    }

    failed = Failed(message="timed out after 30 s")
    failed.data = None
    assert outcome_of(failed)["status"] == "failed"  # type: ignore[index]


def test_a_legacy_state_without_its_data_still_tells_its_status_and_rejection_type() -> None:
    # Runs that ended before the standard names: Completed-type states named Rejected/Skipped.
    # What the API hands back for a state whose result was not persisted: data None.
    rejected = Completed(name="Rejected", message="cooldown: video v1 ran 12 s ago")
    rejected.data = None
    got = outcome_of(rejected)
    assert got is not None
    assert (got["status"], got["rejection_type"]) == ("rejected", "cooldown")
    assert got["message"] == "video v1 ran 12 s ago" and "not returned" in got["note"]

    skipped = Completed(name="Skipped", message="run r1 exists")
    skipped.data = None
    assert outcome_of(skipped)["status"] == "skipped"  # type: ignore[index]

    done = Completed(message="3 pairs, 1 boundary")
    done.data = None
    assert outcome_of(done)["status"] == "succeeded"  # type: ignore[index]
