"""Hints to the operating system about memory and written files (Linux; elsewhere they do nothing).

* :func:`fresh_zeros`: zeros in an anonymous mapping of their own (huge pages advised), whose pages
  are mapped only where written (``np.zeros`` may clear heap memory page by page).
* :func:`populate`: fault an array's pages in now, writable, contents unchanged (the frame loop's
  accumulators, while the reader prepares the first frame: ``DrizzleCube.populate``).
* :func:`populate_async`: fault a fresh array's pages in (``madvise(MADV_POPULATE_WRITE)``) on a
  background thread, so that the first frames' kernel does not pay for zeroing them. The pages'
  contents never change (the kernel maps them as a first write would, without writing), so the
  engine may accumulate into the array meanwhile.
* :func:`start_writeback`: start writing a file's dirty pages to the disk now
  (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, asynchronous), so that the ``fsync`` that ends an
  atomic write finds little left to do.
* :class:`WritebackFile`: a binary file whose bytes start going to the disk (above, from a
  thread of its own) every :data:`WRITEBACK_STEP_BYTES` while the rest is still being formatted,
  so that the disk and the caller work at the same time (the 30' D3 cube, 29 MB: the final
  ``fsync`` waited 32-75 ms, median ~40, for all of it; 6-25 ms, median ~17, with 2 MiB steps;
  1-4 extents either way, so the sequential write needs no :func:`preallocate`).
* :func:`preallocate`: reserve a file's blocks before writing them out of order
  (``fallocate``), so that a writeback started early (above) does not scatter the file over the
  disk (a 630 MB cube: 41-43 extents without, 7 with; 6 when written back at the end).

The hints call the C library through ``ctypes`` (which releases the GIL during the call); where the
call is missing or refused (not Linux, kernels before 5.14 for the populate, file systems
without ``fallocate``) they do nothing: hints change the time, never the bytes.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import mmap
import queue
import sys
import threading
from typing import Callable, Optional, Tuple

import numpy as np

from . import stagetimes

logger = logging.getLogger(__name__)

#: ``madvise`` advice: populate page tables writable (Linux >= 5.14).
MADV_POPULATE_WRITE = 23
#: ``sync_file_range`` flag: start write-out of the range's dirty pages, do not wait.
SYNC_FILE_RANGE_WRITE = 2
#: Arrays smaller than this are left to fault on first touch (the thread is not worth it).
POPULATE_MIN_BYTES = 32 << 20
#: Bytes populated per ``madvise`` call. Each call holds the process's memory map lock (shared)
#: while it zeroes its pages, and the reader's ``mmap``/``munmap`` of fresh arrays need that lock
#: alone: with 16 MiB calls (~10 ms each) a 30' D3 covariance run's first kernel came 207-285 ms
#: after the frame loop's start in 3 of 6 runs (the reader's allocations queued behind the
#: populate), with 256 KiB calls 10-18 ms (docs/performance.md, covariance, sixth part).
POPULATE_CHUNK_BYTES = 256 << 10
#: Bytes written through a :class:`WritebackFile` between two starts of their writeback (1, 2, 4
#: and 8 MiB measured on the 30' cube, docs/performance.md, issue 23 seventh part: 2 the best).
WRITEBACK_STEP_BYTES = 2 << 20
_PAGE = 4096


def _libc_function(name: str, argtypes: list) -> Optional[Callable[..., int]]:
    """``name`` of the C library with ``argtypes`` and an int result; None when not on Linux or absent."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = argtypes, ctypes.c_int
    return fn


_MADVISE = _libc_function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
_SYNC_FILE_RANGE = _libc_function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_FALLOCATE = _libc_function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])
_MALLOC_TRIM = _libc_function("malloc_trim", [ctypes.c_size_t])  # glibc only


