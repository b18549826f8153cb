"""Video sources by URI: the one module that knows how to stat and fetch each kind of source.

=================================  ===========================================================
URI                                where the video lives
=================================  ===========================================================
``/abs/path``, ``file:///abs/path``  a file on the machine that decodes it (local executor)
``s3://bucket/key``                any S3-compatible store: AWS, Wasabi, R2, MinIO (``s3_endpoint_url``)
``https://...`` (``http://...``)   a URL, typically a presigned one
``supabase://bucket/path``         Supabase Storage, signed with supabase-py's storage client
=================================  ===========================================================

Three users, one vocabulary (:class:`SourceStat`):

* registration (``videos add``): :func:`stat`, then :func:`fetch_to` (remote) or
  :func:`sha256_file` (local) for the content hash, then the probe;
* admission: :func:`stat` again, compared with the registered fingerprint by :func:`changes`:
  size and modification time for a file, size and ETag (or version, or Last-Modified) remotely;
* the function: :func:`materialize`, which checks a local file in place (size and SHA-256, not
  the modification time a Volume upload does not keep) or downloads a remote one with a size cap,
  refusing an object whose ETag, size or SHA-256 is not the registered one.

Credentials come from :class:`StorageConfig` (settings and environment variables; inside Modal a
Secret named by ``sources_secret_name`` puts them in the environment), never from the URI: a URI
with a user name or password in it is refused.

A URL is probed with a one-byte ranged GET, not HEAD: an S3 presigned URL signs one method, so a
URL presigned for GET answers 403 to a HEAD.

Every failure is a typed :mod:`modal_app.errors` error: a missing object, a refused URL, a changed
object or a malformed URI are :class:`~modal_app.errors.UserInputError` (no retry can fix them); a
store that does not answer is :class:`~modal_app.errors.SourceUnavailable` (a retry may).
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat as stat_mode
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import SecretStr

from modal_app.errors import (
    InferenceError,
    InvalidSource,
    SourceAccessDenied,
    SourceTooLarge,
    SourceUnavailable,
    VideoChanged,
    VideoNotFound,
)

if TYPE_CHECKING:
    import httpx

    from config import Settings

CHUNK_BYTES = 1 << 20
LOCAL = "file"
REMOTE_SCHEMES = frozenset({"s3", "http", "https", "supabase"})
HASH_PREFIX = "sha256:"
OnChunk = Callable[[int], None]


@dataclass(frozen=True)
class StorageConfig:
    """Where remote stores are and how to authenticate to them. Secrets stay ``SecretStr``."""

    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    supabase_url: str | None = None
    supabase_key: SecretStr | None = None
    timeout_s: float = 10.0
    # A signed Supabase URL only has to outlive the start of one request.
    signed_url_ttl_s: int = 600

    @classmethod
    def from_settings(cls, settings: Settings) -> StorageConfig:
        return cls(
            s3_endpoint_url=settings.s3_endpoint_url,
            s3_region=settings.s3_region,
            s3_access_key_id=settings.s3_access_key_id,
            s3_secret_access_key=settings.s3_secret_access_key,
            supabase_url=settings.supabase_url,
            supabase_key=settings.supabase_service_role_key,
            timeout_s=settings.source_timeout_s,
        )


@dataclass(frozen=True)
class SourceRef:
    uri: str
    scheme: str  # "file", "s3", "http", "https" or "supabase"
    path: Path | None = None  # file
    bucket: str | None = None  # s3, supabase
    key: str | None = None  # s3, supabase
    url: str | None = None  # http, https

    @property
    def is_local(self) -> bool:
        return self.scheme == LOCAL


@dataclass(frozen=True)
class SourceStat:
    """What identifies one version of a source, cheaply (no read of the content)."""

    scheme: str
    size_bytes: int
    etag: str | None = None
    version_id: str | None = None
    # A file: st_mtime_ns. Remote: Last-Modified, kept only when there is no ETag to compare.
    modified: str | None = None

    def fingerprint(self) -> dict[str, Any]:
        data = asdict(self)
        del data["scheme"]
        return data


@dataclass(frozen=True)
class Fetched:
    path: Path
    size_bytes: int
    content_hash: str  # "sha256:<hex>"
    stat: SourceStat


def parse(uri: str) -> SourceRef:
    """Split a source URI by scheme; refuse what cannot be read or would carry credentials."""
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidSource("a video source must be a non-empty path or URI")
    bad = next((c for c in uri if ord(c) < 32 or ord(c) == 127), None)
    if bad is not None:
        raise InvalidSource(f"source {uri[:60]!r} contains the control character U+{ord(bad):04X}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme == "":
        return SourceRef(uri, LOCAL, path=Path(uri))
    if scheme == LOCAL:
        if parts.netloc not in ("", "localhost") or parts.query or parts.fragment:
            raise InvalidSource(f"file URI {uri!r} must be file:///absolute/path")
        return SourceRef(uri, LOCAL, path=Path(parts.path))
    if parts.username is not None or parts.password is not None:
        raise InvalidSource(
            f"source URI for host {parts.hostname!r} carries credentials; credentials come from"
            " the storage settings (a Modal Secret on Modal), never from the URI"
        )
    if scheme in ("s3", "supabase"):
        bucket, _, key = uri.split("://", 1)[1].partition("/")
        if not bucket or not key or parts.query or parts.fragment:
            raise InvalidSource(f"{scheme} URI {uri!r} must be {scheme}://bucket/path/to/object")
        return SourceRef(uri, scheme, bucket=bucket, key=key)
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise InvalidSource(f"URL {uri!r} has no host")
        return SourceRef(uri, scheme, url=uri)
    raise InvalidSource(
        f"source scheme {scheme!r} is not supported; use a path, s3://, https:// or supabase://"
    )


def describe(ref: SourceRef) -> str:
    """The source for messages: a presigned URL's query (its signature) is left out."""
    if ref.url:
        parts = urlsplit(ref.url)
        return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")
    return ref.uri


