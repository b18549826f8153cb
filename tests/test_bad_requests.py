"""A corpus of bad requests and bad configurations, end to end on the real servers.

Each is refused before any quota is taken: the flow ends ``Completed`` tagged
``rejected:validation_failed``, or ``Failed`` for a configuration that cannot work
(``guard_unavailable``), with a rejection row, or the CLI exits 2
with one line for what it could not even read. Nothing is spawned, nothing is charged, no cooldown
or rate slot is taken in Redis.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from boundary_inference.cli.app import app
from flows.boundary_inference import boundary_inference_flow
from tests.flow_support import MODEL, FlowEnv, MakeEnv, clip_fixture, job, run_flow
from tests.support import nested

FRAMES = 40


clip = clip_fixture("clip", seed=9, frames=FRAMES)


@pytest.fixture
def env(make_env: MakeEnv, clip: Any) -> FlowEnv:
    return make_env(clip=clip)


def run(**params: Any) -> tuple[Any, dict[str, Any]]:
    """The flow on v1 with ``params`` over the defaults."""
    return run_flow(**job(**params))


def quota_taken(env: FlowEnv, redis_url: str) -> list[str]:
    """Redis keys the limiter wrote under this test's prefix (cooldowns, the rate window)."""
    client = redis.Redis.from_url(redis_url)
    try:
        return [k.decode() for k in client.scan_iter(match=f"{{{env.redis_prefix}}}:*")]
    finally:
        client.close()


def assert_refused_for_nothing(env: FlowEnv, redis_url: str, rejection_type: str) -> dict:
    (row,) = env.ledger.list_rejections(limit=10)
    assert row["rejection_type"] == rejection_type
    assert env.executor_calls() == 0
    assert float(env.ledger.spend_summary()["monthly_committed_usd"]) == 0.0
    assert quota_taken(env, redis_url) == []
    assert all(r["status"] == "rejected" for r in env.ledger.list_runs(limit=10))
    return row


BAD_FLOW_REQUESTS: list[tuple[str, dict[str, Any], str]] = [
    # Identifiers: one grammar, checked before any store is read with them.
    ("frames version with a newline", {"frames_version": "f1\n"}, "U+000A (LINE FEED)"),
    ("model version with a newline", {"model_version": MODEL + "\n"}, "model_version"),
    ("video id with a zero-width space", {"video_id": "v\u200b1"}, "ZERO WIDTH SPACE"),
    ("tenant with a newline", {"tenant_id": "demo\n"}, "tenant_id 'demo\\n' has U+000A"),
    ("empty tenant", {"tenant_id": ""}, "tenant_id must not be empty"),
    ("video id too long", {"video_id": "v" * 10_000}, "the limit is 128"),
    ("video id a list", {"video_id": ["v1"]}, "video_id must be a string; got list"),
    ("frames version a float", {"frames_version": 1.5}, "got float"),
    # Flags are what they say: bool("false") is True.
    (
        "skip_if_exists a string",
        {"skip_if_exists": "false"},
        "skip_if_exists='false': Input should be a valid boolean",
    ),
    ("skip_if_exists an int", {"skip_if_exists": 0}, "skip_if_exists=0: Input should be a valid"),
    ("priority a list", {"priority": ["high"]}, "priority=['high']: Input should be 'high'"),
    # Pairs: bounded, non-recursive, integers only.
    ("pairs nested 64 deep", {"frame_pairs": nested(64)}, "frame_pairs[0] must be a [f1, f2]"),
    ("pairs as booleans", {"frame_pairs": [[False, True]]}, "is bool False"),
    ("pairs with NaN", {"frame_pairs": [[0, float("nan")]]}, "is float nan"),
    ("pairs as floats", {"frame_pairs": [[0.0, 1.0]]}, "is float 0.0"),
    ("pairs as strings", {"frame_pairs": [["0", "1"]]}, "is str"),
    ("pairs with a dict", {"frame_pairs": [[{"a": [1]}, 1]]}, "is dict"),
    ("pair past int64", {"frame_pairs": [[0, 10**30]]}, "a 100-bit integer"),
    ("pair reversed", {"frame_pairs": [[5, 2]]}, "0 <= f1 < f2"),
    ("pairs not a list", {"frame_pairs": 17}, "got int"),
    # A range spec with absurd values: OverflowError and TypeError crashes before.
    ("spec stop 1e30", {"frame_pairs": {"start": 0, "stop": 10**30}}, "violates 0 <= f1"),
    ("spec mixed key types", {"frame_pairs": {1: 2, "a": 3}}, "unknown keys [1, 'a']"),
    ("spec negative start", {"frame_pairs": {"start": -(10**30), "stop": 5}}, "first pair"),
    ("spec float step", {"frame_pairs": {"step": 1.5}}, "step is float 1.5"),
    ("spec zero gap", {"frame_pairs": {"gap": 0}}, "gap >= 1"),
]


