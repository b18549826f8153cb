"""boundary_inference_flow end to end on the real servers, under one Prefect test harness.

Each test gets a fresh ledger schema and Redis key prefix; the executor is the real local one
(a child process running the real inference code), counted by its job directories.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect.events.clients import AssertingEventsClient

from boundary_inference.outcome import outcome_of
from flows.boundary_inference import boundary_inference_flow
from tests.flow_support import MODEL, FlowEnv, MakeEnv, clip_fixture
from tests.flow_support import job as base
from tests.flow_support import run_flow as run
from tests.support import try_reserve

FRAMES = 120


video = clip_fixture("video", seed=11, frames=FRAMES)


@pytest.fixture
def env(make_env: MakeEnv, video: Any) -> FlowEnv:
    return make_env(clip=video)


def rejections(env: FlowEnv) -> list[dict[str, Any]]:
    return list(env.ledger.list_rejections(unacknowledged_only=False, limit=100))


def emitted(worker: Any, name: str) -> list[Any]:
    worker.drain()
    client = AssertingEventsClient.last
    return [e for e in (client.events if client else []) if e.event == name]


def test_admitted_run_succeeds_settles_and_leaves_artifacts(env: FlowEnv, video: Any) -> None:
    state, outcome = run(**base())
    assert state.is_completed() and state.name == "Completed", state.message
    assert outcome["status"] == "succeeded"
    run_row = env.ledger.get_run(run_id=outcome["run_id"])
    assert run_row["status"] == "succeeded"
    assert float(run_row["actual_cost_usd"]) > 0
    assert float(run_row["gpu_seconds"]) > 0
    # Charged conservatively: the measured seconds plus the start-up and idle tail Modal bills.
    assert float(run_row["actual_cost_usd"]) == pytest.approx(
        env.settings.cost_model.billed_cost_usd(float(run_row["gpu_seconds"]))
    )
    assert float(run_row["actual_cost_usd"]) <= float(run_row["worst_case_cost_usd"])
    assert run_row["executor_call_id"].startswith("local-")
    predictions = env.ledger.get_predictions(run_id=outcome["run_id"])
    assert len(predictions) == FRAMES - 1
    _, truth = video
    pairs = [(p["frame1"], p["frame2"]) for p in predictions]
    labels = truth.labels_for(pairs)
    correct = sum(bool(p["is_boundary"]) == t for p, t in zip(predictions, labels, strict=True))
    assert correct / len(labels) >= 0.95
    spend = env.ledger.spend_summary()
    # The worst-case reservation was settled down to the measured cost.
    assert float(spend["daily_committed_usd"]) == pytest.approx(float(run_row["actual_cost_usd"]))
    assert env.executor_calls() == 1
    # The settlement on the flow run: actual against the estimate, GPU seconds, the call.
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    (settlement,) = [a for a in found if a.key == "settlement-v1"]
    text = str(settlement.data)
    assert f"${float(run_row['actual_cost_usd']):.4f}" in text
    assert f"| GPU seconds | {float(run_row['gpu_seconds']):.1f} |" in text
    assert run_row["executor_call_id"] in text and "| boundaries found |" in text


def server_flow_run(state: Any) -> Any:
    """The flow run as the Prefect server holds it (its state and tags)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(state.state_details.flow_run_id)