def _owner(a: np.ndarray) -> np.ndarray:
    """The array that owns ``a``'s memory (the end of its chain of bases)."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def fresh_zeros(n: int) -> np.ndarray:
    """``n`` float64 zeros (1-D, writable) in memory of their own: a private anonymous mapping, with
    transparent huge pages advised where the system has them (as numpy advises its large arrays).
    No page is touched until written, whatever the C allocator holds: ``np.zeros`` of memory that
    ``malloc`` takes from its heap (not fresh) is cleared by ``calloc``, every page of it. The
    mapping is released with the last array using it. MemoryError (naming the size) when the system
    refuses the mapping, as ``np.zeros``."""
    if not hasattr(mmap, "MAP_ANONYMOUS"):  # not a Unix: numpy's zeros
        return np.zeros(int(n), dtype=np.float64)
    # Private: a shared anonymous mapping is shmem, whose pages a read allocates (and without huge pages).
    nbytes = max(8 * int(n), mmap.PAGESIZE)
    try:
        m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except (OSError, OverflowError) as exc:  # as np.zeros: a MemoryError naming the size
        raise MemoryError(f"cannot map {nbytes / 2**30:.1f} GiB of zeros ({int(n)} float64): {exc}") from None
    if hasattr(mmap, "MADV_HUGEPAGE"):
        try:
            m.madvise(mmap.MADV_HUGEPAGE)
        except OSError:  # a kernel without transparent huge pages: 4 KiB pages
            pass
    return np.frombuffer(m, dtype=np.float64, count=int(n))


def release_free_memory() -> bool:
    """Give the C allocator's free memory back to the system now (glibc ``malloc_trim(0)``: the
    free pages of every arena; no setting changes, live memory is untouched). The frame loop's
    strips leave up to tens of MB free in the allocator's arenas; released before the cube is
    written, the write's planes do not add to them (a 3 deg D3 cube's raw peak: up to 2109 MiB
    without, against its 2100 MiB limit). False where the call is missing (not glibc)."""
    if _MALLOC_TRIM is None:
        return False
    _MALLOC_TRIM(0)
    return True


def populate(a: np.ndarray) -> bool:
    """Fault in the whole pages of ``a``'s memory now (writable; contents unchanged): a
    C-contiguous array's own bytes, else all of the memory owning it. Returns False when the
    system cannot (then nothing happened, or only part of it)."""
    if _MADVISE is None:
        return False
    span = a if a.flags.c_contiguous else _owner(a)
    start = -(-span.ctypes.data // _PAGE) * _PAGE
    end = (span.ctypes.data + span.nbytes) // _PAGE * _PAGE
    for p in range(start, end, POPULATE_CHUNK_BYTES):
        if _MADVISE(p, min(POPULATE_CHUNK_BYTES, end - p), MADV_POPULATE_WRITE) != 0:
            logger.debug("madvise(MADV_POPULATE_WRITE) refused (errno %d): pages fault on first touch",
                         ctypes.get_errno())
            return False
    return True


def populate_async(a: np.ndarray, min_bytes: int = POPULATE_MIN_BYTES,
                   stage_name: Optional[str] = None) -> Optional[threading.Thread]:
    """Start :func:`populate` of ``a`` on a daemon thread (which holds ``a`` until done) when its
    memory (as :func:`populate` covers it) is at least ``min_bytes`` and the system can; returns the
    thread (None when not started). ``stage_name``: the thread's time goes to that stage of
    :mod:`.stagetimes` (when the stage clocks are on)."""
    if _MADVISE is None or (a if a.flags.c_contiguous else _owner(a)).nbytes < min_bytes:
        return None

    def run() -> None:
        with stagetimes.stage(stage_name) if stage_name is not None else contextlib.nullcontext():
            populate(a)

    thread = threading.Thread(target=run, name="spxdrizzle-populate", daemon=True)
    thread.start()
    return thread


def start_writeback(fd: int, offset: int = 0, nbytes: int = 0) -> bool:
    """Start writing the dirty pages of bytes ``offset .. offset + nbytes`` of the file ``fd`` to
    its disk (``nbytes`` 0: to the end of the file) without waiting. Returns False when the system
    cannot (the data then reach the disk at the next ``fsync`` or writeback, as before)."""
    if _SYNC_FILE_RANGE is None:
        return False
    return _SYNC_FILE_RANGE(int(fd), int(offset), int(nbytes), SYNC_FILE_RANGE_WRITE) == 0


def preallocate(fd: int, offset: int, nbytes: int) -> bool:
    """Allocate the disk blocks of bytes ``offset .. offset + nbytes`` of the file ``fd``
    (``fallocate`` mode 0: the file grows to cover them, reading as zeros until written). Returns
    False when the system or the file system cannot (nothing is emulated: no zeros are written)."""
    if _FALLOCATE is None or nbytes <= 0:
        return False
    return _FALLOCATE(int(fd), 0, int(offset), int(nbytes)) == 0


class WritebackFile:
    """The binary file ``f`` (a real file: ``fileno``, ``tell``) whose written bytes start going to
    the disk each time ``step`` (default :data:`WRITEBACK_STEP_BYTES`) more bytes have been
    written, so the ``fsync`` that ends the write waits for the last step only. Writes and
    everything else pass through to ``f``; the bytes in the file are the same as without it.

    At each step ``f``'s buffer is flushed and the range written since the last step is handed to
    a thread of its own that calls :func:`start_writeback`: that call queues the pages' I/O, but
    blocks while the device's request queue is full (on this machine's virtual disk up to ~14 ms
    per 4 MiB), and the writer must not wait for the disk before the ``fsync``. Use it as a
    context manager (or call :meth:`close`) before ``f`` is closed: the thread is joined there."""

    def __init__(self, f, step: Optional[int] = None) -> None:
        self._f = f
        self._step = max(1, int(WRITEBACK_STEP_BYTES if step is None else step))
        self._fd = f.fileno()
        self._started = f.tell()  # bytes before this offset have been handed to the writeback
        self._pending = 0
        self._ranges: "queue.SimpleQueue[Optional[Tuple[int, int]]]" = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None  # started at the first step
        self.started = 0  #: ranges whose writeback the thread started (those the system accepted)

    def write(self, data) -> int:
        n = self._f.write(data)
        self._pending += n
        if self._pending >= self._step:
            self.start()
        return n

    def start(self) -> None:
        """Flush ``f`` and hand the bytes written since the last step to the writeback thread."""
        self._f.flush()
        end = self._f.tell()
        if end > self._started and _SYNC_FILE_RANGE is not None:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="spxdrizzle-writeback", daemon=True)
                self._thread.start()
            self._ranges.put((self._started, end - self._started))
        self._started, self._pending = max(self._started, end), 0

    def _run(self) -> None:
        """Start the writeback of the ranges handed over, those waiting together in one call (they
        follow each other; each call takes the GIL back, up to the switch interval, 5 ms, while
        the writer formats in Python)."""
        while (item := self._ranges.get()) is not None:
            offset, end = item[0], item[0] + item[1]
            while True:
                try:
                    item = self._ranges.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    break
                end = item[0] + item[1]
            self.started += bool(start_writeback(self._fd, offset, end - offset))
            if item is None:
                return

    def close(self) -> None:
        """Wait for the writeback thread to have started every range handed to it (not for the
        disk); ``f`` stays open."""
        if self._thread is not None:
            self._ranges.put(None)
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "WritebackFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getattr__(self, name: str):
        return getattr(self._f, name)
