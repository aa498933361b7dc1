"""Pixels of an L2 file's images, read by rows through a :class:`~.access.ByteSource`.

:func:`read_image` reads rows (a ``range``: contiguous, or every n-th row) and a column span
of a plain image and converts them in one pass to the engine's dtype. From a local file
(:class:`~.access.LocalFile`) plain images are read by the Rust reader
(``_core.read_plain_rows``, ``rust/src/rawrows.rs``: ``pread`` of the span's bytes with the
GIL released, big-endian to native straight into the result, the same values as the numpy
path); other sources (object stores, HTTP) go through :meth:`~.access.ByteSource.read_ranges`. :func:`read_flags`
does the same for FLAGS, plain or tile-compressed: only the tiles holding the rows are
fetched (their table rows, then their heap bytes, merged into few ranges), decompressed
(``RICE_1`` by :mod:`.tiles`, ``GZIP_1`` by zlib) and cut to the columns; the result is
native ``uint32`` (int32 files reinterpreted bit for bit, unsigned ``BZERO`` applied).
:class:`PixelError` names the extension and the reason.
"""

from __future__ import annotations

import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import _core
from .access import ByteSource, LocalFile, Range, coalesce
from .fitstable import descriptors
from .l2layout import FlagsPart, PlainImage, TiledImage
from .tiles import rice_decode_rows

#: Heap ranges closer than this (bytes) are fetched as one.
MERGE_GAP_BYTES = 1 << 16


class PixelError(ValueError):
    """Pixels that cannot be read; the message names the extension."""


def row_ranges(part: PlainImage, rows: range, x0: int, x1: int) -> List[Range]:
    """The byte ranges :func:`read_image` (and :func:`read_flags` of a plain FLAGS) read for
    ``[rows, x0:x1]``: one range of whole rows when ``rows`` are contiguous, else the span
    ``x0:x1`` of each row (what a source can fetch ahead, :meth:`~.access.ByteSource.prefetch`)."""
    rb = part.row_bytes
    if rows.step == 1:
        return [(part.offset + rows.start * rb, len(rows) * rb)]
    item = rb // part.shape[1]
    return [(part.offset + y * rb + x0 * item, (x1 - x0) * item) for y in rows]


def _row_bytes(src: ByteSource, part: PlainImage, rows: range, x0: int, x1: int) -> np.ndarray:
    """The bytes of ``rows`` (whole rows, or the span x0:x1 when rows are stepped), ``(n, bytes)``."""
    bufs = src.read_ranges(row_ranges(part, rows, x0, x1))
    if rows.step == 1:
        return bufs[0].reshape(len(rows), part.row_bytes)
    item = part.row_bytes // part.shape[1]
    return np.stack(bufs) if bufs else np.empty((0, (x1 - x0) * item), np.uint8)


#: BITPIX of each big-endian dtype of :mod:`.l2layout`.
_BITPIX = {">f4": -32, ">f8": -64, ">u1": 8, ">i2": 16, ">i4": 32, ">i8": 64}
_PREAD = getattr(_core, "read_plain_rows", None)  # POSIX only


def _pread_rows(src: ByteSource, part: PlainImage, rows: range, x0: int, x1: int,
                out: Optional[np.ndarray] = None) -> Optional[np.ndarray]:
    """``[rows, x0:x1]`` of a plain image of a local file by the Rust reader: float64 for a
    float image, uint32 (``bzero`` applied) for an integer one (into ``out`` when given); None
    for other sources."""
    if _PREAD is None or not isinstance(src, LocalFile) or len(rows) == 0 or part.dtype not in _BITPIX:
        return None
    try:
        return _PREAD(fd=src.fileno(), size=src.size, name=part.name, offset=part.offset, ny=part.shape[0],
                      nx=part.shape[1], bitpix=_BITPIX[part.dtype], bzero=part.bzero, start=rows.start,
                      step=rows.step, count=len(rows), x0=x0, x1=x1, out=out)
    except ValueError as exc:
        raise PixelError(str(exc)) from None


