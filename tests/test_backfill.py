"""backfill_flow end to end on the real servers and the real local executor.

Concurrency is measured from the ledger (each run's claim and finish timestamps, written by the
per-video flow's own SQL calls), the breaker is opened and the budget spent through the ledger's
real SQL functions, and the executor is counted by its job directories.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client

from boundary_inference.local.embedded import start_postgres
from boundary_inference.outcome import BackfillStopped
from flows.backfill import MAX_VIDEOS_PER_BACKFILL, backfill_flow
from tests.flow_support import MODEL, FlowEnv, MakeEnv, clip_fixture

FRAMES = 30
LONGER_FRAMES = 2400
# Small caps that pass the coherence checks; the amounts spent beforehand are computed from the
# same settings (`spend_leaving`), so the tests follow the worst-case formula wherever it goes.
TINY_BUDGET = {
    "gpu_timeout_s": "10",
    "startup_timeout_s": "10",
    "abort_grace_s": "1",
    "heartbeat_timeout_s": "5",
    "scaledown_window_s": "2",
    "cold_start_s": "0",
    "deadline_factor": "1",
    "min_deadline_s": "4",
    "daily_budget_usd": "0.05",
    "daily_spend_alert_usd": "0.04",  # below the budget, or it could never fire
    "allow_unreachable_cost_cap": "true",
}
# backfill_flow called here as a function, with no worker: its videos are subflows in this
# process. Videos as deployment runs (the default): tests/test_prefect_server.py.
IN_PROCESS = {"backfill_video_runs": "subflow"}
BIG_FRAMES = 100_000  # registered so: its deadline, and so its worst case, is above the floor


video = clip_fixture("video", seed=7, frames=FRAMES)


def backfill(**params: Any) -> tuple[Any, dict[str, Any]]:
    state = backfill_flow(frames_version="f1", model_version=MODEL, **params, return_state=True)
    return state, state.result(raise_on_failure=False)


def spend_leaving(env: FlowEnv, left_usd: float) -> None:
    """Commit (through the real SQL function) all of today's budget but ``left_usd``."""
    result = env.ledger.reserve_budget(
        run_id=str(uuid.uuid4()),
        tenant_id="other",
        amount_usd=env.settings.daily_budget_usd - left_usd,
        daily_cap_usd=env.settings.daily_budget_usd,
        monthly_cap_usd=env.settings.monthly_budget_usd,
    )
    assert result["ok"], result


def worst_cases_usd(env: FlowEnv) -> tuple[float, float]:
    """What the smallest job and a BIG_FRAMES job reserve (fresh ledger: default throughput)."""
    s = env.settings
    smallest = s.cost_model.worst_case_cost_usd(0, s.default_throughput_pairs_per_s)
    big = s.cost_model.worst_case_cost_usd(BIG_FRAMES - 1, s.default_throughput_pairs_per_s)
    assert smallest < big
    return smallest, big


def by_video(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["video_id"]: row for row in summary["outcomes"]}


def spans(env: FlowEnv) -> list[tuple[dt.datetime, dt.datetime, str]]:
    """(claimed, finished, video) of every run: the time each video held a live run."""
    return [
        (
            dt.datetime.fromisoformat(r["created_at"]),
            dt.datetime.fromisoformat(r["finished_at"]),
            r["video_id"],
        )
        for r in env.ledger.list_runs(limit=100)
    ]


def max_overlap(intervals: list[tuple[dt.datetime, dt.datetime, str]]) -> int:
    # An end sorts before a start at the same instant: touching spans do not overlap.
    events = sorted([(a, 1) for a, _, _ in intervals] + [(b, -1) for _, b, _ in intervals])
    live = peak = 0
    for _, step in events:
        live += step
        peak = max(peak, live)
    return peak