# --- stat -------------------------------------------------------------------------------------


def stat(uri: str, config: StorageConfig) -> SourceStat:
    """Size and identity of the source now, without reading its content."""
    ref = parse(uri)
    if ref.is_local:
        assert ref.path is not None
        return stat_local(ref.path)
    if ref.scheme == "s3":
        return _stat_s3(ref, config)
    url = _signed_url(ref, config) if ref.scheme == "supabase" else ref.url
    assert url is not None
    return replace(_stat_url(url, ref, config), scheme=ref.scheme)


def stat_local(path: Path) -> SourceStat:
    """``os.stat`` of a regular file (symlinks followed); anything else is a typed refusal."""
    try:
        info = os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise VideoNotFound(f"{path} is a symlink loop") from error
        if error.errno in (errno.ENOENT, errno.ENOTDIR):
            raise VideoNotFound(f"{path} does not exist") from error
        raise VideoNotFound(f"{path} cannot be read: {error.strerror}") from error
    if not stat_mode.S_ISREG(info.st_mode):
        kind = "directory" if stat_mode.S_ISDIR(info.st_mode) else "special file"
        raise VideoNotFound(f"{path} is not a regular file (it is a {kind})")
    return SourceStat(LOCAL, int(info.st_size), modified=str(info.st_mtime_ns))


def changes(registered: Mapping[str, Any], current: SourceStat) -> list[str]:
    """How ``current`` differs from the fingerprint stored at registration (empty: the same).

    Only what was registered is compared; a field the registration did not record cannot differ.
    """
    found: list[str] = []
    size = registered.get("size_bytes")
    if size is not None and int(size) != current.size_bytes:
        found.append(f"size {int(size)} -> {current.size_bytes} bytes")
    for name in ("etag", "version_id", "modified"):
        before = registered.get(name)
        if before is not None and str(before) != str(getattr(current, name)):
            label = "modification time" if name == "modified" else name.replace("_", " ")
            found.append(f"{label} {before} -> {getattr(current, name)}")
    return found


# --- content ----------------------------------------------------------------------------------


def sha256_file(path: Path, on_chunk: OnChunk | None = None) -> str:
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            if on_chunk is not None:
                on_chunk(done)
    return HASH_PREFIX + digest.hexdigest()


