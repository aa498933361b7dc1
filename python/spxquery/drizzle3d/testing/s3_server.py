"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks, and a proxy that breaks it.

:class:`S3Server` runs moto's server mode (``moto.server.ThreadedMotoServer``, the ``moto[server]``
package of the test extra) on a free loopback port; :meth:`S3Server.upload_tree` puts a simulated
archive tree (``<release>/level2/...``, as in the mirror) into a bucket under the same keys as
IRSA's S3 copy. :class:`FaultProxy` sits between a client and the server and, by a fixed plan,
answers some object reads with ``503 SlowDown`` (S3's throttling answer) or drops the
connection half-way through the body, so that retries are exercised against real sockets.
Everything stays on 127.0.0.1; both stop with their context managers.
"""

from __future__ import annotations

import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

#: Credentials moto accepts for uploads (reads are anonymous).
TEST_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
                 b"<Message>Please reduce your request rate.</Message></Error>")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """moto's S3 server on ``127.0.0.1``; ``endpoint_url`` is its address."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.port = _free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.endpoint_url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "S3Server":
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()

    def client(self) -> Any:
        """A boto3 S3 client with upload rights on this server."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, region_name="us-east-1", **TEST_CREDENTIALS)

    def upload_tree(self, root: Path, bucket: str, prefix: str = "") -> Dict[str, int]:
        """Put every ``*.fits`` under ``root`` into ``bucket`` as ``prefix + <path relative to root>``,
        readable anonymously (the bucket is created when missing); returns ``{key: bytes}``."""
        s3 = self.client()
        if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=bucket)
        keys = {}
        for path in sorted(Path(root).rglob("*.fits")):
            key = prefix + path.relative_to(root).as_posix()
            s3.upload_file(str(path), bucket, key, ExtraArgs={"ACL": "public-read"})  # as IRSA's: anonymous reads
            keys[key] = path.stat().st_size
        return keys


class FaultProxy:
    """An HTTP proxy to ``upstream`` (``http://127.0.0.1:PORT``) that breaks object reads.

    Of the ranged ``GET`` requests (object reads), number ``n`` (1-based, counted over the
    proxy's life) is answered ``503 SlowDown`` when ``n % slowdown_every == 0`` and its
    connection dropped after half the body when ``n % drop_every == 0`` (0: never). With
    ``faults_per_request`` (0: no limit) the same request (path and range) is broken at most that
    many times, then forwarded: with several reads in flight the global count can otherwise land
    on one range's every retry. Everything else is forwarded unchanged. ``counts`` says what was
    done."""

    def __init__(self, upstream: str, *, slowdown_every: int = 0, drop_every: int = 0, faults_per_request: int = 0):
        host, port = upstream.split("://", 1)[-1].rstrip("/").split(":")
        self.upstream: Tuple[str, int] = (host, int(port))
        self.slowdown_every = int(slowdown_every)
        self.drop_every = int(drop_every)
        self.counts = {"forwarded": 0, "slowdown": 0, "dropped": 0}
        self.faults_per_request = int(faults_per_request)
        self._lock = threading.Lock()
        self._n = 0
        self._faulted: Dict[Tuple[str, str], int] = {}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                return

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.endpoint_url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="s3-fault-proxy", daemon=True)

    def __enter__(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def _fault(self, handler: BaseHTTPRequestHandler) -> Optional[str]:
        if handler.command != "GET" or "range" not in {k.lower() for k in handler.headers.keys()}:
            return None
        key = (handler.path, str(handler.headers.get("Range")))
        with self._lock:
            self._n += 1
            n = self._n
            if self.faults_per_request and self._faulted.get(key, 0) >= self.faults_per_request:
                return None
            fault = ("slowdown" if self.slowdown_every and n % self.slowdown_every == 0 else
                     "dropped" if self.drop_every and n % self.drop_every == 0 else None)
            if fault is not None:
                self._faulted[key] = self._faulted.get(key, 0) + 1
        return fault

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        fault = self._fault(handler)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        if fault == "slowdown":
            self._count("slowdown")
            handler.send_response(503, "Slow Down")
            handler.send_header("Content-Type", "application/xml")
            handler.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
            handler.end_headers()
            handler.wfile.write(SLOWDOWN_BODY)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(handler.command, handler.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        handler.send_response(resp.status, resp.reason)
        head = handler.command == "HEAD"  # its Content-Length is the object's: passed on as is
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "keep-alive", "transfer-encoding", "server", "date") \
                    and (head or k.lower() != "content-length"):
                handler.send_header(k, v)
        if not head:
            handler.send_header("Content-Length", str(len(data)))
        if fault == "dropped" and len(data) > 1:
            self._count("dropped")
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(data[: len(data) // 2])
            handler.wfile.flush()
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self._count("forwarded")
        handler.end_headers()
        if not head:
            handler.wfile.write(data)


def iter_keys(server: S3Server, bucket: str) -> Iterator[str]:
    """Every key of ``bucket``."""
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            yield obj["Key"]


__all__ = ["FaultProxy", "S3Server", "TEST_CREDENTIALS", "iter_keys"]
