"""A cancel from the Prefect UI stops the spending (flows/run/cancellation.py).

The UI cancels a flow run by setting it ``Cancelling`` through the API (``force=True``); here the
test does exactly that against the session's real Prefect server, while a flow run in this
process (as ``submit`` runs it: no runner or worker watches it) watches a real local job that is
blocked until told (its video is a FIFO nobody writes: the decoder waits in ``open``). The job's
child process must be gone, the run cancelled and charged the seconds it ran (not its worst
case), nothing left reserved, and the flow run ``Cancelled``.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Cancelled, Cancelling

from boundary_inference.local.processes import pid_alive
from flows.backfill import backfill_flow
from flows.run.cancellation import stop_flow_run_calls, stop_spending
from tests.flow_support import MODEL, FlowEnv, MakeEnv
from tests.flow_support import job as base
from tests.flow_support import run_flow as run

FRAMES = 60


def blocked_env(make_env: MakeEnv, tmp_path: Path, *video_ids: str) -> FlowEnv:
    """Videos whose jobs block until the test ends them: each one's source is a FIFO."""
    # A backfill here is a function call with no worker: its videos are subflows in this process.
    env = make_env(cancel_check_s="0.2", backfill_video_runs="subflow")
    for video_id in video_ids:
        fifo = tmp_path / f"{video_id}.mp4"
        os.mkfifo(fifo)
        env.register(video_id, fifo, FRAMES, None)
    return env


def running_call(env: FlowEnv, video_id: str, alive: threading.Thread) -> tuple[Any, int]:
    """The run of ``video_id`` once its call is recorded, and the pid of its child process."""
    while True:
        rows = env.ledger.list_runs(limit=5, video_id=video_id)
        if rows and rows[0].get("executor_call_id"):
            job_dir = env.jobs_dir / str(rows[0]["executor_call_id"])
            if (job_dir / "pid").exists():
                return rows[0], int((job_dir / "pid").read_text())
        assert alive.is_alive(), "the flow ended before spawning"
        time.sleep(0.05)


def cancel_as_the_ui_does(flow_run_id: Any) -> None:
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(str(flow_run_id)), Cancelling(), force=True)


def server_state(flow_run_id: Any) -> StateType | None:
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(str(flow_run_id))).state_type


def assert_charged_the_seconds_used(env: FlowEnv, run_ids: list[str]) -> None:
    billed = 0.0
    for run_id in run_ids:
        row = env.ledger.get_run(run_id=run_id)
        assert row is not None and row["status"] == "cancelled", row
        assert row["gpu_seconds"] is not None, row  # measured, not unknown
        actual = float(row["actual_cost_usd"])
        assert actual == pytest.approx(
            env.settings.cost_model.billed_cost_usd(float(row["gpu_seconds"]))
        )
        assert actual < float(row["worst_case_cost_usd"]), row
        billed += actual
    spend = env.ledger.spend_summary()
    # Committed (reservations included) is what was charged: nothing is left reserved.
    assert float(spend["daily_committed_usd"]) == pytest.approx(billed)
    assert float(spend["daily_actual_usd"]) == pytest.approx(billed)
    assert env.ledger.orphan_reservations(limit=10, min_age_s=0) == []


