"""modal_app.sources against real servers: moto's S3-compatible server (boto3 as the client), a
local HTTP server serving presigned-style URLs, and supabase-py's real storage request (respx
answers only the signing call; the signed URL is fetched from the local HTTP server)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from pydantic import SecretStr

from modal_app import sources
from modal_app.errors import (
    InvalidSource,
    SourceAccessDenied,
    SourceTooLarge,
    SourceUnavailable,
    VideoChanged,
    VideoNotFound,
)
from tests.storage_support import BUCKET, S3, ObjectServer, Served, start_s3

BODY = bytes(range(256)) * 64  # 16 KiB


@pytest.fixture
def prefect_harness() -> None:
    """Overrides the suite-wide Prefect API: nothing here touches Prefect."""


@pytest.fixture(scope="module")
def s3() -> Iterator[S3]:
    with start_s3() as server:
        yield server


@pytest.fixture
def s3_config(s3: S3) -> sources.StorageConfig:
    return sources.StorageConfig(
        s3_endpoint_url=s3.endpoint_url,
        s3_region="us-east-1",
        s3_access_key_id=SecretStr("test-key-id"),
        s3_secret_access_key=SecretStr("test-secret"),
        timeout_s=60.0,
    )


@pytest.fixture
def web() -> Iterator[ObjectServer]:
    server = ObjectServer()
    yield server
    server.close()


# --- URIs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "scheme"),
    [
        ("/data/v.mp4", "file"),
        ("file:///data/v.mp4", "file"),
        ("s3://bucket/a/b.mp4", "s3"),
        ("https://cdn.example/v.mp4?X-Amz-Signature=abc", "https"),
        ("http://127.0.0.1:9000/v.mp4", "http"),
        ("supabase://videos/team/v.mp4", "supabase"),
    ],
)
def test_each_scheme_parses(uri: str, scheme: str) -> None:
    assert sources.parse(uri).scheme == scheme


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("https://user:secret@cdn.example/v.mp4", "carries credentials"),
        ("s3://key:secret@bucket/v.mp4", "carries credentials"),
        ("ftp://host/v.mp4", "not supported"),
        ("s3://bucket", "s3://bucket/path"),
        ("supabase:///v.mp4", "supabase://bucket/path"),
        ("/data/v.mp4\n", r"U\+000A"),
        ("", "non-empty"),
        ("file://otherhost/v.mp4", "file:///absolute"),
    ],
)
def test_bad_uris_are_refused_typed(uri: str, fragment: str) -> None:
    with pytest.raises(InvalidSource, match=fragment):
        sources.parse(uri)


def test_a_presigned_url_is_described_without_its_signature() -> None:
    ref = sources.parse("https://cdn.example/v.mp4?X-Amz-Signature=secret-sig")
    assert "secret-sig" not in sources.describe(ref)


# --- Local files ----------------------------------------------------------------------------------


def test_local_stat_refuses_what_is_not_a_regular_file(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(BODY)
    stat = sources.stat(str(video), sources.StorageConfig())
    assert stat.size_bytes == len(BODY) and stat.modified == str(video.stat().st_mtime_ns)
    loop = tmp_path / "loop.mp4"
    loop.symlink_to(loop)
    cases = {
        str(tmp_path / "missing.mp4"): "does not exist",
        str(tmp_path): r"not a regular file \(it is a directory\)",
        str(loop): "symlink loop",
    }
    for uri, fragment in cases.items():
        with pytest.raises(VideoNotFound, match=fragment):
            sources.stat(uri, sources.StorageConfig())


def test_materialize_checks_a_local_file_against_its_fingerprint(tmp_path: Path) -> None:
    video = tmp_path / "v.mp4"
    video.write_bytes(BODY)
    registered = sources.stat_local(video).fingerprint()
    assert (
        sources.materialize(
            str(video),
            sources.StorageConfig(),
            work_dir=tmp_path,
            max_bytes=10**9,
            expected=registered,
        )
        == video
    )
    video.write_bytes(BODY[:100])  # truncated
    with pytest.raises(VideoChanged, match=r"size 16384 -> 100 bytes"):
        sources.materialize(
            str(video), sources.StorageConfig(), work_dir=tmp_path, max_bytes=10**9,
            expected=registered,
        )  # fmt: skip
    video.write_bytes(BODY)
    os.utime(video, ns=(1, 1))  # same size, another file
    with pytest.raises(VideoChanged, match="modification time"):
        sources.materialize(
            str(video),
            sources.StorageConfig(),
            work_dir=tmp_path,
            max_bytes=10**9,
            expected=registered,
        )  # fmt: skip  (a row without a content hash: size and modification time, as before)


def test_a_volume_copy_with_another_mtime_is_the_same_video_by_its_content_hash(
    tmp_path: Path,
) -> None:
    """A file put on a Modal Volume keeps its bytes, not its mtime: compared by size and SHA-256."""
    video = tmp_path / "v.mp4"
    video.write_bytes(BODY)
    registered = {
        **sources.stat_local(video).fingerprint(),
        "content_hash": sources.sha256_file(video),
    }
    os.utime(video, ns=(1, 1))  # what the upload does to the modification time
    chunks: list[int] = []

    def materialize() -> Path:
        return sources.materialize(
            str(video), sources.StorageConfig(), work_dir=tmp_path, max_bytes=10**9,
            expected=registered, on_chunk=chunks.append,
        )  # fmt: skip

    assert materialize() == video
    assert chunks and chunks[-1] == len(BODY)  # the hash is streamed; each chunk is a heartbeat
    video.write_bytes(BODY[::-1])  # same size, other bytes
    os.utime(video, ns=(int(registered["modified"]),) * 2)  # even with the registered mtime
    with pytest.raises(VideoChanged, match="content hash sha256:"):
        materialize()


# --- S3-compatible store (moto's server, boto3) ---------------------------------------------------


def test_s3_stat_fetch_and_a_replaced_object(
    s3: S3, s3_config: sources.StorageConfig, tmp_path: Path
) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="a/clip.mp4", Body=BODY)
    uri = f"s3://{BUCKET}/a/clip.mp4"
    stat = sources.stat(uri, s3_config)
    assert stat.scheme == "s3" and stat.size_bytes == len(BODY)
    assert stat.etag == f'"{hashlib.md5(BODY).hexdigest()}"'  # noqa: S324 - S3's ETag
    chunks: list[int] = []
    fetched = sources.fetch_to(
        uri,
        s3_config,
        tmp_path / "copy",
        max_bytes=10**6,
        expected=stat.fingerprint(),
        on_chunk=chunks.append,
    )
    assert fetched.path.read_bytes() == BODY
    assert fetched.content_hash == "sha256:" + hashlib.sha256(BODY).hexdigest()
    assert chunks and chunks[-1] == len(BODY)

    s3.client.put_object(Bucket=BUCKET, Key="a/clip.mp4", Body=BODY[::-1])  # same size
    assert sources.changes(stat.fingerprint(), sources.stat(uri, s3_config)) == [
        f'etag {stat.etag} -> "{hashlib.md5(BODY[::-1]).hexdigest()}"'  # noqa: S324
    ]
    # The store itself refuses the old ETag (If-Match): nothing of the new object is read.
    with pytest.raises(VideoChanged, match="ETag"):
        sources.fetch_to(
            uri, s3_config, tmp_path / "again", max_bytes=10**6, expected=stat.fingerprint()
        )
    assert not (tmp_path / "again").exists()


def test_s3_missing_object_size_cap_and_unreachable_store(
    s3: S3, s3_config: sources.StorageConfig, tmp_path: Path, refused_port: int
) -> None:
    with pytest.raises(VideoNotFound):
        sources.stat(f"s3://{BUCKET}/nope.mp4", s3_config)
    s3.client.put_object(Bucket=BUCKET, Key="big.mp4", Body=BODY)
    with pytest.raises(SourceTooLarge):
        sources.fetch_to(f"s3://{BUCKET}/big.mp4", s3_config, tmp_path / "x", max_bytes=1000)
    assert not (tmp_path / "x").exists()
    down = sources.StorageConfig(
        s3_endpoint_url=f"http://127.0.0.1:{refused_port}",
        s3_region="us-east-1",
        s3_access_key_id=SecretStr("k"),
        s3_secret_access_key=SecretStr("s"),
        timeout_s=1.0,
    )
    with pytest.raises(SourceUnavailable):
        sources.stat(f"s3://{BUCKET}/big.mp4", down)


def test_a_presigned_s3_url_is_probed_with_a_ranged_get(s3: S3, tmp_path: Path) -> None:
    s3.client.put_object(Bucket=BUCKET, Key="p.mp4", Body=BODY)
    url = s3.client.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "p.mp4"}, ExpiresIn=600
    )
    stat = sources.stat(url, sources.StorageConfig())
    assert stat.size_bytes == len(BODY) and stat.etag
    fetched = sources.fetch_to(
        url, sources.StorageConfig(), tmp_path / "p", max_bytes=10**6, expected=stat.fingerprint()
    )
    assert fetched.path.read_bytes() == BODY


# --- URLs (a presigned-style HTTP server) --------------------------------------------------------


def test_url_stat_is_one_byte_ranged_get_not_head(web: ObjectServer) -> None:
    """A URL presigned for GET answers 403 to HEAD on S3: the probe must be a GET."""
    web.objects["/v.mp4"] = Served(BODY)
    stat = sources.stat(web.url("/v.mp4"), sources.StorageConfig())
    assert stat.size_bytes == len(BODY) and stat.etag and stat.modified is None
    (request,) = web.requests
    assert request["method"] == "GET" and request["headers"]["Range"] == "bytes=0-0"


def test_url_errors_are_typed(web: ObjectServer, refused_port: int) -> None:
    web.objects["/v.mp4"] = Served(BODY)
    config = sources.StorageConfig(timeout_s=60.0)  # every answer here comes; none times out
    with pytest.raises(SourceAccessDenied, match="expired"):
        sources.stat(web.url("/v.mp4", token="revoked"), config)
    with pytest.raises(VideoNotFound):
        sources.stat(web.url("/other.mp4"), config)
    web.objects["/nolength.mp4"] = Served(BODY, length=False)
    with pytest.raises(InvalidSource, match="how large"):
        sources.fetch_to(web.url("/nolength.mp4"), config, Path("/nonexistent/x"), max_bytes=1)
    web.status_override = 503
    with pytest.raises(SourceUnavailable, match="503"):
        sources.stat(web.url("/v.mp4"), config)
    with pytest.raises(SourceUnavailable):
        sources.stat(f"http://127.0.0.1:{refused_port}/v.mp4", config)


def test_an_object_without_etag_is_checked_by_its_content_hash(
    web: ObjectServer, tmp_path: Path
) -> None:
    web.objects["/v.mp4"] = Served(BODY, etag=False)
    config = sources.StorageConfig()
    stat = sources.stat(web.url("/v.mp4"), config)
    assert stat.etag is None and stat.modified  # Last-Modified stands in for the ETag
    fetched = sources.fetch_to(web.url("/v.mp4"), config, tmp_path / "a", max_bytes=10**6)
    registered = {**stat.fingerprint(), "content_hash": fetched.content_hash}
    web.objects["/v.mp4"] = Served(BODY[::-1], etag=False)  # same size, same date, other bytes
    with pytest.raises(VideoChanged, match="content hash"):
        sources.materialize(
            web.url("/v.mp4"), config, work_dir=tmp_path / "w", max_bytes=10**6, expected=registered
        )
    assert not (tmp_path / "w" / "source.video").exists()


# --- Supabase Storage (supabase-py's storage client, its real request) -----------------------------


def test_supabase_source_is_signed_by_supabase_py_then_fetched(
    web: ObjectServer, tmp_path: Path
) -> None:
    key = "eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoic2VydmljZV9yb2xlIn0.c2lnbmF0dXJl"
    web.objects["/storage/v1/object/sign/videos/team/clip.mp4"] = Served(BODY)
    config = sources.StorageConfig(
        supabase_url=web.base_url, supabase_key=SecretStr(key), signed_url_ttl_s=600
    )
    sign = f"{web.base_url}/storage/v1/object/sign/videos/team/clip.mp4"
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post(sign).mock(
            return_value=httpx.Response(
                200, json={"signedURL": f"/object/sign/videos/team/clip.mp4?token={web.token}"}
            )
        )
        mock.route(url__startswith=web.base_url).pass_through()
        stat = sources.stat("supabase://videos/team/clip.mp4", config)
        fetched = sources.fetch_to(
            "supabase://videos/team/clip.mp4",
            config,
            tmp_path / "c",
            max_bytes=10**6,
            expected=stat.fingerprint(),
        )
    assert stat.scheme == "supabase" and stat.size_bytes == len(BODY)
    assert fetched.path.read_bytes() == BODY
    request = route.calls.last.request
    assert request.method == "POST"
    assert json.loads(request.content) == {"expiresIn": "600"}
    assert request.headers["apikey"] == key
    assert request.headers["authorization"] == f"Bearer {key}"
    # The key went to the signing call only: the object itself was fetched with the token.
    assert all("authorization" not in {k.lower() for k in r["headers"]} for r in web.requests)


def test_supabase_missing_object_and_missing_credentials(web: ObjectServer) -> None:
    with pytest.raises(SourceAccessDenied, match="SUPABASE_URL"):
        sources.stat("supabase://videos/a.mp4", sources.StorageConfig())
    config = sources.StorageConfig(supabase_url=web.base_url, supabase_key=SecretStr("k"))
    with respx.mock() as mock:
        mock.post(f"{web.base_url}/storage/v1/object/sign/videos/a.mp4").mock(
            return_value=httpx.Response(
                400, json={"statusCode": "404", "error": "not_found", "message": "Object not found"}
            )
        )
        with pytest.raises(VideoNotFound):
            sources.stat("supabase://videos/a.mp4", config)
