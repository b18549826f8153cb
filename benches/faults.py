"""``bench`` figures for faults (issue 11), measured by causing them on real, private servers.

Every scenario runs on servers of its own under a temporary directory (a Redis daemon, a
PostgreSQL) or in a throw-away schema, so it never touches live state:

* ``redis_kill9``: cooldowns and window entries written, the daemon killed with SIGKILL and
  started again: how many survived, and how long the restart took;
* ``redis_restarted_empty``: 20 admissions recorded in the ledger, the daemon killed and its files
  deleted: how long the rebuild from the ledger took, and how many of 20 further admissions (and a
  re-submission inside its cooldown) got through (0 is right);
* ``redis_frozen``: the daemon stopped with SIGSTOP: seconds until the limiter gave up (against
  ``guard_timeout_s``), and how many redis-server processes serve the socket after three more
  start attempts (1 is right);
* ``postgres_killed``: a run claimed with a lease, PostgreSQL killed and restarted: seconds from the
  kill until the same video could be claimed again (at most the lease);
* ``watcher_killed``: a watcher process (claim, reserve, spawn a real local job, renew its lease)
  killed with SIGKILL after the spawn: seconds until its lease ran out, the reaper pass that
  settled it, and what was charged against its worst case.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

_LEASE_S = 2.0


def fault_figures(dsn: str) -> dict[str, Any]:
    """All scenarios; ``dsn`` is a PostgreSQL for throw-away schemas (the ledger-side figures)."""
    root = Path(tempfile.mkdtemp(prefix="bi-fb-"))
    started = time.monotonic()
    try:
        figures: dict[str, Any] = {
            "redis_kill9": _redis_kill9(root / "k"),
            "redis_restarted_empty": _redis_restarted_empty(root / "e", dsn),
            "redis_frozen": _redis_frozen(root / "f"),
            "postgres_killed": _postgres_killed(root / "p"),
            "watcher_killed": _watcher_killed(root / "w", dsn),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    figures["seconds"] = round(time.monotonic() - started, 2)
    return figures


def _limiter(url: str, prefix: str, *, timeout_s: float = 5.0) -> Any:
    from boundary_inference.limiter import Limiter, open_redis_client

    return Limiter(open_redis_client(url, timeout_s=timeout_s), prefix=prefix)


def _admit(limiter: Any, video: str, token: str, *, limit: int = 1000) -> Any:
    return limiter.admit(
        video_id=video, token=token, cooldown_s=600, rate_limit=limit, window_s=3600
    )


def _redis_kill9(directory: Path) -> dict[str, Any]:
    from boundary_inference.local.embedded import start_redis

    server = start_redis(directory)
    limiter = _limiter(server.url, "fb")
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=3600, wait_s=10)
    n = 50
    for i in range(n):
        _admit(limiter, f"v{i}", f"run-{i}")
    aof = server.directory / "appendonly.aof"
    while f"run-{n - 1}".encode() not in aof.read_bytes():  # see tests: the fsync window
        time.sleep(0.01)
    server.stop()
    t0 = time.perf_counter()
    start_redis(directory)
    restart_ms = (time.perf_counter() - t0) * 1000
    kept = sum(limiter.cooldown_remaining_s(f"v{i}") > 0 for i in range(n))
    window = limiter.window_count(window_s=3600)
    limiter.client.close()
    server.stop()
    return {
        "cooldowns_written": n,
        "cooldowns_kept": kept,
        "window_kept": window,
        "restart_ms": round(restart_ms, 1),
    }


def _redis_restarted_empty(directory: Path, dsn: str) -> dict[str, Any]:
    from boundary_inference.limiter import LimiterUnsynced, PastAdmission
    from boundary_inference.local.embedded import start_redis

    server = start_redis(directory)
    limiter = _limiter(server.url, "fb")
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=3600, wait_s=10)
    with _schema(dsn) as ledger:
        for i in range(20):
            ledger.upsert_video(id=f"v{i}", tenant_id="t", frame_count=10, fps=25.0)
            claim = ledger.claim_run(
                video_id=f"v{i}", tenant_id="t", frames_version="f", model_version="m"
            )
            _admit(limiter, f"v{i}", str(claim["run_id"]), limit=20)
            ledger.record_admission(run_id=claim["run_id"])
        server.stop()
        for name in ("appendonly.aof", "dump.rdb"):
            (server.directory / name).unlink(missing_ok=True)
        start_redis(directory)
        try:
            _admit(limiter, "new-0", "probe", limit=20)
            refused_unsynced = False
        except LimiterUnsynced:
            refused_unsynced = True
        recorded = ledger.recent_admissions(window_s=3600)
        loaded = [
            PastAdmission(str(a["run_id"]), str(a["video_id"]), float(a["age_s"])) for a in recorded
        ]
        done = limiter.rebuild(lambda: loaded, cooldown_s=600, window_s=3600, wait_s=10)
        allowed = sum(
            bool(_admit(limiter, f"new-{i}", f"new-run-{i}", limit=20).allowed) for i in range(20)
        )
        cooldown = _admit(limiter, "v3", "again", limit=10_000).reason
    limiter.client.close()
    server.stop()
    return {
        "admissions_recorded": len(recorded),
        "refused_until_rebuilt": refused_unsynced,
        "rebuild_ms": round(done.seconds * 1000, 1),
        "allowed_past_limit_after_restart": allowed,
        "resubmission_in_cooldown": cooldown,
    }


def _redis_frozen(directory: Path) -> dict[str, Any]:
    from boundary_inference.limiter import LimiterUnavailable
    from boundary_inference.local.embedded import redis_status, start_redis
    from boundary_inference.local.processes import process_state

    guard_timeout_s = 1.0
    server = start_redis(directory)
    pid = server.pid()
    assert pid is not None
    limiter = _limiter(server.url, "fb", timeout_s=guard_timeout_s)
    limiter.rebuild(lambda: [], cooldown_s=600, window_s=3600, wait_s=10)
    os.kill(pid, signal.SIGSTOP)
    while process_state(pid) != "T":  # delivery is asynchronous
        time.sleep(0.01)
    try:
        t0 = time.perf_counter()
        try:
            _admit(limiter, "a", "run-a")
            unavailable = False
        except LimiterUnavailable:
            unavailable = True
        gave_up_s = time.perf_counter() - t0
        for _ in range(3):
            start_redis(directory)
        servers = _servers(server.socket_path)
        state = redis_status(directory).state
    finally:
        os.kill(pid, signal.SIGCONT)
    limiter.client.close()
    server.stop()
    return {
        "guard_timeout_s": guard_timeout_s,
        "unavailable": unavailable,
        "gave_up_after_s": round(gave_up_s, 3),
        "servers_after_3_starts": servers,
        "status": state,
    }


def _servers(socket_path: Path) -> int:
    from boundary_inference.local.processes import pid_alive

    count = 0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            alive = pid_alive(int(entry.name))
            count += int("redis-server" in cmdline and str(socket_path) in cmdline and alive)
    return count


def _postgres_killed(directory: Path) -> dict[str, Any]:
    from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
    from boundary_inference.local.embedded import start_postgres

    server = start_postgres(directory)
    apply_migrations(server.dsn, "fb")
    ledger = Ledger(PsycopgTransport(server.dsn, "fb", timeout_s=5))
    ledger.upsert_video(id="v", tenant_id="t", frame_count=10, fps=25.0)
    key: dict[str, Any] = {
        "video_id": "v",
        "tenant_id": "t",
        "frames_version": "f",
        "model_version": "m",
    }
    first = ledger.claim_run(**key, lease_s=_LEASE_S, lease_owner="dead-flow")
    ledger.reserve_budget(
        run_id=first["run_id"],
        tenant_id="t",
        amount_usd=0.34,
        daily_cap_usd=20,
        monthly_cap_usd=100,
    )
    ledger.close()
    server.stop()  # mid-admission: the flow's next call would fail
    killed_at = time.monotonic()
    start_postgres(directory)
    ledger = Ledger(PsycopgTransport(server.dsn, "fb", timeout_s=5))
    skipped = 0
    while True:
        claim = ledger.claim_run(**key, lease_s=_LEASE_S, lease_owner="next-flow")
        if claim["created"]:
            break
        skipped += 1
        time.sleep(0.05)
    blocked_s = time.monotonic() - killed_at
    reserved = float(ledger.spend_summary()["daily_committed_usd"])
    ledger.close()
    server.stop()
    return {
        "lease_s": _LEASE_S,
        "video_blocked_after_kill_s": round(blocked_s, 2),
        "dead_run_reservation_left_usd": reserved,
        "ended_run": ended["action"] if (ended := claim["ended_run"]) else None,
    }


def _watcher_killed(directory: Path, dsn: str) -> dict[str, Any]:
    from prefect import flow

    from boundary_inference.executor import LocalExecutor
    from config import get_settings
    from flows.run.reaper import reap_stale_runs
    from modal_app.synthetic import make_video

    directory.mkdir(parents=True)
    clip = directory / "clip.mp4"
    make_video(clip, seed=11, frame_count=60)
    settings = get_settings(run_lease_s=_LEASE_S)
    with _schema(dsn) as ledger:
        ledger.upsert_video(id="v", tenant_id="t", frame_count=60, fps=25.0, source_uri=str(clip))
        watcher = subprocess.Popen(
            [sys.executable, "-m", __name__, dsn, ledger.schema, str(directory), str(clip)],
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert watcher.stdout is not None
        run_id, call_id, worst = watcher.stdout.readline().decode().split()
        os.killpg(watcher.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        watcher.wait()
        while not ledger.expired_leases():
            time.sleep(0.05)
        expired_after_s = time.monotonic() - killed_at
        executor = LocalExecutor(directory / "jobs")
        while (job := executor.poll(call_id, timeout_s=1.0)).state.value == "pending":
            pass

        @flow(name="bench-lease-reaper")
        def reap_once() -> list[dict[str, Any]]:
            return reap_stale_runs(ledger, executor, settings)

        t0 = time.monotonic()
        reaped = reap_once()
        reap_s = time.monotonic() - t0
        row = ledger.get_run(run_id=run_id) or {}
        predictions = len(ledger.get_predictions(run_id=run_id))
    return {
        "lease_s": _LEASE_S,
        "lease_expired_after_kill_s": round(expired_after_s, 2),
        "job_state": str(job.state),
        "reaper_pass_incl_prefect_start_s": round(reap_s, 2),
        "reaped": len(reaped),
        "settled_status": row.get("status"),
        "predictions_saved": predictions,
        "charged_usd": float(row.get("actual_cost_usd") or 0),
        "worst_case_usd": float(worst),
        "settled_within_s_with_2_min_reaper": round(_LEASE_S + 120, 1),
    }


class _schema:
    """A migrated throw-away schema, dropped afterwards; yields its :class:`Ledger`."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.name = f"bi_fb_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> Any:
        from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations

        apply_migrations(self.dsn, self.name)
        self.ledger = Ledger(PsycopgTransport(self.dsn, self.name, timeout_s=10))
        return self.ledger

    def __exit__(self, *exc: object) -> None:
        import psycopg

        self.ledger.close()
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')


