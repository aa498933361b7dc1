"""Large file regions written past the page cache (``O_DIRECT``, Linux; elsewhere plain writes).

A 30' D3 cube's ``COVARIANCE`` image is ~330 MB, a 3 deg cube ~1 GB. Written through the page
cache, each 4 KiB page is first memory the system must find, then a copy, then written back at
the ``fsync``: on a VM whose host takes free memory back (free page reporting) that cost 0.8 s of
CPU per 30' COVARIANCE image and 2.2 s per 3 deg cube; written directly they take ~0.27 s and
~0.6 s in all (docs/performance.md, "Large outputs past the page cache").

* :class:`PlacedWriter`: pieces at given offsets; their whole blocks go straight to the disk from
  a few reused aligned buffers (``O_DIRECT``, on writer threads of its own), only the few bytes at
  the ends of each run of pieces through the page cache.
* :class:`DirectFile`: a file-like stream over one (``save_cube`` of a large cube).
* :func:`stream_writer`: a :class:`DirectFile` for at least :data:`DIRECT_MIN_BYTES`, else a
  :class:`.vmhints.WritebackFile` (small files: the page cache was as fast).

The bytes in the file are the same either way; without ``O_DIRECT`` (not Linux, file systems
that refuse it, a refused write) the writes are plain ones.
"""

from __future__ import annotations

import errno
import logging
import mmap
import os
import queue
import tempfile
import threading
from typing import Dict, List, Optional, Tuple

from . import vmhints

logger = logging.getLogger(__name__)

