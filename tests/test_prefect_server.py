"""Integration with a real ``prefect server start``: deployments served by ``flows/serve.py``, a run
started with ``prefect deployment run``, its rejection in the ledger, the monitor's schedule, and
the shipped automations delivering notifications to a webhook on localhost.

Everything Prefect-side runs in subprocesses with their own environment (the session's test
harness points *this* process at an ephemeral API; the server here is a different one).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.flow_support import FlowEnv, configure

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parent.parent
BLOCK_NAME = "bi-test-alerts"
MODEL = "builtin-textdiff-v1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop a process group this module started (by its own id)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=10)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PYTHONPATH=str(ROOT),
    )
    return env


class _Webhook:
    """A localhost HTTP endpoint that records every request body."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []
        self.received = received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/notify"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def subjects(self) -> list[str]:
        return [str(item.get("subject")) for item in self.received]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = _base_env(home)
    env.update(
        PREFECT_UI_ENABLED="false",
        # Services this test does not need, off to spare the shared CPU.
        PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED="false",
        PREFECT_SERVER_SERVICES_PAUSE_EXPIRATIONS_ENABLED="false",
        PREFECT_SERVER_SERVICES_CANCELLATION_CLEANUP_ENABLED="false",
        PREFECT_SERVER_SERVICES_FOREMAN_ENABLED="false",
    )
    log = (home / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(
                f"prefect server exited: {(home / 'server.log').read_text()[-3000:]}"
            )
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait("the Prefect server's /api/health", healthy, timeout_s=90)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.close()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, pg_dsn: str, redis_url: str) -> FlowEnv:
    return configure(monkeypatch, tmp_path, dsn=pg_dsn, redis_url=redis_url)


