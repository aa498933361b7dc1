"""Data access: the bytes of one location, read by ranges.

Every frame reader asks a :class:`ByteSource` for byte ranges ``(offset, length)`` of one
location (headers, rows of an image, rows of a table, compressed tiles), several at once, and
never holds a file object of its own. The source owns what reading costs and what can go
wrong: it knows the size of the location, refuses ranges outside it before allocating
anything, verifies that every byte asked for arrived (a short read is an error, never zeros),
and checks the length the archive promised.

:class:`LocalFile` is the implementation for a file on this machine (a mirror tree, the
download cache, a path given by the user): ``os.preadv`` into fresh buffers, no memory map
(a file truncated by someone else while it is read cannot crash the process).
:class:`~.objectstore.FsspecSource` is the one for an object in S3 or behind any fsspec URL
(coalesced range requests, retries with backoff), behind the same calls,
:meth:`ByteSource.read_ranges`, :meth:`ByteSource.prefetch` and :meth:`ByteSource.close`;
:func:`open_source` picks it for an :class:`~.objectstore.ObjectLocation` or a URL string.

Offsets and lengths are bytes; buffers are read-only ``uint8`` numpy arrays.
"""

from __future__ import annotations

import os
import stat
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

#: Largest single range a source hands out (bytes): a bound on what one request can allocate
#: whatever a header claims (a SPHEREx L2 file is ~70 MB; the largest extension ~17 MB).
MAX_RANGE_BYTES = 1 << 30

Range = Tuple[int, int]


def coalesce(ranges: Sequence[Range], gap: int) -> List[Range]:
    """Sorted ``(offset, length)`` ranges covering the non-empty ``ranges``, neighbours less than
    ``gap`` bytes apart merged into one (the bytes between are read too)."""
    out: List[Range] = []
    for off, n in sorted((int(o), int(n)) for o, n in ranges if n > 0):
        if out and off <= out[-1][0] + out[-1][1] + gap:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][1], off + n - start))
        else:
            out.append((off, n))
    return out


class AccessError(OSError):
    """A location whose bytes cannot be read as asked; ``reason`` says why (no path in it)."""

    def __init__(self, name: str, reason: str):
        self.name = name
        self.reason = reason
        super().__init__(f"{name}: {reason}")


class ByteSource(ABC):
    """The bytes of one location. ``name`` names it in messages; ``size`` is its length in bytes."""

    name: str
    size: int

    @abstractmethod
    def read_ranges(self, ranges: Sequence[Range]) -> List[np.ndarray]:
        """The bytes of each ``(offset, length)`` range, in order, as ``uint8`` arrays of exactly
        ``length`` bytes. :class:`AccessError` for a range outside ``[0, size)`` or longer than
        :data:`MAX_RANGE_BYTES`, and for bytes that do not arrive."""

    def read(self, offset: int, length: int) -> np.ndarray:
        """The bytes of one range (see :meth:`read_ranges`)."""
        return self.read_ranges([(offset, length)])[0]

    def read_bytes(self, offset: int, length: int) -> bytes:
        """The bytes of one range as ``bytes`` (headers, small tables; see :meth:`read_ranges`)."""
        return self.read(offset, length).tobytes()

    def prefetch(self, ranges: Sequence[Range]) -> None:
        """Announce ranges that :meth:`read_ranges` will ask for soon, so that a source with
        costly requests fetches them together (one concurrent batch, neighbours coalesced) and
        then serves them from memory until closed. The default does nothing (a local file)."""

    @abstractmethod
    def close(self) -> None:
        """Release what the source holds (idempotent)."""

    def __enter__(self) -> "ByteSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_ranges(self, ranges: Sequence[Range]) -> None:
        """:class:`AccessError` unless every range lies inside the source and within the budget."""
        for offset, length in ranges:
            if offset < 0 or length < 0 or offset + length > self.size:
                raise AccessError(self.name, f"bytes {offset}-{offset + length} asked for, the file has {self.size}")
            if length > MAX_RANGE_BYTES:
                raise AccessError(self.name, f"a read of {length} bytes exceeds the {MAX_RANGE_BYTES}-byte limit")