def video_subflow_spans(flow_run_id: uuid.UUID) -> list[tuple[dt.datetime, dt.datetime, str]]:
    """Start and end of each per-video flow run under the backfill, from the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
    return [(c.start_time, c.end_time, c.name) for c in children if c.start_time and c.end_time]


def artifacts_of(flow_run_id: uuid.UUID) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key and a.key.startswith("backfill-")}


# Long enough (a few seconds a job) that two subflows of one wave overlap in time for sure:
# a 30-frame job ends before the next thread has started its subflow.
longer_video = clip_fixture("longer_video", seed=7, frames=LONGER_FRAMES)


def test_waves_are_bounded_by_warm_capacity_and_a_bad_id_stops_nothing(
    make_env: MakeEnv, longer_video: Any
) -> None:
    ids = ["v1", "v2", "v3"]
    env = make_env(max_containers="2", **IN_PROCESS)
    env.register_clip(longer_video, *ids)
    # Asked for 10 at once: clamped to the autoscaler ceiling of 2.
    state, summary = backfill(video_ids=["v1", "nope", "v2", "v1", "v3"], wave_size=10)

    assert state.is_completed() and state.name == "Completed", state.message
    assert summary["wave_size"] == 2 and summary["waves"] == 2
    assert summary["counts"] == {"succeeded": 3, "rejected": 1}
    outcomes = by_video(summary)
    assert outcomes["nope"]["rejection_type"] == "validation_failed"
    assert "not registered" in outcomes["nope"]["message"]
    assert [outcomes[v]["wave"] for v in ("v1", "nope", "v2", "v3")] == [1, 1, 2, 2]
    assert summary["not_submitted"] == [] and summary["stopped"] is None
    assert env.executor_calls() == 3  # v1, listed twice, ran once

    runs = spans(env)
    assert sorted(v for _, _, v in runs) == ids
    # Never beyond the wave size, in the ledger (claim to finish of each run)...
    assert max_overlap(runs) <= 2
    # ...and the per-video flow runs never beyond it either. (That they overlap at all depends on
    # how fast each subflow starts: on a fresh clone's cold start they were seen one after
    # another, so it is not asserted here; the wave bound is.)
    subflows = video_subflow_spans(state.state_details.flow_run_id)
    assert len(subflows) == 4  # nope, v1, v2, v3: the repeated v1 is sent once
    assert max_overlap(subflows) <= 2
    # Waves are strict: nothing of wave 2 was claimed before wave 1 had finished.
    started = {v: a for a, _, v in runs}
    ended = {v: b for _, b, v in runs}
    assert min(started["v2"], started["v3"]) >= ended["v1"]

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert set(artifacts) == {"backfill-progress", "backfill-outcomes", "backfill-summary"}
    assert float(artifacts["backfill-progress"].data) == 100.0
    table = artifacts["backfill-outcomes"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert {r["video_id"]: r["status"] for r in rows} == {
        "v1": "succeeded",
        "nope": "rejected",
        "v2": "succeeded",
        "v3": "succeeded",
    }

    # Each video ran as a child of the backfill, through the whole per-video flow.
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        child = client.read_flow_run(uuid.UUID(env.ledger.list_runs(limit=1)[0]["flow_run_id"]))
    assert child.parent_task_run_id is not None


def test_spent_budget_stops_before_any_submission(make_env: MakeEnv, video: Any) -> None:
    env = make_env(**TINY_BUDGET, **IN_PROCESS)
    env.register_clip(video, "v1", "v2")
    smallest, _ = worst_cases_usd(env)
    spend_leaving(env, smallest / 2)
    state, summary = backfill(video_ids=["v1", "v2"], wave_size=1)
    assert state.is_completed() and state.name == "Completed"
    assert state.message.startswith("stopped: budget_exceeded: ")
    assert summary["submitted"] == 0 and summary["outcomes"] == []
    assert summary["stopped"]["kind"] == "budget_exceeded"
    assert "daily budget spent" in summary["stopped"]["message"]
    assert [(r["video_id"], r["reason"]) for r in summary["not_submitted"]] == [
        ("v1", "budget_exceeded"),
        ("v2", "budget_exceeded"),
    ]
    assert env.executor_calls() == 0
    assert env.ledger.list_runs(limit=10) == []


def test_budget_refusal_of_one_video_stops_the_later_waves(make_env: MakeEnv, video: Any) -> None:
    env = make_env(**TINY_BUDGET, **IN_PROCESS)
    env.register_clip(video, "v1")
    path, _ = video
    env.register("big", path, BIG_FRAMES, None)
    smallest, big = worst_cases_usd(env)
    # Enough for the smallest job (the gate lets the wave go), not for "big" (admission refuses).
    spend_leaving(env, (smallest + big) / 2)
    state, summary = backfill(video_ids=["big", "v1"], wave_size=1)
    assert state.name == "Completed"
    assert by_video(summary)["big"]["rejection_type"] == "budget_exceeded"
    assert summary["stopped"]["kind"] == "budget_exceeded"
    assert "big" in summary["stopped"]["message"]
    # The gate alone would have let v1 through: it stopped on the video's refusal.
    assert summary["not_submitted"] == [
        {"video_id": "v1", "reason": "budget_exceeded", "message": summary["stopped"]["message"]}
    ]
    assert env.executor_calls() == 0
    (row,) = env.ledger.list_rejections(unacknowledged_only=False, limit=10)
    assert row["video_id"] == "big" and row["rejection_type"] == "budget_exceeded"


def test_open_breaker_stops_the_backfill(make_env: MakeEnv, video: Any) -> None:
    env = make_env(**IN_PROCESS)
    env.register_clip(video, "v1", "v2", "v3")
    env.breaker_trip()
    state, summary = backfill(video_ids=["v1", "v2", "v3"])
    assert state.name == "Completed"
    assert state.message.startswith("stopped: circuit_open: ")
    assert [r["video_id"] for r in summary["not_submitted"]] == ["v1", "v2", "v3"]
    assert {r["reason"] for r in summary["not_submitted"]} == {"circuit_open"}
    assert env.executor_calls() == 0


def test_a_ledger_outage_stops_the_backfill_red(
    make_env: MakeEnv, server_dir: Path, video: Any
) -> None:
    private = start_postgres(server_dir, stop_at_exit=True)
    env = make_env(dsn=private.dsn, guard_timeout_s="2", **IN_PROCESS)
    env.register_clip(video, "v1", "v2")
    private.stop()
    state, data = backfill(video_ids=["v1", "v2"])
    # An outage is red, as a job's is: Failed by its standard name, the summary as its data.
    assert (state.type.value, state.name) == ("FAILED", "Failed"), state
    assert state.message.startswith("stopped: guard_unavailable: ")
    assert isinstance(data, BackfillStopped)
    assert data.summary["submitted"] == 0 and data.summary["stopped"]["kind"] == "guard_unavailable"
    with get_client(sync_client=True) as client:  # as the server (and its UI) holds it
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
    assert (flow_run.state.type.value, flow_run.state.name) == ("FAILED", "Failed")
    assert {"stopped", "stopped:guard_unavailable"} <= set(flow_run.tags)
    assert env.executor_calls() == 0


@pytest.mark.usefixtures("shipped_deployments_lock")
def test_videos_as_deployment_runs_with_nothing_deployed_stop_the_backfill_red(
    make_env: MakeEnv, video: Any
) -> None:
    """The default: videos are runs of boundary-inference/default. On a server without that
    deployment (the suite's harness has none) no video is sent, and the reason says what to do."""
    env = make_env()
    assert env.settings.backfill_video_runs == "deployment"
    env.register_clip(video, "v1", "v2")
    state, data = backfill(video_ids=["v1", "v2"])
    assert (state.type.value, state.name) == ("FAILED", "Failed"), state
    assert state.message.startswith("stopped: guard_unavailable: "), state
    assert isinstance(data, BackfillStopped)
    assert data.summary["submitted"] == 0
    reason = data.summary["stopped"]["message"]
    assert reason.startswith("boundary-inference/default is not deployed"), reason
    assert "BOUNDARY_INFERENCE_BACKFILL_VIDEO_RUNS=subflow" in reason
    assert [r["video_id"] for r in data.summary["not_submitted"]] == ["v1", "v2"]
    assert env.ledger.list_runs(limit=5) == [] and env.executor_calls() == 0


def test_parameters_are_bounded_and_described() -> None:
    schema = backfill_flow.parameters.model_dump()
    properties = schema["properties"]
    assert properties["video_ids"]["maxItems"] == MAX_VIDEOS_PER_BACKFILL
    assert properties["video_ids"]["minItems"] == 1
    assert "max_containers" in properties["wave_size"]["description"]
    assert set(schema["required"]) == {"video_ids", "frames_version", "model_version"}
    too_many = [f"v{i}" for i in range(MAX_VIDEOS_PER_BACKFILL + 1)]
    for bad in ({"video_ids": too_many}, {"video_ids": []}, {"video_ids": ["v1"], "wave_size": 0}):
        state = backfill_flow(frames_version="f1", model_version=MODEL, **bad, return_state=True)
        assert state.is_failed(), bad
