"""Pixels of an L2 file's images, read by rows through a :class:`~.access.ByteSource`.

:func:`read_image` reads rows (a ``range``: contiguous, or every n-th row) and a column span
of a plain image and converts them in one pass to the engine's dtype. :func:`read_flags`
does the same for FLAGS, plain or tile-compressed: only the tiles holding the rows are
fetched (their table rows, then their heap bytes, merged into few ranges), decompressed
(``RICE_1`` by :mod:`.tiles`, ``GZIP_1`` by zlib) and cut to the columns; the result is
native ``uint32`` (int32 files reinterpreted bit for bit, unsigned ``BZERO`` applied).
:class:`PixelError` names the extension and the reason.
"""

from __future__ import annotations

import zlib
from typing import Dict, List, Sequence, Tuple

import numpy as np

from .access import ByteSource
from .fitstable import descriptors
from .l2layout import FlagsPart, PlainImage, TiledImage
from .tiles import rice_decode

#: Heap ranges closer than this (bytes) are fetched as one.
MERGE_GAP_BYTES = 1 << 16


class PixelError(ValueError):
    """Pixels that cannot be read; the message names the extension."""


def _row_bytes(src: ByteSource, part: PlainImage, rows: range, x0: int, x1: int) -> np.ndarray:
    """The bytes of ``rows`` (whole rows, or the span x0:x1 when rows are stepped), ``(n, bytes)``."""
    rb = part.row_bytes
    if rows.step == 1:
        buf = src.read(part.offset + rows.start * rb, len(rows) * rb)
        return buf.reshape(len(rows), rb)
    item = rb // part.shape[1]
    bufs = src.read_ranges([(part.offset + y * rb + x0 * item, (x1 - x0) * item) for y in rows])
    return np.stack(bufs) if bufs else np.empty((0, (x1 - x0) * item), np.uint8)


def _check_box(part: FlagsPart, rows: range, x0: int, x1: int) -> None:
    ny, nx = part.shape
    if not (0 <= x0 < x1 <= nx) or (len(rows) and not (0 <= rows[0] and rows[-1] < ny)) or rows.step < 1:
        raise PixelError(f"{part.name}: rows {rows}, columns {x0}:{x1} are outside the {ny} x {nx} image")


def read_image(src: ByteSource, part: PlainImage, rows: range, x0: int, x1: int,
               dtype: type = np.float64) -> np.ndarray:
    """Pixels ``[rows, x0:x1]`` of a plain image as ``dtype``, shape ``(len(rows), x1 - x0)``."""
    _check_box(part, rows, x0, x1)
    raw = _row_bytes(src, part, rows, x0, x1)
    if rows.step == 1:
        view = raw.view(part.dtype)[:, x0:x1]
    else:
        view = raw.view(part.dtype)
    return view.astype(dtype)


def _as_flags(values: np.ndarray, bzero: int) -> np.ndarray:
    """Integer pixel values as native uint32: ``value + bzero`` modulo 2**32."""
    if bzero == 0 and values.dtype.itemsize <= 4:
        return values.astype(np.uint32)  # int32 -> uint32 keeps the bits
    return (values.astype(np.int64) + np.int64(bzero)).astype(np.uint32)


