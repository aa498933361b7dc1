"""The HTTP side of the simulated archive: request routing, TAP endpoints, files with Range.

One :class:`ArchiveHandler` per connection (HTTP/1.1, keep-alive) of a threading server.
Every request is recorded, then the server's fault plan may answer it instead (status,
delay) or alter the answer (cut body, wrong Content-Length, Range ignored). Files are served
from the archive root with ``Range: bytes=a-b`` (206 + Content-Range), Content-Length, ETag
and HEAD; a ``center``/``size`` query string asks for a cutout; a directory ending in ``/``
gets an HTML index. TAP: ``/sync``, ``/async`` (UWS), ``/availability``, ``/capabilities``,
``/tables``; SIA v2: ``/SIA``. The archive state (rows, jobs,
query execution, cutout cache) lives in :class:`~.archive_server.ArchiveServer`.
"""

from __future__ import annotations

import email.utils
import hashlib
import html
import logging
import re
import socket
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

from .cutouts import CutoutUnavailable
from .faults import Fault
from .tap_schema import AVAILABILITY, capabilities_xml, tables_xml
from .uws import UwsJob, uws_job_xml

if TYPE_CHECKING:
    from .archive_server import ArchiveServer

logger = logging.getLogger(__name__)

#: URL path prefix of the files (relative to the archive root).
DATA_PREFIX = "/ibe/data/spherex/"
#: URL path of the TAP service.
TAP_PREFIX = "/TAP"
#: URL path of the SIA v2 service.
SIA_PREFIX = "/SIA"
_VOTABLE = "application/x-votable+xml"


class QuietServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that logs client disconnects at debug level."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended abruptly: %r", client_address, sys.exc_info()[1])


