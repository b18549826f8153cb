"""Helpers for flow tests: configure the flow's environment onto the session's real servers, a
synthetic clip to register, a job's parameters, and one way to run the flow and read its outcome.

The fixture ``make_env`` (``tests/conftest.py``) is :func:`configure` bound to the test's
monkeypatch, directory and servers."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from boundary_inference.ledger import Ledger, PsycopgTransport, apply_migrations
from boundary_inference.outcome import outcome_of
from boundary_inference.services import reset_services
from config import Settings, get_settings
from modal_app.synthetic import make_video

MODEL = "builtin-textdiff-v1"  # the built-in model every flow test runs
SESSION_REDIS = "session"  # make_env's default: the session's Redis (a URL is never this)


@dataclass
class FlowEnv:
    settings: Settings
    ledger: Ledger
    state_dir: Path
    schema: str
    redis_prefix: str

    @property
    def jobs_dir(self) -> Path:
        return self.state_dir.resolve() / "jobs"

    def executor_calls(self) -> int:
        """How many executor calls were spawned: one job directory each."""
        return len(list(self.jobs_dir.glob("local-*"))) if self.jobs_dir.exists() else 0

    def register(
        self, video_id: str, path: Path, frame_count: int, crop: Any, tenant: str = "demo"
    ) -> None:
        self.ledger.upsert_video(
            id=video_id,
            tenant_id=tenant,
            frame_count=frame_count,
            fps=30.0,
            source_uri=str(path),
            crop_box=None
            if crop is None
            else {"x": crop.x, "y": crop.y, "width": crop.width, "height": crop.height},
        )

    def register_clip(self, clip: tuple[Path, Any], *video_ids: str) -> None:
        """Register a :func:`synthetic_clip` (its full length, its caption band) under each id."""
        path, truth = clip
        for video_id in video_ids or ("v1",):
            self.register(video_id, path, len(truth.captions), truth.crop_box)

    def breaker_trip(self) -> None:
        """Record as many infrastructure failures as open the GPU circuit."""
        for _ in range(self.settings.breaker_failure_threshold):
            self.ledger.breaker_record(
                name="gpu-inference",
                ok=False,
                kind="infrastructure",
                threshold=self.settings.breaker_failure_threshold,
                window_s=self.settings.breaker_window_s,
            )


MakeEnv = Callable[..., FlowEnv]  # the type of the ``make_env`` fixture


def synthetic_clip(
    factory: pytest.TempPathFactory, folder: str, *, seed: int, frames: int
) -> tuple[Path, Any]:
    """A synthetic captioned video of ``frames`` frames and its ground truth (``make_video``)."""
    path = factory.mktemp(folder) / "clip.mp4"
    return path, make_video(path, seed=seed, frame_count=frames)


def clip_fixture(name: str, *, seed: int, frames: int) -> Any:
    """A module-scoped fixture called ``name``: a :func:`synthetic_clip`, made once per module.
    Assign it to the same name in the test module (``video = clip_fixture("video", ...)``)."""

    @pytest.fixture(scope="module", name=name)
    def clip(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
        return synthetic_clip(tmp_path_factory, name, seed=seed, frames=frames)

    return clip


def job(video_id: str = "v1", **extra: Any) -> dict[str, Any]:
    """The flow's parameters for ``video_id`` with the built-in model; ``extra`` overrides."""
    return {"video_id": video_id, "frames_version": "f1", "model_version": MODEL, **extra}


def run_flow(**params: Any) -> tuple[Any, dict[str, Any]]:
    """Run the flow in this process: its final state and its JobOutcome (``outcome_of``)."""
    from flows.boundary_inference import boundary_inference_flow

    state = boundary_inference_flow(**params, return_state=True)
    return state, outcome_of(state)  # type: ignore[return-value]


def flow_outcome(**params: Any) -> dict[str, Any]:
    """:func:`run_flow`'s outcome, which must exist (a failed job's rides in its Failed state)."""
    state, outcome = run_flow(**params)
    assert isinstance(outcome, dict), state
    return outcome


def configure(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    *,
    dsn: str,
    redis_url: str | None,
    schema: str | None = None,
    **overrides: Any,
) -> FlowEnv:
    """Point the flow (which reads settings from the environment) at ``schema`` on ``dsn`` (a
    migrated ledger: a copy of the test template) and a fresh Redis prefix. ``schema=None``: a
    fresh schema, migrated here (a private server has no template). ``redis_url=None``: the
    embedded Redis under the test's state directory."""
    if schema is None:
        schema = f"bi_f_{uuid.uuid4().hex[:10]}"
        apply_migrations(dsn, schema)
    prefix = f"bif{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": dsn,
        **({"REDIS_URL": redis_url} if redis_url is not None else {}),
        "DB_SCHEMA": schema,
        "REDIS_KEY_PREFIX": prefix,
        "STATE_DIR": str(tmp_path / "state"),
        "POLL_INTERVAL_S": "0.2",
        # Guards must answer in these tests, however loaded the machine: the suite's one Prefect
        # test server serves every test's flows, and under load its backlog count once
        # took longer than the default 5 s (a correct fail-closed guard_unavailable, in a test
        # about something else). A test of a guard's timeout sets its own.
        "GUARD_TIMEOUT_S": "60",
        **{k.upper(): v for k, v in overrides.items()},
    }
    monkeypatch.delenv("BOUNDARY_INFERENCE_REDIS_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(
            f"BOUNDARY_INFERENCE_{key}", value if isinstance(value, str) else json.dumps(value)
        )
    reset_services()
    settings = get_settings()
    ledger = Ledger(PsycopgTransport(dsn, schema, timeout_s=5.0))
    return FlowEnv(settings, ledger, tmp_path / "state", schema, prefix)


def freeze(pid: int) -> None:
    """SIGSTOP ``pid`` and wait until the kernel has stopped it (delivery is asynchronous: a
    request sent right after the kill could otherwise still be answered)."""
    import os
    import signal
    import time

    from boundary_inference.local.processes import process_state

    os.kill(pid, signal.SIGSTOP)
    while process_state(pid) != "T":
        time.sleep(0.01)
