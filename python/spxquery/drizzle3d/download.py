"""Parallel, verified, resumable HTTP downloads of FITS files.

Each file is streamed to ``<final>.part``; a broken transfer keeps the
``.part`` and resumes with ``Range: bytes=<size>-`` (restarting from zero
when the server answers 200). A file gets its final name (``os.replace``,
atomic on one filesystem) only after it is verified: byte count equal to the
server's full length (Content-Length or the total of Content-Range) and to the
archive's ``contentlength`` when known, every HDU of the FITS structure
present up to the last byte, and the archive checksum (``md5:<hex>``) when
known. 429 (``Retry-After`` honoured up to :data:`MAX_RETRY_AFTER` s), 408,
5xx, connection errors and timeouts are retried with exponential backoff and
jitter; other HTTP errors fail the file at once. Failures are collected per
file, never raised for one file.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import os
import random
import re
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import requests
from requests.adapters import HTTPAdapter

logger = logging.getLogger(__name__)

#: Default first backoff delay (s); delay n = base * 2**(n-1) * U(0.5, 1.5), capped at MAX_BACKOFF.
DEFAULT_BACKOFF_BASE = 1.0
#: Longest backoff between two attempts (s).
MAX_BACKOFF = 60.0
#: Longest server-requested ``Retry-After`` we honour (s).
MAX_RETRY_AFTER = 120.0
#: Streaming chunk size (bytes). A transfer broken mid-chunk loses that chunk
#: (urllib3 discards a short read), so the resume offset is a multiple of it.
CHUNK_SIZE = 1 << 16
#: HTTP statuses worth retrying besides every 5xx.
RETRY_STATUS = frozenset({408, 425, 429})

USER_AGENT = "spxquery-drizzle3d (+https://github.com/spxquery)"

_FITS_BLOCK = 2880


class DownloadFailed(RuntimeError):
    """One file could not be fetched and verified; the message names URL and reason."""


@dataclass
class DownloadTask:
    """One file to fetch: ``url`` -> ``dest``; ``expected_length`` (bytes) and
    ``checksum`` (``"md5:<hex>"``) come from the archive when known;
    ``required_hdus`` = EXTNAMEs the file must contain (catches a transfer cut
    exactly at an HDU boundary when no length is known, e.g. cutouts)."""

    url: str
    dest: Path
    expected_length: Optional[int] = None
    checksum: Optional[str] = None
    required_hdus: Tuple[str, ...] = ()


@dataclass
class DownloadFailure:
    """A file that ended without a verified copy."""

    url: str
    dest: Path
    reason: str


@dataclass
class DownloadReport:
    """Outcome of :func:`download_files`. ``paths`` follows the input order
    (``None`` for failures); ``downloaded``/``skipped`` are verified files."""

    requested: int = 0
    paths: List[Optional[Path]] = field(default_factory=list)
    downloaded: List[Path] = field(default_factory=list)
    skipped: List[Path] = field(default_factory=list)
    failures: List[DownloadFailure] = field(default_factory=list)
    bytes_received: int = 0
    retries: int = 0
    resumed: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def verified(self) -> List[Path]:
        """Verified paths in input order."""
        return [p for p in self.paths if p is not None]

    def summary(self) -> str:
        text = (
            f"{len(self.verified)}/{self.requested} files ready "
            f"({len(self.downloaded)} downloaded, {len(self.skipped)} already complete, "
            f"{len(self.failures)} failed); {self.bytes_received / 1e6:.1f} MB received, "
            f"{self.retries} retries, {self.resumed} resumed transfers"
        )
        if self.failures:
            text += "; failed: " + "; ".join(f"{f.url}: {f.reason}" for f in self.failures[:10])
            if len(self.failures) > 10:
                text += f"; ... and {len(self.failures) - 10} more"
        return text


class _Retryable(Exception):
    def __init__(self, reason: str, *, retry_after: Optional[float] = None, keep_part: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.keep_part = keep_part


class _Fatal(Exception):
    pass


# ----------------------------------------------------------------------------
# Verification
# ----------------------------------------------------------------------------


def _file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_SIZE), b""):
            h.update(block)
    return h.hexdigest()


def check_fits_file(
    path: Path,
    expected_length: Optional[int] = None,
    checksum: Optional[str] = None,
    required_hdus: Sequence[str] = (),
) -> Optional[str]:
    """Why ``path`` is not a complete FITS file, or ``None`` when it is.

    Checks: exists; size == ``expected_length`` (bytes) when given; size is a
    whole number of 2880-byte blocks; astropy reads every HDU header and the
    last HDU's data ends exactly at the end of the file; every EXTNAME in
    ``required_hdus`` is present; the digest matches ``checksum``
    (``"<alg>:<hex>"``, e.g. ``md5:...``) when given.
    """
    from astropy.io import fits

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if expected_length is not None and size != int(expected_length):
        return f"size {size} bytes != expected {int(expected_length)} bytes"
    if size == 0 or size % _FITS_BLOCK:
        return f"size {size} bytes is not a whole number of 2880-byte FITS blocks"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                n = len(hdul)
                if n == 0:
                    return "no HDU"
                end = 0
                for i in range(n):
                    info = hdul[i].fileinfo()  # HDUList.fileinfo re-serialises all headers
                    end = max(end, int(info["datLoc"]) + int(info["datSpan"]))
                names = {str(h.name).upper() for h in hdul}
        for w in caught:
            if "truncat" in str(w.message).lower():
                return f"FITS truncated: {w.message}"
    except Exception as exc:  # astropy raises OSError/ValueError/... on garbage
        return f"not readable as FITS ({type(exc).__name__}: {exc})"
    if end != size:
        return f"FITS structure ends at byte {end} but the file has {size} bytes"
    missing = [h for h in required_hdus if h.upper() not in names]
    if missing:
        return f"missing extension(s) {', '.join(missing)} (have {', '.join(sorted(names))})"
    if checksum:
        alg, _, want = checksum.partition(":")
        alg = alg.strip().lower()
        if want and alg in hashlib.algorithms_available:
            got = _file_digest(path, alg)
            if got.lower() != want.strip().lower():
                return f"{alg} checksum {got} != archive {want.strip()}"
        else:
            logger.debug("ignoring checksum of unknown form %r for %s", checksum, path)
    return None


def is_complete_fits(path: Path, expected_length: Optional[int] = None, required_hdus: Sequence[str] = ()) -> bool:
    """True when ``path`` is a complete FITS file (size, structure, required
    extensions; see :func:`check_fits_file`)."""
    return check_fits_file(path, expected_length, required_hdus=required_hdus) is None


# ----------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------


def make_session(max_workers: int = 4) -> requests.Session:
    """A ``requests.Session`` whose connection pool fits ``max_workers`` threads
    (urllib3 retries disabled: retries are ours)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(4, int(max_workers)), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """``Retry-After`` (seconds or HTTP date) -> seconds >= 0, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, retry_after: Optional[float] = None) -> float:
    """Delay (s) before retry number ``attempt`` (1-based): exponential with
    jitter, at least the server's ``Retry-After`` (capped)."""
    delay = min(MAX_BACKOFF, base * (2 ** (attempt - 1))) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


