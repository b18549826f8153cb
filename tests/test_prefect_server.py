"""Integration with a real ``prefect server start`` (every service on, as users run it):
deployments served by ``flows/serve.py`` and deployed from ``prefect.yaml`` to a process worker,
runs started with ``prefect deployment run`` (bad parameters included), their rejections in the
ledger, the monitor's cron schedule producing Scheduled runs, the shipped automations delivering
notifications to a webhook on localhost, the UI in Chromium (a run's artifacts, the
deployment's Runs tab with a rejected and a cancelled job), and a server log free of service
errors.

Everything Prefect-side runs in subprocesses with their own environment (the session's test
harness points *this* process at an ephemeral API; the server here is a different one).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import httpx
import pytest

from tests.flow_support import MODEL, FlowEnv, MakeEnv
from tests.support import run_python

if TYPE_CHECKING:
    from playwright.sync_api import Page

# Waits below are hang guards, not measurements: on a loaded 2-core machine one Prefect CLI call
# or flow run takes a minute.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

ROOT = Path(__file__).resolve().parent.parent
BLOCK_NAME = "bi-test-alerts"
POOL = "boundary-inference-pool"
DOCKER_POOL = "boundary-inference-docker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """Poll `check` until it returns something truthy.

    A poll that cannot reach the server (a read timeout while the test server is busy on a
    loaded CI machine) is an observation that failed, not an answer: it is retried
    until the deadline, and only the deadline fails the test.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = check()
        except httpx.TransportError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