def _form_fields(raw: bytes, ctype: str) -> dict[str, str]:
    """Fields of a POST body (multipart/form-data or urlencoded), names upper-cased."""
    params: dict[str, str] = {}
    if "multipart/form-data" in ctype:
        from email.parser import BytesParser
        from email.policy import HTTP

        msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
        for part in msg.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if isinstance(name, str) and name:
                payload = part.get_payload(decode=True)
                text = part.get_content() if part.get_content_type().startswith("text") else payload
                params[name.upper()] = text.decode() if isinstance(text, bytes) else str(text)
    else:
        for k, v in parse_qs(raw.decode(), keep_blank_values=True).items():
            params[k.upper()] = v[-1]
    return params


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a ``Range: bytes=a-b`` header for a body of ``size``
    bytes, or None when it cannot be satisfied."""
    m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if m.group(1) == "":
        start, end = max(0, size - int(m.group(2))), size - 1
    else:
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
    if start >= size or start > end:
        return None
    return start, end


def _listing(url_path: str, directory: Path) -> bytes:
    """An Apache-style HTML index of ``directory`` (served at ``url_path``): one link per entry,
    directories with a trailing slash, names sorted."""
    lines = [f"<html><head><title>Index of {html.escape(url_path)}</title></head><body>",
             f"<h1>Index of {html.escape(url_path)}</h1><pre>", '<a href="../">Parent Directory</a>']
    for entry in sorted(directory.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        name = entry.name + ("/" if entry.is_dir() else "")
        size = "-" if entry.is_dir() else str(entry.stat().st_size)
        lines.append(f'<a href="{quote(name)}">{html.escape(name)}</a>  {size}')
    lines.append("</pre></body></html>")
    return ("\n".join(lines) + "\n").encode()


class ArchiveHandler(BaseHTTPRequestHandler):
    """Requests to one :class:`~.archive_server.ArchiveServer` (set as ``archive`` on a subclass)."""

    archive: ArchiveServer
    protocol_version = "HTTP/1.1"
    server_version = "SpxArchiveSim/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    # -- plumbing -----------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(303, b"", headers={"Location": location})

    def _read_params(self) -> dict[str, str]:
        """Query-string and POST-body parameters, names upper-cased (the body wins)."""
        split = urlsplit(self.path)
        params = {k.upper(): v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if raw:
                params.update(_form_fields(raw, self.headers.get("Content-Type", "")))
        return params

    def _read_multi_params(self) -> dict[str, list[str]]:
        """Query-string and urlencoded POST parameters, names upper-cased, every value kept
        (SIA repeats parameters such as ``COLLECTION``)."""
        params: dict[str, list[str]] = {}
        split = urlsplit(self.path)
        sources = [split.query]
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            sources.append((self.rfile.read(length) if length else b"").decode())
        for text in sources:
            for k, v in parse_qs(text, keep_blank_values=True).items():
                params.setdefault(k.upper(), []).extend(v)
        return params

    def _fault(self, path: str) -> tuple[bool, Fault | None]:
        """Apply the next planned fault for ``path``; returns (answered, fault)."""
        fault = self.archive.faults.take(path)
        if fault is None:
            return False, None
        if fault.delay > 0:
            # sleep in small steps so server shutdown is not held up
            end = time.monotonic() + fault.delay
            while time.monotonic() < end and not self.archive.stopping:
                time.sleep(0.02)
        if fault.status is not None or fault.body is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if self.command == "POST":
                self._read_params()  # drain the body so the connection stays usable
            if fault.body is not None and (fault.alters_framing or fault.rate):  # e.g. an endless TAP answer
                self._send_body(fault.body, fault.status or 200, '"fault"', "", fault, fault.content_type)
            elif fault.body is not None:
                self._send(fault.status or 200, fault.body, fault.content_type, headers=headers)
            elif fault.status is not None:
                self._send(fault.status, f"injected fault: HTTP {fault.status}\n".encode(), headers=headers)
            return True, fault
        return False, fault

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.archive.record(method=self.command, path=path, query=split.query, range=self.headers.get("Range"))
        try:
            answered, fault = self._fault(path)
            if answered:
                return
            if path.startswith(DATA_PREFIX):
                self._serve_file(path[len(DATA_PREFIX):], split.query, fault)
            elif path.rstrip("/").startswith(TAP_PREFIX):
                self._serve_tap(path[len(TAP_PREFIX):].rstrip("/"))
            elif path.rstrip("/") == SIA_PREFIX:
                status, body = self.archive.run_sia(self._read_multi_params())
                self._send(status, body, _VOTABLE)
            else:
                self._send(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception as exc:  # a bug or a failing cutout function: answer 500, keep serving
            logger.exception("archive server error on %s %s", self.command, self.path)
            try:
                self._send(500, f"internal error: {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_HEAD = _dispatch
    do_DELETE = _dispatch

    # -- TAP ----------------------------------------------------------------
    def _serve_tap(self, sub: str) -> None:
        arch = self.archive
        if sub == "/availability":
            return self._send(200, AVAILABILITY, "text/xml")
        if sub == "/tables":
            return self._send(200, tables_xml(), "text/xml")
        if sub == "/capabilities":
            return self._send(200, capabilities_xml(arch.tap_url), "text/xml")
        if sub == "/sync":
            status, body = arch.run_query(self._read_params())
            return self._send(status, body, _VOTABLE)
        if sub == "/async":
            if self.command == "POST":
                params = self._read_params()
                job = arch.add_job(UwsJob(job_id=uuid.uuid4().hex[:12], query=params.get("QUERY", ""), params=params))
                if params.get("PHASE", "").upper() == "RUN":
                    arch.run_job(job)
                return self._redirect(f"{arch.tap_url}/async/{job.job_id}")
            return self._send(200, b'<uws:jobs xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0"/>', "text/xml")
        m = re.fullmatch(r"/async/(\w+)(/.*)?", sub)
        if m:
            found = arch.jobs.get(m.group(1))
            if found is None:
                return self._send(404, b"no such job\n")
            return self._serve_job(found, m.group(2) or "")
        return self._send(404, b"unknown TAP resource\n")

    def _serve_job(self, job: UwsJob, rest: str) -> None:
        """One UWS job resource: the job (GET, DELETE), ``/phase``, ``/results/result``, ``/error``."""
        arch = self.archive
        job_url = f"{arch.tap_url}/async/{job.job_id}"
        deleting = self.command == "DELETE" or (
            rest == "" and self.command == "POST" and self._read_params().get("ACTION", "").upper() == "DELETE"
        )
        if deleting:
            arch.remove_job(job.job_id)
            return self._redirect(f"{arch.tap_url}/async")
        if rest == "":
            return self._send(200, uws_job_xml(job, job_url), "text/xml")
        if rest == "/phase":
            if self.command == "POST":
                phase = self._read_params().get("PHASE", "").upper()
                if phase == "RUN" and job.phase == "PENDING":
                    arch.run_job(job)
                elif phase == "ABORT" and job.phase in ("PENDING", "QUEUED", "EXECUTING"):
                    job.phase = "ABORTED"
                return self._redirect(job_url)
            return self._send(200, job.phase.encode(), "text/plain")
        if rest in ("/results/result", "/results/result/"):
            if job.phase != "COMPLETED" or job.result is None:
                return self._send(404, b"job has no result\n")
            return self._send(200, job.result, _VOTABLE)
        if rest == "/error":
            return self._send(200, job.error.encode(), "text/plain")
        return self._send(404, b"unknown TAP resource\n")

    # -- files --------------------------------------------------------------
    def _file_content(self, path: Path, query: str) -> tuple[bytes, str] | None:
        """(body, ETag) of a file or of its cutout; None when an error was answered."""
        qs = parse_qs(query)
        if "center" not in qs and "size" not in qs:
            st = path.stat()
            return path.read_bytes(), f'"{st.st_size:x}-{int(st.st_mtime_ns):x}"'
        if "center" not in qs or "size" not in qs:
            self._send(400, b"cutouts need both center and size\n")
            return None
        try:
            data = self.archive.cutout_bytes(path, qs)
        except CutoutUnavailable as exc:
            self._send(501, f"{exc}\n".encode())
            return None
        except ValueError as exc:
            self._send(400, f"bad cutout request: {exc}\n".encode())
            return None
        return data, '"' + hashlib.md5(data).hexdigest() + '"'

    def _serve_file(self, rel: str, query: str, fault: Fault | None) -> None:
        if self.command not in ("GET", "HEAD"):
            return self._send(405, b"method not allowed\n")
        path = self.archive.local_file(rel)
        if path is None:
            directory = self.archive.local_dir(rel)
            if directory is not None and (rel == "" or rel.endswith("/")):
                return self._send(200, _listing(DATA_PREFIX + rel, directory), "text/html")
            return self._send(404, f"no such file: {rel}\n".encode())
        content = self._file_content(path, query)
        if content is None:
            return None
        data, etag = content
        size = len(data)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and not (fault is not None and fault.ignore_range):
            span = _byte_range(rng, size)
            if span is None:
                return self._send(416, b"range not satisfiable\n", headers={"Content-Range": f"bytes */{size}"})
            (start, end), status = span, 206
        self._send_body(data[start:end + 1], status, etag, f"bytes {start}-{end}/{size}", fault)
        return None

    def _send_body(self, body: bytes, status: int, etag: str, content_range: str, fault: Fault | None,
                   content_type: str = "application/fits") -> None:
        """Send a file body (or a fault's body) in chunks; a fault may announce a wrong length,
        cut the body, trickle it, append junk or send no length."""
        extra = fault.extra_bytes if fault else 0
        advertised = len(body) + extra + (fault.content_length_delta if fault else 0)
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if not (fault is not None and fault.no_length):
            self.send_header("Content-Length", str(advertised))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(usegmt=True))
        if status == 206:
            self.send_header("Content-Range", content_range)
        if fault is not None and fault.alters_framing:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = len(body) + extra
        if fault is not None and fault.drop_after is not None:
            limit = min(limit, fault.drop_after)
        rate = fault.rate if fault is not None else None
        step = self.archive.chunk_size if not rate else max(1, min(self.archive.chunk_size, int(rate / 20)))
        i = 0
        while i < limit and not self.archive.stopping:
            n = min(step, limit - i)
            piece = body[i:i + n] if i + n <= len(body) else body[i:] + b"\0" * (i + n - max(i, len(body)))
            self.wfile.write(piece)
            i += n
            if rate:
                self.wfile.flush()
                time.sleep(n / rate)
        self.wfile.flush()
        if fault is not None and fault.drop_after is not None:
            try:  # abrupt close mid-body
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