def read_flags(src: ByteSource, part: FlagsPart, rows: range, x0: int, x1: int) -> np.ndarray:
    """FLAGS ``[rows, x0:x1]`` as native uint32, from a plain or a tile-compressed image."""
    _check_box(part, rows, x0, x1)
    if len(rows) == 0:
        return np.empty((0, x1 - x0), dtype=np.uint32)
    if isinstance(part, PlainImage):
        raw = _row_bytes(src, part, rows, x0, x1)
        view = raw.view(part.dtype)[:, x0:x1] if rows.step == 1 else raw.view(part.dtype)
        return _as_flags(view, part.bzero)
    tiles = sorted({y // part.tile_rows for y in rows})
    decoded = _decode_tiles(src, part, tiles)
    whole = np.concatenate([decoded[k] for k in tiles]) if len(tiles) > 1 else decoded[tiles[0]]
    first = {}  # tile -> its first row in `whole`
    n = 0
    for k in tiles:
        first[k] = n
        n += decoded[k].shape[0]
    if part.tile_rows == 1 and rows.step == 1:
        picked = whole[:, x0:x1]  # one tile per row, all rows wanted
    else:
        at = np.array([first[y // part.tile_rows] + y % part.tile_rows for y in rows], dtype=np.intp)
        picked = whole[at, x0:x1]
    return _as_flags(picked, part.bzero)


def _merged_ranges(spans: List[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Cover ``(offset, length)`` spans with few ranges (gaps under MERGE_GAP_BYTES are read too)."""
    out: List[Tuple[int, int]] = []
    for off, n in sorted(s for s in spans if s[1] > 0):
        if out and off <= out[-1][0] + out[-1][1] + MERGE_GAP_BYTES:
            start = out[-1][0]
            out[-1] = (start, max(out[-1][1], off + n - start))
        else:
            out.append((off, n))
    return out


def _tile_spans(src: ByteSource, part: TiledImage, tiles: Sequence[int]) -> Dict[int, Tuple[str, int, int]]:
    """Tile -> (codec, heap offset, bytes), from the descriptors of the tiles' table rows."""
    if not tiles:
        return {}
    k0, k1 = tiles[0], tiles[-1] + 1
    rows = src.read(part.rows_offset + k0 * part.row_bytes, (k1 - k0) * part.row_bytes).reshape(k1 - k0, -1)
    cols = [(part.codec, part.column), ("GZIP_1", part.gzip_column), ("RAW", part.raw_column)]
    found: Dict[int, Tuple[str, int, int]] = {}
    for codec, col in cols:
        if col is None:
            continue
        count, offset = descriptors(rows, col)
        for k in tiles:
            n, off = int(count[k - k0]), int(offset[k - k0])
            if k in found or n == 0:
                continue
            if n < 0 or off < 0 or off + n > part.heap_bytes:
                raise PixelError(f"{part.name}: tile {k} claims heap bytes {off}-{off + n}, the heap has "
                                 f"{part.heap_bytes}")
            found[k] = (codec, off, n)
    missing = [k for k in tiles if k not in found]
    if missing:
        raise PixelError(f"{part.name}: tile {missing[0]} holds no data")
    return found


def _decode_tiles(src: ByteSource, part: TiledImage, tiles: Sequence[int]) -> Dict[int, np.ndarray]:
    """Tile -> its decoded pixels ``(rows in tile, nx)`` (integers of the file's type)."""
    spans = _tile_spans(src, part, tiles)
    ranges = _merged_ranges([(part.heap_offset + off, n) for _, off, n in spans.values()])
    bufs = src.read_ranges(ranges)
    ny, nx = part.shape
    out: Dict[int, np.ndarray] = {}
    for k, (codec, off, n) in spans.items():
        pos = part.heap_offset + off
        i = max(j for j, (start, _) in enumerate(ranges) if start <= pos)
        data = bufs[i][pos - ranges[i][0]:pos - ranges[i][0] + n]
        nrows = min(part.tile_rows, ny - k * part.tile_rows)
        npix = nrows * nx
        try:
            if codec == "RICE_1":
                values = rice_decode(data, npix, part.bytepix, part.blocksize)
            elif codec == "GZIP_1":
                # at most one byte more than the tile needs: a decompression bomb stops there
                raw = zlib.decompressobj(47).decompress(data.tobytes(), npix * part.bytepix + 1)
                values = np.frombuffer(raw, dtype=f">i{part.bytepix}")
            else:
                values = np.frombuffer(data.tobytes(), dtype=part.dtype)
        except (ValueError, zlib.error) as exc:
            raise PixelError(f"{part.name}: tile {k} does not decompress ({exc})") from None
        if values.size != npix:
            raise PixelError(f"{part.name}: tile {k} holds {values.size} pixels, expected {npix}")
        out[k] = values.reshape(nrows, nx)
    return out


__all__ = ["PixelError", "read_image", "read_flags", "MERGE_GAP_BYTES"]
