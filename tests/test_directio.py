"""directio.PlacedWriter: pieces placed in a real file, whole blocks past the page cache (O_DIRECT)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import numpy as np
import pytest

from spxquery.drizzle3d import directio


def _pieces(total, n_streams, rng):
    """``n_streams`` runs tiling ``[0, total)``, each cut into pieces of random lengths; returned
    in the order a band-by-band writer emits them: the first piece of every run, then the second..."""
    cuts = np.sort(rng.choice(np.arange(1, total), n_streams - 1, replace=False))
    runs = list(zip(np.r_[0, cuts], np.r_[cuts, total]))
    pieces = []
    for lo, hi in runs:
        edges = np.unique(np.r_[lo, np.sort(rng.integers(lo, hi, rng.integers(1, 12))), hi])
        pieces.append(list(zip(edges[:-1], edges[1:])))
    order = []
    for i in range(max(len(p) for p in pieces)):
        order += [p[i] for p in pieces if i < len(p)]
    return order


def _write(path, data, order, **kw):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        largest = max(hi - lo for lo, hi in order)
        with directio.PlacedWriter(fd, largest, **kw) as placed:
            for lo, hi in order:
                placed.put(memoryview(data)[lo:hi], 100 + lo)  # the region starts at an unaligned offset
        os.fsync(fd)
    finally:
        os.close(fd)
    return placed


@pytest.mark.parametrize("seed", range(6))
def test_pieces_in_runs_give_the_file_and_only_the_runs_ends_go_through_the_page_cache(tmp_path, seed):
    rng = np.random.default_rng(seed)
    total, n_streams = int(rng.integers(20_000, 400_000)), int(rng.integers(1, 30))
    data = rng.integers(0, 256, total, dtype=np.uint8).tobytes()
    order = _pieces(total, n_streams, rng)
    placed = _write(tmp_path / "f", data, order)
    assert (tmp_path / "f").read_bytes() == bytes(100) + data
    assert placed.direct_bytes + placed.cached_bytes == total
    if directio.supported(tmp_path):
        assert placed.cached_bytes < 2 * directio.ALIGN * n_streams  # a run's two ends at most
        assert placed.direct_bytes > 0
    rng.shuffle(order)  # in any order: the same bytes (continuations found or not)
    _write(tmp_path / "g", data, order)
    assert (tmp_path / "g").read_bytes() == bytes(100) + data


def test_without_o_direct_every_byte_goes_through_the_file_descriptor(tmp_path):
    rng = np.random.default_rng(7)
    data = rng.integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    order = _pieces(len(data), 5, rng)
    placed = _write(tmp_path / "f", data, order, direct=False)
    assert (tmp_path / "f").read_bytes() == bytes(100) + data
    assert placed.direct_bytes == 0 and placed.cached_bytes == len(data) and not placed.direct


def test_a_refused_direct_write_goes_through_the_page_cache_with_the_same_bytes(tmp_path):
    if not directio.supported(tmp_path):
        pytest.skip("no O_DIRECT here")
    rng = np.random.default_rng(8)
    data = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    order = _pieces(len(data), 4, rng)
    # Blocks of 24 bytes: offsets and lengths no disk takes directly, so a block device's file
    # system refuses them (EINVAL); tmpfs takes any alignment.
    placed = _write(tmp_path / "f", data, order, align=24)
    assert (tmp_path / "f").read_bytes() == bytes(100) + data
    assert placed.direct_bytes + placed.cached_bytes == len(data)
    if _refuses_24_byte_blocks(tmp_path):
        assert placed.refused and placed.direct_bytes == 0 and placed.cached_bytes == len(data)
    else:
        assert not placed.refused and placed.direct_bytes > 0


def _refuses_24_byte_blocks(directory) -> bool:
    """Whether ``directory``'s file system refuses a direct write of 24 bytes at offset 24."""
    path = directory / "probe24"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        os.pwrite(fd, bytes(24), 24)
        return False
    except OSError as exc:
        return exc.errno == errno.EINVAL
    finally:
        os.close(fd)
        path.unlink()


def test_a_piece_longer_than_max_piece_is_cut_into_pieces_that_continue_each_other(tmp_path):
    rng = np.random.default_rng(9)
    data = rng.integers(0, 256, 300_001, dtype=np.uint8).tobytes()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with directio.PlacedWriter(fd, 8192) as placed:
            placed.put(data, 77)
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == bytes(77) + data
    if directio.supported(tmp_path):
        assert placed.cached_bytes < 2 * directio.ALIGN


def test_a_direct_file_writes_what_plain_writes_would_and_lends_its_writer(tmp_path):
    rng = np.random.default_rng(10)
    chunks = [rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 50_000, 40)]
    with open(tmp_path / "f", "wb") as f:
        f.write(b"head")
        with directio.DirectFile(f, piece=16384) as out:
            assert out.direct == directio.supported(tmp_path)
            for c in chunks[:20]:
                assert out.write(c) == len(c)
            at = out.tell()
            out.placed.put(b"".join(chunks[20:30]), at)  # a writer placing bytes itself, then seeking past them
            out.seek(at + sum(map(len, chunks[20:30])))
            for c in chunks[30:]:
                out.write(c)
        assert f.tell() == 4 + sum(map(len, chunks))
        f.write(b"tail")
    assert (tmp_path / "f").read_bytes() == b"head" + b"".join(chunks) + b"tail"
    assert (out.placed.direct_bytes > 0) == directio.supported(tmp_path)


_FULL_DISK = r"""
import errno, os, resource, sys
from spxquery.drizzle3d import directio
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))  # the file may not pass 1 MiB
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
try:
    with directio.PlacedWriter(fd, 256 << 10) as placed:
        for k in range(16):
            placed.put(bytes(256 << 10), k * (256 << 10))
except OSError as exc:
    print("raised", errno.errorcode[exc.errno], placed.direct_bytes + placed.cached_bytes)
    sys.exit(0)
print("no error")
sys.exit(1)
"""


def test_a_write_error_on_the_writer_thread_is_raised_to_the_caller(tmp_path):
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(tmp_path / "f")], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    word, name, written = out.stdout.split()
    assert word == "raised" and name == "EFBIG" and int(written) <= 1 << 20
    assert (tmp_path / "f").stat().st_size <= 1 << 20