_RE_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


class _Fetcher:
    """Fetch one task with retries; reports bytes through ``on_bytes``."""

    def __init__(
        self,
        session: requests.Session,
        task: DownloadTask,
        *,
        timeout: float,
        retries: int,
        backoff_base: float,
        on_bytes: Callable[[int], None],
        on_total: Callable[[int], None],
        verify_checksum: bool,
        chunk_size: int = CHUNK_SIZE,
    ) -> None:
        self.chunk_size = int(chunk_size)
        self.session = session
        self.task = task
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.on_bytes = on_bytes
        self.on_total = on_total
        self.verify_checksum = verify_checksum
        self.part = _part_path(task.dest)
        self.etag: Optional[str] = None
        self.total_announced = task.expected_length is not None
        self.retries_used = 0
        self.resumed = 0
        self.received = 0

    def _discard_part(self) -> None:
        if self.part.exists():
            size = self.part.stat().st_size
            self.part.unlink()
            self.on_bytes(-size)

    def run(self) -> Path:
        task = self.task
        task.dest.parent.mkdir(parents=True, exist_ok=True)
        attempt = 0
        while True:
            try:
                total = self._attempt()
                expected = task.expected_length if task.expected_length is not None else total
                checksum = task.checksum if self.verify_checksum else None
                reason = check_fits_file(self.part, expected, checksum, task.required_hdus)
                if reason is not None:
                    raise _Retryable(f"verification failed: {reason}", keep_part=False)
                os.replace(self.part, task.dest)
                return task.dest
            except _Retryable as exc:
                if not exc.keep_part:
                    self._discard_part()
                attempt += 1
                if attempt > self.retries:
                    raise DownloadFailed(f"{exc.reason} (gave up after {attempt} attempts)") from None
                delay = backoff_delay(attempt, self.backoff_base, exc.retry_after)
                logger.info("retry %d/%d of %s in %.2f s: %s", attempt, self.retries, task.url, delay, exc.reason)
                self.retries_used += 1
                time.sleep(delay)
            except _Fatal as exc:
                self._discard_part()
                raise DownloadFailed(str(exc)) from None

    def _attempt(self) -> Optional[int]:
        """One HTTP exchange appending to ``.part``; returns the full resource
        length (bytes) when the server stated it."""
        task = self.task
        offset = self.part.stat().st_size if self.part.exists() else 0
        if task.expected_length is not None and offset > task.expected_length:
            self._discard_part()
            offset = 0
        # identity: byte counts and Range offsets must refer to the file itself
        headers: Dict[str, str] = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if self.etag:
                headers["If-Range"] = self.etag
        try:
            with self.session.get(task.url, headers=headers, stream=True, timeout=self.timeout) as r:
                status = r.status_code
                if status == 416 and offset > 0:
                    m = re.search(r"/(\d+)", r.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset:
                        return offset  # the .part already holds the whole resource
                    raise _Retryable(f"HTTP 416 resuming at byte {offset}", keep_part=False)
                if status in RETRY_STATUS or 500 <= status < 600:
                    raise _Retryable(f"HTTP {status} {r.reason}", retry_after=parse_retry_after(r.headers.get("Retry-After")))
                if status not in (200, 206):
                    raise _Fatal(f"HTTP {status} {r.reason}")
                body_len = _int_header(r.headers.get("Content-Length"))
                if status == 206:
                    m = _RE_CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        raise _Retryable(
                            f"bad Content-Range {r.headers.get('Content-Range')!r} for a resume at byte {offset}",
                            keep_part=False,
                        )
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode = "ab"
                    self.resumed += 1
                else:
                    if offset > 0:
                        logger.debug("%s: server ignored Range, restarting from byte 0", task.url)
                        self.on_bytes(-offset)
                    total = body_len
                    mode = "wb"
                    offset = 0
                if total is not None and task.expected_length is not None and total != task.expected_length:
                    raise _Retryable(
                        f"server length {total} bytes != archive contentlength {task.expected_length} bytes",
                        keep_part=False,
                    )
                if total is not None and not self.total_announced:
                    self.on_total(total)
                    self.total_announced = True
                self.etag = r.headers.get("ETag") or self.etag
                got = 0
                with open(self.part, mode) as f:
                    for chunk in r.iter_content(self.chunk_size):
                        if chunk:
                            f.write(chunk)
                            got += len(chunk)
                            self.received += len(chunk)
                            self.on_bytes(len(chunk))
                if body_len is not None and got != body_len:
                    raise _Retryable(f"connection ended after {got} of {body_len} bytes")
                return total
        except _TRANSIENT as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None


def _int_header(value: Optional[str]) -> Optional[int]:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


class _Progress:
    """Thread-safe byte counter feeding one tqdm bar."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        from tqdm.auto import tqdm

        self._lock = threading.Lock()
        self.bar = tqdm(
            total=total or None, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled
        )
        self.net = 0

    def add(self, n: int) -> None:
        with self._lock:
            self.net += n
            self.bar.update(n)

    def grow(self, n: int) -> None:
        with self._lock:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def download_files(
    tasks: Sequence[DownloadTask],
    *,
    max_workers: int = 4,
    skip_existing: bool = True,
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: Optional[float] = None,
    progress: bool = True,
    session: Optional[requests.Session] = None,
    verify_checksum: bool = True,
    desc: str = "download",
    chunk_size: int = CHUNK_SIZE,
) -> DownloadReport:
    """Fetch ``tasks`` with ``max_workers`` threads over one shared session.

    ``timeout`` (s) applies to connecting and to each socket read; ``retries``
    is the number of extra attempts per file; ``backoff_base`` (s) defaults to
    :data:`DEFAULT_BACKOFF_BASE`; ``chunk_size`` (bytes) is the streaming unit. Existing final files are kept only when
    complete (:func:`is_complete_fits`), otherwise fetched again. Never raises
    for a single file: see ``DownloadReport.failures``.
    """
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {max_workers}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if not (timeout > 0):
        raise ValueError(f"timeout must be > 0 s, got {timeout}")
    base = DEFAULT_BACKOFF_BASE if backoff_base is None else float(backoff_base)
    report = DownloadReport(requested=len(tasks), paths=[None] * len(tasks))

    # One transfer per destination, even if the input repeats a file.
    by_dest: Dict[Path, List[int]] = {}
    unique: List[DownloadTask] = []
    for i, task in enumerate(tasks):
        key = Path(task.dest).resolve()
        if key not in by_dest:
            by_dest[key] = []
            unique.append(task)
        by_dest[key].append(i)

    todo: List[DownloadTask] = []
    for task in unique:
        if task.dest.exists():
            if skip_existing:
                reason = check_fits_file(task.dest, task.expected_length, required_hdus=task.required_hdus)
                if reason is None:
                    report.skipped.append(task.dest)
                    for i in by_dest[Path(task.dest).resolve()]:
                        report.paths[i] = task.dest
                    continue
                logger.warning("existing %s is not complete (%s); downloading it again", task.dest, reason)
        todo.append(task)

    if not todo:
        logger.info("download: %s", report.summary())
        return report

    own_session = session is None
    sess = make_session(max_workers) if own_session else session
    total_known = sum(t.expected_length for t in todo if t.expected_length is not None)
    bar = _Progress(total_known, progress, desc)

    def work(task: DownloadTask) -> Tuple[DownloadTask, Optional[Path], Optional[str], _Fetcher]:
        fetcher = _Fetcher(
            sess, task, timeout=timeout, retries=retries, backoff_base=base,
            on_bytes=bar.add, on_total=bar.grow, verify_checksum=verify_checksum, chunk_size=chunk_size,
        )
        try:
            return task, fetcher.run(), None, fetcher
        except DownloadFailed as exc:
            return task, None, str(exc), fetcher
        except OSError as exc:  # local disk problems: name them, do not kill the batch
            return task, None, f"local file error: {exc}", fetcher

    try:
        with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="spx-dl") as pool:
            for task, path, error, fetcher in pool.map(work, todo):  # input order
                report.bytes_received += fetcher.received
                report.retries += fetcher.retries_used
                report.resumed += fetcher.resumed
                if path is not None:
                    report.downloaded.append(path)
                    for i in by_dest[Path(task.dest).resolve()]:
                        report.paths[i] = path
                else:
                    reason = error or "unknown error"
                    report.failures.append(DownloadFailure(task.url, task.dest, reason))
                    logger.error("download failed: %s -> %s: %s", task.url, task.dest, reason)
    finally:
        bar.close()
        if own_session:
            sess.close()

    if report.failures:
        logger.warning("download: %s", report.summary())
    else:
        logger.info("download: %s", report.summary())
    return report
