"""``bench`` figures of ``submit`` as users run it: many real CLI processes at once, each job a run of
the ``boundary-inference/default`` deployment run by the state dir's worker, and the cost of one
submission (the CLI process: it creates the run and waits) against a ``runs --json``.

Everything runs in a throw-away ledger schema and Redis key prefix on the state dir's servers (or
the configured ones), with the state dir's Prefect server (or ``PREFECT_API_URL``'s): the servers
are warm, as they are for a user's second command. Each child's CPU time and peak resident memory
come from ``wait4`` in a minimal launcher (``python -S``, about 10 MiB): waited for by this
process directly, a child's peak would start at this process's own size (Linux carries the
parent's high-water mark across the exec).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config import Settings

MODEL = "builtin-textdiff-v1"
_CHILD_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class _Child:
    code: int
    stdout: str
    stderr: str
    wall_s: float
    cpu_s: float
    max_rss_mib: float


_LAUNCHER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    json.dump([usage.ru_utime + usage.ru_stime, usage.ru_maxrss], out)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _spawn(args: list[str], env: dict[str, str], out_dir: Path) -> tuple[Any, Path, float]:
    tag = out_dir / uuid.uuid4().hex[:8]
    command = [sys.executable, "-m", "boundary_inference.cli.app", *args]
    with tag.with_suffix(".out").open("wb") as stdout, tag.with_suffix(".err").open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-c", _LAUNCHER, str(tag.with_suffix(".usage")), *command],
            env=env,
            stdout=stdout,
            stderr=err,
        )
    return proc, tag, time.monotonic()


def _reap(started: list[tuple[Any, Path, float]]) -> list[_Child]:
    """Wait for each child: its wall time here, its CPU time and peak RSS (KiB) from wait4."""
    import json

    children = []
    for proc, tag, t0 in started:
        code = proc.wait(timeout=_CHILD_TIMEOUT_S)
        wall = time.monotonic() - t0
        cpu_s, max_rss_kib = json.loads(tag.with_suffix(".usage").read_text())
        children.append(
            _Child(
                code=code,
                stdout=tag.with_suffix(".out").read_text(errors="replace"),
                stderr=tag.with_suffix(".err").read_text(errors="replace"),
                wall_s=wall,
                cpu_s=cpu_s,
                max_rss_mib=max_rss_kib / 1024,
            )
        )
    return children


def _run_all(arg_lists: list[list[str]], env: dict[str, str], out_dir: Path) -> list[_Child]:
    """Start every process first, then wait: they really run at once."""
    return _reap([_spawn(args, env, out_dir) for args in arg_lists])


def _status(child: _Child) -> str:
    import json

    try:
        return str(json.loads(child.stdout)["status"])
    except (ValueError, KeyError, TypeError):
        return "no-json"


def _message(child: _Child) -> str:
    """What a submission that did not end 0 or 3 said (its outcome's message, or stderr's end)."""
    import json

    try:
        return str(json.loads(child.stdout).get("message"))[:300]
    except (ValueError, AttributeError):
        return child.stderr.strip()[-300:]


def _rejection(child: _Child) -> str | None:
    import json

    try:
        kind = json.loads(child.stdout).get("rejection_type")
        return None if kind is None else str(kind)
    except (ValueError, AttributeError):
        return None


def submit_figures(
    settings: Settings, *, one_key: int = 20, videos: int = 50, rate: int = 5, serial: int = 3
) -> dict[str, Any]:
    from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
    from boundary_inference.local.embedded import start_redis
    from boundary_inference.local.prefect_server import use_embedded_prefect
    from boundary_inference.local.worker import stop_worker
    from boundary_inference.services import embedded_dsn
    from modal_app.synthetic import make_video

    state_dir = Path(settings.state_dir).resolve()
    use_embedded_prefect(state_dir)  # this process's and, through the environment, the children's
    dsn = (
        settings.database_url.get_secret_value()
        if settings.database_url is not None
        else embedded_dsn(settings)
    )
    redis_url = (
        settings.redis_url.get_secret_value()
        if settings.redis_url is not None
        else start_redis(state_dir).url
    )
    schema = f"bench_submit_{uuid.uuid4().hex[:8]}"
    apply_migrations(dsn, schema)
    ledger = Ledger(PsycopgTransport(dsn, schema, timeout_s=30))
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bi-bench-") as tmp:
        work = Path(tmp)
        clip = work / "clip.mp4"
        truth = make_video(clip, seed=11, frame_count=30)
        box = truth.crop_box
        crop = {"x": box.x, "y": box.y, "width": box.width, "height": box.height}
        ids = ["bench-key", *[f"bench-v{i:03d}" for i in range(videos)]]
        ids += [f"bench-serial-{i}" for i in range(serial)] + ["bench-serial-warm"]

        def register(into: Ledger) -> None:
            for video_id in ids:
                into.upsert_video(
                    id=video_id,
                    tenant_id=settings.default_tenant_id,
                    frame_count=30,
                    fps=30.0,
                    source_uri=str(clip),
                    crop_box=crop,
                )

        register(ledger)

        def env_for(**extra: str) -> dict[str, str]:
            env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNDARY_INFERENCE_")}
            env.update(
                BOUNDARY_INFERENCE_DATABASE_URL=dsn,
                BOUNDARY_INFERENCE_REDIS_URL=redis_url,
                BOUNDARY_INFERENCE_DB_SCHEMA=schema,
                BOUNDARY_INFERENCE_REDIS_KEY_PREFIX=f"bs{uuid.uuid4().hex[:8]}",
                BOUNDARY_INFERENCE_STATE_DIR=str(state_dir),
            )
            env.update({f"BOUNDARY_INFERENCE_{k.upper()}": v for k, v in extra.items()})
            return env

        # Each submission is a run of the deployment, run by the state dir's worker with the
        # configuration of the CLI that started it: a fresh worker per phase (the first of the
        # phase's processes starts it, the others join it).
        stop_worker(state_dir)

        # 1. One key from many processes: exactly one job, the rest skipped, all exit 0.
        t0 = time.monotonic()
        same = _run_all(
            [["submit", "bench-key", "--frames-version", "f1", "--json"]] * one_key,
            env_for(),
            work,
        )
        runs = ledger.list_runs(video_id="bench-key", limit=100)
        statuses = [_status(c) for c in same]
        figures["submit.one_key.processes"] = one_key
        figures["submit.one_key.jobs"] = len(runs)
        figures["submit.one_key.succeeded"] = statuses.count("succeeded")
        figures["submit.one_key.skipped"] = statuses.count("skipped")
        figures["submit.one_key.exit_0"] = sum(c.code == 0 for c in same)
        figures["submit.one_key.tracebacks"] = sum("Traceback" in c.stderr for c in same)
        figures["submit.one_key.errors"] = _errors(same)
        figures["submit.one_key.wall_s"] = round(time.monotonic() - t0, 1)

        # 2. Many videos against a global rate: exactly `rate` admitted. A ledger of their own:
        # phase 1's job is an admission of this hour, which the limiter (rebuilt from the ledger
        # for a fresh Redis prefix) rightly counts against the installation's rate.
        rate_schema = f"{schema}_rate"
        apply_migrations(dsn, rate_schema)
        rate_ledger = Ledger(PsycopgTransport(dsn, rate_schema, timeout_s=30))
        register(rate_ledger)
        stop_worker(state_dir)
        t0 = time.monotonic()
        many = _run_all(
            [
                ["submit", f"bench-v{i:03d}", "--frames-version", "f1", "--json"]
                for i in range(videos)
            ],
            # The queue-depth guard would refuse some of 50 claims at once: this figure is the
            # rate limiter's alone.
            env_for(
                db_schema=rate_schema,
                global_rate_limit_jobs=str(rate),
                queue_depth_block="1000",
                queue_depth_alert="1000",
            ),
            work,
        )
        kinds = [_rejection(c) for c in many]
        figures["submit.rate.processes"] = videos
        figures["submit.rate.limit_per_h"] = rate
        # Admitted = the ledger's runs of these videos that got past the guards (not rejected).
        rows = [
            r for r in rate_ledger.list_runs(limit=1000) if str(r["video_id"]).startswith("bench-v")
        ]
        figures["submit.rate.admitted"] = sum(
            r["status"] not in ("rejected", "queued") for r in rows
        )
        figures["submit.rate.rate_limited"] = kinds.count("rate_limited")
        figures["submit.rate.exit_0_or_3"] = sum(c.code in (0, 3) for c in many)
        figures["submit.rate.tracebacks"] = sum("Traceback" in c.stderr for c in many)
        figures["submit.rate.errors"] = _errors(many)
        figures["submit.rate.statuses"] = {
            s: [_status(c) for c in many].count(s) for s in sorted({_status(c) for c in many})
        }
        figures["submit.rate.wall_s"] = round(time.monotonic() - t0, 1)

        # 3. One submission at a time against the warm servers and worker (one submission first
        # starts it), and a `runs --json` the same way.
        stop_worker(state_dir)
        _run_all(
            [["submit", "bench-serial-warm", "--frames-version", "f1", "--json"]], env_for(), work
        )
        submits = [
            _run_all(
                [["submit", f"bench-serial-{i}", "--frames-version", "f1", "--json"]],
                env_for(),
                work,
            )[0]
            for i in range(serial)
        ]
        reads = [
            _run_all([["runs", "--json", "--limit", "20"]], env_for(), work)[0]
            for _ in range(serial)
        ]
        figures.update(_per_process("submit.one", submits))
        figures["submit.one.statuses"] = [_status(c) for c in submits]
        figures["submit.one.errors"] = _errors(submits)
        figures["submit.one.failures"] = [_message(c) for c in submits if c.code not in (0, 3)]
        figures.update(_per_process("runs_json", reads))
        figures["submit.one.over_runs_json.wall"] = round(
            figures["submit.one.wall_s"] / figures["runs_json.wall_s"], 2
        )
        figures["submit.one.over_runs_json.cpu"] = round(
            figures["submit.one.cpu_s"] / figures["runs_json.cpu_s"], 2
        )
        figures.update(_import_costs())
        stop_worker(
            state_dir
        )  # it serves the bench's throw-away schema: the next submit starts one
    rate_ledger.close()
    ledger.close()
    for name in (schema, rate_schema):
        _drop_schema(dsn, name)
    return figures


def _errors(children: list[_Child]) -> dict[str, int]:
    """The last line of each child's traceback or one-line error, counted."""
    found: dict[str, int] = {}
    for child in children:
        lines = [x for x in child.stderr.splitlines() if x.strip()]
        if "Traceback" in child.stderr or child.code not in (0, 3):
            key = (lines[-1] if lines else f"exit {child.code}")[:200]
            found[key] = found.get(key, 0) + 1
    return found


def _per_process(name: str, children: list[_Child]) -> dict[str, Any]:
    return {
        f"{name}.wall_s": round(statistics.median(c.wall_s for c in children), 2),
        f"{name}.cpu_s": round(statistics.median(c.cpu_s for c in children), 2),
        f"{name}.peak_rss_mib": round(max(c.max_rss_mib for c in children), 1),
        f"{name}.exit_codes": sorted({c.code for c in children}),
    }


def _import_costs() -> dict[str, Any]:
    """Where a submission's time goes before its flow starts: CPU seconds of the imports."""
    figures = {}
    for name, module in (
        ("python", "sys"),
        ("cli", "boundary_inference.cli.app"),
        ("prefect", "prefect.flows"),
        ("flow_module", "flows.boundary_inference"),
        ("modal", "modal"),
    ):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        figures[f"submit.import_cpu_s.{name}"] = round(cpu, 2)
    return figures


def _drop_schema(dsn: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