def _watch_forever(dsn: str, schema: str, directory: Path, clip: Path) -> None:
    """The watcher process: what the flow does up to the spawn, then renew the lease forever."""
    from boundary_inference.executor import LocalExecutor
    from boundary_inference.lease import LeaseKeeper
    from boundary_inference.ledger import Ledger, PsycopgTransport
    from config import get_settings
    from modal_app.types import InferenceRequest

    settings = get_settings(run_lease_s=_LEASE_S)
    ledger = Ledger(PsycopgTransport(dsn, schema, timeout_s=10))
    owner = f"watcher-{os.getpid()}"
    claim = ledger.claim_run(
        video_id="v",
        tenant_id="t",
        frames_version="f",
        model_version="builtin-textdiff-v1",
        lease_s=_LEASE_S,
        lease_owner=owner,
    )
    run_id = str(claim["run_id"])
    worst = settings.cost_model.worst_case_cost_usd(59, settings.default_throughput_pairs_per_s)
    ledger.reserve_budget(
        run_id=run_id, tenant_id="t", amount_usd=worst, daily_cap_usd=20, monthly_cap_usd=100
    )
    ledger.transition_run(
        run_id=run_id,
        to_status="running",
        fields={"worst_case_cost_usd": worst, "reserved_cost_usd": worst},
    )
    keeper = LeaseKeeper(ledger, run_id, owner, lease_s=_LEASE_S, renew_every_s=_LEASE_S / 6)
    keeper.start()
    call_id = LocalExecutor(directory / "jobs").submit(
        InferenceRequest(
            run_id=run_id,
            video_uri=str(clip),
            frame_pairs=[(i, i + 1) for i in range(59)],
            model_version="builtin-textdiff-v1",
            deadline_s=600.0,
        )
    )
    ledger.set_call_id(run_id=run_id, call_id=call_id)
    sys.stdout.write(f"{run_id} {call_id} {worst}\n")
    sys.stdout.flush()
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _watch_forever(sys.argv[1], sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
