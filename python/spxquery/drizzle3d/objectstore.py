"""Frames read in place from an object store (S3 or any fsspec URL) by byte ranges.

An :class:`ObjectLocation` names one object (``s3://nasa-irsa-spherex/qr2/level2/...fits``,
or any URL fsspec knows) with the options of its filesystem; :class:`FsspecSource` is the
:class:`~.access.ByteSource` behind it, so every frame reader works on it unchanged:

* the object's size comes from one metadata request and is checked against the length the
  archive lists; a missing object is an :class:`~.access.AccessError` ("no such object"),
  which the pipeline reports, counts in ``N_REJECT`` and skips;
* the ranges of one :meth:`~FsspecSource.read_ranges` call (one extension's rows, tiles or
  table rows) are coalesced (gaps under :data:`COALESCE_GAP_BYTES` are read too) and fetched
  concurrently (``fs.cat_ranges``); :meth:`~FsspecSource.prefetch` does the same for the
  ranges of several extensions at once (the frame reader announces a frame's sample rows and
  region rows of IMAGE, VARIANCE, ZODI and FLAGS together: one batch of concurrent requests
  instead of one round trip per extension, and sample rows in or next to the region's rows
  ride in its request: gaps under :data:`PREFETCH_GAP_BYTES`) and holds the bytes until the
  next prefetch or the source is closed;
* a range that fails (throttling such as S3's ``503 SlowDown``, a dropped connection, a
  short body) is fetched again after an exponential backoff; a batch gives up after
  ``retries`` attempts in a row in which none of its ranges arrived (a large batch under heavy
  throttling keeps going while ranges arrive); only complete ranges are handed out, so a
  partial transfer never passes;
* every byte received is counted (:data:`TRANSFERS`, per object name).

Filesystems (:func:`filesystem`): anonymous access by default for S3 (``anon=True``) unless
``storage_options`` give credentials; ``AWS_ENDPOINT_URL`` (the standard variable) points
S3 at another S3-compatible store. fsspec and s3fs are imported only here and only when an
object is opened (the optional ``cloud`` extra). Sizes in bytes, times in seconds.
"""

from __future__ import annotations

import bisect
import copy
import os
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .access import AccessError, ByteSource, Range, coalesce

#: Gaps between wanted ranges shorter than this are fetched too (one request instead of two):
#: at ~20 MB/s per stream and tens of ms per request, 256 KiB cost less than a new request.
COALESCE_GAP_BYTES = 256 * 1024
#: Ranges announced together (:meth:`FsspecSource.prefetch`, several extensions of a frame)
#: closer than this are fetched as one: enough to join a small file's extensions across their
#: headers (a few 2880-byte blocks) and a sample row to the region's rows beside it, small
#: enough that the bytes stay those of the rows (with 256 KiB a 5' cube read 12% more bytes).
PREFETCH_GAP_BYTES = 32 * 1024
#: Attempts after the first for a failed range or size request.
DEFAULT_RETRIES = 5
#: First backoff delay (s): delay n = base * 2**(n-1), capped at :data:`MAX_BACKOFF`, times a
#: random factor in [0.5, 1.5) (jitter, as for archive downloads: frames read in parallel must
#: not retry in lockstep against a throttling server). Read at call time (tests lower it).
BACKOFF_BASE = 0.5
MAX_BACKOFF = 20.0
#: Protocols whose filesystems are S3 (anonymous by default, ``AWS_ENDPOINT_URL`` honoured).
S3_PROTOCOLS = ("s3", "s3a")
#: Options that carry credentials: with any of them, access is not made anonymous.
CREDENTIAL_OPTIONS = ("anon", "key", "secret", "token", "profile", "session")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Errors no retry can cure.
_PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_url(value: Any) -> bool:
    """True for a string that is a URL (``scheme://...``), i.e. an object location, not a path."""
    return isinstance(value, str) and bool(_URL.match(value.strip()))


@dataclass(frozen=True)
class ObjectLocation:
    """One object: ``url`` (``s3://bucket/key`` or any fsspec URL), the length the archive
    lists (bytes, None when unknown) and the filesystem's ``storage_options``."""

    url: str
    expected_length: Optional[int] = None
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        """The object's file name (last part of the key)."""
        return PurePosixPath(self.url.split("://", 1)[-1]).name or self.url

    def __str__(self) -> str:
        return self.url


def as_location(value: Any) -> Any:
    """A frame's location as the readers keep it: an :class:`ObjectLocation` for an object
    location or a URL string, a :class:`~pathlib.Path` for anything else (a local path)."""
    if isinstance(value, (ObjectLocation, Path)):  # kept as they are (a Path of a Path is an equal copy)
        return value
    if is_url(value):
        return ObjectLocation(value.strip())
    return Path(value)


def object_url(root: str, key: str) -> str:
    """``root`` (``s3://bucket`` or ``s3://bucket/prefix``) joined with an archive ``key``."""
    return root.rstrip("/") + "/" + key.lstrip("/")