def read_image_minus(src: ByteSource, part: PlainImage, other: PlainImage, scale: float, rows: range, x0: int,
                     x1: int) -> np.ndarray:
    """``image - scale * other`` on pixels ``[rows, x0:x1]`` of two plain images of one shape, float64:
    per pixel ``value - (other * scale)``, the operations (and bits) of ``image -= np.multiply(other,
    scale)``. From a local file both are read by the Rust reader in one call, without an array of
    ``other``'s pixels; from other sources ``other`` is read, scaled in place and subtracted."""
    _check_box(part, rows, x0, x1)
    _check_box(other, rows, x0, x1)
    if (_PREAD is not None and isinstance(src, LocalFile) and len(rows) and part.dtype in (">f4", ">f8")
            and other.dtype in (">f4", ">f8") and other.shape == part.shape):
        try:
            return _PREAD(fd=src.fileno(), size=src.size, name=part.name, offset=part.offset, ny=part.shape[0],
                          nx=part.shape[1], bitpix=_BITPIX[part.dtype], bzero=part.bzero, start=rows.start,
                          step=rows.step, count=len(rows), x0=x0, x1=x1, minus_name=other.name,
                          minus_offset=other.offset, minus_bitpix=_BITPIX[other.dtype], minus_scale=float(scale))
        except ValueError as exc:
            raise PixelError(str(exc)) from None
    image = read_image(src, part, rows, x0, x1)
    values = read_image(src, other, rows, x0, x1)
    image -= np.multiply(values, scale, out=values)
    return image


def _check_box(part: FlagsPart, rows: range, x0: int, x1: int) -> None:
    ny, nx = part.shape
    if not (0 <= x0 < x1 <= nx) or (len(rows) and not (0 <= rows[0] and rows[-1] < ny)) or rows.step < 1:
        raise PixelError(f"{part.name}: rows {rows}, columns {x0}:{x1} are outside the {ny} x {nx} image")