def _spawn_python(
    args: list[str], *, env: dict[str, str], cwd: Path | None, log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """``python <args>`` in its own session (so :func:`_stop` ends its whole group), its output
    in ``log``."""
    return subprocess.Popen(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


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
        # The checkout first; anything else on the path stays (an install made with --target).
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
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


_LOG_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| (\w+)\s*\|")


def _server_log_errors(text: str) -> list[str]:
    """The errors in a Prefect server log: each ERROR/CRITICAL record with the traceback lines
    under it, and any traceback outside such a record. (On PostgreSQL there is no lock contention
    to tolerate: SQLite's "database is locked" was counted and forgiven here before.)"""
    records: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        found = _LOG_RECORD.match(line)
        if found:
            records.append((found.group(1), [line]))
        elif records:
            records[-1][1].append(line)
        elif "Traceback" in line or "Error" in line:
            records.append(("ERROR", [line]))
    return [
        "\n".join(lines)
        for level, lines in records
        if level in ("ERROR", "CRITICAL") or any("Traceback" in x for x in lines)
    ]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prefect-server") / "server.log"


@pytest.fixture(scope="module")
def prefect_database(prefect_template: Path) -> Iterator[str]:
    """The server's database: PostgreSQL with pg_trgm, as the embedded server's (its data outside
    pytest's basetemp, which a concurrent session may delete under a live server)."""
    from boundary_inference.local.prefect_server import (
        start_prefect_database,
        stop_prefect_database,
    )
    from tests.prefect_template import seed_prefect_cluster

    directory = Path(tempfile.mkdtemp(prefix="bi-ps-"))
    seed_prefect_cluster(directory, prefect_template)  # migrated already
    try:
        yield start_prefect_database(directory)
    finally:
        stop_prefect_database(directory)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def prefect_server(server_log: Path, prefect_database: str) -> Iterator[str]:
    home = server_log.parent
    port = _free_port()
    env = _base_env(home)
    # Every service on (the scheduler, late runs, foreman...) and the UI: the server users run.
    # Only the scheduler's main loop is shortened; the schedule itself is the shipped one.
    env.update(
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_SERVER_DATABASE_CONNECTION_URL=prefect_database,
        # The UI finds its API from these settings, not from --port (else it calls :4200).
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
    )
    log = server_log.open("wb")
    start = ["-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    proc = _spawn_python(start, env=env, cwd=None, log=log)
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
        _wait("the Prefect server's /api/health", healthy, timeout_s=600)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[_Webhook]:
    """Module-wide: the automations applied by one test keep notifying during the later ones,
    and a closed endpoint would be an error in the server's log."""
    hook = _Webhook()
    yield hook
    hook.close()


@pytest.fixture
def env(make_env: MakeEnv) -> FlowEnv:
    return make_env()


def _client_env(api_url: str, home: Path) -> dict[str, str]:
    env = _base_env(home)  # after configure(): carries the BOUNDARY_INFERENCE_* settings
    env.update(PREFECT_API_URL=api_url, PREFECT_RUNNER_POLL_FREQUENCY="1")
    # A worker's deployment runs use the executor their configuration names (never a default).
    env.setdefault("BOUNDARY_INFERENCE_EXECUTOR", "local")
    return env


def _api(api_url: str) -> httpx.Client:
    # Reads retried at the transport (connect errors) and given a minute: the test server shares
    # two loaded cores with a worker and several flow-run processes in CI.
    return httpx.Client(
        base_url=api_url + "/", timeout=60, transport=httpx.HTTPTransport(retries=3)
    )


def _automations(api_url: str) -> dict[str, str]:
    """Each automation's id and last update time, as the server stores them."""
    found = _api(api_url).post("automations/filter", json={}).json()
    return {a["id"]: a["updated"] for a in found}


def _flow_runs(api: httpx.Client, deployment_id: str, state_type: str) -> list[dict[str, Any]]:
    body = {
        "deployments": {"id": {"any_": [deployment_id]}},
        "flow_runs": {"state": {"type": {"any_": [state_type]}}},
    }
    return list(api.post("flow_runs/filter", json=body).json())


def _deployment(api: httpx.Client, name: str) -> dict[str, Any] | None:
    response = api.get(f"deployments/name/{name}")
    return response.json() if response.status_code == 200 else None


def _final_state(api: httpx.Client, flow_run_id: str) -> dict[str, Any] | None:
    response = api.get(f"flow_runs/{flow_run_id}")
    if response.status_code != 200:  # a busy server's 503: ask again on the next poll
        return None
    state = response.json()["state"]
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
        timeout=600,  # a hang guard: a Prefect CLI call takes a minute on a loaded 2-core machine
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
    serve = _spawn_python(["-m", "flows.serve"], env=child_env, cwd=ROOT, log=serve_log)
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
            stored = _automations(api_url)
            again = apply_automations(BLOCK_NAME)
        assert {a.action for a in applied} == {"created"}
        assert [(a.name, a.id) for a in again] == [(a.name, a.id) for a in applied]
        # Applying the same definitions again changes nothing: no update sent, none stored.
        assert {a.action for a in again} == {"unchanged"}
        assert _automations(api_url) == stored
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
            timeout_s=600,
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
            "the inference run to finish", lambda: _final_state(api, inference_run), timeout_s=600
        )
        assert (state["type"], state["name"]) == ("COMPLETED", "Completed"), state
        assert state["message"].startswith("rejected: validation_failed: "), state
        rejected = [
            r for r in env.ledger.list_rejections(limit=10) if r["video_id"] == "never-registered"
        ]
        assert len(rejected) == 1 and rejected[0]["rejection_type"] == "validation_failed"
        assert "not registered" in rejected[0]["message"]
        assert env.ledger.list_runs(limit=10) == []  # refused before any run was claimed

        monitor_state = _wait(
            "the monitor run to finish", lambda: _final_state(api, monitor_run), timeout_s=600
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
            timeout_s=600,
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


def _prefect_cli(env: dict[str, str], *args: str) -> str:
    done = run_python(["-m", "prefect", "--no-prompt", *args], env=env, cwd=ROOT, timeout_s=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def deployed(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``prefect deploy --all`` from the checkout, as docs/OPERATIONS.md says (both pools made
    first); returns the directory it was run "from" (nothing of it may be recorded)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    where = tmp_path_factory.mktemp("deployed-from")
    env = _client_env(prefect_server, where / "client-home")
    env["PWD"] = str(where)
    _prefect_cli(env, "work-pool", "create", POOL, "--type", "process", "--overwrite")
    # The Docker pool by API: `work-pool create --type docker` wants prefect-docker's template.
    with temporary_settings({PREFECT_API_URL: prefect_server}), get_client(sync_client=True) as c:
        c.create_work_pool(WorkPoolCreate(name=DOCKER_POOL, type="docker"), overwrite=True)
    _prefect_cli(env, "deploy", "--all")
    return where


def test_prefect_yaml_deploys_to_the_work_pool(prefect_server: str, deployed: Path) -> None:
    """``prefect deploy`` from prefect.yaml: pool, schedule, concurrency, module entrypoints."""
    import yaml

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {(d["entrypoint"], d["name"]) for d in config["deployments"]}
    assert names == {
        ("flows.boundary_inference:boundary_inference_flow", "default"),
        ("flows.boundary_inference:boundary_inference_flow", "docker"),
        ("flows.rejection_monitor:rejection_monitor_flow", "scheduled"),
        ("flows.lease_reaper:lease_reaper_flow", "every-2-minutes"),
        ("flows.backfill:backfill_flow", "default"),
    }
    wanted = ["boundary-inference/default", "rejection-monitor/scheduled", "backfill/default"]
    wanted.append("lease-reaper/every-2-minutes")
    tmp_path = deployed

    api = _api(prefect_server)
    for name in wanted:
        deployment = _deployment(api, name)
        assert deployment is not None, name
        assert deployment["work_pool_name"] == POOL
        # Cloned and installed on the worker (tests/test_prefect_yaml.py checks the steps).
        assert deployment["pull_steps"][0]["prefect.deployments.steps.git_clone"]
    monitor = _deployment(api, "rejection-monitor/scheduled")
    assert monitor is not None
    assert [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in monitor["schedules"]] == [
        ("0 */12 * * *", "UTC")
    ]
    # The schedule fires: the server's scheduler creates Scheduled runs at 00:00 and 12:00 UTC.
    scheduled = _wait(
        "Scheduled runs of the monitor",
        lambda: _flow_runs(api, monitor["id"], "SCHEDULED"),
        timeout_s=600,
    )
    starts = [dt.datetime.fromisoformat(r["expected_start_time"]) for r in scheduled]
    assert all(t.hour in (0, 12) and (t.minute, t.second) == (0, 0) for t in starts), starts
    assert all(t > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1) for t in starts), starts
    inference = _deployment(api, "boundary-inference/default")
    assert inference is not None
    assert inference["global_concurrency_limit"]["limit"] == 5
    assert inference["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert inference["enforce_parameter_schema"] is False
    properties = inference["parameter_openapi_schema"]["properties"]
    assert "consecutive pair" in properties["frame_pairs"]["description"]
    assert properties["priority"]["enum"] == ["high", "normal", "low"]
    assert str(tmp_path) not in json.dumps(inference)  # nothing of the deployer's machine
    docker = _deployment(api, "boundary-inference/docker")
    assert docker is not None and docker["work_pool_name"] == DOCKER_POOL


def _run_from_the_checkout(api_url: str, name: str) -> None:
    """This worker runs on the checkout's machine, in the checkout's venv: its runs use the
    checkout instead of the shipped clone-and-install pull steps (which would install into that
    venv; tests/test_two_hosts.py runs workers from wheels of their own)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import DeploymentUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    step = {"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        client.update_deployment(deployment.id, DeploymentUpdate(pull_steps=[step]))


def test_worker_runs_bad_parameters_as_rejections_and_a_failed_job_as_failed(
    prefect_server: str, deployed: Path, env: FlowEnv, tmp_path: Path
) -> None:
    """A process worker started as the docs say runs ``prefect deployment run`` with no
    parameters, with mistyped ones, with a misspelt one, and a job that fails after admission: the
    first three end Completed (``rejected: ...``) and recorded, the last Failed with a readable
    message, and the worker's log carries no ``TypeError: Unexpected result for failed state``."""
    api_url = prefect_server
    worker_env = _client_env(api_url, tmp_path / "worker-home")
    worker_env["PREFECT_WORKER_QUERY_SECONDS"] = "1"
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    env.register("broken", broken, 30, None)
    _run_from_the_checkout(api_url, "boundary-inference/default")
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as log:
        start = ["-m", "prefect", "worker", "start", "--pool", POOL]
        worker = _spawn_python(start, env=worker_env, cwd=tmp_path, log=log)
    try:
        api = _api(api_url)
        no_parameters = _deployment_run(["boundary-inference/default"], worker_env)
        mistyped = _deployment_run(
            [
                "boundary-inference/default",
                *("--param", "video_id=123"),
                *("--param", "frames_version=f1"),
                *("--param", f"model_version={MODEL}"),
                *("--param", "skip_if_exists=maybe"),
                *("--param", "priority=urgent"),
            ],
            worker_env,
        )
        # `prefect deployment run` refuses an unknown --param itself; the API and the UI's JSON
        # editor do not: such a run reaches the worker.
        deployment = _deployment(api, "boundary-inference/default")
        assert deployment is not None
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # Prefect's client, as an API caller would use it (it retries the server's 503s).
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
            unknown = str(
                c.create_flow_run_from_deployment(
                    deployment["id"],
                    parameters={"vidoe_id": "v1", "frames_version": "f1", "model_version": MODEL},
                ).id
            )
        failing = _deployment_run(
            [
                "boundary-inference/default",
                *("--param", "video_id=broken"),
                *("--param", "frames_version=f1"),
                *("--param", f"model_version={MODEL}"),
                *("--param", "frame_pairs=[[0,1],[1,2]]"),
            ],
            worker_env,
        )
        states = {
            name: _wait(f"the {name} run", lambda run=run: _final_state(api, run), timeout_s=600)
            for name, run in [
                ("no-parameters", no_parameters),
                ("mistyped", mistyped),
                ("unknown", unknown),
                ("failing", failing),
            ]
        }
        log_text = worker_log.read_text(errors="replace")
        for name in ("no-parameters", "mistyped", "unknown"):
            state = states[name]
            assert (state["type"], state["name"]) == ("COMPLETED", "Completed"), (state, log_text)
            assert state["message"].startswith("rejected: validation_failed: "), state
        rejections = {r["message"]: r for r in env.ledger.list_rejections(limit=20)}
        missing = [m for m in rejections if m.startswith("missing required parameter")]
        assert missing == ["missing required parameter(s): video_id, frames_version, model_version"]
        (misspelt,) = [m for m in rejections if m.startswith("unknown parameter")]
        assert misspelt.startswith("unknown parameter(s): vidoe_id (the flow takes video_id,")
        assert misspelt.endswith("; missing required parameter(s): video_id")
        (typed,) = [m for m in rejections if "skip_if_exists='maybe'" in m]
        # video_id=123 arrives as a JSON int: an all-digit id is its decimal string, not a problem.
        assert "priority='urgent'" in typed and "video_id" not in typed, typed
        assert all(r["rejection_type"] == "validation_failed" for r in rejections.values())

        failed = states["failing"]
        assert failed["type"] == "FAILED", (failed, log_text)
        assert failed["message"].startswith("user_code:") or "failed" in failed["message"]
        (run,) = env.ledger.list_runs(video_id="broken", limit=5)
        assert run["status"] == "failed"
        assert "Unexpected result for failed state" not in log_text
        assert "TypeError" not in log_text
        assert "ParameterBindError" not in log_text
        assert "SignatureMismatchError" not in log_text
    finally:
        _stop(worker)


# The screenshots the docs show are refreshed on request only (BOUNDARY_INFERENCE_UI_SHOTS_DIR=docs):
# a plain run writes them to a temporary directory and leaves the tracked tree as it found it.
@pytest.fixture(scope="module")
def shots() -> Iterator[Path]:
    """Where the browser tests' screenshots go: ``docs/`` on request, else a temporary directory
    removed afterwards (made when a browser test first asks, so a run leaves no directory)."""
    requested = os.environ.get("BOUNDARY_INFERENCE_UI_SHOTS_DIR")
    if requested:
        yield Path(requested)
        return
    path = Path(tempfile.mkdtemp(prefix="bi-ui-shots-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _submit(api_url: str, home: Path, *args: str) -> dict[str, Any]:
    """``boundary-inference submit --json`` as a user runs it, against this server: waited on in
    this process (the module's served deployment is not always up), or with ``--no-wait`` a
    deployment run, which the calling test's own serve process runs."""
    here = [] if "--no-wait" in args else ["--in-process"]
    done = subprocess.run(
        [sys.executable, "-m", "boundary_inference.cli.app", "submit", *here, *args, "--json"],
        env=_client_env(api_url, home),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode in (0, 3), done.stdout[-2000:] + done.stderr[-3000:]
    return dict(json.loads(done.stdout))


@contextmanager
def _chromium_page() -> Iterator[Page]:
    """A page of Debian's Chromium (Playwright cannot download its own browsers here)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox"]
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            # The UI is a single-page app loading from a server on a shared, loaded machine.
            page.set_default_timeout(120_000)
            yield page
        finally:
            browser.close()


def test_ui_shows_a_rejected_run_and_an_admitted_runs_artifacts(
    prefect_server: str, env: FlowEnv, tmp_path: Path, shots: Path
) -> None:
    """The Prefect UI of the real server, in Chromium: a rejected run found by its name, its
    standard ``Completed`` state with its ``rejected:validation_failed`` tag and its rejection
    artifact (reason and the exact ``ack`` command); an admitted run's estimate and progress
    artifacts. Screenshots go to docs/ (README shows them)."""
    from playwright.sync_api import TimeoutError as PageTimeout

    from modal_app.synthetic import make_video

    api_url = prefect_server
    ui_url = api_url.removesuffix("/api")
    clip = tmp_path / "ui.mp4"
    truth = make_video(clip, seed=5, frame_count=40)
    env.register("lecture-42", clip, 40, truth.crop_box)
    admitted = _submit(api_url, tmp_path / "h1", "lecture-42", "--frames-version", "f1")
    rejected = _submit(
        api_url, tmp_path / "h2", "lecture-42", "--frames-version", "f2", "--pairs", "[[0,1],[7,3]]"
    )
    assert admitted["status"] == "succeeded", admitted
    assert rejected["rejection_type"] == "validation_failed", rejected
    api = _api(api_url)

    def run_name(result: dict[str, Any]) -> str:
        flow_run_id = str(result["flow_run_url"]).rsplit("/", 1)[-1]
        return str(api.get(f"flow_runs/{flow_run_id}").json()["name"])

    def open_run(page: Page, name: str) -> None:
        page.goto(f"{ui_url}/runs")
        page.get_by_text("Flow runs").first.wait_for()
        search = page.locator("input[placeholder='Search by flow run name']:visible").first
        link = page.get_by_role("link", name=name).first
        for attempt in range(5):  # the list may re-render while loading and drop what was typed
            search.fill(name)
            try:
                link.wait_for(timeout=120_000)
                break
            except PageTimeout:
                page.screenshot(path=str(tmp_path / f"search-{attempt}.png"))
        link.click()
        page.wait_for_url("**/runs/flow-run/**")
        page.get_by_text("Artifacts", exact=True).first.click()

    rejection_id = rejected["details"]["rejection_id"]
    with _chromium_page() as page:
        name = run_name(rejected)
        assert name.startswith("lecture-42-f2-builtin-textdiff-v1-")
        open_run(page, name)
        # A standard state name (the Runs tab lists it) and the tag that finds every such run.
        page.get_by_text("Completed", exact=True).first.wait_for()
        page.get_by_text("rejected:validation_failed", exact=True).first.wait_for()
        page.get_by_text("rejection-lecture-42", exact=True).first.wait_for()
        page.screenshot(path=str(shots / "ui-rejected-run.png"))
        page.get_by_text("rejection-lecture-42", exact=True).first.click()
        page.get_by_text(f"boundary-inference ack {rejection_id}").first.wait_for()
        body = page.inner_text("body")
        assert "Rejected: validation_failed" in body, body[-3000:]
        assert "[7, 3]" in body, body[-3000:]
        page.screenshot(path=str(shots / "ui-rejection-artifact.png"))

        name = run_name(admitted)
        open_run(page, name)
        page.get_by_text("Completed", exact=True).first.wait_for()
        page.get_by_text("estimate-lecture-42", exact=True).first.wait_for()
        # The progress artifact has no key (one per run would fill the Artifacts page): the
        # server holds it on this flow run, at 100 %.
        progress = _api(prefect_server).post(
            "artifacts/filter",
            json={
                "artifacts": {"type": {"any_": ["progress"]}},
                "flow_runs": {"name": {"any_": [name]}},
            },
        )
        assert [(a["key"], a["data"]) for a in progress.json()] == [(None, 100.0)]
        page.screenshot(path=str(shots / "ui-admitted-artifacts.png"))
        page.get_by_text("estimate-lecture-42", exact=True).first.click()
        page.get_by_text("worst case (reserved)").first.wait_for()
        assert "Admitted: lecture-42" in page.inner_text("body")


def _held(env: FlowEnv, fifo: Path, video_id: str, frames: int) -> None:
    """Register ``video_id`` on a FIFO nobody writes: its job's decoder waits in open() until
    the job is cancelled."""
    os.mkfifo(fifo)
    env.register(video_id, fifo, frames, None)


def _release(fifo: Path) -> None:
    """A reader left blocked in open() (it should be gone) reads EOF and exits."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _held_call(env: FlowEnv, video_id: str) -> tuple[dict[str, Any], int]:
    """The held job's run row and its executor child's pid, once the call is spawned."""

    def spawned() -> Any:
        rows = env.ledger.list_runs(limit=5, video_id=video_id)
        call = rows[0].get("executor_call_id") if rows else None
        pid_file = env.jobs_dir / str(call) / "pid"
        return pid_file.exists() and (rows[0], int(pid_file.read_text()))

    row, pid = _wait(f"{video_id}'s executor call", spawned, timeout_s=600)
    return row, pid


def _stopped_and_settled(env: FlowEnv, row: dict[str, Any], pid: int) -> None:
    """The cancelled job's process ended and its run settled ``cancelled`` (by the flow, or by
    its cancellation hook if the runner's kill came first): before long, never left running."""
    from boundary_inference.local.processes import pid_alive

    _wait("the held job's process to end", lambda: not pid_alive(pid), timeout_s=600)
    _wait(
        "the held job's run settled cancelled",
        lambda: (env.ledger.get_run(run_id=str(row["id"])) or {}).get("status") == "cancelled",
        timeout_s=600,
    )


def _serve(api_url: str, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``python -m flows.serve`` against this server, once ``boundary-inference/default`` is
    registered; its runs use the checkout (``_run_from_the_checkout``) whatever pull steps an
    earlier ``prefect deploy`` of this module left on that deployment."""
    with (tmp_path / "serve.log").open("wb") as log:
        serve = _spawn_python(
            ["-m", "flows.serve"],
            env=_client_env(api_url, tmp_path / "serve-home"),
            cwd=ROOT,
            log=log,
        )

    def registered() -> Any:
        if serve.poll() is not None:
            raise AssertionError((tmp_path / "serve.log").read_text(errors="replace")[-3000:])
        return _deployment(_api(api_url), "boundary-inference/default")

    try:
        _wait("the served deployment", registered, timeout_s=600)
        _run_from_the_checkout(api_url, "boundary-inference/default")
    except BaseException:
        _stop(serve)
        raise
    return serve


def test_ui_shows_a_deployments_rejected_run_and_a_cancelled_job(
    prefect_server: str, env: FlowEnv, tmp_path: Path, shots: Path
) -> None:
    """The deployment's page in Chromium (Deployments -> boundary-inference/default -> Runs): a
    served run rejected for its frame pairs is listed ``Completed`` with its
    ``rejected:validation_failed`` tag, and a running job of the deployment cancelled as the UI
    does it (``Cancelling`` through the API) is listed, and shown on its own page, ``Cancelled``:
    standard state names, which the Runs tab lists (custom ones it hides)."""
    from playwright.sync_api import expect
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from boundary_inference.local.processes import pid_alive
    from modal_app.synthetic import make_video
    from tests.flow_support import job

    api_url = prefect_server
    ui_url = api_url.removesuffix("/api")
    clip = tmp_path / "deployed.mp4"
    make_video(clip, seed=6, frame_count=20)
    env.register("lecture-7", clip, 20, None)
    # The held job's source is a FIFO nobody writes: its decoder waits in open() until cancelled.
    fifo = tmp_path / "held.mp4"
    _held(env, fifo, "held-open", 60)
    serve = _serve(api_url, tmp_path)
    api = _api(api_url)
    try:
        submitted = _submit(
            api_url, tmp_path / "cli", "lecture-7", "--pairs", "[[0,1],[7,3]]", "--no-wait"
        )
        rejected_id = str(submitted["flow_run_id"])
        deployment = _deployment(api, "boundary-inference/default")
        assert deployment is not None
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
            held_id = c.create_flow_run_from_deployment(
                deployment["id"], parameters=job("held-open")
            ).id
            row, pid = _held_call(env, "held-open")
            assert pid_alive(pid)
            c.set_flow_run_state(held_id, Cancelling(), force=True)  # what the UI's Cancel sends
        rejected = _wait("the rejected run", lambda: _final_state(api, rejected_id), 600)
        cancelled = _wait("the cancelled run", lambda: _final_state(api, str(held_id)), 600)
        assert (rejected["type"], rejected["name"]) == ("COMPLETED", "Completed"), rejected
        assert rejected["message"].startswith("rejected: validation_failed: "), rejected
        assert (cancelled["type"], cancelled["name"]) == ("CANCELLED", "Cancelled"), cancelled
        _stopped_and_settled(env, row, pid)
    finally:
        _stop(serve)
        _release(fifo)
    names = {
        run_id: str(api.get(f"flow_runs/{run_id}").json()["name"])
        for run_id in (rejected_id, str(held_id))
    }

    with _chromium_page() as page:
        page.goto(f"{ui_url}/deployments")
        page.locator(f"a[href$='/deployments/deployment/{deployment['id']}']").first.click()
        page.wait_for_url(f"**/deployments/deployment/{deployment['id']}**")
        page.get_by_role("tablist").get_by_text("Runs", exact=True).click()

        def listed(run_id: str, *texts: str) -> None:
            """The innermost element listing this run (its row) shows each of ``texts``."""
            row = page.locator("div").filter(has=page.get_by_role("link", name=names[run_id]))
            for text in texts:
                row = row.filter(has=page.get_by_text(text, exact=True))
            row.last.wait_for()
            others = [n for r, n in names.items() if r != run_id]
            assert not any(n in row.last.inner_text() for n in others), row.last.inner_text()

        listed(rejected_id, "Completed", "rejected:validation_failed")
        listed(str(held_id), "Cancelled")
        page.screenshot(path=str(shots / "ui-deployment-runs.png"), animations="disabled")

        page.get_by_role("link", name=names[str(held_id)]).first.click()
        page.wait_for_url(f"**/runs/flow-run/{held_id}**")
        page.get_by_role("tablist").get_by_text("Task Runs", exact=True).wait_for()
        # The router changes the address before the deployment's page has left: once the other
        # run's name is gone, the state shown is the run page's own.
        expect(page.get_by_text(names[rejected_id])).to_have_count(0)
        page.get_by_text("Cancelled", exact=True).first.wait_for()
        page.screenshot(path=str(shots / "ui-cancelled-run.png"), animations="disabled")


def test_a_served_backfills_videos_are_deployment_runs_and_its_cancel_stops_them(
    prefect_server: str, env: FlowEnv, tmp_path: Path
) -> None:
    """``backfill/default`` as served: each video is a run of ``boundary-inference/default``
    (its own process, the deployment's), nested under the backfill's run and tagged
    ``backfill``; a wave ends before the next is created; each run's outcome is read back into
    the backfill. A cancel of the backfill as the UI sends it (``Cancelling``) cancels the video
    running in its second wave: the executor's child killed, the run settled ``cancelled``, its
    flow run and the backfill's ``Cancelled``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Cancelling

    from boundary_inference.job_runs import read_outcome
    from boundary_inference.local.processes import pid_alive
    from modal_app.synthetic import make_video

    api_url = prefect_server
    clip = tmp_path / "bf-ok.mp4"
    make_video(clip, seed=8, frame_count=20)
    env.register("bf-ok", clip, 20, None)
    fifo = tmp_path / "bf-held.mp4"
    _held(env, fifo, "bf-held", 60)
    serve = _serve(api_url, tmp_path)
    api = _api(api_url)
    try:
        _wait("backfill/default", lambda: _deployment(api, "backfill/default"), timeout_s=600)
        _run_from_the_checkout(api_url, "backfill/default")
        inference = _deployment(api, "boundary-inference/default")
        backfill = _deployment(api, "backfill/default")
        assert inference is not None and backfill is not None
        parameters = {
            "video_ids": ["bf-ok", "bf-unknown", "bf-held"],  # bf-unknown: not registered
            "frames_version": "f1",
            "model_version": MODEL,
            "wave_size": 2,
        }
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as c:
            backfill_id = c.create_flow_run_from_deployment(
                backfill["id"], parameters=parameters
            ).id
            row, pid = _held_call(env, "bf-held")
            assert pid_alive(pid)
            children = {
                str(child.parameters["video_id"]): child
                for child in c.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[backfill_id])
                    )
                )
            }
            assert sorted(children) == ["bf-held", "bf-ok", "bf-unknown"], children
            for child in children.values():
                assert str(child.deployment_id) == inference["id"], child
                assert "backfill" in child.tags, child.tags
            first_wave = [children["bf-ok"], children["bf-unknown"]]
            ok, unknown = (read_outcome(c, child) for child in first_wave)
            assert ok["status"] == "succeeded" and ok["video_id"] == "bf-ok", ok
            assert ok["boundaries"] is not None, ok
            assert (unknown["status"], unknown["rejection_type"]) == (
                "rejected",
                "validation_failed",
            ), unknown
            # The second wave was created only after the first had ended.
            ended = [child.end_time for child in first_wave]
            assert all(ended) and children["bf-held"].created > max(ended), children  # type: ignore[type-var]
            c.set_flow_run_state(
                backfill_id, Cancelling(), force=True
            )  # what the UI's Cancel sends
        held_id = str(children["bf-held"].id)
        cancelled = _wait("the held video's run", lambda: _final_state(api, held_id), 600)
        assert cancelled["type"] == "CANCELLED", cancelled
        ended_backfill = _wait("the backfill", lambda: _final_state(api, str(backfill_id)), 600)
        assert ended_backfill["type"] == "CANCELLED", ended_backfill
        _stopped_and_settled(env, row, pid)
    finally:
        _stop(serve)
        _release(fifo)


def test_server_log_has_no_service_errors(prefect_server: str, server_log: Path) -> None:
    """Last in this module: everything above ran against this server; its services (scheduler,
    late runs, foreman, event persister...) logged no error while it did. The issue this guards:
    SQLAlchemy 2.1 made them fail every loop with "Can't evaluate bulk DML statement"."""
    errors = _server_log_errors(server_log.read_text(errors="replace"))
    assert errors == [], "\n\n".join(e[:1500] for e in errors[:5])


def test_a_burst_of_rejections_is_one_message_per_tenant(
    prefect_server: str, webhook: _Webhook
) -> None:
    """The shipped "job rejected" automation, on the real server: 20 rejections of one tenant
    within its window are one notification; another tenant's rejection still gets its own."""
    import uuid

    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.events import Event
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from boundary_inference.automations import apply_automations
    from tasks.rejections import REJECTION_EVENT, rejection_resource

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        CustomWebhookNotificationBlock(
            name="bi-test",
            url=webhook.url,
            json_data={"subject": "{{subject}}", "body": "{{body}}"},
        ).save(BLOCK_NAME, overwrite=True)
        apply_automations(BLOCK_NAME)  # unchanged when the test above applied them already
    burst, other = f"burst-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"

    def event(tenant: str, number: int) -> dict[str, Any]:
        return Event(
            event=REJECTION_EVENT,
            resource=rejection_resource(f"{tenant}-v{number}", tenant),
            payload={
                "rejection_type": "rate_limited",
                "message": "over the global rate",
                "rejection_id": str(uuid.uuid4()),
                "run_id": None,
                "tenant_id": tenant,
                "estimated_cost_usd": 0.01,
            },
        ).model_dump(mode="json")

    api = _api(prefect_server)
    sent = api.post("events", json=[event(burst, n) for n in range(20)])
    assert sent.status_code == 204, sent.text
    # The other tenant's event goes after the burst: once its message is in, the burst's 20
    # events have been through the triggers (one consumer, in order).
    sent = api.post("events", json=[event(other, 0)])
    assert sent.status_code == 204, sent.text

    def bodies(tenant: str) -> list[str]:
        return [str(n.get("body")) for n in webhook.received if f"(tenant {tenant}," in str(n)]

    _wait("the other tenant's notification", lambda: bodies(other), timeout_s=600)
    _wait("the burst's notification", lambda: bodies(burst), timeout_s=600)
    assert len(bodies(burst)) == 1, bodies(burst)
    assert len(bodies(other)) == 1
    assert "Further rejections of this tenant" in bodies(burst)[0]
