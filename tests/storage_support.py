"""Real storage servers for the video-source tests, on loopback.

* :func:`start_s3`: moto's S3-compatible HTTP server (``ThreadedMotoServer``), driven with boto3
  as any S3 client would drive AWS, Wasabi, R2 or MinIO.
* :class:`ObjectServer`: a plain HTTP server serving bytes the way a presigned-URL endpoint does:
  a token in the query (403 without it, or once revoked), ETag and Last-Modified, byte ranges,
  Content-Length; it records every request so tests can say what was asked.
"""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

BUCKET = "videos"


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but never listening: a connection to it is refused, whatever the load."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield int(bound.getsockname()[1])


def unreachable_store(port: int) -> Any:
    """A :class:`modal_app.sources.StorageConfig` whose S3 endpoint refuses every connection
    (``port`` from the ``refused_port`` fixture), with a short timeout."""
    from pydantic import SecretStr

    from modal_app.sources import StorageConfig

    return StorageConfig(
        s3_endpoint_url=f"http://127.0.0.1:{port}",
        s3_region="us-east-1",
        s3_access_key_id=SecretStr("k"),
        s3_secret_access_key=SecretStr("s"),
        timeout_s=0.5,
    )


@dataclass
class S3:
    endpoint_url: str
    client: Any

    def env(self) -> dict[str, str]:
        """Settings (``configure(...)`` overrides) that point the project at this server."""
        return {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": "us-east-1",
            "s3_access_key_id": "test-key-id",
            "s3_secret_access_key": "test-secret",
        }


@contextmanager
def start_s3() -> Iterator[S3]:
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test-key-id",
            aws_secret_access_key="test-secret",
        )
        client.create_bucket(Bucket=BUCKET)
        yield S3(endpoint, client)
    finally:
        server.stop()


@dataclass
class Served:
    body: bytes
    etag: bool = True
    length: bool = True
    modified_s: float = 1_700_000_000.0


@dataclass
class ObjectServer:
    """Serves ``objects[path]`` at ``/path?token=<token>``; see the module docstring."""

    token: str = "t0ken"
    objects: dict[str, Served] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    status_override: int | None = None  # answer every request with this status (e.g. 500)

    def __post_init__(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def do_GET(self) -> None:
                self._answer(head=False)

            def _answer(self, *, head: bool) -> None:
                parts = urlsplit(self.path)
                owner.requests.append(
                    {"method": self.command, "path": parts.path, "headers": dict(self.headers)}
                )
                if owner.status_override is not None:
                    self.send_response(owner.status_override)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if parse_qs(parts.query).get("token") != [owner.token]:
                    self.send_response(403)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                served = owner.objects.get(parts.path)
                if served is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, status = served.body, 200
                total = len(body)
                extra: dict[str, str] = {}
                wanted = self.headers.get("Range", "")
                if wanted.startswith("bytes=") and total:
                    first, _, last = wanted[6:].partition("-")
                    start, end = int(first), min(int(last or total - 1), total - 1)
                    body, status = body[start : end + 1], 206
                    extra["Content-Range"] = f"bytes {start}-{end}/{total}"
                self.send_response(status)
                if served.etag:
                    self.send_header("ETag", f'"{hashlib.md5(served.body).hexdigest()}"')  # noqa: S324
                self.send_header("Last-Modified", formatdate(served.modified_s, usegmt=True))
                for name, value in extra.items():
                    self.send_header(name, value)
                if served.length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                if not head:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base_url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str, token: str | None = None) -> str:
        return f"{self.base_url}{path}?token={token or self.token}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
