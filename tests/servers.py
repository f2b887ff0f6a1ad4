"""Servers for the object-storage tests and benchmark, on 127.0.0.1, started and stopped by them.

* :func:`moto_s3` — an S3 API server (moto's ``ThreadedMotoServer``) with fake credentials
  (:func:`s3_serving`: one holding given files, the credentials set for the block);
* :class:`RangeHTTPServer` — a static HTTP server of a folder that honours ``Range`` (the
  standard library's does not), with ``ETag`` and ``Content-Length`` on ``HEAD``;
* :class:`FaultProxy` — a reverse proxy of our own in front of either: a latency per request
  (fixed or uniform in a range), and with given probabilities a ``503 SlowDown``, a connection
  reset (RST, no answer) or a truncated body (the full ``Content-Length`` announced, half the
  body sent, then the connection closed). Faults are drawn from a seeded generator, and one
  request (method, path, range) is faulted at most ``max_faults`` times in a row, so a reader that
  retries more often than that always gets through. ``always_fail`` paths answer 503 every time;
  with ``refuse_signed`` a GET signed in its query string (a presigned URL) answers 403.
  The proxy counts requests and body bytes by method (what the reader cost on the wire), and
  GETs signed in the query string (``signed:GET``).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import random
import re
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["FaultProxy", "RangeHTTPServer", "fake_aws_env", "moto_s3", "s3_serving", "s3_upload"]

_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "upgrade"}
_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Quiet(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:  # resets are expected
        pass


def _serve(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- S3 (moto)


def fake_aws_env() -> dict[str, str]:
    """Environment of fake credentials for moto (never real ones)."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@contextlib.contextmanager