@pytest.mark.parametrize(
    ("params", "fragment"),
    [c[1:] for c in BAD_FLOW_REQUESTS],
    ids=[c[0] for c in BAD_FLOW_REQUESTS],
)
def test_a_bad_request_is_refused_recorded_and_costs_nothing(
    env: FlowEnv, redis_url: str, params: dict[str, Any], fragment: str
) -> None:
    state, outcome = run(**params)
    assert (state.type.value, state.name) == ("COMPLETED", "Completed"), outcome
    assert outcome["rejection_type"] == "validation_failed"
    assert fragment in outcome["message"]
    assert "\n" not in outcome["message"]
    row = assert_refused_for_nothing(env, redis_url, "validation_failed")
    # What is recorded for a bad id is a short, printable stand-in, never the id itself.
    assert str(row["video_id"]).isprintable() and len(str(row["video_id"])) <= 80


def test_a_trailing_newline_is_not_a_second_dedup_key(env: FlowEnv, redis_url: str) -> None:
    """The issue's case: `$'f1\\n'` became a second dedup key, and the same job ran and was
    charged again."""
    _, first = run(frame_pairs=[[0, 1], [1, 2]])
    assert first["status"] == "succeeded"
    charged = float(env.ledger.spend_summary()["monthly_committed_usd"])
    _, again = run(frames_version="f1\n", frame_pairs=[[0, 1], [1, 2]])
    assert again["rejection_type"] == "validation_failed"
    assert env.executor_calls() == 1
    assert float(env.ledger.spend_summary()["monthly_committed_usd"]) == pytest.approx(charged)
    assert len(env.ledger.list_runs(limit=10)) == 1


def test_too_many_pairs_are_refused_before_they_are_read(
    make_env: MakeEnv, redis_url: str, clip: Any
) -> None:
    # A small limit: Prefect itself refuses flow parameters over 512 KB (about 30,000 pairs).
    env = make_env(max_frame_pairs="50", allow_unreachable_cost_cap="true")
    env.register("v1", clip[0], FRAMES, None)
    _, outcome = run(frame_pairs=[["never", "read"]] * 51)
    assert outcome["rejection_type"] == "frame_count_exceeded"
    assert "51 frame pairs requested; the limit is 50" in outcome["message"]
    assert_refused_for_nothing(env, redis_url, "frame_count_exceeded")


def test_a_parameter_prefect_cannot_carry_never_reaches_a_store(env: FlowEnv) -> None:
    """5,000 levels deep, Prefect's own parameter resolution (about 300 levels) fails before the
    flow body runs: nothing is claimed, spawned or charged. (The CLI refuses such JSON with exit
    2; a deployment's parameters come as JSON through the same limits.)"""
    with pytest.raises(Exception, match="frame_pairs"):
        boundary_inference_flow(
            video_id="v1", frames_version="f1", model_version=MODEL, frame_pairs=nested(5000)
        )
    assert env.ledger.list_runs(limit=10) == [] and env.executor_calls() == 0


def test_a_configuration_that_cannot_work_refuses_the_flow(
    env: FlowEnv, monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_DAILY_BUDGET_USD", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_MONTHLY_BUDGET_USD", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_VIDEO_COOLDOWN_S", "100000000000000")
    state, outcome = run()
    assert (state.type.value, state.name) == ("FAILED", "Failed")
    assert outcome["rejection_type"] == "guard_unavailable"
    assert outcome["message"].startswith("configuration refused at start")
    row = assert_refused_for_nothing(env, redis_url, "guard_unavailable")
    problems = row["details"]["configuration_problems"]
    assert len(problems) == 3 and any("VIDEO_COOLDOWN_S" in p for p in problems)


# --- the CLI ------------------------------------------------------------------------------------


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("v1\x00",),
        ("v1", "--frames-version", "f\x001"),
        ("v1", "--tenant", "t\x00"),
    ],
    ids=["video id", "frames version", "tenant"],
)
def test_a_nul_is_refused_and_recorded_before_prefect(
    env: FlowEnv, redis_url: str, args: tuple[str, ...]
) -> None:
    """U+0000 cannot travel to a flow on a PostgreSQL-backed Prefect server (503 at flow-run
    creation, before any flow code): submit refuses it first, recorded like the flow would."""
    code, out, _ = cli("submit", *args, "--in-process", "--json")
    assert code == 3, out
    outcome = json.loads(out)
    assert (outcome["status"], outcome["rejection_type"]) == ("rejected", "validation_failed")
    assert "U+0000" in outcome["message"] and "\n" not in outcome["message"]
    row = assert_refused_for_nothing(env, redis_url, "validation_failed")
    assert str(row["video_id"]).isprintable() and len(str(row["video_id"])) <= 80