def read_image(src: ByteSource, part: PlainImage, rows: range, x0: int, x1: int,
               dtype: type = np.float64, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixels ``[rows, x0:x1]`` of a plain image as ``dtype``, shape ``(len(rows), x1 - x0)``;
    written into ``out`` (C-contiguous, that shape and dtype) when given, and that returned."""
    _check_box(part, rows, x0, x1)
    if dtype is np.float64 and part.dtype[1] == "f":
        fast = _pread_rows(src, part, rows, x0, x1, out)
        if fast is not None:
            return fast
    raw = _row_bytes(src, part, rows, x0, x1)
    if rows.step == 1:
        view = raw.view(part.dtype)[:, x0:x1]
    else:
        view = raw.view(part.dtype)
    if out is None:
        return view.astype(dtype)
    out[...] = view
    return out


def _as_flags(values: np.ndarray, bzero: int) -> np.ndarray:
    """Integer pixel values as native uint32: ``value + bzero`` modulo 2**32."""
    if bzero == 0 and values.dtype.itemsize <= 4:
        return values.astype(np.uint32)  # int32 -> uint32 keeps the bits
    return (values.astype(np.int64) + np.int64(bzero)).astype(np.uint32)


def read_flags(src: ByteSource, part: FlagsPart, rows: range, x0: int, x1: int,
               out: Optional[np.ndarray] = None) -> np.ndarray:
    """FLAGS ``[rows, x0:x1]`` as native uint32, from a plain or a tile-compressed image; a plain
    image's read from a local file goes into ``out`` when given (C-contiguous uint32)."""
    _check_box(part, rows, x0, x1)
    if len(rows) == 0:
        return np.empty((0, x1 - x0), dtype=np.uint32)
    if isinstance(part, PlainImage):
        fast = _pread_rows(src, part, rows, x0, x1, out) if part.dtype[1] in "iu" else None
        if fast is not None:
            return fast
        raw = _row_bytes(src, part, rows, x0, x1)
        view = raw.view(part.dtype)[:, x0:x1] if rows.step == 1 else raw.view(part.dtype)
        return _as_flags(view, part.bzero)
    tiles = sorted({y // part.tile_rows for y in rows})
    whole, first = _decode_tiles(src, part, tiles, x0, x1)  # FLAGS of the tiles' rows, columns x0:x1
    if part.tile_rows == 1 and rows.step == 1:
        return whole  # one tile per row, all rows wanted
    at = np.array([first[y // part.tile_rows] + y % part.tile_rows for y in rows], dtype=np.intp)
    return whole[at]


def _merged_ranges(spans: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Cover ``(offset, length)`` spans with few ranges (gaps under MERGE_GAP_BYTES are read too)."""
    return coalesce(spans, MERGE_GAP_BYTES)


_CODECS = ("RICE_1", "GZIP_1", "RAW")


def _tile_spans(src: ByteSource, part: TiledImage, tiles: Sequence[int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(codec index into _CODECS, heap offset, bytes)`` of each tile, from the descriptors of the
    tiles' table rows (a tile stored in a fallback column when its COMPRESSED_DATA is empty)."""
    k0, k1 = tiles[0], tiles[-1] + 1
    rows = src.read(part.rows_offset + k0 * part.row_bytes, (k1 - k0) * part.row_bytes).reshape(k1 - k0, -1)
    pick = np.asarray(tiles, dtype=np.intp) - k0
    count, offset = (a[pick] for a in descriptors(rows, part.column))
    codec = np.full(len(tiles), _CODECS.index(part.codec), dtype=np.intp)
    for index, col in ((1, part.gzip_column), (2, part.raw_column)):
        if col is not None:
            c2, o2 = (a[pick] for a in descriptors(rows, col))
            take = (count == 0) & (c2 != 0)
            count[take], offset[take], codec[take] = c2[take], o2[take], index
    bad = np.flatnonzero((count <= 0) | (offset < 0) | (offset + count > part.heap_bytes))
    if bad.size:
        i = int(bad[0])
        if count[i] == 0:
            raise PixelError(f"{part.name}: tile {tiles[i]} holds no data")
        raise PixelError(f"{part.name}: tile {tiles[i]} claims heap bytes {int(offset[i])}-"
                         f"{int(offset[i] + count[i])}, the heap has {part.heap_bytes}")
    return codec, offset, count


def _decode_tiles(src: ByteSource, part: TiledImage, tiles: Sequence[int], x0: int,
                  x1: int) -> Tuple[np.ndarray, Dict[int, int]]:
    """The uint32 FLAGS, columns ``x0:x1``, of every row of ``tiles`` (in order), and the first of
    those rows of each tile. RICE_1 tiles are decoded in one call of the Rust decoder (GIL
    released); tiles stored otherwise (GZIP_1, uncompressed) one by one here."""
    codec, offset, count = _tile_spans(src, part, tiles)
    ranges = _merged_ranges(list(zip((part.heap_offset + offset).tolist(), count.tolist())))
    bufs = src.read_ranges(ranges)
    heap = bufs[0] if len(bufs) == 1 else np.concatenate(bufs)
    range_start = np.array([r[0] for r in ranges], dtype=np.int64)
    in_buf = np.cumsum([0] + [n for _, n in ranges])[:-1]
    pos = part.heap_offset + offset
    i = np.searchsorted(range_start, pos, side="right") - 1
    at = in_buf[i] + pos - range_start[i]  # where each tile's bytes are in `heap`
    ny, nx = part.shape
    nrows = np.minimum(part.tile_rows, ny - np.asarray(tiles) * part.tile_rows)
    firsts = np.concatenate([[0], np.cumsum(nrows)])
    first = dict(zip(tiles, firsts[:-1].tolist()))
    if np.all(codec == 0):  # every tile RICE_1
        try:
            return rice_decode_rows(heap, at, count, nrows, nx, x0, x1, part.bytepix, part.blocksize,
                                    part.bzero), first
        except ValueError as exc:
            raise PixelError(f"{part.name}: {exc} (of tiles {tiles[0]}-{tiles[-1]})") from None
    out = np.empty((int(firsts[-1]), x1 - x0), dtype=np.uint32)
    for j, k in enumerate(tiles):
        n_rows, n, data = int(nrows[j]), int(count[j]), heap[int(at[j]):int(at[j]) + int(count[j])]
        npix = n_rows * nx
        try:
            if _CODECS[codec[j]] == "RICE_1":
                got = rice_decode_rows(data, [0], [n], [n_rows], nx, x0, x1, part.bytepix, part.blocksize, part.bzero)
            else:
                if _CODECS[codec[j]] == "GZIP_1":
                    # at most one byte more than the tile needs: a decompression bomb stops there
                    raw = zlib.decompressobj(47).decompress(data.tobytes(), npix * part.bytepix + 1)
                    values = np.frombuffer(raw, dtype=f">i{part.bytepix}")
                else:
                    values = np.frombuffer(data.tobytes(), dtype=part.dtype)
                if values.size != npix:
                    raise PixelError(f"{part.name}: tile {k} holds {values.size} pixels, expected {npix}")
                got = _as_flags(values.reshape(n_rows, nx)[:, x0:x1], part.bzero)
        except (ValueError, zlib.error) as exc:
            if isinstance(exc, PixelError):
                raise
            raise PixelError(f"{part.name}: tile {k} does not decompress ({exc})") from None
        out[first[k]:first[k] + n_rows] = got
    return out, first


__all__ = ["PixelError", "read_image", "read_image_minus", "read_flags", "row_ranges", "MERGE_GAP_BYTES"]