def test_flow_retries_are_pinned_whatever_the_fleet_default(tmp_path: Any) -> None:
    """A fleet-wide default would re-run a job (a second admission) or an outage's refusal."""
    import os
    import subprocess
    import sys

    code = (
        "from flows.boundary_inference import boundary_inference_flow as a\n"
        "from flows.backfill import backfill_flow as b\n"
        "print(a.retries, b.retries)"
    )
    env = {**os.environ, "PREFECT_FLOWS_DEFAULT_RETRIES": "3"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0"]


def test_duplicate_is_skipped_without_a_second_call(env: FlowEnv) -> None:
    _, first = run(**base())
    state, second = run(**base())
    assert state.is_completed() and state.name == "Completed"
    assert state.message.startswith("skipped: ")
    assert second["status"] == "skipped" and second["run_id"] == first["run_id"]
    assert "skipped" in server_flow_run(state).tags
    assert env.executor_calls() == 1
    assert rejections(env) == []


def test_forced_rerun_is_refused_by_cooldown_and_recorded(
    env: FlowEnv, asserting_events_worker: Any
) -> None:
    _, first = run(**base())
    state, forced = run(**base(skip_if_exists=False))
    assert state.is_completed() and state.name == "Completed"
    assert state.message.startswith("rejected: cooldown: ")
    assert forced["status"] == "rejected" and forced["rejection_type"] == "cooldown"
    assert 0 < forced["retry_after_s"] <= env.settings.video_cooldown_s
    (row,) = rejections(env)
    assert row["rejection_type"] == "cooldown" and row["video_id"] == "v1"
    assert str(row["id"]) == forced["rejection_id"]
    assert env.ledger.get_run(run_id=forced["run_id"])["status"] == "rejected"
    assert env.executor_calls() == 1
    (event,) = emitted(asserting_events_worker, "boundary-inference.job.rejected")
    assert event.payload["rejection_type"] == "cooldown"
    # As the server holds it: a standard state (the UI's Runs tab and state filter list it),
    # found by the tags of the rejection's type.
    flow_run = server_flow_run(state)
    assert (flow_run.state.type.value, flow_run.state.name) == ("COMPLETED", "Completed")
    assert flow_run.state.message.startswith("rejected: cooldown: ")
    assert {"rejected", "rejected:cooldown"} <= set(flow_run.tags)
    assert event.resource.id == "boundary-inference.video.v1"
    # The refused re-run did not keep its budget reservation.
    assert float(env.ledger.spend_summary()["daily_committed_usd"]) == pytest.approx(
        float(env.ledger.get_run(run_id=first["run_id"])["actual_cost_usd"])
    )


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        (base(video_id="nope"), "not registered"),
        (base(tenant_id="someone-else"), "not registered"),
        (base(frame_pairs=[]), "non-empty"),
        (base(frame_pairs=[[3, 3]]), "0 <= f1 < f2"),
        (base(frame_pairs=[[5, 2]]), "0 <= f1 < f2"),
        (base(frame_pairs=[[-1, 2]]), "0 <= f1 < f2"),
        (base(frame_pairs=[[0, 1], [1, FRAMES]]), "first is #1"),
        (base(frame_pairs=[[0.5, 2]]), "integers"),
        (base(frame_pairs=[[0, 1, 2]]), "pairs"),
        (base(frame_pairs="0,1"), "non-empty list"),
        (base(frames_version=""), "frames_version"),
        (base(model_version="no such model"), "model_version"),
        (base(model_version="builtin-unknown-v9"), "not a known model"),
        (base(priority="urgent"), "priority"),
        (base(frame_pairs={"start": 0, "stop": 500}), "violates 0 <= f1 < f2"),
        (base(frame_pairs={"begin": 0}), "unknown keys"),
        (base(frame_pairs={"start": 0, "step": 0}), "step >= 1"),
    ],
)
def test_bad_input_is_a_recorded_typed_rejection(
    env: FlowEnv, params: dict[str, Any], fragment: str
) -> None:
    state, outcome = run(**params)
    assert state.name == "Completed"
    assert outcome["rejection_type"] == "validation_failed"
    assert fragment in outcome["message"]
    (row,) = rejections(env)
    assert row["rejection_type"] == "validation_failed"
    assert env.executor_calls() == 0


def test_too_many_pairs_is_frame_count_exceeded(make_env: MakeEnv, video: Any) -> None:
    env = make_env(clip=video, max_frame_pairs="50", allow_unreachable_cost_cap="true")
    _, outcome = run(**base())
    assert outcome["rejection_type"] == "frame_count_exceeded"
    assert "119 frame pairs" in outcome["message"]
    assert env.executor_calls() == 0


def test_worst_case_over_the_cap_is_cost_exceeded(env: FlowEnv, video: Any) -> None:
    path, _ = video
    env.register("long", path, 200_000, None)
    pairs = {"start": 0, "stop": 200_000, "step": 5}  # 40,000 pairs: worst case ~ $1.27
    _, outcome = run(**base(video_id="long", frame_pairs=pairs))
    assert outcome["rejection_type"] == "cost_exceeded"
    assert outcome["worst_case_cost_usd"] > env.settings.max_cost_per_job_usd
    (row,) = rejections(env)
    assert float(row["estimated_cost_usd"]) == pytest.approx(outcome["estimated_cost_usd"])
    assert env.executor_calls() == 0


