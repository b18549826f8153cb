"""The `boundary-inference` CLI on the real servers: the command names, exit codes and JSON fields
that other tools script against (README, "CLI")."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from boundary_inference.cli.app import SUBMIT_FIELDS, app
from modal_app.synthetic import make_video
from tests.flow_support import FlowEnv, MakeEnv
from tests.support import run_python

FRAMES = 60
DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    path = tmp_path_factory.mktemp("cli") / "clip.mp4"
    return path, make_video(path, seed=3, frame_count=FRAMES)


@pytest.fixture
def env(make_env: MakeEnv) -> FlowEnv:
    return make_env()


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout


def as_json(*args: str) -> tuple[int, Any]:
    code, out = cli(*args, "--json")
    return code, json.loads(out)


def test_videos_add_submit_skip_reject_and_read_back(env: FlowEnv, clip: Any) -> None:
    path, truth = clip
    box = truth.crop_box
    crop = f"{box.x},{box.y},{box.width},{box.height}"
    code, video = as_json("videos", "add", "v1", "--source", str(path), "--crop", crop)
    assert code == 0 and video["frame_count"] == FRAMES

    code, first = as_json("submit", "v1", "--in-process", "--frames-version", "f1")
    assert code == 0, first
    assert set(SUBMIT_FIELDS) <= set(first)
    assert first["status"] == "succeeded" and first["rejection_type"] is None
    assert first["actual_cost_usd"] > 0 and first["estimated_cost_usd"] > 0

    code, again = as_json("submit", "v1", "--in-process", "--frames-version", "f1")
    assert (code, again["status"], again["run_id"]) == (0, "skipped", first["run_id"])

    code, bad = as_json(
        "submit", "v1", "--in-process", "--frames-version", "f2", "--pairs", "[[5, 5]]"
    )
    assert (code, bad["status"], bad["rejection_type"]) == (3, "rejected", "validation_failed")
    assert bad["run_id"] is None

    code, runs = as_json("runs", "--video", "v1")
    assert code == 0 and [r["id"] for r in runs] == [first["run_id"]]
    code, open_rejections = as_json("rejections")
    assert code == 0
    (rejection,) = open_rejections
    assert rejection["rejection_type"] == "validation_failed"

    code, out = cli("ack", str(rejection["id"]), "--by", "tester")
    assert code == 0 and "acknowledged" in out
    assert as_json("rejections")[1] == []
    code, out = cli("ack", str(rejection["id"]))
    assert code == 1  # already acknowledged: said, and a non-zero exit for scripts

    code, spend = as_json("spend")
    assert code == 0
    assert json.dumps(spend)  # a document, whatever its shape
    code, breaker = as_json("breaker", "status")
    assert code == 0 and breaker["state"] == "closed"


def test_bad_usage_exits_2(env: FlowEnv) -> None:
    code, _ = cli("submit", "v1", "--pairs", "not json")
    assert code == 2
    code, _ = cli("reconcile", "--since", "yesterday", "--report", str(DATA / "x.json"))
    assert code == 2


def test_estimate_matches_the_settings_formula(env: FlowEnv) -> None:
    code, est = as_json("estimate", "10000")
    assert code == 0
    assert est["worst_case_cost_usd"] == pytest.approx(
        env.settings.cost_model.worst_case_cost_usd(
            10_000, env.settings.default_throughput_pairs_per_s
        )
    )
    assert est["admissible"] is True
    code, big = as_json("estimate", str(env.settings.max_admissible_pairs + 1))
    assert big["admissible"] is False


def test_config_masks_secrets(env: FlowEnv) -> None:
    code, out = cli("config", "--json")
    assert code == 0
    dsn = env.settings.database_url.get_secret_value()  # type: ignore[union-attr]
    assert dsn not in out
    assert json.loads(out)


def test_reconcile_with_a_recorded_report(env: FlowEnv, tmp_path: Path) -> None:
    report = tmp_path / "bill.json"
    shutil.copy(DATA / "modal_billing_report.json", report)
    code, result = as_json("reconcile", "--since", "2026-11-01", "--report", str(report))
    assert code == 0
    assert result["tag_name"] == "project"
    billed = sum(r["billed_usd"] for r in result["rows"])
    assert result["totals"]["billed_usd"] == pytest.approx(billed)
    assert billed > 0
    assert {r["tag"] for r in result["rows"]} >= {"boundary-inference", "(untagged)"}
    # The ledger's side split as Modal splits its bill, at the configured per-second rates.
    assert set(result["totals"]["ledger_by_resource_usd"]) == {"A10G", "CPU", "Memory"}
    assert sum(result["totals"]["ledger_by_resource_usd"].values()) == pytest.approx(
        result["totals"]["ledger_actual_usd"]
    )
    code, text = cli("reconcile", "--since", "2026-11-01", "--report", str(report))
    assert code == 0 and "totals by resource" in text and "Memory" in text


def test_ack_takes_the_short_id_shown_and_refuses_ambiguous_or_malformed_ones(
    env: FlowEnv,
) -> None:
    ids = [
        str(
            env.ledger.log_rejection(
                rejection_type="cost_exceeded", message=f"r{i}", video_id=f"v{i}"
            )["id"]
        )
        for i in range(17)  # more rejections than hex digits: two share a first character
    ]
    code, out = cli("rejections")
    assert code == 0 and ids[0][:8] in out and ids[0] not in out  # the table shows 8 characters

    code, out = cli("ack", ids[0][:8])
    assert code == 0 and f"{ids[0]}: acknowledged" in out
    code, out = cli("ack", ids[0][:8])
    assert code == 1 and "already acknowledged" in out

    shared = next(c for c in "0123456789abcdef" if sum(i.startswith(c) for i in ids) > 1)
    code, out = cli("ack", shared)
    assert code == 2 and "ambiguous" in out
    code, out = cli("ack", "not-an-id!")
    assert code == 2 and "not a rejection id" in out
    code, out = cli("ack", "ffffffff-ffff")
    assert code in (1, 2) and ("no rejection" in out or "ambiguous" in out)
    acknowledged = {r["id"] for r in env.ledger.list_rejections(limit=50) if r["acknowledged"]}
    assert acknowledged == {ids[0]}


def test_money_is_formatted_in_tables(env: FlowEnv) -> None:
    env.ledger.log_rejection(
        rejection_type="cost_exceeded",
        message="big",
        video_id="v-money",
        estimated_cost_usd=0.40367228957763895,
    )
    code, out = cli("rejections")
    assert code == 0 and "$0.4037" in out and "0.40367" not in out


def test_migrate_says_what_the_database_holds(env: FlowEnv) -> None:
    from migrations import migration_files

    code, out = cli("migrate")
    names = [p.name for p in migration_files()]
    assert code == 0
    assert f"{len(names)} migrations applied (latest {names[-1]})" in " ".join(out.split())
    assert "this run applied none (already up to date)" in " ".join(out.split())


def test_an_unreachable_database_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """The real entry point in its own process: no traceback, one line on stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNDARY_INFERENCE_")}
    env["BOUNDARY_INFERENCE_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/none"
    env["BOUNDARY_INFERENCE_GUARD_TIMEOUT_S"] = "2"
    try:
        for args in (["runs", "--json"], ["rejections"], ["migrate"]):
            done = run_python(
                ["-m", "boundary_inference.cli.app", *args], env=env, cwd=tmp_path, timeout_s=120
            )
            assert done.returncode == 2, (args, done.stdout, done.stderr)
            assert "Traceback" not in done.stderr + done.stdout, done.stderr
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    finally:
        # The embedded Redis these commands started (no Redis URL is set) outlives them, as a
        # daemon should: stopped here the way an operator stops it, so the run leaves nothing.
        run_python(
            ["-m", "boundary_inference.cli.app", "services", "stop"],
            env=env,
            cwd=tmp_path,
            timeout_s=60,
        )


def test_a_failing_prefect_api_is_one_line_and_exit_2(tmp_path: Path) -> None:
    """A Prefect server that answers 503 to everything (a SQLite server that stays locked past the
    client's retries): ``submit`` ends with one line and exit 2, no traceback."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from prefect import __version__ as prefect_version

    class Busy(BaseHTTPRequestHandler):
        def _busy(self) -> None:
            # Healthy, as a locked SQLite server is: only what touches the database fails.
            path = self.path.rstrip("/")
            if path.endswith("/health"):
                status, body = 200, b"true"
            elif path.endswith("/version"):
                status, body = 200, json.dumps(prefect_version).encode()
            else:
                status, body = 503, b'{"exception_message": "database is locked"}'
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _busy

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOUNDARY_INFERENCE_")}
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{server.server_address[1]}/api"
        env["PREFECT_CLIENT_MAX_RETRIES"] = "0"
        env["BOUNDARY_INFERENCE_HOME"] = str(tmp_path / "home")
        submit = ["-m", "boundary_inference.cli.app", "submit", "v1", "--json"]
        done = run_python(submit, env=env, cwd=tmp_path, timeout_s=120)
    finally:
        server.shutdown()
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: the Prefect API failed"), done.stderr
