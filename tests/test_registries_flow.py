"""The registries inside boundary_inference_flow, on the real servers.

Refused before any quota: an unregistered checkpoint, a checkpoint file gone or changed, a video
source truncated, replaced by a directory, deleted, turned into a symlink loop or rewritten after
registration, a remote object replaced. "Nothing taken" is read off the real stores: no limiter
key in Redis, no budget reservation, no executor call, one rejection row.

Run end to end with the local executor: a registered checkpoint, a video in a local S3-compatible
server (moto) and one behind a presigned URL. And what the function does when a change slips in
after admission: a typed user failure after one attempt (Modal double: one invocation), charged
for the seconds it used, not counted by the circuit breaker.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

import boundary_inference.services as services_module
from boundary_inference.model_registry import register_model
from boundary_inference.videos import register_video
from modal_app.models import LogisticModel
from modal_app.sources import StorageConfig
from modal_app.synthetic import make_video
from tests.flow_support import FlowEnv, MakeEnv, job
from tests.flow_support import flow_outcome as run
from tests.modal_double import FakeCloud, executor_for
from tests.storage_support import BUCKET, S3, start_s3

FRAMES = 40


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("regflow") / "clip.mp4"
    make_video(path, seed=9, frame_count=FRAMES)
    return path


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with start_s3() as server:
        yield server


@pytest.fixture
def env(make_env: MakeEnv, tmp_path: Path, s3: S3) -> FlowEnv:
    return make_env(
        models_dir=str(tmp_path / "models"),
        source_timeout_s="120",  # a loaded machine answers late, never wrongly
        **s3.env(),
    )


def assert_nothing_taken(env: FlowEnv, redis_url: str, *, calls: int = 0) -> None:
    """No quota, no money, no call: read off the real Redis, ledger and job directories."""
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.keys(f"{{{env.redis_prefix}}}*") == []
    finally:
        client.close()
    spend = env.ledger.spend_summary()
    assert float(spend["daily_committed_usd"]) == 0.0
    assert env.executor_calls() == calls


def refused(env: FlowEnv, outcome: dict[str, Any], fragment: str) -> None:
    assert outcome["status"] == "rejected", outcome
    assert outcome["rejection_type"] == "validation_failed", outcome
    assert fragment in outcome["message"], outcome["message"]
    assert outcome["run_id"] is None  # refused before the dedup claim
    (row,) = env.ledger.list_rejections(limit=10)
    assert row["rejection_type"] == "validation_failed" and row["message"] == outcome["message"]


def checkpoint(path: Path, weights: tuple[float, float, float] = (20.0, 0.0, 0.0)) -> Path:
    LogisticModel(path.stem, np.array(weights, np.float32), -6.0).save(path)
    return path


# --- Models ---------------------------------------------------------------------------------------


def test_an_unregistered_checkpoint_is_refused_before_any_quota(
    env: FlowEnv, clip: Path, redis_url: str
) -> None:
    register_video(env.ledger, env.settings, video_id="v1", source=str(clip))
    # Even with a file in the models directory: only a registered checkpoint is known.
    models_dir = Path(env.settings.models_dir).resolve()
    models_dir.mkdir()
    checkpoint(models_dir / "nonexistent.npz")
    refused(env, run(**job(model_version="ckpt:nonexistent")), "is not registered")
    assert_nothing_taken(env, redis_url)


@pytest.mark.parametrize("change", ["deleted", "truncated"])
def test_a_checkpoint_file_gone_or_changed_is_refused_before_any_quota(
    env: FlowEnv, clip: Path, tmp_path: Path, redis_url: str, change: str
) -> None:
    register_video(env.ledger, env.settings, video_id="v1", source=str(clip))
    register_model(
        env.ledger, env.settings, model_version="ckpt:m1", file=checkpoint(tmp_path / "m1.npz")
    )
    placed = Path(env.settings.models_dir).resolve() / "m1.npz"
    if change == "deleted":
        placed.unlink()
    else:
        placed.write_bytes(placed.read_bytes()[:100])
    refused(env, run(**job(model_version="ckpt:m1")), "ckpt:m1")
    assert_nothing_taken(env, redis_url)


def test_a_registered_checkpoint_runs_and_a_swapped_one_is_a_typed_failure_billed_once(
    env: FlowEnv, clip: Path, tmp_path: Path
) -> None:
    register_video(env.ledger, env.settings, video_id="v1", source=str(clip))
    register_model(
        env.ledger, env.settings, model_version="ckpt:m1", file=checkpoint(tmp_path / "m1.npz")
    )
    ok = run(**job(model_version="ckpt:m1", frame_pairs=[[0, 1], [1, 2]]))
    assert ok["status"] == "succeeded", ok

    # Same size, other weights: admission's cheap check passes, the function's hash check does not.
    placed = Path(env.settings.models_dir).resolve() / "m1.npz"
    (tmp_path / "swap").mkdir()
    swapped = checkpoint(tmp_path / "swap" / "m1.npz", (1.0, 1.0, 1.0))
    assert swapped.stat().st_size == placed.stat().st_size
    shutil.copyfile(swapped, placed)
    register_video(env.ledger, env.settings, video_id="v2", source=str(clip))  # no cooldown
    bad = run(**job("v2", model_version="ckpt:m1", frame_pairs=[[0, 1]]))
    assert bad["status"] == "failed", bad
    assert "is not the registered ckpt:m1" in bad["message"], bad
    row = env.ledger.get_run(run_id=bad["run_id"])
    assert row["failure_kind"] == "user_code" and row["error"].startswith("ChecksumMismatch")
    # Charged for the seconds it used (plus the start-up and idle tail), not its worst case.
    assert float(row["actual_cost_usd"]) == pytest.approx(
        env.settings.cost_model.billed_cost_usd(float(row["gpu_seconds"]))
    )
    assert float(row["actual_cost_usd"]) < float(row["worst_case_cost_usd"])
    breaker = env.ledger.breaker_status(name="gpu-inference", window_s=3600)
    assert breaker["failures_in_window"] == 0
    assert env.executor_calls() == 2


# --- Local video sources changed after registration -----------------------------------------------


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()


def _loop(path: Path) -> None:
    path.unlink()
    path.symlink_to(path)


def _rewrite(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data)  # same bytes, a new file: its modification time says so
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))


CHANGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "truncated": (_truncate, "size"),
    "replaced-by-a-directory": (_directory, "not a regular file"),
    "deleted": (Path.unlink, "does not exist"),
    "symlink-loop": (_loop, "symlink loop"),
    "rewritten": (_rewrite, "modification time"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_video_changed_after_registration_is_refused_before_any_quota(
    env: FlowEnv, clip: Path, tmp_path: Path, redis_url: str, change: str
) -> None:
    video = tmp_path / "video.mp4"
    shutil.copyfile(clip, video)
    register_video(env.ledger, env.settings, video_id="v1", source=str(video))
    mutate, fragment = CHANGES[change]
    mutate(video)
    outcome = run(**job())
    refused(env, outcome, "source changed since registration")
    assert fragment in outcome["message"]
    assert_nothing_taken(env, redis_url)


# --- Remote sources, end to end with the local executor --------------------------------------------


def test_a_video_in_s3_runs_end_to_end_and_a_replaced_object_is_refused(
    env: FlowEnv, clip: Path, s3: S3, redis_url: str
) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="e2e/clip.mp4", Body=clip.read_bytes())
    row = register_video(
        env.ledger,
        env.settings,
        video_id="v-s3",
        source=f"s3://{BUCKET}/e2e/clip.mp4",
        crop="0,130,320,50",
    )
    assert row["etag"] and row["frame_count"] == FRAMES
    first = run(**job("v-s3"))
    assert first["status"] == "succeeded", first
    assert len(env.ledger.get_predictions(run_id=first["run_id"])) == FRAMES - 1
    jobs = list(env.jobs_dir.glob("local-*"))
    assert len(jobs) == 1 and not list(jobs[0].glob("bi-source-*"))  # the download was removed

    s3.client.put_object(Bucket=BUCKET, Key="e2e/clip.mp4", Body=clip.read_bytes()[:-10])
    second = run(**job("v-s3", frames_version="f2"))
    assert second["status"] == "rejected" and second["rejection_type"] == "validation_failed"
    assert "source changed since registration" in second["message"]
    assert env.executor_calls() == 1  # refused before the spawn


def test_a_video_behind_a_presigned_url_runs_end_to_end_and_a_changed_one_is_refused(
    env: FlowEnv, clip: Path, s3: S3
) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="presigned/clip.mp4", Body=clip.read_bytes())
    url = s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "presigned/clip.mp4"}, ExpiresIn=3600
    )
    register_video(env.ledger, env.settings, video_id="v-url", source=url)
    first = run(**job("v-url"))
    assert first["status"] == "succeeded", first

    s3.client.put_object(Bucket=BUCKET, Key="presigned/clip.mp4", Body=clip.read_bytes() + b"\0")
    second = run(**job("v-url", frames_version="f2"))
    assert second["rejection_type"] == "validation_failed"
    assert "source changed since registration" in second["message"]
    assert "Signature" not in second["message"]  # the presigned URL's signature is not logged
    assert env.executor_calls() == 1


# --- A change after admission, on the Modal double ------------------------------------------------


class ChangingStore(FakeCloud):
    """The Modal double, its function body reading the moto server; between the spawn and the
    first attempt the object is replaced (a change that admission could not see)."""

    def __init__(self, settings: Any, s3: S3, key: str) -> None:
        super().__init__(settings)
        self.s3, self.key = s3, key
        self.run_kwargs = {"storage": StorageConfig.from_settings(settings)}

    def spawn(self, request: dict[str, Any]) -> Any:
        self.s3.client.put_object(Bucket=BUCKET, Key=self.key, Body=b"\0" * 5000)
        return super().spawn(request)


def test_a_change_after_admission_is_one_attempt_billed_for_its_seconds(
    monkeypatch: pytest.MonkeyPatch, env: FlowEnv, clip: Path, s3: S3
) -> None:
    monkeypatch.setenv("BOUNDARY_INFERENCE_EXECUTOR", "modal")
    services_module.reset_services()
    settings = services_module.get_settings()
    s3.client.put_object(Bucket=BUCKET, Key="modal/clip.mp4", Body=clip.read_bytes())
    register_video(env.ledger, settings, video_id="v-m", source=f"s3://{BUCKET}/modal/clip.mp4")
    cloud = ChangingStore(settings, s3, "modal/clip.mp4")
    monkeypatch.setattr(services_module, "open_executor", lambda s: executor_for(cloud))
    try:
        outcome = run(**job("v-m"))
    finally:
        cloud.join()
    assert outcome["status"] == "failed", outcome
    assert "changed since registration" in outcome["message"]
    (call,) = cloud.calls.values()
    assert call.invocations == 1  # returned, not raised: Modal retried nothing
    row = env.ledger.get_run(run_id=outcome["run_id"])
    assert row["failure_kind"] == "user_code" and row["error"].startswith("VideoChanged")
    assert float(row["actual_cost_usd"]) == pytest.approx(
        settings.cost_model.billed_cost_usd(float(row["gpu_seconds"]))
    )
    assert float(row["actual_cost_usd"]) < float(row["worst_case_cost_usd"])
    assert env.ledger.breaker_status(name="gpu-inference", window_s=3600)["failures_in_window"] == 0