#: Alignment (bytes) of the direct writes' file offsets, lengths and buffer: the page size,
#: a multiple of every common disk's logical block (512 or 4096).
ALIGN = 4096
#: Direct writes in flight at most (each with a buffer of the largest piece), and the threads
#: issuing them (a 30' D3 COVARIANCE image, 331 MB: 0.31-0.34 s with 3 / 1, 0.26-0.29 s with 4 / 2).
DEPTH = 4
WRITERS = 2


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    """``os.pwrite`` all of ``data`` at byte ``offset`` of the file ``fd`` (a short write continues)."""
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _open_direct(fd: int) -> Optional[int]:
    """A second write descriptor of the open file ``fd`` with ``O_DIRECT`` (through
    ``/proc/self/fd``); None where the system or the file system has none."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(f"/proc/self/fd/{int(fd)}", os.O_WRONLY | flag)
    except OSError:
        return None


def supported(directory) -> bool:
    """Whether files in ``directory`` take ``O_DIRECT`` writes (a probe file, removed)."""
    with tempfile.NamedTemporaryFile(dir=directory, prefix=".spxdrizzle-direct-probe.") as probe:
        placed = PlacedWriter(probe.fileno(), ALIGN)
        try:
            placed.put(bytes(ALIGN), 0)
        finally:
            placed.close()
        return placed.direct_bytes == ALIGN


class PlacedWriter:
    """Write pieces of bytes at given offsets of the open file ``fd`` (``put``): the whole
    ``align``-byte blocks straight to the disk, and through ``fd`` (the page cache) only the
    partly covered blocks at the ends of each run of pieces that follow each other in the file
    (a piece's last bytes short of a block wait for the piece that continues it; ``close`` writes
    those no piece continued). Pieces must not overlap.

    The direct writes run on ``writers`` threads of their own, ``depth`` at most in flight, each
    from a reused page-aligned buffer of ``max_piece`` bytes (the largest piece; plus two blocks)
    into which ``put`` copies the piece: the caller prepares the next piece while the disk writes
    (memory: ``depth`` buffers). Where ``O_DIRECT`` cannot be opened (not Linux, some file
    systems; ``direct=False``) every byte goes through ``fd``; a direct write the system refuses
    (``EINVAL``: an alignment the disk does not take) is written through ``fd`` instead, as are all
    later pieces. Other errors (disk full, I/O) are raised by the next ``put`` and by ``close``;
    no later piece is written. Use as a context manager: it waits for the writes and closes the
    direct descriptor (not ``fd``); the caller's ``fsync`` of ``fd`` then makes the whole file durable."""

    def __init__(self, fd: int, max_piece: int, *, direct: bool = True, align: int = ALIGN,
                 depth: int = DEPTH, writers: int = WRITERS) -> None:
        self._fd = int(fd)
        self._align = int(align)
        self._dfd = _open_direct(self._fd) if direct else None
        self._max_piece = max(1, int(max_piece))
        # a piece and the bytes it continues (less than two blocks)
        self._size = -(-(int(max_piece) + 2 * self._align) // mmap.PAGESIZE) * mmap.PAGESIZE
        self._depth = max(1, int(depth))
        self._stages: List[mmap.mmap] = []  # made as needed, up to depth
        self._free: "queue.SimpleQueue[mmap.mmap]" = queue.SimpleQueue()
        self._jobs: "queue.SimpleQueue[Optional[Tuple[mmap.mmap, int, int]]]" = queue.SimpleQueue()
        self._threads: List[threading.Thread] = []
        self._writers = max(1, int(writers))
        self._count = threading.Lock()
        self._error: Optional[BaseException] = None
        self._refused = False
        self._tails: Dict[int, Tuple[int, bytes]] = {}  # end -> (start, bytes) not yet written
        self._open: Optional[Tuple[mmap.mmap, int, int]] = None  # (buffer, file offset, bytes) still filling
        self.direct_bytes = 0  #: bytes written with O_DIRECT (by the thread)
        self._cached_caller = 0
        self._cached_thread = 0

    @property
    def direct(self) -> bool:
        """Whether the whole blocks of the next piece go to the disk directly."""
        return self._dfd is not None and not self._refused

    @property
    def refused(self) -> bool:
        """Whether the system refused a direct write (all bytes since went through ``fd``)."""
        return self._refused

    @property
    def cached_bytes(self) -> int:
        """Bytes written through ``fd``."""
        return self._cached_caller + self._cached_thread

    def put(self, data, offset: int) -> None:
        """Write the bytes ``data`` (bytes-like; cut into pieces of ``max_piece``) at byte ``offset``.
        A piece that starts where an earlier one ended continues it: that piece's bytes after its
        last whole block wait to go with this piece's first block."""
        self._raise_error()
        view = memoryview(data).cast("B")
        offset = int(offset)
        if len(view) > self._max_piece:  # in pieces that continue each other
            for i in range(0, len(view), self._max_piece):
                self.put(view[i:i + self._max_piece], offset + i)
            return
        if not self.direct:
            self._cached(view, offset)
            return
        start, head = self._tails.pop(offset, (offset, b""))
        end = offset + len(view)
        a = -(-start // self._align) * self._align  # first whole block
        b = end // self._align * self._align  # end of the last whole block

        def part(lo: int, hi: int) -> List[memoryview]:  # bytes lo..hi (absolute) of head + view
            h = memoryview(head)[max(0, lo - start):max(0, hi - start)]
            v = view[max(0, lo - offset):max(0, hi - offset)]
            return [m for m in (h, v) if len(m)]

        if b <= a:  # no whole block yet: the bytes wait for a continuation
            self._tails[end] = (start, b"".join(part(start, end)))
            return
        if start < a:  # the start of a run: its first bytes share a block with what precedes it
            self._cached(memoryview(b"".join(part(start, a))), start)
        if b < end:
            self._tails[end] = (b, b"".join(part(b, end)))
        self._submit(part(a, b), a)

    def _cached(self, view: memoryview, offset: int) -> None:
        _pwrite_all(self._fd, view, offset)
        self._cached_caller += len(view)

    def _submit(self, parts: List[memoryview], offset: int) -> None:
        """Copy the bytes ``parts`` (a whole number of blocks at ``offset``) into a buffer for the
        writer threads: the open one when they continue its bytes and fit (consecutive small
        pieces go to the disk as one write), else a free one (waiting while ``depth`` are busy)."""
        n = sum(len(m) for m in parts)
        if self._open is not None:
            stage, at, filled = self._open
            if at + filled == offset and filled + n <= self._size:
                self._fill(stage, filled, parts)
                self._open = (stage, at, filled + n)
                if filled + n >= self._max_piece:
                    self._hand_over()
                return
            self._hand_over()
        if len(self._stages) < self._depth and self._free.empty():
            self._stages.append(mmap.mmap(-1, self._size))  # page-aligned
            self._free.put(self._stages[-1])
        stage = self._free.get()  # waits while depth writes are in flight
        self._fill(stage, 0, parts)
        self._open = (stage, offset, n)
        if n >= self._max_piece:
            self._hand_over()

    @staticmethod
    def _fill(stage: mmap.mmap, at: int, parts: List[memoryview]) -> None:
        with memoryview(stage) as mv:
            for m in parts:
                mv[at:at + len(m)] = m
                at += len(m)

    def _hand_over(self) -> None:
        """Queue the open buffer's write for the writer threads (started at the first)."""
        if self._open is None:
            return
        stage, at, filled = self._open
        self._open = None
        if not self._threads:
            for _ in range(self._writers):
                self._threads.append(threading.Thread(target=self._run, name="spxdrizzle-direct-write", daemon=True))
                self._threads[-1].start()
        self._jobs.put((stage, filled, at))

    def _run(self) -> None:
        """A writer thread: write each job's buffer directly (through ``fd`` once refused)."""
        while (job := self._jobs.get()) is not None:
            stage, n, offset = job
            try:
                if self._error is None:
                    self._write_job(stage, n, offset)
            except BaseException as exc:  # raised in the caller's thread
                self._error = exc
            finally:
                self._free.put(stage)

    def _write_job(self, stage: mmap.mmap, n: int, offset: int) -> None:
        dfd = self._dfd  # closed only after the writer threads have ended
        with memoryview(stage) as mv:
            if not self._refused and dfd is not None:
                try:
                    _pwrite_all(dfd, mv[:n], offset)
                    with self._count:
                        self.direct_bytes += n
                    return
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    logger.debug("O_DIRECT write refused (%s); writing through the page cache", exc)
                    self._refused = True
            _pwrite_all(self._fd, mv[:n], offset)
            with self._count:
                self._cached_thread += n

    def _raise_error(self) -> None:
        """Raise the writer threads' error (it stays: no later job is written)."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Write the bytes still waiting for a continuation (through ``fd``), wait for the writes
        in flight, close the direct descriptor and free the buffers (``fd`` stays open); raise a
        write's error."""
        try:
            if self._error is None:
                for start, tail in self._tails.values():
                    self._cached(memoryview(tail), start)
            self._tails.clear()
        finally:
            self._hand_over()
            for _ in self._threads:
                self._jobs.put(None)
            for thread in self._threads:
                thread.join()
            self._threads.clear()
            if self._dfd is not None:
                os.close(self._dfd)
                self._dfd = None
            for stage in self._stages:
                stage.close()
            self._stages.clear()
        self._raise_error()

    def __enter__(self) -> "PlacedWriter":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception:  # the error already raised wins
            pass


#: Files (and placed images) smaller than this go through the page cache: there a 29 MB 30' cube
#: took 20-26 ms to save against 22-29 ms direct (warm memory), while a 1 GB 3 deg cube took 2.2 s
#: against 0.65 s direct, and a 331 MB COVARIANCE image 1.0 s in cold memory against 0.3 s.
DIRECT_MIN_BYTES = 128 << 20
#: Largest piece a :class:`DirectFile` hands to its :class:`PlacedWriter` (longer writes are cut).
STREAM_PIECE_BYTES = 1 << 20


class DirectFile:
    """The binary file ``f`` (a real file: ``fileno``, ``tell``) written on from its current
    position through a :class:`PlacedWriter` (``placed``, pieces of ``piece`` bytes): ``write``
    appends, ``tell``/``seek`` track the position (a writer placing bytes itself, as the
    COVARIANCE image does, seeks past them). The bytes in the file are those of plain writes.
    ``close`` (or the context's end) writes what waits, joins the writer threads and leaves ``f``
    at the position reached; ``f`` stays open for the caller's ``fsync``. ``direct``: whether
    ``O_DIRECT`` is in use."""

    def __init__(self, f, piece: int = STREAM_PIECE_BYTES) -> None:
        f.flush()
        self._f = f
        self._pos = f.tell()
        self.placed = PlacedWriter(f.fileno(), piece)

    @property
    def direct(self) -> bool:
        return self.placed.direct

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.placed.put(view, self._pos)
        self._pos += len(view)
        return len(view)

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise ValueError("DirectFile.seek takes absolute positions only")
        self._pos = int(pos)
        return self._pos

    def flush(self) -> None:
        """Nothing to do: every byte is with the writer (``close`` completes them)."""

    def fileno(self) -> int:
        return self._f.fileno()

    def close(self) -> None:
        self.placed.close()
        self._f.seek(self._pos)

    def __enter__(self) -> "DirectFile":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.placed.__exit__(exc_type, *exc)


def stream_writer(f, nbytes: int):
    """The writer a file of about ``nbytes`` is streamed through (a context manager over the open
    binary file ``f``): a :class:`DirectFile` where ``O_DIRECT`` works and ``nbytes`` is at least
    :data:`DIRECT_MIN_BYTES`, else a :class:`.vmhints.WritebackFile` (the page cache, its
    writeback started every few MB)."""
    if nbytes >= DIRECT_MIN_BYTES:
        out = DirectFile(f)
        if out.direct:
            return out
        out.close()
    return vmhints.WritebackFile(f)