def test_budget_exceeded_refunds_the_cooldown(make_env: MakeEnv, video: Any) -> None:
    # Small caps that still pass the coherence checks, at the GPU's price alone (CPU and memory
    # at zero keep the arithmetic by hand): ceiling = 1 attempt x (10 s start-up + 60 s + 1 s
    # grace) + 2 s tail = $0.022; this job's worst case is (10 + 30 + 1 + 2) s = $0.013.
    env = make_env(
        clip=video,
        cpu_price_usd_per_core_s="0",
        memory_price_usd_per_gib_s="0",
        gpu_retries="0",
        gpu_timeout_s="60",
        startup_timeout_s="10",
        abort_grace_s="1",
        cold_start_s="0",
        scaledown_window_s="2",
        min_deadline_s="30",
        heartbeat_timeout_s="30",
        daily_budget_usd="0.025",
        daily_spend_alert_usd="0.02",  # below the budget, or it could never fire
        allow_unreachable_cost_cap="true",
    )
    # Another tenant's job holds $0.02 of today's budget (now=None: the database's clock).
    caps = {"daily_cap_usd": 1.0, "monthly_cap_usd": 1.0}
    other_run = "00000000-0000-0000-0000-000000000001"
    try_reserve(env.ledger, 0.02, caps=caps, now=None, tenant="other", run_id=other_run)
    _, outcome = run(**base())
    assert outcome["rejection_type"] == "budget_exceeded", outcome
    assert env.executor_calls() == 0
    # The cooldown taken by the admission was given back: a retry is not refused by cooldown.
    _, again = run(**base(skip_if_exists=False))
    assert again["rejection_type"] == "budget_exceeded"


def test_global_rate_limit(make_env: MakeEnv, video: Any) -> None:
    env = make_env(
        global_rate_limit_jobs="1",
        # At 1 job an hour at most 2 can fail inside one breaker window: a threshold of 5 could
        # never open the circuit, and is refused at start.
        breaker_failure_threshold="2",
    )
    env.register_clip(video, "v1", "v2")
    _, first = run(**base(frame_pairs=[[0, 1], [1, 2]]))
    _, second = run(**base(video_id="v2", frame_pairs=[[0, 1], [1, 2]]))
    assert first["status"] == "succeeded"
    assert second["rejection_type"] == "rate_limited"
    assert second["retry_after_s"] > 0
    assert env.executor_calls() == 1


def test_queue_full(env: FlowEnv, video: Any) -> None:
    path, _ = video
    for i in range(env.settings.queue_depth_block):
        env.register(f"q{i}", path, FRAMES, None)
        env.ledger.claim_run(
            video_id=f"q{i}",
            tenant_id="demo",
            frames_version="f1",
            model_version=MODEL,
            pairs=1,
            priority="low",
            force=False,
            flow_run_id=None,
        )
    _, outcome = run(**base())
    assert outcome["rejection_type"] == "queue_full"
    assert env.executor_calls() == 0


def test_open_circuit_refuses(env: FlowEnv) -> None:
    env.breaker_trip()
    _, outcome = run(**base())
    assert outcome["rejection_type"] == "circuit_open"
    assert outcome["retry_after_s"] > 0
    assert env.executor_calls() == 0


def test_a_flow_with_retries_is_refused_before_any_quota(env: FlowEnv) -> None:
    """A flow retry re-enters the spawning task: a second retry layer on top of Modal's, which
    the worst case does not count. The start-up audit refuses the job before admission."""
    retried = boundary_inference_flow.with_options(retries=2)
    state = retried(**base(), return_state=True)
    outcome = outcome_of(state)
    # Completed, not Failed: the server would re-run a Failed run that has retries left.
    assert state.name == "Completed"
    assert outcome["rejection_type"] == "guard_unavailable"
    assert "retries=2" in outcome["message"]
    assert env.executor_calls() == 0
    assert {"rejected", "rejected:guard_unavailable"} <= set(server_flow_run(state).tags)
    (row,) = rejections(env)
    assert row["rejection_type"] == "guard_unavailable"
    assert float(env.ledger.spend_summary()["daily_committed_usd"]) == 0.0