def fetch_to(
    uri: str,
    config: StorageConfig,
    dest: Path,
    *,
    max_bytes: int,
    expected: Mapping[str, Any] | None = None,
    on_chunk: OnChunk | None = None,
) -> Fetched:
    """Download a remote source to ``dest``, at most ``max_bytes``, hashing it on the way.

    With ``expected`` (a registered fingerprint) the store is asked for exactly that version (S3:
    If-Match on the ETag), and an answer of another size, ETag or content hash is refused with
    :class:`VideoChanged` before or as soon as it shows.
    """
    ref = parse(uri)
    if ref.is_local:
        raise InvalidSource(f"{uri} is a local file: read it in place")
    expected = expected or {}
    etag = expected.get("etag")
    version = expected.get("version_id")
    if ref.scheme == "s3":
        stream = _open_s3(ref, config, etag=etag, version_id=version)
    else:
        url = _signed_url(ref, config) if ref.scheme == "supabase" else ref.url
        assert url is not None
        stream = _open_url(url, ref, config)
    with stream as (current, chunks):
        current = replace(current, scheme=ref.scheme)
        differences = changes(expected, current)
        if differences:
            raise VideoChanged(
                f"{describe(ref)} changed since registration: {'; '.join(differences)}"
            )
        if current.size_bytes > max_bytes:
            raise SourceTooLarge(
                f"{describe(ref)} is {current.size_bytes} bytes; the limit is {max_bytes}"
            )
        size, content_hash = _copy(chunks, dest, max_bytes, ref, on_chunk)
    registered_hash = expected.get("content_hash")
    if size != current.size_bytes:
        dest.unlink(missing_ok=True)
        raise SourceUnavailable(
            f"{describe(ref)}: the store announced {current.size_bytes} bytes and sent {size}"
        )
    if registered_hash and registered_hash != content_hash:
        dest.unlink(missing_ok=True)
        raise VideoChanged(
            f"{describe(ref)} changed since registration: content hash {registered_hash} ->"
            f" {content_hash}"
        )
    return Fetched(dest, size, content_hash, current)


def materialize(
    uri: str,
    config: StorageConfig,
    *,
    work_dir: Path,
    max_bytes: int,
    expected: Mapping[str, Any] | None = None,
    on_chunk: OnChunk | None = None,
) -> Path:
    """A local file the decoder can open, checked against the registered fingerprint.

    A local source is checked in place (size and SHA-256, one streamed read: see
    :func:`_check_local`); a remote one is downloaded into ``work_dir`` with the cap and checked by
    :func:`fetch_to`.
    """
    ref = parse(uri)
    if ref.is_local:
        assert ref.path is not None
        if not expected:  # registered before fingerprints: the decoder says what is wrong
            if not os.path.exists(ref.path):
                raise VideoNotFound(f"video file not found: {ref.path}")
            return ref.path
        return _check_local(ref.path, expected, max_bytes=max_bytes, on_chunk=on_chunk)
    work_dir.mkdir(parents=True, exist_ok=True)
    registered_size = (expected or {}).get("size_bytes")
    cap = min(max_bytes, int(registered_size)) if registered_size is not None else max_bytes
    return fetch_to(
        uri,
        config,
        work_dir / "source.video",
        max_bytes=cap,
        expected=expected,
        on_chunk=on_chunk,
    ).path


def _check_local(
    path: Path, expected: Mapping[str, Any], *, max_bytes: int, on_chunk: OnChunk | None
) -> Path:
    """A file checked by size, then by content hash when one was registered.

    Not by modification time: a file copied onto a Modal Volume (``modal volume put``,
    ``batch_upload``) does not keep it, so every job after a cold start would read as changed. A
    row that predates content hashes falls back to size and modification time.
    """
    current = stat_local(path)
    registered_hash = expected.get("content_hash")
    compared = (
        {k: v for k, v in expected.items() if k != "modified"} if registered_hash else expected
    )
    differences = changes(compared, current)
    if differences:
        raise VideoChanged(f"{path} changed since registration: {'; '.join(differences)}")
    if current.size_bytes > max_bytes:
        raise SourceTooLarge(f"{path} is {current.size_bytes} bytes; the limit is {max_bytes}")
    if registered_hash:
        # Streamed in chunks (each one beats the heartbeat through on_chunk), like a download.
        found = sha256_file(path, on_chunk)
        if found != registered_hash:
            raise VideoChanged(
                f"{path} changed since registration: content hash {registered_hash} -> {found}"
            )
    return path


def local_path(uri: str) -> Path:
    """The path of a local source, for the decoder; a remote one must be fetched first."""
    ref = parse(uri)
    if not ref.is_local:
        raise InvalidSource(
            f"{describe(ref)} is remote: fetch it first (modal_app.sources.materialize)"
        )
    assert ref.path is not None
    stat_local(ref.path)
    return ref.path


