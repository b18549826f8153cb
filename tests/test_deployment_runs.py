"""A deployment run (a worker's or ``serve``'s flow run) on any host: it never starts an embedded
server, joins only what runs, runs the executor its configuration names, and its retries are the
flow's own, whatever the fleet's Prefect defaults say.

A deployment run is recognised by ``prefect.runtime.deployment.id``, which Prefect reads from
``PREFECT__RUNTIME__DEPLOYMENT__ID`` when set (as a worker's flow run would have it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psutil
import pytest

from boundary_inference.local.embedded import EmbeddedPostgres, EmbeddedRedis
from boundary_inference.services import embedded_refusal, get_services, reset_services
from config import get_settings
from tests.flow_support import MODEL, MakeEnv, clip_fixture, job, run_flow

ROOT = Path(__file__).resolve().parent.parent
video = clip_fixture("video", seed=5, frames=30)


@pytest.fixture
def bare_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No database, Redis or executor configured, as on a worker started without them."""
    for key in list(os.environ):
        if key.startswith("BOUNDARY_INFERENCE_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no .env file here
    reset_services()
    return tmp_path


@pytest.fixture
def deployment_run(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", str(uuid.uuid4()))


def _servers_under(path: Path) -> list[str]:
    """Command lines of running postgres / redis-server processes that name ``path``."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if ("postgres" in cmdline or "redis-server" in cmdline) and str(path) in cmdline:
            found.append(cmdline)
    return found


def test_outside_a_deployment_run_embedded_servers_are_the_default(bare_settings: Path) -> None:
    assert embedded_refusal(get_settings()) is None


@pytest.mark.usefixtures("deployment_run")
def test_a_deployment_run_starts_nothing_and_names_what_is_missing(
    bare_settings: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An absolute state dir set explicitly, and the old opt-in, no longer let a deployment run
    start PostgreSQL or Redis: refused as guard_unavailable naming every missing setting, and not
    one file or server appears under the state dir (absolute, then the relative default)."""
    state_dir = bare_settings / "state"
    monkeypatch.setenv("BOUNDARY_INFERENCE_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BOUNDARY_INFERENCE_ALLOW_EMBEDDED", "true")  # gone: no effect
    for where in (state_dir, bare_settings / ".state"):
        if where.name == ".state":
            monkeypatch.delenv("BOUNDARY_INFERENCE_STATE_DIR")
        reset_services()
        state, outcome = run_flow(**job())
        assert outcome is not None, state
        assert (state.name, outcome["rejection_type"]) == ("Failed", "guard_unavailable")
        for setting in (
            "BOUNDARY_INFERENCE_DATABASE_URL",
            "BOUNDARY_INFERENCE_REDIS_URL",
            "BOUNDARY_INFERENCE_EXECUTOR",
        ):
            assert setting in outcome["message"], outcome["message"]
        assert str(where) in outcome["message"]
        assert not where.exists()
        assert _servers_under(where) == []


@pytest.mark.usefixtures("deployment_run")
def test_a_deployment_run_joins_the_running_servers_of_its_state_dir(
    bare_settings: Path,
    monkeypatch: pytest.MonkeyPatch,
    state_dir: Path,
    embedded_pg: EmbeddedPostgres,
    embedded_redis: EmbeddedRedis,
) -> None:
    """Local development: the state dir's PostgreSQL and Redis already run (the CLI or
    ``flows.serve`` started them); the run connects to those, and starts no other."""
    monkeypatch.setenv("BOUNDARY_INFERENCE_STATE_DIR", str(state_dir))
    monkeypatch.setenv("BOUNDARY_INFERENCE_EXECUTOR", "local")
    before = sorted(_servers_under(state_dir))
    assert embedded_refusal(get_settings()) is None
    services = get_services()
    services.ledger.ping()
    assert services.limiter.client.ping()
    assert sorted(_servers_under(state_dir)) == before
    assert embedded_pg.pid() is not None and embedded_redis.pid() is not None


@pytest.mark.usefixtures("deployment_run")
def test_a_deployment_run_runs_the_executor_its_configuration_names(
    make_env: MakeEnv, monkeypatch: pytest.MonkeyPatch, video: Any
) -> None:
    """Stores configured by URL but no executor named: refused (recorded in the ledger) rather
    than run on this host's CPU at a GPU price; named, the same run is admitted."""
    env = make_env()
    env.register_clip(video)
    monkeypatch.delenv("BOUNDARY_INFERENCE_EXECUTOR", raising=False)
    reset_services()
    state, outcome = run_flow(**job())
    assert outcome is not None, state
    assert outcome["rejection_type"] == "guard_unavailable", outcome
    assert "BOUNDARY_INFERENCE_EXECUTOR is not set" in outcome["message"]
    (recorded,) = env.ledger.list_rejections(limit=5)
    assert recorded["rejection_type"] == "guard_unavailable"
    assert env.executor_calls() == 0

    monkeypatch.setenv("BOUNDARY_INFERENCE_EXECUTOR", "local")
    reset_services()
    assert embedded_refusal(get_settings()) is None
    state, outcome = run_flow(**job())
    assert outcome is not None and outcome["status"] == "succeeded", (state, outcome)
    assert env.executor_calls() == 1


_RETRIES = """
import json
from flows.backfill import backfill_flow
from flows.boundary_inference import boundary_inference_flow
from flows.lease_reaper import lease_reaper_flow
from flows.rejection_monitor import rejection_monitor_flow
flows = [boundary_inference_flow, backfill_flow, lease_reaper_flow, rejection_monitor_flow]
print(json.dumps({f.name: f.retries for f in flows}))
"""


def test_a_fleet_wide_default_retries_changes_no_flow(make_env: MakeEnv, video: Any) -> None:
    """``PREFECT_FLOWS_DEFAULT_RETRIES`` set for the whole fleet: every flow still has retries 0
    (read when the flow is defined), and a submission runs its job once instead of being refused
    by the retry audit."""
    from prefect.settings import PREFECT_API_URL

    env = make_env()
    env.register_clip(video)
    child_env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_FLOWS_DEFAULT_RETRIES": "3",
    }
    done = subprocess.run(
        [sys.executable, "-c", _RETRIES],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "boundary-inference": 0,
        "backfill": 0,
        "lease-reaper": 0,
        "rejection-monitor": 0,
    }
    submit = [
        sys.executable,
        "-m",
        "boundary_inference.cli.app",
        "submit",
        "v1",
        "--in-process",
        "--json",
    ]
    done = subprocess.run(
        [*submit, "--frames-version", "f1", "--model-version", MODEL],
        env=child_env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    assert json.loads(done.stdout)["status"] == "succeeded"
    assert env.executor_calls() == 1
    assert env.ledger.list_rejections(limit=5) == []