def storage_options_for(protocol: str, storage_options: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    """The filesystem options for ``protocol``: ``storage_options`` as given, and for S3
    ``anon=True`` unless credentials are given, ``endpoint_url`` from ``AWS_ENDPOINT_URL``
    unless an endpoint is given."""
    opts = dict(storage_options or {})
    if protocol in S3_PROTOCOLS:
        if not any(k in opts for k in CREDENTIAL_OPTIONS):
            opts["anon"] = True
        client = opts.get("client_kwargs") or {}
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in opts and "endpoint_url" not in client:
            opts["endpoint_url"] = endpoint
    return opts


def resolved_options(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The options of :func:`storage_options_for` for the protocol of ``url`` (lower case; no
    import of fsspec): what an :class:`ObjectLocation` carries to processes that do not share
    this one's environment (the workers of a distributed run)."""
    protocol = url.split("://", 1)[0].lower() if is_url(url) else "file"
    return storage_options_for(protocol, storage_options)


def filesystem(url: str, storage_options: Optional[Mapping[str, Any]] = None) -> Tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` of ``url``. ImportError naming the ``cloud``
    extra when fsspec (or s3fs for ``s3://``) is not installed."""
    try:
        import fsspec
        from fsspec.core import split_protocol
    except ImportError as exc:
        raise ImportError("reading frames from an object store needs fsspec and s3fs: "
                          "pip install 'spxquery-drizzle3d[cloud]'") from exc
    protocol, _ = split_protocol(url)
    protocol = protocol or "file"
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as exc:
        raise ImportError(f"no filesystem for {protocol}:// ({exc}); for s3:// pip install "
                          "'spxquery-drizzle3d[cloud]'") from exc
    fs = cls(**copy.deepcopy(storage_options_for(protocol, storage_options)))  # botocore edits its config
    return fs, cls._strip_protocol(url)


class TransferCounter:
    """Bytes received, requests, round trips (batches of concurrent requests: what latency
    costs) and retries, in total and bytes per object name (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.bytes = 0
            self.requests = 0
            self.round_trips = 0
            self.retries = 0
            self.by_name: Dict[str, int] = {}

    def add(self, name: str, nbytes: int, requests: int, retries: int = 0) -> None:
        """Count one round trip: ``requests`` sent together, ``nbytes`` received."""
        with self._lock:
            self.bytes += nbytes
            self.requests += requests
            self.round_trips += 1
            self.retries += retries
            self.by_name[name] = self.by_name.get(name, 0) + nbytes


#: Every byte fetched by an :class:`FsspecSource` in this process.
TRANSFERS = TransferCounter()


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class FsspecSource(ByteSource):
    """The bytes of one object, read by ranges through fsspec (see the module docs).

    ``retries``: attempts after the first for each failed request; ``backoff_base`` (s): first
    delay (None: :data:`BACKOFF_BASE`); ``counter``: where transfers are counted."""

    def __init__(self, location: ObjectLocation, *, retries: int = DEFAULT_RETRIES,
                 backoff_base: Optional[float] = None, counter: TransferCounter = TRANSFERS):
        self.location = location
        self.name = location.name
        self.retries = int(retries)
        self.backoff_base = backoff_base
        self.counter = counter
        self.bytes_read = 0
        self.requests = 0
        self._closed = False
        self._held: List[Tuple[int, bytes]] = []  # (start, bytes) fetched ahead, sorted
        try:
            self._fs, self._path = filesystem(location.url, location.storage_options)
        except (ImportError, ValueError, TypeError) as exc:
            raise AccessError(self.name, f"cannot open {location.url} ({exc})") from None
        self.size = self._size()
        expected = location.expected_length
        if expected is not None and self.size != int(expected):
            raise AccessError(self.name, f"has {self.size} bytes, the archive lists {int(expected)}")

    def _delay(self, attempt: int) -> float:
        base = BACKOFF_BASE if self.backoff_base is None else float(self.backoff_base)
        return min(MAX_BACKOFF, base * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.5)

    def _size(self) -> int:
        last: Optional[BaseException] = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self._delay(attempt))
            try:
                info = self._fs.info(self._path)
                self.counter.add(self.name, 0, 1, int(attempt > 0))
            except _PERMANENT as exc:
                what = "no such object" if isinstance(exc, FileNotFoundError) else _describe(exc)
                raise AccessError(self.name, f"{what} ({self.location.url})") from None
            except TypeError as exc:  # an option the filesystem does not take: no retry cures it
                raise AccessError(self.name, f"cannot open {self.location.url} (storage_options: {exc})") from None
            except Exception as exc:  # noqa: BLE001 - any other failure may be transient
                last = exc
                continue
            size = info.get("size") if isinstance(info, dict) else None
            if info.get("type") == "directory" or not isinstance(size, int) or size < 0:
                raise AccessError(self.name, f"is not an object with a size ({self.location.url})")
            return int(size)
        raise AccessError(self.name, f"size unknown after {self.retries + 1} attempts ({_describe(last or OSError())})")

    def _fetch(self, ranges: List[Range]) -> List[bytes]:
        """The bytes of each range (complete), with retries of the failed ones."""
        got: List[Optional[bytes]] = [None] * len(ranges)
        todo = list(range(len(ranges)))
        last: Optional[BaseException] = None
        stalled = 0  # attempts in a row in which no range arrived
        attempt = 0
        while stalled <= self.retries:  # each other attempt completes a range: at most len(ranges) of them
            if attempt:
                time.sleep(self._delay(stalled + 1))
            starts = [ranges[i][0] for i in todo]
            ends = [ranges[i][0] + ranges[i][1] for i in todo]
            try:
                answers = self._fs.cat_ranges([self._path] * len(todo), starts, ends, on_error="return")
            except _PERMANENT as exc:
                raise AccessError(self.name, f"cannot read ({_describe(exc)})") from None
            except Exception as exc:  # noqa: BLE001 - the whole batch failed: try it again
                answers = [exc] * len(todo)
            failed = []
            received = 0
            for i, answer in zip(todo, answers):
                if isinstance(answer, _PERMANENT):
                    raise AccessError(self.name, f"cannot read ({_describe(answer)})")
                if isinstance(answer, (bytes, bytearray, memoryview)):
                    received += len(answer)
                    if len(answer) == ranges[i][1]:
                        got[i] = bytes(answer)
                        continue
                    last = OSError(f"short read: {len(answer)} of {ranges[i][1]} bytes at {ranges[i][0]}")
                elif isinstance(answer, BaseException):
                    last = answer
                else:
                    last = TypeError(f"unexpected answer {type(answer).__name__}")
                failed.append(i)
            self.bytes_read += received
            self.requests += len(todo)
            self.counter.add(self.name, received, len(todo), int(attempt > 0) * len(todo))
            stalled = stalled + 1 if len(failed) == len(todo) else 0
            attempt += 1
            todo = failed
            if not todo:
                return [g for g in got if g is not None]
        raise AccessError(self.name, f"{len(todo)} range(s) still failing after {self.retries + 1} attempts "
                                     f"in a row without progress ({_describe(last or OSError())})")

    def _coalesced(self, ranges: Sequence[Range], gap: int = COALESCE_GAP_BYTES) -> List[Tuple[int, bytes]]:
        """``(start, bytes)`` blocks covering ``ranges``: coalesced under ``gap``, fetched in one batch."""
        merged = coalesce(ranges, gap)
        return list(zip((m[0] for m in merged), self._fetch(merged)))

    def prefetch(self, ranges: Sequence[Range]) -> None:
        """Fetch ``ranges`` now, in one concurrent batch (neighbours coalesced), and hold them
        (instead of what an earlier call held: memory stays one batch) until the next call or
        :meth:`close`; the reads of a frame's extensions that follow are served from them."""
        if self._closed:
            raise AccessError(self.name, "read after close")
        self.check_ranges(ranges)
        self._held = []
        self._held = self._coalesced(ranges, PREFETCH_GAP_BYTES)

    def read_ranges(self, ranges: Sequence[Range]) -> List[np.ndarray]:
        if self._closed:
            raise AccessError(self.name, "read after close")
        self.check_ranges(ranges)
        out: List[Optional[np.ndarray]] = [_slice(self._held, o, n) if n else np.empty(0, np.uint8)
                                           for o, n in ranges]
        missing = [r for r, buf in zip(ranges, out) if buf is None]
        if missing:
            blocks = self._coalesced(missing)
            out = [buf if buf is not None else _slice(blocks, o, n) for buf, (o, n) in zip(out, ranges)]
        return [buf for buf in out if buf is not None]  # frombuffer over bytes: read-only

    def close(self) -> None:
        self._closed = True
        self._held = []


def _slice(blocks: Sequence[Tuple[int, bytes]], offset: int, length: int) -> Optional[np.ndarray]:
    """The bytes ``[offset, offset + length)`` from the sorted ``(start, bytes)`` ``blocks``
    (read-only view), or None when no block covers them whole."""
    k = bisect.bisect_right([b[0] for b in blocks], int(offset)) - 1
    while k >= 0:
        start, data = blocks[k]
        if offset + length <= start + len(data):
            return np.frombuffer(data, dtype=np.uint8, count=int(length), offset=int(offset) - start)
        k -= 1  # an earlier, longer block may still cover the range
    return None


__all__ = ["COALESCE_GAP_BYTES", "PREFETCH_GAP_BYTES", "FsspecSource", "ObjectLocation", "TRANSFERS",
           "TransferCounter", "as_location", "filesystem", "is_url", "object_url", "resolved_options",
           "storage_options_for"]