def moto_s3() -> Iterator[str]:
    """An S3 API server on 127.0.0.1 (a free port) for the duration of the block; yields its
    endpoint URL. Set :func:`fake_aws_env` in the environment of the clients."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_upload(endpoint: str, bucket: str, files: dict[str, Path | bytes]) -> None:
    """Create ``bucket`` on the server at ``endpoint`` and upload ``{key: local file or bytes}``."""
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=bucket)
    for key, data in files.items():
        if isinstance(data, bytes):
            client.put_object(Bucket=bucket, Key=key, Body=data)
        else:
            client.upload_file(str(data), bucket, key)


@contextlib.contextmanager
def s3_serving(bucket: str, files: dict[str, Path | bytes]) -> Iterator[str]:
    """:func:`moto_s3` holding ``files`` (:func:`s3_upload`) in ``bucket``, with
    :func:`fake_aws_env` in ``os.environ`` for the block (the environment is restored after it);
    yields the endpoint URL."""
    saved = dict(os.environ)
    os.environ.update(fake_aws_env())
    try:
        with moto_s3() as endpoint:
            s3_upload(endpoint, bucket, files)
            yield endpoint
    finally:
        os.environ.clear()
        os.environ.update(saved)


# ------------------------------------------------------------------------- HTTP + Range


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _file(self) -> Path | None:
        rel = self.path.split("?", 1)[0].lstrip("/")
        path = (self.server.root / rel).resolve()
        if self.server.root not in path.parents or not path.is_file():
            return None
        return path

    def _headers(self, status: int, length: int, extra: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def do_GET(self) -> None:
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        path = self._file()
        if path is None:
            self._headers(404, 0, {})
            return
        st = path.stat()
        meta = {"ETag": f'"{st.st_size:x}-{st.st_mtime_ns:x}"', "Accept-Ranges": "bytes"}
        size = st.st_size
        start, end = 0, size
        status = 200
        rng = self.headers.get("Range")
        if rng:
            m = _RANGE.match(rng.strip())
            if m is None or int(m.group(1)) >= size:
                self._headers(416, 0, {"Content-Range": f"bytes */{size}"})
                return
            start = int(m.group(1))
            end = min(size, int(m.group(2)) + 1) if m.group(2) else size
            status = 206
            meta["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self._headers(status, end - start, meta)
        if body:
            with open(path, "rb") as f:
                self.wfile.write(os.pread(f.fileno(), end - start, start))


class RangeHTTPServer:
    """Serves the files of ``root`` on 127.0.0.1 (a free port) with ``Range`` support; use as a
    context manager; ``url`` is its base URL."""

    def __init__(self, root: str | Path) -> None:
        self.server = _Quiet(("127.0.0.1", 0), _FileHandler)
        self.server.root = Path(root).resolve()  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RangeHTTPServer:
        self._thread = _serve(self.server)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------ proxy


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.proxy.handle(self)

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET


def _s3_error(h: BaseHTTPRequestHandler, status: int, code: str, message: str) -> None:
    """Answer with an S3-style XML error body."""
    msg = (
        "<?xml version='1.0' encoding='UTF-8'?>"
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/xml")
    h.send_header("Content-Length", str(len(msg)))
    h.end_headers()
    h.wfile.write(msg)


class FaultProxy:
    """A reverse proxy to ``upstream`` (``http://host:port``) injecting latency and faults (see the
    module docstring). ``latency`` is seconds, or ``(low, high)`` for a uniform draw. Use as a
    context manager; ``url`` is its base URL; ``counts`` has ``requests:<METHOD>``,
    ``bytes:<METHOD>`` and one ``fault:<kind>`` per injected fault."""

    def __init__(
        self,
        upstream: str,
        *,
        latency: float | tuple[float, float] = 0.0,
        p_503: float = 0.0,
        p_reset: float = 0.0,
        p_truncate: float = 0.0,
        max_faults: int = 2,
        seed: int = 0,
        always_fail: tuple[str, ...] = (),
        refuse_signed: bool = False,
    ) -> None:
        m = re.match(r"https?://([^:/]+):(\d+)", upstream)
        if m is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream}")
        self.upstream = (m.group(1), int(m.group(2)))
        self.latency = latency
        self.p = (p_503, p_reset, p_truncate)
        self.max_faults = max_faults
        self.always_fail = always_fail
        self.refuse_signed = refuse_signed
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        #: (method, path, Range) of every request since :meth:`reset_counts`.
        self.requests: list[tuple[str, str, str]] = []
        #: Most GET requests seen in flight at once (since :meth:`reset_counts`).
        self.max_in_flight = 0
        self._in_flight = 0
        self._faulted: Counter[tuple[str, str, str]] = Counter()
        self._local = threading.local()
        self.server = _Quiet(("127.0.0.1", 0), _ProxyHandler)
        self.server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        _serve(self.server)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset_counts(self) -> None:
        """Start counting again (requests, bytes, faults)."""
        with self.lock:
            self.counts.clear()
            self.requests.clear()
            self.max_in_flight = 0

    def _draw(self, key: tuple[str, str, str]) -> tuple[float, str | None]:
        with self.lock:
            lat = self.latency if isinstance(self.latency, (int, float)) else self.rng.uniform(*self.latency)
            if any(part in key[1] for part in self.always_fail) and key[0] == "GET":
                return lat, "503"
            u = self.rng.random()
            kind = None
            edge = 0.0
            for name, p in zip(("503", "reset", "truncate"), self.p, strict=True):
                edge += p
                if u < edge:
                    kind = name
                    break
            if kind is not None and key[0] == "GET" and self._faulted[key] < self.max_faults:
                self._faulted[key] += 1
            else:
                if kind is not None:
                    kind = None
                self._faulted[key] = 0
            return lat, kind

    def _upstream(self) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        return conn

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> http.client.HTTPResponse:
        for attempt in range(2):  # a kept-alive upstream connection may have been closed
            conn = self._upstream()
            try:
                conn.request(method, path, body=body or None, headers=headers)
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def handle(self, h: _ProxyHandler) -> None:
        """Answer one request (called in the request's thread)."""
        get = h.command == "GET"
        with self.lock:
            self._in_flight += get
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        try:
            self._handle(h)
        finally:
            with self.lock:
                self._in_flight -= get

    def _handle(self, h: _ProxyHandler) -> None:
        method = h.command
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length) if length else b""
        key = (method, h.path.split("?", 1)[0], h.headers.get("Range", ""))
        lat, fault = self._draw(key)
        signed = method == "GET" and re.search(r"[?&](X-Amz-)?Signature=", h.path) is not None
        with self.lock:
            self.counts[f"requests:{method}"] += 1
            self.counts["signed:GET"] += signed
            self.requests.append(key)
            if fault:
                self.counts[f"fault:{fault}"] += 1
        if lat:
            time.sleep(lat)
        if signed and self.refuse_signed:
            _s3_error(h, 403, "AccessDenied", "Query-string authentication is not allowed")
            return
        if fault == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            h.close_connection = True
            h.connection.close()
            return
        if fault == "503":
            _s3_error(h, 503, "SlowDown", "Please reduce your request rate.")
            return
        headers = {k: v for k, v in h.headers.items() if k.lower() not in _HOP}
        resp = self._forward(method, h.path, headers, body)
        data = resp.read()
        h.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() in _HOP or (k.lower() == "content-length" and method != "HEAD"):
                continue
            h.send_header(k, v)
        if method != "HEAD":
            h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if fault == "truncate" and len(data) > 1:
            h.wfile.write(data[: len(data) // 2])
            h.wfile.flush()
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        h.wfile.write(data)
        with self.lock:
            self.counts[f"bytes:{method}"] += len(data)
