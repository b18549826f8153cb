"""The video and model registries through the CLI (``videos add|list``, ``models add|list``), on the
real ledger: what cannot run is refused at registration with exit 2 and one line on stderr, and
nothing is recorded; what can run is recorded with what admission and the function check later.

The bad inputs are classes, not examples: for videos (not a video, audio only, no frames, empty,
cut short, a directory, a symlink loop, missing, over the size or frame-size limits), crops
(outside, partly outside, negative, zero size, non-integers, malformed) and checkpoints (empty,
truncated, wrong format, non-finite weights, a directory, a symlink loop, missing, a name taken by
another file)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import av
import modal
import numpy as np
import pytest
from typer.testing import CliRunner

from boundary_inference.cli.app import app
from boundary_inference.model_registry import register_model
from boundary_inference.videos import RegistrationError
from modal_app.models import BUILTIN_MODEL, LogisticModel
from modal_app.synthetic import make_video
from tests.flow_support import FlowEnv, MakeEnv
from tests.support import signature_shape

FRAMES = 40


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def refused_in_one_line(*args: str) -> str:
    """Run the CLI: it must exit 2 with exactly one line on stderr, which is returned."""
    code, out, err = cli(*args)
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reg") / "clip.mp4"
    make_video(path, seed=4, frame_count=FRAMES)  # 320x180
    return path


@pytest.fixture
def env(make_env: MakeEnv, tmp_path: Path) -> FlowEnv:
    return make_env(models_dir=str(tmp_path / "models"))


# --- Bad videos, built here -----------------------------------------------------------------------


def _audio_only(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)


def _no_frames(path: Path) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 320, 180, "yuv420p"
        out.start_encoding()  # the header is written; not one frame follows


def _cut_short(clip: Path, path: Path) -> None:
    """The index first (faststart), the frames cut: the header declares more than the file holds."""
    with (
        av.open(str(clip)) as src,
        av.open(str(path), "w", options={"movflags": "faststart"}) as out,
    ):
        stream = out.add_stream_from_template(src.streams.video[0])
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


BAD_VIDEOS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "not-a-video": (lambda clip, p: p.write_text("hello, not a video"), "cannot"),
    "audio-only": (lambda clip, p: _audio_only(p), "no video stream"),
    "no-frames": (lambda clip, p: _no_frames(p), "no video stream|no frames"),
    "empty": (lambda clip, p: p.write_bytes(b""), "empty"),
    "cut-short": (_cut_short, "cut short"),
    "half-a-file": (
        lambda clip, p: p.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2]),
        "cannot",
    ),
    "directory": (lambda clip, p: p.mkdir(), "not a regular file"),
    "symlink-loop": (lambda clip, p: p.symlink_to(p), "symlink loop"),
    "missing": (lambda clip, p: None, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_VIDEOS))
def test_a_source_that_is_not_a_runnable_video_is_refused(
    env: FlowEnv, clip: Path, tmp_path: Path, case: str
) -> None:
    make, fragment = BAD_VIDEOS[case]
    path = tmp_path / f"{case}.mp4"
    make(clip, path)
    err = refused_in_one_line("videos", "add", "v1", "--source", str(path))
    assert re.search(fragment, err), err
    assert env.ledger.list_videos() == []


@pytest.mark.parametrize(
    ("limit", "value", "fragment"),
    [("video_max_bytes", "1000", "over video_max_bytes"), ("video_max_pixels", "1000", "320x180")],
)
def test_a_video_over_the_limits_is_refused(
    make_env: MakeEnv, clip: Path, limit: str, value: str, fragment: str
) -> None:
    env = make_env(**{limit: value})
    code, _, err = cli("videos", "add", "v1", "--source", str(clip))
    assert code == 2 and fragment in err, err
    assert env.ledger.list_videos() == []


@pytest.mark.parametrize(
    ("crop", "fragment"),
    [
        ("0,600,1280,120", "not inside the 320x180 frame"),  # the README's own example
        ("300,0,40,10", "not inside"),  # partly outside: x + width = 340
        ("0,170,10,20", "not inside"),
        ("-1,0,10,10", "must be >= 0"),
        ("0,0,0,10", "must be > 0"),
        ("0,0,10,-4", "must be > 0"),
        ("0.5,0,10,10", "four integers"),
        ("1e2,0,10,10", "four integers"),
        ("0,0,1_0,10", "four integers"),
        ("0,0,١٠,10", "four integers"),  # Arabic-Indic digits: int() would take them
        ("0,0,10", "four integers"),
        ("a,b,c,d", "four integers"),
        ("", "four integers"),
    ],
)
def test_a_crop_box_not_inside_the_frame_is_refused(
    env: FlowEnv, clip: Path, crop: str, fragment: str
) -> None:
    code, _, err = cli("videos", "add", "v1", "--source", str(clip), "--crop", crop)
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1
    assert env.ledger.list_videos() == []


@pytest.mark.parametrize("video_id", ["v1\n", "", "-v", "v 1", "v1\u200b", "x" * 129])
def test_a_bad_video_id_is_refused(env: FlowEnv, clip: Path, video_id: str) -> None:
    code, _, err = cli("videos", "add", video_id, "--source", str(clip))
    assert code == 2 and "video_id" in err, err
    assert env.ledger.list_videos() == []


def test_a_registered_video_records_what_is_checked_later(env: FlowEnv, clip: Path) -> None:
    code, out, err = cli(
        "videos", "add", "v1", "--source", str(clip), "--crop", "0,140,320,40", "--json"
    )
    assert code == 0, err
    row = json.loads(out)
    assert (row["frame_count"], row["width"], row["height"], row["codec"]) == (
        FRAMES,
        320,
        180,
        "h264",
    )
    assert row["size_bytes"] == clip.stat().st_size
    assert row["modified"] == str(clip.stat().st_mtime_ns)
    assert row["content_hash"] == "sha256:" + hashlib.sha256(clip.read_bytes()).hexdigest()
    assert row["crop_box"] == {"x": 0, "y": 140, "width": 320, "height": 40}
    code, out, _ = cli("videos", "list", "--json")
    assert code == 0 and [v["id"] for v in json.loads(out)] == ["v1"]
    code, out, _ = cli("videos", "list")
    assert code == 0 and "v1" in out


def test_the_ledger_refuses_a_crop_outside_a_known_frame(env: FlowEnv) -> None:
    """Defence in depth: a caller of upsert_video that skipped `videos add` meets the same rule."""
    from boundary_inference.ledger import LedgerError

    with pytest.raises(LedgerError) as caught:
        env.ledger.upsert_video(
            id="v1",
            tenant_id="demo",
            frame_count=10,
            fps=30.0,
            width=320,
            height=180,
            crop_box={"x": 0, "y": 600, "width": 1280, "height": 120},
        )
    assert caught.value.code == "BI400" and "not inside the 320 x 180 frame" in caught.value.message
    for crop in (
        {"x": 0.5, "y": 0, "width": 1, "height": 1},
        {"x": 0, "y": 0, "width": 0, "height": 1},
    ):
        with pytest.raises(LedgerError, match="crop_box"):
            env.ledger.upsert_video(
                id="v1", tenant_id="demo", frame_count=10, fps=30.0, crop_box=crop
            )


# --- Models ---------------------------------------------------------------------------------------


def _checkpoint(path: Path, weights: list[float] | None = None) -> Path:
    LogisticModel(path.stem, np.array(weights or [20.0, 0.0, 0.0], np.float32), -6.0).save(path)
    return path


def _nan_checkpoint(tmp: Path, path: Path) -> None:
    _checkpoint(path, [1.0, float("nan"), 0.0])


BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "empty": (lambda tmp, p: p.write_bytes(b""), "empty"),
    "truncated": (
        lambda tmp, p: p.write_bytes(_checkpoint(tmp / "whole.npz").read_bytes()[:200]),
        "not a loadable checkpoint",
    ),
    "not-a-zip": (lambda tmp, p: p.write_bytes(b"PK\x03\x04garbage" * 10), "not a loadable"),
    "a-video": (lambda tmp, p: p.write_bytes(b"\x00\x00\x00 ftypisom" * 40), "not a loadable"),
    "nan-weights": (_nan_checkpoint, "non-finite"),
    "directory": (lambda tmp, p: p.mkdir(), "directory"),
    "symlink-loop": (lambda tmp, p: p.symlink_to(p), "symlink loop"),
    "missing": (lambda tmp, p: None, "does not exist"),
}


@pytest.mark.parametrize("case", sorted(BAD_CHECKPOINTS))
def test_a_checkpoint_that_does_not_load_is_refused(
    env: FlowEnv, tmp_path: Path, case: str
) -> None:
    make, fragment = BAD_CHECKPOINTS[case]
    path = tmp_path / f"{case}.npz"
    make(tmp_path, path)
    err = refused_in_one_line("models", "add", "ckpt:bad", "--file", str(path))
    assert fragment in err, err
    assert env.ledger.list_models() == []
    assert not (tmp_path / "models" / "bad.npz").exists()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("builtin-textdiff-v1", "built in"),
        ("resnet50", "must be ckpt:<name>"),
        ("ckpt:../etc", "SOLIDUS"),
        ("ckpt:.hidden", "must be ckpt:<name>"),
        ("ckpt:" + "a" * 65, "must be ckpt:<name>"),
        ("ckpt:a\n", "U+000A"),
    ],
)
def test_a_model_name_that_is_not_a_checkpoint_reference_is_refused(
    env: FlowEnv, tmp_path: Path, name: str, fragment: str
) -> None:
    code, _, err = cli("models", "add", name, "--file", str(_checkpoint(tmp_path / "m.npz")))
    assert code == 2 and fragment in err, err
    assert env.ledger.list_models() == []


def test_an_unknown_checkpoint_suffix_is_refused(env: FlowEnv, tmp_path: Path) -> None:
    path = tmp_path / "m.bin"
    path.write_bytes(_checkpoint(tmp_path / "m.npz").read_bytes())
    code, _, err = cli("models", "add", "ckpt:m", "--file", str(path))
    assert code == 2 and "unknown checkpoint format '.bin'" in err


def test_a_checkpoint_is_placed_hashed_recorded_and_its_name_kept(
    env: FlowEnv, tmp_path: Path
) -> None:
    path = _checkpoint(tmp_path / "tiny.npz")
    code, out, err = cli("models", "add", "ckpt:tiny", "--file", str(path), "--json")
    assert code == 0, err
    row = json.loads(out)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (row["model_version"], row["format"], row["sha256"]) == (
        "ckpt:tiny",
        "boundary-logistic-v1",
        digest,
    )
    assert row["size_bytes"] == path.stat().st_size and row["created"] is True
    placed = tmp_path / "models" / "tiny.npz"
    assert placed.read_bytes() == path.read_bytes()
    assert row["locations"] == [f"local:{(tmp_path / 'models').resolve()}"]

    code, out, _ = cli("models", "add", "ckpt:tiny", "--file", str(path), "--json")
    assert code == 0 and json.loads(out)["created"] is False  # the same file again: idempotent

    other = _checkpoint(tmp_path / "other.npz", [1.0, 2.0, 3.0])
    code, _, err = cli("models", "add", "ckpt:tiny", "--file", str(other))
    assert code == 2 and "already registered with another file" in err
    assert placed.read_bytes() == path.read_bytes()  # the registered file was not replaced
    code, out, _ = cli("models", "list", "--json")
    assert [m["model_version"] for m in json.loads(out)] == ["ckpt:tiny"]
    assert cli("models", "list")[0] == 0


def test_the_builtin_model_needs_no_registration(env: FlowEnv) -> None:
    assert BUILTIN_MODEL.name == "builtin-textdiff-v1"
    assert env.ledger.get_model(model_version="builtin-textdiff-v1") is None


# --- The models Volume (Modal), against a signature-checked double --------------------------------


class FakeBatch:
    def __init__(self, volume: FakeVolume) -> None:
        self.volume = volume
        self.staged: dict[str, bytes] = {}

    def __enter__(self) -> FakeBatch:
        return self

    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> None:
        if exc_type is None:  # the real context manager commits on a clean exit only
            self.volume.files.update(self.staged)
            self.volume.commits += 1

    def put_file(self, local_file: Any, remote_path: Any, mode: int | None = None) -> None:
        self.staged[str(remote_path)] = Path(local_file).read_bytes()


class FakeVolume:
    volumes: ClassVar[dict[str, FakeVolume]] = {}

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.commits = 0
        self.forced: list[bool] = []

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        environment_name: str | None = None,
        create_if_missing: bool = False,
        version: Any = None,
        create_options: Any = None,
        client: Any = None,
    ) -> FakeVolume:
        assert create_if_missing
        return cls.volumes.setdefault(name, cls())

    def batch_upload(self, force: bool = False) -> FakeBatch:
        self.forced.append(force)
        return FakeBatch(self)


@pytest.mark.parametrize(
    ("double", "real"),
    [
        (FakeVolume.from_name, modal.Volume.from_name),
        (FakeVolume.batch_upload, modal.Volume.batch_upload),
        (FakeBatch.put_file, modal.volume.VolumeUploadContextManager.put_file),
    ],
    ids=lambda f: getattr(f, "__qualname__", str(f)),
)
def test_volume_double_signatures_equal_the_real_client(
    double: Callable[..., Any], real: Callable[..., Any]
) -> None:
    assert signature_shape(double) == signature_shape(real)


def test_models_add_to_modal_uploads_to_the_models_volume(env: FlowEnv, tmp_path: Path) -> None:
    FakeVolume.volumes.clear()
    path = _checkpoint(tmp_path / "tiny.npz")
    row = register_model(
        env.ledger,
        env.settings,
        model_version="ckpt:tiny",
        file=path,
        destination="modal",
        volume_from_name=FakeVolume.from_name,
    )
    volume = FakeVolume.volumes["boundary-inference-models"]
    assert volume.files == {"/tiny.npz": path.read_bytes()} and volume.commits == 1
    assert row["locations"] == ["modal-volume:boundary-inference-models"]
    # The same file locally too: one row, both places.
    row = register_model(env.ledger, env.settings, model_version="ckpt:tiny", file=path)
    assert sorted(row["locations"])[0] == "local:" + str((tmp_path / "models").resolve())
    assert len(row["locations"]) == 2

    class Unreachable(FakeVolume):
        @classmethod
        def from_name(cls, name: str, **kwargs: Any) -> FakeVolume:
            raise ConnectionError("no route to Modal")

    with pytest.raises(RegistrationError, match="cannot upload") as caught:
        register_model(
            env.ledger,
            env.settings,
            model_version="ckpt:other",
            file=_checkpoint(tmp_path / "other.npz"),
            destination="modal",
            volume_from_name=Unreachable.from_name,
        )
    assert caught.value.exit_code == 1
    assert env.ledger.get_model(model_version="ckpt:other") is None


# --- Concurrency: one name, one content ------------------------------------------------------------


def test_racing_registrations_of_one_name_keep_one_content(env: FlowEnv) -> None:
    from boundary_inference.ledger import LedgerError
    from tests.support import in_threads

    def same(ledger: Any) -> Any:
        return ledger.register_model(
            model_version="ckpt:raced",
            format="boundary-logistic-v1",
            size_bytes=900,
            sha256="a" * 64,
            file_name="raced.npz",
            location="local:/m",
        )

    results = in_threads(env.ledger, [same] * 16)
    assert sum(bool(r["created"]) for r in results) == 1
    assert {tuple(r["locations"]) for r in results} == {("local:/m",)}

    def other(digit: str) -> Callable[[Any], Any]:
        def call(ledger: Any) -> Any:
            try:
                return ledger.register_model(
                    model_version="ckpt:contested",
                    format="boundary-logistic-v1",
                    size_bytes=900,
                    sha256=digit * 64,
                    file_name="contested.npz",
                )
            except LedgerError as error:
                return error.code

        return call

    outcomes = in_threads(env.ledger, [other(d) for d in "0123456789abcdef"])
    winners = [o for o in outcomes if isinstance(o, dict)]
    assert len(winners) == 1 and winners[0]["created"] is True
    assert sorted(o for o in outcomes if not isinstance(o, dict)) == ["BI409"] * 15
    assert env.ledger.get_model(model_version="ckpt:contested")["sha256"] == winners[0]["sha256"]


# --- Admission guards, per executor ---------------------------------------------------------------


def test_with_modal_a_checkpoint_must_be_in_the_volume_and_a_video_readable_there(
    env: FlowEnv, tmp_path: Path, clip: Path
) -> None:
    from boundary_inference.outcome import Rejected
    from config import get_settings
    from tasks.model_registry import check_model
    from tasks.source_check import check_source

    modal_settings = get_settings(executor="modal")
    register_model(
        env.ledger, env.settings, model_version="ckpt:tiny", file=_checkpoint(tmp_path / "t.npz")
    )
    local_only = check_model.fn(env.ledger, modal_settings, "ckpt:tiny")
    assert isinstance(local_only, Rejected) and "not in the Modal Volume" in local_only.message
    assert check_model.fn(env.ledger, env.settings, "ckpt:tiny")["sha256"]
    assert check_model.fn(env.ledger, modal_settings, "builtin-textdiff-v1") == {}

    code, out, _ = cli("videos", "add", "v1", "--source", str(clip), "--json")
    assert code == 0
    video = json.loads(out)
    refused = check_source.fn(video, modal_settings)
    assert isinstance(refused, Rejected) and "cannot read" in refused.message
    from modal_app.modal_config import models_mount_path

    in_volume = {**video, "source_uri": f"{models_mount_path(modal_settings)}/videos/clip.mp4"}
    assert check_source.fn(in_volume, modal_settings)["size_bytes"] == clip.stat().st_size


def test_submit_refuses_an_unregistered_checkpoint_and_a_changed_video_with_exit_3(
    env: FlowEnv, clip: Path, tmp_path: Path
) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(clip.read_bytes())
    assert cli("videos", "add", "v1", "--source", str(video))[0] == 0
    code, out, _ = cli(
        "submit", "v1", "--in-process", "--model-version", "ckpt:nonexistent", "--json"
    )
    first = json.loads(out)
    assert (code, first["status"], first["rejection_type"]) == (3, "rejected", "validation_failed")
    video.write_bytes(clip.read_bytes()[:1000])  # truncated after registration
    code, out, _ = cli("submit", "v1", "--in-process", "--json")
    second = json.loads(out)
    assert (code, second["rejection_type"]) == (3, "validation_failed")
    assert "source changed since registration" in second["message"]
    assert second["actual_cost_usd"] is None and second["run_id"] is None
    assert len(env.ledger.list_rejections(limit=10)) == 2
    assert env.executor_calls() == 0