def test_a_cancel_from_the_ui_stops_an_in_process_job_at_the_seconds_used(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    env = blocked_env(make_env, tmp_path, "v1")
    result: dict[str, Any] = {}
    flow = threading.Thread(target=lambda: result.update(ended=run(**base())))
    flow.start()
    try:
        row, pid = running_call(env, "v1", flow)
        assert pid_alive(pid)
        cancel_as_the_ui_does(row["flow_run_id"])
    finally:
        flow.join(timeout=120)
    state, outcome = result["ended"]
    assert not pid_alive(pid)  # killed by the cancel, long before its deadline
    assert state.type is StateType.CANCELLED, state
    assert server_state(row["flow_run_id"]) is StateType.CANCELLED
    assert outcome["status"] == "cancelled" and "Cancelling" in outcome["message"], outcome
    assert_charged_the_seconds_used(env, [str(row["id"])])


def test_cancelling_a_backfill_cancels_its_running_videos(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    env = blocked_env(make_env, tmp_path, "b1", "b2")
    result: dict[str, Any] = {}

    def backfill() -> None:
        state = backfill_flow(
            video_ids=["b1", "b2"], frames_version="f1", model_version=MODEL, return_state=True
        )
        result["state"] = state

    flow = threading.Thread(target=backfill)
    flow.start()
    try:
        (row1, pid1), (row2, pid2) = running_call(env, "b1", flow), running_call(env, "b2", flow)
        with get_client(sync_client=True) as client:
            child = client.read_flow_run(uuid.UUID(str(row1["flow_run_id"])))
            parent = client.read_task_run(child.parent_task_run_id).flow_run_id  # type: ignore[arg-type]
        cancel_as_the_ui_does(parent)
    finally:
        flow.join(timeout=120)
    assert not pid_alive(pid1) and not pid_alive(pid2)
    assert result["state"].type is StateType.CANCELLED, result["state"]
    for row in (row1, row2):
        assert server_state(row["flow_run_id"]) is StateType.CANCELLED
    assert_charged_the_seconds_used(env, [str(row1["id"]), str(row2["id"])])


def test_the_hook_settles_a_call_whose_flow_process_stopped_watching(
    make_env: MakeEnv, tmp_path: Path
) -> None:
    """The second layer: what ``on_cancellation``/``on_crashed`` do for a flow run whose process
    was killed (the runner's cancel) with its call still running: cancel it, settle it at the
    seconds it used. Here the job is spawned through the executor directly, its run recorded as a
    flow run's would be; the hook's function is then called as the runner calls it."""
    env = blocked_env(make_env, tmp_path, "h1")
    from boundary_inference.services import get_services

    services = get_services(env.settings)
    flow_run_id = uuid.uuid4()
    claim = env.ledger.claim_run(
        video_id="h1",
        tenant_id="demo",
        frames_version="f1",
        model_version=MODEL,
        flow_run_id=str(flow_run_id),
        lease_s=60,
        lease_owner=str(flow_run_id),
    )
    run_id = str(claim["run_id"])
    worst_usd = 0.5
    assert env.ledger.reserve_budget(
        run_id=run_id,
        tenant_id="demo",
        amount_usd=worst_usd,
        daily_cap_usd=env.settings.daily_budget_usd,
        monthly_cap_usd=env.settings.monthly_budget_usd,
    )["ok"]
    env.ledger.transition_run(
        run_id=run_id,
        to_status="running",
        fields={"worst_case_cost_usd": worst_usd, "reserved_cost_usd": worst_usd},
    )
    from modal_app.types import InferenceRequest

    request = InferenceRequest(
        run_id=run_id,
        video_uri=str(tmp_path / "h1.mp4"),
        frame_pairs=[(0, 1)],
        model_version=MODEL,
        batch_size=8,
        deadline_s=300.0,
        heartbeat_timeout_s=30.0,
    )
    call_id = services.executor.submit(request)
    env.ledger.set_call_id(run_id=run_id, call_id=call_id)
    pid = int((env.jobs_dir / call_id / "pid").read_text())
    assert pid_alive(pid)
    # As the runner calls it after killing the flow's process.
    flow_run = FlowRun(id=flow_run_id, flow_id=uuid.uuid4(), parameters={"video_id": "h1"})
    stop_spending(flow=None, flow_run=flow_run, state=Cancelled())
    assert not pid_alive(pid)
    assert_charged_the_seconds_used(env, [run_id])
    # Run again (the flow's own hook after it settled): nothing left to do.
    assert (
        stop_flow_run_calls(
            services.ledger, services.executor, env.settings, [(flow_run_id, "h1")], "again"
        )
        == []
    )
