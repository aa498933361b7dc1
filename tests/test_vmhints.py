"""OS hints (vmhints): populating fresh arrays and starting the writeback of written files.

Hints change the time, never the bytes: the contents of a populated array and of a file whose
writeback was started are checked; that the hints did something is checked through what Linux
reports (minor page faults of this thread, the call's result)."""

from __future__ import annotations

import mmap
import os
import resource
import sys
import threading

import numpy as np
import pytest

from memory_support import resident_pages
from spxquery.drizzle3d import covariance, vmhints

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the hints are Linux calls")
MB = 1 << 20


def _thread_faults() -> int:
    return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt


#: Minor faults a touch of populated memory may still take: the partial first and last pages
#: of an array (``populate`` covers whole pages only) and the interpreter's own small
#: allocations. A fresh array of the sizes below takes 8 or more (2 MiB huge pages) or
#: thousands (4 KiB pages).
FEW_FAULTS = 4


def _touch(a: np.ndarray) -> int:
    """Write one element per 4 KiB page of ``a`` (adding 0.0: values unchanged); minor faults taken."""
    pages = a.reshape(-1)[::512]  # the views are made before counting
    before = _thread_faults()
    np.add(pages, 0.0, out=pages)
    return _thread_faults() - before


def _fresh(nbytes: int) -> np.ndarray:
    """Zeroed float64 memory never touched (its own mapping: not a reused heap block)."""
    return np.frombuffer(mmap.mmap(-1, nbytes), dtype=np.float64)


def _populated_or_skip(a: np.ndarray) -> None:
    if not vmhints.populate(a):
        pytest.skip("madvise(MADV_POPULATE_WRITE) refused (kernel before 5.14?)")


@linux
def test_populate_faults_the_pages_in_without_changing_them():
    assert _touch(_fresh(16 * MB)) >= 8  # fresh pages fault on first touch (2 MiB huge pages or 4 KiB ones)
    a = _fresh(16 * MB)
    a[::1000] = np.arange(a[::1000].size, dtype=np.float64)  # some pages already hold data
    want = np.zeros(a.size)  # (not a.copy(): reading a shared mapping would fault every page in)
    want[::1000] = np.arange(a[::1000].size, dtype=np.float64)
    _populated_or_skip(a)
    assert _touch(a) <= FEW_FAULTS
    assert np.array_equal(a, want)