def _copy(
    chunks: Iterable[bytes], dest: Path, max_bytes: int, ref: SourceRef, on_chunk: OnChunk | None
) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(dest, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise SourceTooLarge(
                        f"{describe(ref)} is larger than the {max_bytes}-byte limit"
                    )
                digest.update(chunk)
                out.write(chunk)
                if on_chunk is not None:
                    on_chunk(size)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return size, HASH_PREFIX + digest.hexdigest()


# --- S3 ---------------------------------------------------------------------------------------


def _s3_client(config: StorageConfig) -> Any:
    import boto3
    from botocore.config import Config

    credentials: dict[str, str] = {}
    if config.s3_access_key_id is not None and config.s3_secret_access_key is not None:
        credentials = {
            "aws_access_key_id": config.s3_access_key_id.get_secret_value(),
            "aws_secret_access_key": config.s3_secret_access_key.get_secret_value(),
        }
    # Otherwise boto3's own chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, ~/.aws, a role.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=config.s3_endpoint_url,
        region_name=config.s3_region,
        config=Config(
            connect_timeout=config.timeout_s,
            read_timeout=config.timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
        **credentials,
    )


def _s3_error(error: Exception, ref: SourceRef) -> InferenceError:
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    where = describe(ref)
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code", ""))
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if status == 404 or code in ("404", "NoSuchKey", "NoSuchBucket", "NoSuchVersion"):
            return VideoNotFound(f"{where} does not exist ({code or status})")
        if status == 412 or code == "PreconditionFailed":
            return VideoChanged(
                f"{where} changed since registration (its ETag is not the registered one)"
            )
        if status in (401, 403):
            return SourceAccessDenied(f"{where}: access denied ({code}); check the S3 credentials")
        if status >= 500 or status == 429 or code in ("SlowDown", "RequestTimeout"):
            return SourceUnavailable(f"{where}: the store answered {status} {code}")
        return InvalidSource(f"{where}: the store refused the request ({status} {code})")
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return SourceAccessDenied(
            f"{where}: no S3 credentials (set BOUNDARY_INFERENCE_S3_ACCESS_KEY_ID and"
            " _SECRET_ACCESS_KEY, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        )
    return SourceUnavailable(
        f"{where}: cannot reach the S3 store ({type(error).__name__}: {error})"
    )


def _stat_s3(ref: SourceRef, config: StorageConfig) -> SourceStat:
    try:
        head = _s3_client(config).head_object(Bucket=ref.bucket, Key=ref.key)
    except Exception as error:
        raise _s3_error(error, ref) from error
    return SourceStat(
        "s3",
        int(head["ContentLength"]),
        etag=str(head.get("ETag")) if head.get("ETag") else None,
        version_id=str(head["VersionId"]) if head.get("VersionId") not in (None, "null") else None,
    )


@contextmanager
def _open_s3(
    ref: SourceRef, config: StorageConfig, *, etag: str | None, version_id: str | None
) -> Iterator[tuple[SourceStat, Iterator[bytes]]]:
    params: dict[str, str] = {"Bucket": str(ref.bucket), "Key": str(ref.key)}
    if etag:
        params["IfMatch"] = etag  # the store itself refuses another version (412)
    if version_id:
        params["VersionId"] = version_id
    try:
        response = _s3_client(config).get_object(**params)
    except Exception as error:
        raise _s3_error(error, ref) from error
    body = response["Body"]
    current = SourceStat(
        "s3",
        int(response["ContentLength"]),
        etag=str(response.get("ETag")) if response.get("ETag") else None,
        version_id=(
            str(response["VersionId"]) if response.get("VersionId") not in (None, "null") else None
        ),
    )

    def chunks() -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        except InferenceError:
            raise
        except Exception as error:
            raise _s3_error(error, ref) from error

    try:
        yield current, chunks()
    finally:
        body.close()


# --- URLs (presigned, Supabase signed) ----------------------------------------------------------


def _http_client(config: StorageConfig) -> httpx.Client:
    import httpx

    return httpx.Client(timeout=httpx.Timeout(config.timeout_s), follow_redirects=True)


def _raise_for_status(response: httpx.Response, ref: SourceRef) -> None:
    status = response.status_code
    where = describe(ref)
    if status in (200, 206, 416):
        return
    if status in (404, 410):
        raise VideoNotFound(f"{where} does not exist (HTTP {status})")
    if status in (401, 403):
        raise SourceAccessDenied(
            f"{where}: access denied (HTTP {status}); a presigned URL may have expired"
        )
    if status == 429 or status >= 500:
        raise SourceUnavailable(f"{where}: the server answered HTTP {status}")
    raise InvalidSource(f"{where}: the server answered HTTP {status}")


def _total_size(response: httpx.Response, ref: SourceRef) -> int:
    content_range = response.headers.get("content-range", "")
    if response.status_code in (206, 416) and "/" in content_range:
        total = content_range.rsplit("/", 1)[1].strip()
        if total.isdigit():
            return int(total)
    if response.status_code == 200 and response.headers.get("content-length", "").isdigit():
        return int(response.headers["content-length"])
    raise InvalidSource(
        f"{describe(ref)}: the server does not say how large the object is (no Content-Length"
        " or Content-Range): it cannot be size-capped or checked for changes"
    )


def _url_stat(response: httpx.Response, ref: SourceRef, size: int) -> SourceStat:
    etag = response.headers.get("etag") or None
    modified = None if etag else (response.headers.get("last-modified") or None)
    return SourceStat(ref.scheme, size, etag=etag, modified=modified)


def _stat_url(url: str, ref: SourceRef, config: StorageConfig) -> SourceStat:
    import httpx

    headers = {"Range": "bytes=0-0", "Accept-Encoding": "identity"}
    try:
        with _http_client(config) as client, client.stream("GET", url, headers=headers) as response:
            _raise_for_status(response, ref)
            return _url_stat(response, ref, _total_size(response, ref))
    except httpx.HTTPError as error:
        raise SourceUnavailable(
            f"{describe(ref)}: cannot reach the server ({type(error).__name__})"
        ) from error


@contextmanager
def _open_url(
    url: str, ref: SourceRef, config: StorageConfig
) -> Iterator[tuple[SourceStat, Iterator[bytes]]]:
    import httpx

    def chunks(response: httpx.Response) -> Iterator[bytes]:
        try:
            yield from response.iter_raw(CHUNK_BYTES)
        except httpx.HTTPError as error:
            raise SourceUnavailable(
                f"{describe(ref)}: the download broke off ({type(error).__name__})"
            ) from error

    try:
        with (
            _http_client(config) as client,
            client.stream("GET", url, headers={"Accept-Encoding": "identity"}) as response,
        ):
            _raise_for_status(response, ref)
            if response.status_code != 200:
                raise InvalidSource(
                    f"{describe(ref)}: expected HTTP 200, got {response.status_code}"
                )
            yield _url_stat(response, ref, _total_size(response, ref)), chunks(response)
    except httpx.HTTPError as error:
        raise SourceUnavailable(
            f"{describe(ref)}: cannot reach the server ({type(error).__name__})"
        ) from error


def _signed_url(ref: SourceRef, config: StorageConfig) -> str:
    """A short-lived URL for a Supabase Storage object, from supabase-py's storage client."""
    import httpx
    from storage3.exceptions import StorageApiError
    from supabase import ClientOptions, create_client

    if not config.supabase_url or config.supabase_key is None:
        raise SourceAccessDenied(
            f"{ref.uri}: Supabase Storage needs BOUNDARY_INFERENCE_SUPABASE_URL and"
            " BOUNDARY_INFERENCE_SUPABASE_SERVICE_ROLE_KEY (a Modal Secret on Modal)"
        )
    http = httpx.Client(timeout=httpx.Timeout(config.timeout_s))
    try:
        client = create_client(
            config.supabase_url,
            config.supabase_key.get_secret_value(),
            options=ClientOptions(httpx_client=http),
        )
        signed = client.storage.from_(str(ref.bucket)).create_signed_url(
            str(ref.key), config.signed_url_ttl_s
        )
    except StorageApiError as error:
        status = int(str(getattr(error, "status", 0) or 0) or 0)
        if status == 404 or (status == 400 and "not found" in str(error).lower()):
            raise VideoNotFound(f"{ref.uri} does not exist ({error})") from error
        if status in (401, 403):
            raise SourceAccessDenied(f"{ref.uri}: Supabase refused the key ({status})") from error
        if status >= 500 or status == 429:
            raise SourceUnavailable(f"{ref.uri}: Supabase Storage answered {status}") from error
        raise InvalidSource(f"{ref.uri}: Supabase Storage refused the request ({error})") from error
    except httpx.HTTPError as error:
        raise SourceUnavailable(
            f"{ref.uri}: cannot reach Supabase Storage ({type(error).__name__})"
        ) from error
    finally:
        http.close()
    url = signed.get("signedURL") or signed.get("signedUrl")
    if not url:
        raise SourceUnavailable(f"{ref.uri}: Supabase Storage returned no signed URL")
    return str(url)