def _client_env(api_url: str, home: Path) -> dict[str, str]:
    env = _base_env(home)  # after configure(): carries the BOUNDARY_INFERENCE_* settings
    env.update(PREFECT_API_URL=api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    return env


def _api(api_url: str) -> httpx.Client:
    return httpx.Client(base_url=api_url + "/", timeout=10)


def _deployment(api: httpx.Client, name: str) -> dict[str, Any] | None:
    response = api.get(f"deployments/name/{name}")
    return response.json() if response.status_code == 200 else None


def _final_state(api: httpx.Client, flow_run_id: str) -> dict[str, Any] | None:
    state = api.get(f"flow_runs/{flow_run_id}").json()["state"]
    return (
        state
        if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
        else None
    )


def _deployment_run(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"UUID:\s*([0-9a-f-]{36})", done.stdout)
    assert found, done.stdout
    return found.group(1)


def test_served_deployments_rejection_schedule_and_automations(
    prefect_server: str, env: FlowEnv, webhook: _Webhook, tmp_path: Path
) -> None:
    api_url = prefect_server
    child_env = _client_env(api_url, tmp_path / "client-home")
    serve_log = (tmp_path / "serve.log").open("wb")
    serve = subprocess.Popen(
        [sys.executable, "-m", "flows.serve"],
        env=child_env,
        cwd=ROOT,
        stdout=serve_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # While the deployments register: a notification block and the shipped automations.
        from prefect.blocks.notifications import CustomWebhookNotificationBlock
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from boundary_inference.automations import apply_automations, load_definitions

        with temporary_settings({PREFECT_API_URL: api_url}):
            CustomWebhookNotificationBlock(
                name="bi-test",
                url=webhook.url,
                json_data={"subject": "{{subject}}", "body": "{{body}}"},
            ).save(BLOCK_NAME, overwrite=True)
            applied = apply_automations(BLOCK_NAME)
            again = apply_automations(BLOCK_NAME)
        assert {a.action for a in applied} == {"created"}
        assert [(a.name, a.id) for a in again] == [(a.name, a.id) for a in applied]
        assert {a.action for a in again} == {"updated"}
        assert len(applied) == len(load_definitions())

        # An open rejection already in the ledger, so the monitor has something to alert on.
        env.ledger.log_rejection(
            rejection_type="cost_exceeded",
            message="seeded",
            video_id="seeded-video",
            estimated_cost_usd=2.5,
        )

        api = _api(api_url)
        _wait(
            "the served deployments",
            lambda: (
                serve.poll() is None
                and _deployment(api, "boundary-inference/default")
                and _deployment(api, "rejection-monitor/scheduled")
            ),
            timeout_s=60,
        )
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]

        inference_run = _deployment_run(
            [
                "boundary-inference/default",
                "--param",
                "video_id=never-registered",
                "--param",
                "frames_version=f1",
                "--param",
                f"model_version={MODEL}",
            ],
            child_env,
        )
        monitor_run = _deployment_run(["rejection-monitor/scheduled"], child_env)

        state = _wait(
            "the inference run to finish", lambda: _final_state(api, inference_run), timeout_s=90
        )
        assert (state["type"], state["name"]) == ("COMPLETED", "Rejected"), state
        rejected = [
            r for r in env.ledger.list_rejections(limit=10) if r["video_id"] == "never-registered"
        ]
        assert len(rejected) == 1 and rejected[0]["rejection_type"] == "validation_failed"
        assert "not registered" in rejected[0]["message"]
        assert env.ledger.list_runs(limit=10) == []  # refused before any run was claimed

        monitor_state = _wait(
            "the monitor run to finish", lambda: _final_state(api, monitor_run), timeout_s=90
        )
        assert monitor_state["type"] == "COMPLETED", (
            monitor_state["message"],
            (tmp_path / "serve.log").read_text()[-4000:],
        )

        # The shipped automations turned both events into notifications through the block.
        _wait(
            "notifications for the rejection and the monitor's alert",
            lambda: (
                any("never-registered" in s for s in webhook.subjects())
                and any("unacknowledged rejections" in s for s in webhook.subjects())
            ),
            timeout_s=45,
        )
        rejection_note = next(
            n for n in webhook.received if "never-registered" in str(n.get("subject"))
        )
        assert "validation_failed" in rejection_note["subject"]
        assert str(rejected[0]["id"]) in rejection_note["body"]

        # Deployment shapes: the monitor's cron, the inference concurrency and parameter docs.
        monitor = _deployment(api, "rejection-monitor/scheduled")
        assert monitor is not None
        crons = [
            (s["schedule"].get("cron"), s["schedule"].get("timezone"), s["active"])
            for s in monitor["schedules"]
        ]
        assert crons == [("0 */12 * * *", "UTC", True)]
        inference = _deployment(api, "boundary-inference/default")
        assert inference is not None
        assert inference["global_concurrency_limit"]["limit"] == 5
        assert inference["entrypoint"] == "flows.boundary_inference.boundary_inference_flow"
        assert inference["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        properties = inference["parameter_openapi_schema"]["properties"]
        assert "registered" in properties["video_id"]["description"]
        assert set(inference["parameter_openapi_schema"]["required"]) == {
            "video_id",
            "frames_version",
            "model_version",
        }
    finally:
        _stop(serve)
        serve_log.close()


def test_prefect_yaml_deploys_to_the_work_pool(prefect_server: str, tmp_path: Path) -> None:
    """``prefect deploy`` from prefect.yaml: pool, schedule, concurrency, module entrypoints."""
    import yaml

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["entrypoint"]: d["name"] for d in config["deployments"]}
    assert names == {
        "flows.boundary_inference:boundary_inference_flow": "default",
        "flows.rejection_monitor:rejection_monitor_flow": "scheduled",
        "flows.lease_reaper:lease_reaper_flow": "every-2-minutes",
        "flows.backfill:backfill_flow": "default",
    }
    wanted = ["boundary-inference/default", "rejection-monitor/scheduled"]
    wanted.append("lease-reaper/every-2-minutes")
    if (ROOT / "flows" / "backfill.py").exists():
        wanted.append("backfill/default")
    env = _client_env(prefect_server, tmp_path / "client-home")
    env["BOUNDARY_INFERENCE_HOME"] = str(ROOT)

    def cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "prefect", "--no-prompt", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        return done.stdout

    cli("work-pool", "create", "boundary-inference-pool", "--type", "process", "--overwrite")
    # `deploy --name` matches <entrypoint function>/<deployment>, not the flow's name.
    selectors = ["boundary_inference_flow/default", "rejection_monitor_flow/scheduled"]
    selectors.append("lease_reaper_flow/every-2-minutes")
    cli(
        "deploy",
        *(
            ["--all"]
            if len(wanted) == 4
            else [arg for name in selectors for arg in ("--name", name)]
        ),
    )

    api = _api(prefect_server)
    for name in wanted:
        deployment = _deployment(api, name)
        assert deployment is not None, name
        assert deployment["work_pool_name"] == "boundary-inference-pool"
        assert deployment["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
    monitor = _deployment(api, "rejection-monitor/scheduled")
    assert monitor is not None
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in monitor["schedules"]] == [
        ("0 */12 * * *", "UTC")
    ]
    inference = _deployment(api, "boundary-inference/default")
    assert inference is not None
    assert inference["global_concurrency_limit"]["limit"] == 5
    assert inference["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert inference["enforce_parameter_schema"] is False
    properties = inference["parameter_openapi_schema"]["properties"]
    assert "consecutive pair" in properties["frame_pairs"]["description"]
    assert properties["priority"]["enum"] == ["high", "normal", "low"]
