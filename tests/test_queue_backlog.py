"""The queue-depth guard sees the backlog waiting inside Prefect for the deployment, and fails
closed when it cannot ask.

Real flow runs of a real deployment on the session's Prefect API (a deployment name of its own per
test, so no other test's runs are counted); the guard, the flow and the monitor read them through
Prefect's client.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Late, Pending, Running, Scheduled

from flows import rejection_monitor as monitor
from modal_app.synthetic import make_video
from tasks.queue import BacklogUnavailable, check_queue_depth, prefect_backlog
from tests.flow_support import FlowEnv, MakeEnv, job, run_flow


@pytest.fixture
def deployment() -> Iterator[tuple[str, Any]]:
    """A deployment of its own ('flow/default'), deleted (with its runs) afterwards."""
    flow_name = f"bi-backlog-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name(flow_name)
        deployment_id = client.create_deployment(flow_id=flow_id, name="default")
    yield f"{flow_name}/default", deployment_id
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)
        client.delete_flow(flow_id)


def add_runs(deployment_id: Any, states: list[Any]) -> None:
    with get_client(sync_client=True) as client:
        for state in states:
            client.create_flow_run_from_deployment(deployment_id, state=state)


@pytest.fixture
def env(make_env: MakeEnv, tmp_path: Path, deployment: tuple[str, Any]) -> FlowEnv:
    flow_env = make_env(
        queue_prefect_deployment=deployment[0],
        queue_depth_alert="2",
        queue_depth_block="3",
    )
    path = tmp_path / "clip.mp4"
    truth = make_video(path, seed=2, frame_count=30)
    flow_env.register("v1", path, 30, truth.crop_box)
    return flow_env


def test_the_backlog_counts_only_runs_waiting_for_the_deployment(
    env: FlowEnv, deployment: tuple[str, Any]
) -> None:
    _, deployment_id = deployment
    # Waiting: Scheduled, Late (scheduled type) and Pending. Not waiting: running or done.
    add_runs(deployment_id, [Scheduled(), Late(), Pending(), Running(), Completed()])
    assert prefect_backlog(env.settings) == 3
    # Another deployment's backlog is not ours.
    other = env.settings.model_copy(update={"queue_prefect_deployment": "elsewhere/default"})
    assert prefect_backlog(other) == 0


def test_a_backlog_in_prefect_fills_the_queue(env: FlowEnv, deployment: tuple[str, Any]) -> None:
    """Before, the guard counted the ledger only: the rate limit and the deployment's concurrency
    keep that small, so a backlog of any size waited inside Prefect unseen."""
    _, deployment_id = deployment
    add_runs(deployment_id, [Scheduled(), Scheduled()])
    _, outcome = run_flow(**job(frames_version="f1", frame_pairs=[[0, 1]]))
    assert outcome["status"] == "succeeded", outcome  # 2 waiting: below the block at 3
    add_runs(deployment_id, [Scheduled()])
    _, outcome = run_flow(**job(frames_version="f2", frame_pairs=[[0, 1]]))
    assert outcome["rejection_type"] == "queue_full", outcome
    assert "3 waiting in Prefect" in outcome["message"]
    assert env.executor_calls() == 1
    (row,) = env.ledger.list_rejections(limit=5)
    assert row["details"]["depth"]["prefect_waiting"] == 3


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api"


def test_prefect_unreachable_fails_closed(env: FlowEnv) -> None:
    with temporary_settings({PREFECT_API_URL: closed_port_url()}):
        with pytest.raises(BacklogUnavailable, match="cannot count the flow runs waiting"):
            prefect_backlog(env.settings)
        refused = check_queue_depth.fn(env.ledger, env.settings)
    assert refused is not None and refused.rejection_type == "guard_unavailable"
    assert "fail closed" in refused.message


def test_the_monitor_counts_the_backlog_too(env: FlowEnv, deployment: tuple[str, Any]) -> None:
    _, deployment_id = deployment
    add_runs(deployment_id, [Scheduled(), Scheduled(), Late()])
    summary = monitor.rejection_monitor_flow()
    assert summary["queue_prefect_waiting"] == 3 and summary["queue_depth"] == 3
    assert "queue_depth" in summary["alerts"]  # 3 > alert level 2
