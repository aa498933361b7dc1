"""Large file regions written past the page cache (``O_DIRECT``, Linux; elsewhere plain writes).

A 30' D3 cube's ``COVARIANCE`` image is ~330 MB. Written through the page cache, each of its 4 KiB
pages is first fresh memory the system must find and clear, then copied, then written back at
the ``fsync``: on a VM whose host takes free memory back (free page reporting) that cost 0.7-0.9 s
of CPU per 30' covariance run, against ~0.2 s for the disk itself (docs/performance.md, issue 22).
:class:`PlacedWriter` sends the whole blocks of each piece straight to the disk from a few reused
aligned buffers (``O_DIRECT``, on a thread of its own), and only the few bytes at the pieces' ends
through the page cache.
The bytes in the file are the same either way.
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
    ``/proc/self/fd``); None where the system or the file system has none (tmpfs refuses it)."""
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
    (memory: ``depth`` buffers). Where ``O_DIRECT`` cannot be opened (not Linux, tmpfs; ``direct=False``) every byte
    goes through ``fd``; a direct write the system refuses (``EINVAL``: an alignment the disk does
    not take) is written through ``fd`` instead, as are all later pieces. Other errors (disk full,
    I/O) are raised by the next ``put`` or by ``close``. Use as a context manager: it waits for
    the writes and closes the direct descriptor (not ``fd``); the caller's ``fsync`` of ``fd``
    then makes the whole file durable."""

    def __init__(self, fd: int, max_piece: int, *, direct: bool = True, align: int = ALIGN,
                 depth: int = DEPTH, writers: int = WRITERS) -> None:
        self._fd = int(fd)
        self._align = int(align)
        self._dfd = _open_direct(self._fd) if direct else None
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
        self.direct_bytes = 0  #: bytes written with O_DIRECT (by the thread)
        self._cached_caller = 0
        self._cached_thread = 0

    @property
    def direct(self) -> bool:
        """Whether the whole blocks of the next piece go to the disk directly."""
        return self._dfd is not None and not self._refused

    @property
    def cached_bytes(self) -> int:
        """Bytes written through ``fd``."""
        return self._cached_caller + self._cached_thread

    def put(self, data, offset: int) -> None:
        """Write the bytes ``data`` (bytes-like, at most ``max_piece`` long) at byte ``offset``.
        A piece that starts where an earlier one ended continues it: that piece's bytes after its
        last whole block wait to go with this piece's first block."""
        self._raise_error()
        view = memoryview(data).cast("B")
        offset = int(offset)
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
        """Hand the bytes ``parts`` (a whole number of blocks at ``offset``) to the writer thread."""
        n = sum(len(m) for m in parts)
        if n > self._size:
            raise ValueError(f"{n} bytes to write at once, more than the buffer's {self._size} (max_piece too small)")
        if len(self._stages) < self._depth and self._free.empty():
            self._stages.append(mmap.mmap(-1, self._size))  # page-aligned
            self._free.put(self._stages[-1])
        stage = self._free.get()  # waits while depth writes are in flight
        with memoryview(stage) as mv:
            at = 0
            for m in parts:
                mv[at:at + len(m)] = m
                at += len(m)
        if not self._threads:
            for _ in range(self._writers):
                self._threads.append(threading.Thread(target=self._run, name="spxdrizzle-direct-write", daemon=True))
                self._threads[-1].start()
        self._jobs.put((stage, n, offset))

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
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Write the bytes still waiting for a continuation (through ``fd``), wait for the writes
        in flight, close the direct descriptor and free the buffers (``fd`` stays open); raise a
        write's error."""
        try:
            for start, tail in self._tails.values():
                self._cached(memoryview(tail), start)
            self._tails.clear()
        finally:
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