class LocalFile(ByteSource):
    """A regular file on this machine, read with ``os.preadv``.

    ``expected_length`` (bytes, optional): the length the archive lists for this file; a file of
    another length is refused when opened. Directories, FIFOs, devices (also through symbolic
    links) are refused before any byte is read.
    """

    def __init__(self, path: Any, expected_length: Optional[int] = None):
        self.path = Path(path)
        self.name = self.path.name
        self._fd: Optional[int] = None
        try:
            # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused just below).
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0))
        except FileNotFoundError:
            raise AccessError(self.name, "file does not exist") from None
        except OSError as exc:
            raise AccessError(self.name, f"cannot open ({exc.strerror or exc})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) \
                    else "a device" if (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) else "not a regular file"
                raise AccessError(self.name, f"is {kind}, not a regular file")
            self.size = int(st.st_size)
            if expected_length is not None and self.size != int(expected_length):
                raise AccessError(self.name, f"has {self.size} bytes, the archive lists {int(expected_length)}")
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def read_ranges(self, ranges: Sequence[Range]) -> List[np.ndarray]:
        if self._fd is None:
            raise AccessError(self.name, "read after close")
        self.check_ranges(ranges)
        out = []
        for offset, length in ranges:
            buf = np.empty(int(length), dtype=np.uint8)
            view = buf.data
            done = 0
            while done < length:
                n = os.preadv(self._fd, [view[done:]], int(offset) + done)
                if n <= 0:
                    raise AccessError(self.name, f"file ended at byte {offset + done} of {self.size} "
                                                 "(changed while being read?)")
                done += n
            buf.flags.writeable = False
            out.append(buf)
        return out

    def read_bytes(self, offset: int, length: int) -> bytes:
        """One range as ``bytes`` by ``os.pread`` (no array and copy: ~5x cheaper for a header's
        few blocks); the checks and messages of :meth:`read_ranges`."""
        if self._fd is None:
            raise AccessError(self.name, "read after close")
        self.check_ranges([(offset, length)])
        offset, length = int(offset), int(length)
        data = os.pread(self._fd, length, offset)
        if len(data) < length:  # a regular file reads short only at its end: try on, then say where it ended
            parts = [data]
            done = len(data)
            while done < length:
                more = os.pread(self._fd, length - done, offset + done)
                if not more:
                    raise AccessError(self.name, f"file ended at byte {offset + done} of {self.size} "
                                                 "(changed while being read?)")
                parts.append(more)
                done += len(more)
            data = b"".join(parts)
        return data

    def fileno(self) -> int:
        """The open file descriptor (for readers that ``pread`` it themselves, such as
        :func:`~.pixels.read_image`'s fast path); :class:`AccessError` after :meth:`close`."""
        if self._fd is None:
            raise AccessError(self.name, "read after close")
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)


def open_source(location: Any) -> ByteSource:
    """The :class:`ByteSource` of a location: a path (str / ``os.PathLike``), a URL string or an
    :class:`~.objectstore.ObjectLocation` (an object read by ranges through fsspec), or an object
    with ``path`` and optionally ``expected_length`` (an archive ``FrameLocation``)."""
    if isinstance(location, ByteSource):
        return location
    from .objectstore import FsspecSource, ObjectLocation, is_url  # no fsspec import until an object is opened

    if isinstance(location, ObjectLocation) or is_url(location):
        return FsspecSource(location if isinstance(location, ObjectLocation) else ObjectLocation(location.strip()))
    if isinstance(location, (str, os.PathLike)):
        return LocalFile(location)
    path = getattr(location, "path", None)
    if path is None:
        raise TypeError(f"cannot read bytes from {location!r}: expected a path or a frame location")
    return LocalFile(path, getattr(location, "expected_length", None))


__all__ = ["AccessError", "ByteSource", "LocalFile", "MAX_RANGE_BYTES", "coalesce", "open_source"]