@pytest.mark.parametrize(
    ("pairs", "fragment"),
    [
        ("[" * 5000 + "]" * 5000, "--pairs is nested more than 32 levels deep"),
        ("[[0, NaN]]", "--pairs: NaN is not a JSON number"),
        ("[[0, 1]]" + " " * 7_000_000, "characters long; the limit is"),
        ("9" * 5000, "--pairs is not valid JSON"),
        ("[[0, 1]", "--pairs is not valid JSON"),
    ],
    ids=["nested-5000", "nan", "too-large", "int-past-digit-limit", "truncated"],
)
def test_cli_pairs_it_cannot_read_exit_2_with_one_line(
    env: FlowEnv, redis_url: str, pairs: str, fragment: str
) -> None:
    code, out, err = cli("submit", "v1", "--in-process", "--pairs", pairs)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert fragment in line and "Traceback" not in out + err
    assert env.ledger.list_rejections(limit=10) == [] and env.executor_calls() == 0
    assert quota_taken(env, redis_url) == []


def test_cli_submit_with_a_bad_identifier_is_a_recorded_rejection(
    env: FlowEnv, redis_url: str
) -> None:
    code, out, _ = cli("submit", "v1", "--in-process", "--frames-version", "f1\n", "--json")
    assert code == 3
    outcome = json.loads(out)
    assert outcome["rejection_type"] == "validation_failed" and "U+000A" in outcome["message"]
    assert_refused_for_nothing(env, redis_url, "validation_failed")
    # A readable but wrong shape is the flow's to refuse, and to record.
    code, out, _ = cli(
        "submit", "v1", "--in-process", "--frames-version", "f2", "--pairs", "[[true, 1]]", "--json"
    )
    assert code == 3 and json.loads(out)["rejection_type"] == "validation_failed"


@pytest.mark.parametrize("command", [["config"], ["submit", "v1"], ["runs"], ["spend"]])
def test_cli_refuses_a_bad_configuration_at_start_one_line_each(
    env: FlowEnv, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_DAILY_BUDGET_USD", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_MONTHLY_BUDGET_USD", "inf")
    monkeypatch.setenv("BOUNDARY_INFERENCE_DAILY_SPEND_ALERT_USD", "15")
    code, out, err = cli(*command)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("configuration error: ") for line in lines)
    assert "DAILY_BUDGET_USD" in lines[0] and "MONTHLY_BUDGET_USD" in lines[1]
    assert "None" not in out and env.executor_calls() == 0


def test_the_installed_cli_refuses_a_bad_configuration_but_still_helps(
    env: FlowEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real entry point, as an operator runs it: exit 2, one line per problem, no traceback;
    and `--help` still answers (it runs nothing)."""
    import os
    import subprocess
    import sys

    bad = {
        **os.environ,
        "BOUNDARY_INFERENCE_DEADLINE_FACTOR": "inf",
        "BOUNDARY_INFERENCE_VIDEO_COOLDOWN_S": "100000000000000",
    }
    exe = [sys.executable, "-m", "boundary_inference.cli.app"]
    done = subprocess.run([*exe, "config"], env=bad, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in done.stderr
    assert any("DEADLINE_FACTOR" in x for x in lines) and any("COOLDOWN_S" in x for x in lines)
    helped = subprocess.run(
        [*exe, "config", "--help"], env=bad, capture_output=True, text=True, timeout=300
    )
    assert helped.returncode == 0 and "Show the effective limits" in helped.stdout


def test_the_longest_durations_the_settings_accept_are_ones_redis_takes(redis_url: str) -> None:
    """VIDEO_COOLDOWN_S beyond what Redis accepts made every admission fail in the Lua script.
    The settings stop at MAX_DURATION_S; the real limiter on the real Redis takes that much."""
    import uuid

    from boundary_inference.limiter import Limiter, LimiterUnavailable, open_redis_client
    from config.settings import MAX_DURATION_S

    client = open_redis_client(redis_url, timeout_s=5)
    prefix = f"exp{uuid.uuid4().hex[:8]}"
    limiter = Limiter(client, prefix=prefix)
    try:
        # A fresh prefix holds no state: restore it (empty) as the flow does from the ledger.
        limiter.rebuild(lambda: [], cooldown_s=MAX_DURATION_S, window_s=MAX_DURATION_S, wait_s=5)
        admission = limiter.admit(
            video_id="v",
            token="t1",
            cooldown_s=MAX_DURATION_S,
            rate_limit=1,
            window_s=MAX_DURATION_S,
        )
        assert admission.allowed
        assert client.pttl(f"{{{prefix}}}:cooldown:v") > (MAX_DURATION_S - 60) * 1000
        assert client.pttl(f"{{{prefix}}}:window") > (MAX_DURATION_S - 60) * 1000
        # Why there is a bound: far enough past it, the script fails every admission.
        with pytest.raises(LimiterUnavailable, match="not an integer or out of range"):
            limiter.admit(video_id="w", token="t2", cooldown_s=10**14, rate_limit=9, window_s=1)
    finally:
        for key in client.scan_iter(match=f"{{{prefix}}}:*"):
            client.delete(key)
        client.close()
