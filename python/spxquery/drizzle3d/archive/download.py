"""Parallel, verified, resumable HTTP downloads of FITS files (the transfer engine).

Each file is streamed to ``<final>.part``; a broken transfer keeps the
``.part`` and resumes with ``Range: bytes=<size>-`` (restarting from zero
when the server answers 200). A file gets its final name (``os.replace``,
atomic on one filesystem) only after it is verified (:mod:`.verify`): byte
count equal to the server's full length (Content-Length or the total of
Content-Range) and to the archive's ``contentlength`` when known, every HDU of
the FITS structure present up to the last byte, and the archive checksum
(``md5:<hex>``) when known. 429 (``Retry-After`` honoured up to
:data:`~.retry.MAX_RETRY_AFTER` s), 408, 5xx, connection errors and timeouts
are retried with exponential backoff and jitter (:mod:`.retry`); other HTTP
errors fail the file at once. Failures are collected per file, never raised
for one file.

Budgets: a body is never written past the file's length (the archive's, else the
server's, else :data:`MAX_UNSTATED_BYTES`); each file has one deadline for all its
attempts together (``deadline`` s); Ctrl-C (or any exception in the calling thread)
stops every running transfer within about a second (:mod:`.guard`), leaving only
``.part`` files, which a later run resumes. A file kept from an earlier run is reused
only after the same checks as a download, archive checksum included; a record beside
it (:func:`~.verify.verify_cached`) spares rehashing it on later runs.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import requests

from ..textlimits import short_repr, short_text
from .guard import TransferGuard, TransferStopped, Watchdog, make_session
from .locations import source_key
from .retry import backoff_base as _backoff_base
from .retry import backoff_delay, is_retryable_status, parse_retry_after
from .verify import check_fits_file, verify_cached, write_record

logger = logging.getLogger(__name__)

#: Streaming chunk size (bytes). A transfer broken mid-chunk loses that chunk
#: (urllib3 discards a short read), so the resume offset is a multiple of it.
CHUNK_SIZE = 1 << 16
#: Longest file (bytes) accepted when neither the archive nor the server states its length
#: (cutouts); a full SPHEREx frame is ~70 MB, a cutout ~5 MB.
MAX_UNSTATED_BYTES = 1 << 30
#: Default time budget (s) of one file, all attempts and waits included.
DEFAULT_DEADLINE = 900.0
#: How long (s) an interrupted batch waits for its transfers to stop before it returns.
CANCEL_GRACE = 1.0


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
    expected_length: int | None = None
    checksum: str | None = None
    required_hdus: tuple[str, ...] = ()


@dataclass
class DownloadFailure:
    """A file that ended without a verified copy."""

    url: str
    dest: Path
    reason: str


@dataclass
class DownloadReport:
    """Outcome of :func:`download_files` (or of resolving files in a mirror).
    ``paths`` follows the input order (``None`` for failures);
    ``downloaded``/``skipped`` are verified files."""

    requested: int = 0
    paths: list[Path | None] = field(default_factory=list)
    downloaded: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failures: list[DownloadFailure] = field(default_factory=list)
    bytes_received: int = 0
    retries: int = 0
    resumed: int = 0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def verified(self) -> list[Path]:
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


class _RetryableError(Exception):
    def __init__(self, reason: str, *, retry_after: float | None = None, keep_part: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.keep_part = keep_part


class _FatalError(Exception):
    pass


_RE_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_TRANSIENT = (
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _int_header(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        return None
    return n if n >= 0 else None


class _Fetcher:
    """Fetch one task with retries under ``guard`` (deadline, cancellation); reports
    bytes through ``on_bytes``."""

    def __init__(
        self,
        session: requests.Session,
        task: DownloadTask,
        guard: TransferGuard,
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
        self.guard = guard
        self.timeout = timeout
        self.retries = retries
        self.backoff_base = backoff_base
        self.on_bytes = on_bytes
        self.on_total = on_total
        self.verify_checksum = verify_checksum
        self.part = _part_path(task.dest)
        self.etag: str | None = None
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
        last = ""
        while True:
            try:
                self.guard.check()
                total = self._attempt()
                expected = task.expected_length if task.expected_length is not None else total
                checksum = task.checksum if self.verify_checksum else None
                reason = check_fits_file(self.part, expected, checksum, task.required_hdus)
                if reason is not None:
                    raise _RetryableError(f"verification failed: {reason}", keep_part=False)
                os.replace(self.part, task.dest)
                write_record(task.dest, source_key(task.url), checksum, task.required_hdus)
                return task.dest
            except _RetryableError as exc:
                if not exc.keep_part:
                    self._discard_part()
                last = exc.reason
                attempt += 1
                if attempt > self.retries:
                    raise DownloadFailed(f"{exc.reason} (gave up after {attempt} attempts)") from None
                delay = backoff_delay(attempt, self.backoff_base, exc.retry_after)
                logger.info("retry %d/%d of %s in %.2f s: %s", attempt, self.retries, task.url, delay, exc.reason)
                self.retries_used += 1
                self.guard.sleep(delay)
            except _FatalError as exc:
                self._discard_part()
                raise DownloadFailed(str(exc)) from None
            except TransferStopped as stop:
                if stop.cancelled:
                    raise
                raise DownloadFailed(stop.reason + (f"; last error: {last}" if last else "")) from None

    def _resume_offset(self) -> int:
        """Bytes already in ``.part`` that a Range request can continue from."""
        offset = self.part.stat().st_size if self.part.exists() else 0
        limit = self.task.expected_length if self.task.expected_length is not None else MAX_UNSTATED_BYTES
        if offset > limit:
            self._discard_part()
            offset = 0
        return offset

    def _attempt(self) -> int | None:
        """One HTTP exchange appending to ``.part``; returns the full resource
        length (bytes) when the server stated it."""
        offset = self._resume_offset()
        # identity: byte counts and Range offsets must refer to the file itself
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if offset > 0:
            headers["Range"] = f"bytes={offset}-"
            if self.etag:
                headers["If-Range"] = self.etag
        try:
            with self.guard.active(), self.session.get(
                self.task.url, headers=headers, stream=True, timeout=self.timeout
            ) as r:
                # sessions made elsewhere do not register their connections: do it here
                self.guard.attach(getattr(r.raw, "connection", None) or getattr(r.raw, "_connection", None))
                self.guard.check()
                if r.status_code == 416 and offset > 0:
                    m = re.search(r"/(\d+)", r.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset:
                        return offset  # the .part already holds the whole resource
                    raise _RetryableError(f"HTTP 416 resuming at byte {offset}", keep_part=False)
                total, mode = self._accept(r, offset)
                self._stream(r, mode, offset, total)
        except _TRANSIENT as exc:
            self.guard.check()  # an exchange broken by the guard ends with the guard's reason
            raise _RetryableError(f"{type(exc).__name__}: {short_text(str(exc))}") from None
        except _RetryableError:
            self.guard.check()
            raise
        self.guard.check()  # a body cut by the guard must not reach verification
        return total

    def _accept(self, r: requests.Response, offset: int) -> tuple[int | None, str]:
        """Check the answer to a request resuming at ``offset``: (full length
        in bytes or None, file mode for ``.part``)."""
        task, status = self.task, r.status_code
        if is_retryable_status(status):
            retry_after = parse_retry_after(r.headers.get("Retry-After"))
            raise _RetryableError(f"HTTP {status} {short_text(r.reason)}", retry_after=retry_after)
        if status not in (200, 206):
            raise _FatalError(f"HTTP {status} {short_text(r.reason)}")
        if status == 206:
            m = _RE_CONTENT_RANGE.match(r.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise _RetryableError(
                    f"bad Content-Range {short_text(r.headers.get('Content-Range'))!r} for a resume at byte {offset}",
                    keep_part=False,
                )
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
            self.resumed += 1
        else:
            if offset > 0:
                logger.debug("%s: server ignored Range, restarting from byte 0", task.url)
                self.on_bytes(-offset)
            total = _int_header(r.headers.get("Content-Length"))
            mode = "wb"
        if total is not None and task.expected_length is not None and total != task.expected_length:
            raise _RetryableError(
                f"server length {total} bytes != archive contentlength {task.expected_length} bytes",
                keep_part=False,
            )
        if total is not None and task.expected_length is None and total > MAX_UNSTATED_BYTES:
            raise _FatalError(f"server announces {total} bytes, more than the {MAX_UNSTATED_BYTES} bytes "
                              "accepted for a file of unstated length")
        if total is not None and not self.total_announced:
            self.on_total(total)
            self.total_announced = True
        self.etag = r.headers.get("ETag") or self.etag
        return total, mode

    def _stream(self, r: requests.Response, mode: str, offset: int, total: int | None) -> None:
        """Write the body of ``r`` to ``.part`` (``mode`` "ab" at byte ``offset``, or "wb"),
        never past the file's length; a body shorter than its Content-Length is a broken
        transfer, one longer than the file is refused."""
        body_len = _int_header(r.headers.get("Content-Length"))
        full = self.task.expected_length if self.task.expected_length is not None else total
        allowed = (full if full is not None else MAX_UNSTATED_BYTES) - (offset if mode == "ab" else 0)
        got = 0
        with open(self.part, mode) as f:
            for chunk in r.iter_content(self.chunk_size):
                if not chunk:
                    continue
                if got + len(chunk) > allowed:
                    what = f"the file's {full} bytes" if full is not None else f"{MAX_UNSTATED_BYTES} bytes"
                    raise _RetryableError(f"server sent more than {what}; transfer stopped", keep_part=False)
                f.write(chunk)
                got += len(chunk)
                self.received += len(chunk)
                self.on_bytes(len(chunk))
                self.guard.check()
        if body_len is not None and got != body_len:
            raise _RetryableError(f"connection ended after {got} of {body_len} bytes")


class _Progress:
    """Thread-safe byte counter feeding one tqdm bar."""

    def __init__(self, total: int, enabled: bool, desc: str) -> None:
        from ..progress import progress_bar

        self._lock = threading.Lock()
        self.bar = progress_bar(total or None, desc, "B", enabled, unit_scale=True, unit_divisor=1024)
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


def _check_arguments(max_workers: int, retries: int, timeout: float, deadline: float) -> None:
    if max_workers < 1:
        raise ValueError(f"max_workers must be >= 1, got {short_repr(max_workers)}")
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {short_repr(retries)}")
    if not (0 < timeout < float("inf")):
        raise ValueError(f"timeout must be a finite number > 0 s, got {short_repr(timeout)}")
    if not (0 < deadline < float("inf")):
        raise ValueError(f"deadline must be a finite number > 0 s, got {short_repr(deadline)}")


def _plan(
    tasks: Sequence[DownloadTask], skip_existing: bool, verify_checksum: bool, report: DownloadReport
) -> tuple[list[DownloadTask], dict[Path, list[int]]]:
    """(tasks still to transfer, input indices of each destination): one transfer per
    destination even if the input repeats a file; files already in place that pass the
    checks of a download (checksum included) are recorded in ``report`` and left out."""
    by_dest: dict[Path, list[int]] = {}
    unique: list[DownloadTask] = []
    for i, task in enumerate(tasks):
        key = Path(task.dest).resolve()
        if key not in by_dest:
            by_dest[key] = []
            unique.append(task)
        by_dest[key].append(i)
    todo: list[DownloadTask] = []
    for task in unique:
        if skip_existing and (task.dest.exists() or task.dest.is_symlink()):
            checksum = task.checksum if verify_checksum else None
            reason = verify_cached(task.dest, task.expected_length, checksum, task.required_hdus,
                                   source=source_key(task.url))
            if reason is None:
                report.skipped.append(task.dest)
                for i in by_dest[Path(task.dest).resolve()]:
                    report.paths[i] = task.dest
                continue
            logger.warning("existing %s is not a verified copy (%s); downloading it again", task.dest, reason)
        todo.append(task)
    return todo, by_dest


_Result = tuple[DownloadTask, "Path | None", "str | None", "_Fetcher | None"]


def _run_parallel(
    work: Callable[[DownloadTask], _Result], tasks: Sequence[DownloadTask], max_workers: int,
    cancel: threading.Event, watchdog: Watchdog,
) -> list[_Result]:
    """``work`` on every task with ``max_workers`` daemon threads; results in input order.

    Daemon threads, so that a transfer that cannot be stopped at once (e.g. a connect
    under way) never holds up the interpreter's exit. Any exception in the calling thread
    (Ctrl-C) sets ``cancel``, stops the running transfers through ``watchdog``, waits at
    most :data:`CANCEL_GRACE` s for them and is raised again."""
    results: list[_Result | None] = [None] * len(tasks)
    errors: list[BaseException] = []
    lock = threading.Lock()
    next_index = iter(range(len(tasks)))
    threads = []

    def worker() -> None:
        while not cancel.is_set():
            with lock:
                i = next(next_index, None)
            if i is None:
                return
            try:
                results[i] = work(tasks[i])
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
                with lock:
                    errors.append(exc)
                cancel.set()

    for n in range(min(max_workers, len(tasks))):
        t = threading.Thread(target=worker, name=f"spx-dl-{n}", daemon=True)
        t.start()
        threads.append(t)
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.25)
    except BaseException:
        cancel.set()
        watchdog.poke_all()
        end = time.monotonic() + CANCEL_GRACE
        for t in threads:
            t.join(max(0.0, end - time.monotonic()))
        raise
    stopped = [e for e in errors if not (isinstance(e, TransferStopped) and e.cancelled)]
    if stopped:
        raise stopped[0]
    if errors:
        raise KeyboardInterrupt("downloads cancelled")
    return [r for r in results if r is not None]


def download_files(
    tasks: Sequence[DownloadTask],
    *,
    max_workers: int = 4,
    skip_existing: bool = True,
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: float | None = None,
    progress: bool = True,
    session: requests.Session | None = None,
    verify_checksum: bool = True,
    desc: str = "download",
    chunk_size: int = CHUNK_SIZE,
    deadline: float = DEFAULT_DEADLINE,
    cancel: threading.Event | None = None,
) -> DownloadReport:
    """Fetch ``tasks`` with ``max_workers`` threads over one shared session.

    ``timeout`` (s) applies to connecting and to each socket read; ``deadline`` (s) to
    each file as a whole (every attempt and wait); ``retries`` is the number of extra
    attempts per file; ``backoff_base`` (s) defaults to
    :data:`~.retry.DEFAULT_BACKOFF_BASE`; ``chunk_size`` (bytes) is the streaming unit.
    Existing final files are kept only when they pass the checks of a download
    (:func:`~.verify.verify_cached`), otherwise fetched again. Setting ``cancel`` (or
    Ctrl-C in the calling thread) stops every transfer within about a second and raises
    KeyboardInterrupt; only ``.part`` files are left. Never raises for a single file:
    see ``DownloadReport.failures``.
    """
    _check_arguments(max_workers, retries, timeout, deadline)
    base = _backoff_base(backoff_base)
    report = DownloadReport(requested=len(tasks), paths=[None] * len(tasks))
    todo, by_dest = _plan(tasks, skip_existing, verify_checksum, report)
    if not todo:
        logger.info("download: %s", report.summary())
        return report

    cancel = cancel if cancel is not None else threading.Event()
    sess = session if session is not None else make_session(max_workers)
    bar = _Progress(sum(t.expected_length for t in todo if t.expected_length is not None), progress, desc)

    with Watchdog() as watchdog:

        def work(task: DownloadTask) -> _Result:
            with watchdog.watching(TransferGuard(cancel, deadline)) as guard:
                fetcher = _Fetcher(
                    sess, task, guard, timeout=timeout, retries=retries, backoff_base=base,
                    on_bytes=bar.add, on_total=bar.grow, verify_checksum=verify_checksum, chunk_size=chunk_size,
                )
                try:
                    return task, fetcher.run(), None, fetcher
                except DownloadFailed as exc:
                    return task, None, str(exc), fetcher
                except requests.RequestException as exc:  # e.g. an invalid URL: this file only
                    return task, None, f"request error: {type(exc).__name__}: {short_text(str(exc))}", fetcher
                except OSError as exc:  # local disk problems: name them, do not kill the batch
                    return task, None, f"local file error: {exc}", fetcher

        try:
            results = _run_parallel(work, todo, max_workers, cancel, watchdog)
        finally:
            bar.close()
            if session is None:
                sess.close()

    for task, path, error, fetcher in results:  # input order
        if fetcher is not None:
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

    if report.failures:
        logger.warning("download: %s", report.summary())
    else:
        logger.info("download: %s", report.summary())
    return report