@linux
def test_populate_in_the_background_while_the_array_is_written():
    a = _fresh(48 * MB)
    assert vmhints.populate_async(a, min_bytes=64 * MB) is None  # too small to be worth a thread
    thread = vmhints.populate_async(a, min_bytes=0)
    if thread is None:
        pytest.skip("no madvise on this system")
    rng = np.random.default_rng(0)
    idx = rng.integers(0, a.size // 4, 200_000)  # the other three quarters are left to the populate
    vals = rng.random(idx.size)
    np.add.at(a, idx, vals)  # accumulates while the pages are populated
    thread.join(30)
    assert not thread.is_alive()
    assert _touch(a) <= FEW_FAULTS  # before any read of a: reading a shared mapping faults it in
    want = np.zeros(a.size)
    np.add.at(want, idx, vals)
    assert np.array_equal(a, want)


@linux
def test_populate_in_the_background_counts_its_time_in_its_stage():
    from spxquery.drizzle3d import stagetimes

    stagetimes.reset()
    stagetimes.enable(True)
    try:
        thread = vmhints.populate_async(_fresh(8 * MB), min_bytes=0, stage_name="populate")
        if thread is None:
            pytest.skip("no madvise on this system")
        thread.join(30)
        untimed = vmhints.populate_async(_fresh(8 * MB), min_bytes=0)  # no stage: not counted
        assert untimed is not None
        untimed.join(30)
        snap = stagetimes.snapshot()
    finally:
        stagetimes.enable(False)
        stagetimes.reset()
    assert list(snap) == ["populate"]
    assert snap["populate"]["calls"] == 1 and snap["populate"]["cpu_s"] > 0.0


def offsets_within(z: int, s: int) -> np.ndarray:
    """The positive covariance offsets ``(dz, dy, dx)`` within ``|dz| <= z``, ``|dy|, |dx| <= s``."""
    out = [(dz, dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1) for dz in range(-z, z + 1)
           if dy > 0 or (dy == 0 and (dx > 0 or (dx == 0 and dz > 0)))]
    return np.array(out, dtype=np.int64)


@linux
def test_the_cross_terms_of_a_large_cube_are_populated_in_the_background_part_zero_only():
    threads = set(threading.enumerate())
    # 37 offsets with |dz| <= 1 (part 0), 25 with |dz| = 2 (part 1): 40 slots, 17 x 80 x 80 x 40 x 8 B = 35 MB a part
    terms = covariance.cross_terms((17, 80, 80), offsets_within(2, 2))
    assert terms.shape == (2, 17, 80, 80, 40)
    started = [t for t in threading.enumerate() if t not in threads and t.name == "spxdrizzle-populate"]
    assert len(started) == 1
    started[0].join(30)
    if vmhints.populate(np.zeros(1024)):  # the system populates: the background thread did the work
        assert _touch(terms[0]) <= FEW_FAULTS  # (a fresh 35 MB array: >= 17 faults)
    assert resident_pages(terms[1]) == 0  # part 1: not one page faulted in
    assert not terms[0].any()
    small = set(threading.enumerate())
    covariance.cross_terms((3, 10, 10), offsets_within(2, 2))
    assert not [t for t in threading.enumerate() if t not in small and t.name == "spxdrizzle-populate"]


@linux
def test_start_writeback_keeps_the_file_and_reports_a_bad_descriptor(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * MB)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        assert vmhints.start_writeback(f.fileno())
        assert vmhints.start_writeback(f.fileno(), MB, MB)
        os.fsync(f.fileno())
    assert path.read_bytes() == data
    assert not vmhints.start_writeback(-1)


@linux
def test_preallocate_reserves_the_blocks_and_reads_as_zeros(tmp_path):
    path = tmp_path / "f.bin"
    with open(path, "wb") as f:
        f.write(b"head")
        f.flush()
        if not vmhints.preallocate(f.fileno(), 4, 8 * MB):
            pytest.skip("this file system has no fallocate")
        assert os.fstat(f.fileno()).st_blocks * 512 >= 8 * MB
        f.seek(4 + MB)
        f.write(b"x")
    data = path.read_bytes()
    assert len(data) == 4 + 8 * MB and data[:4] == b"head" and data[4 + MB] == ord("x")
    assert data.count(0) == 8 * MB - 1
    assert not vmhints.preallocate(-1, 0, MB)
    assert not vmhints.preallocate(0, 0, 0)


def test_without_the_calls_the_hints_do_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(vmhints, "_MADVISE", None)
    monkeypatch.setattr(vmhints, "_SYNC_FILE_RANGE", None)
    monkeypatch.setattr(vmhints, "_FALLOCATE", None)
    a = np.zeros(8 * MB // 8)
    assert vmhints.populate(a) is False
    assert vmhints.populate_async(a, min_bytes=0) is None
    with open(tmp_path / "f.bin", "wb") as f:
        assert vmhints.start_writeback(f.fileno()) is False
        assert vmhints.preallocate(f.fileno(), 0, MB) is False


def _spy_writeback(monkeypatch) -> list:
    """Record each ``start_writeback`` call (the real call still runs) with the file's size then."""
    calls = []
    real = vmhints.start_writeback

    def spy(fd: int, offset: int = 0, nbytes: int = 0) -> bool:
        calls.append((offset, nbytes, os.fstat(fd).st_size))
        return real(fd, offset, nbytes)

    monkeypatch.setattr(vmhints, "start_writeback", spy)
    return calls


@linux
def test_writeback_file_starts_each_step_after_its_bytes_reach_the_file(tmp_path, monkeypatch):
    calls = _spy_writeback(monkeypatch)
    rng = np.random.default_rng(3)
    pieces = [rng.bytes(int(n)) for n in rng.integers(1, 6000, 1500)]  # ~4.5 MB in writes the buffer holds
    path = tmp_path / "f.bin"
    with open(path, "wb") as raw:
        raw.write(b"head")
        with vmhints.WritebackFile(raw, step=MB) as f:
            for p in pieces:
                assert f.write(p) == len(p)
            f.start()  # the rest (less than a step; some of it still in the buffer)
            f.flush()  # passes through
            os.fsync(f.fileno())
        assert f.started == len(calls)  # the system accepted every range
        assert not [t for t in threading.enumerate() if t.name == "spxdrizzle-writeback"]  # joined
    data = b"head" + b"".join(pieces)
    assert path.read_bytes() == data
    starts = [o for o, _, _ in calls]
    assert starts[0] == 4 and all(o + n == nxt for (o, n, _), nxt in zip(calls, starts[1:]))  # contiguous ranges
    assert all(n >= MB for _, n, _ in calls[:-1]) and calls[-1][0] + calls[-1][1] == len(data)  # every step
    assert all(size >= o + n for o, n, size in calls)  # the buffer was flushed before each start


@linux
def test_writeback_thread_is_joined_when_the_writer_fails(tmp_path):
    with open(tmp_path / "f.bin", "wb") as raw:
        with pytest.raises(RuntimeError, match="formatting failed"):
            with vmhints.WritebackFile(raw, step=1000) as f:
                f.write(b"x" * 5000)
                raise RuntimeError("formatting failed")
    assert not [t for t in threading.enumerate() if t.name == "spxdrizzle-writeback"]


def test_writeback_file_without_the_call_writes_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(vmhints, "_SYNC_FILE_RANGE", None)
    path = tmp_path / "f.bin"
    data = os.urandom(3 * MB + 5)
    with open(path, "wb") as raw:
        with vmhints.WritebackFile(raw, step=MB // 2) as f:
            for i in range(0, len(data), 100_000):
                f.write(memoryview(data)[i:i + 100_000])
            assert f._thread is None  # nothing to start: the fsync does it all, as before
    assert f.started == 0 and path.read_bytes() == data


@pytest.mark.skipif(not hasattr(mmap, "MAP_ANONYMOUS"), reason="anonymous mappings are a Unix call")
def test_fresh_zeros_are_zeros_and_a_refused_mapping_is_a_memory_error_naming_the_size():
    a = vmhints.fresh_zeros(3000)
    assert a.shape == (3000,) and a.dtype == np.float64 and a.flags.writeable and not a.any()
    with pytest.raises(MemoryError, match=r"cannot map .* GiB of zeros \(288230376151711744 float64\)"):
        vmhints.fresh_zeros(1 << 58)  # 2 EiB: beyond any address space (57-bit included), whatever the overcommit
    with pytest.raises(MemoryError, match="GiB of zeros"):
        vmhints.fresh_zeros(1 << 60)  # beyond a C ssize_t


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * mmap.PAGESIZE / MB


@pytest.mark.skipif(not sys.platform.startswith("linux") or vmhints._MALLOC_TRIM is None,
                    reason="malloc_trim is glibc's")
def test_release_free_memory_gives_freed_heap_pages_back():
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(64 << 10) for _ in range(640)]  # 40 MiB in heap blocks (below mmap's threshold)
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)  # resident
    keep = libc.malloc(64 << 10)  # above them: the freed blocks are not the heap's top, free() keeps them
    for b in blocks:
        libc.free(b)
    before = _rss_mib()
    assert vmhints.release_free_memory() is True
    after = _rss_mib()
    libc.free(keep)
    assert before - after > 30, (before, after)
