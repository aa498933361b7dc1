"""Decompression of FITS ``RICE_1`` tiles (the tile-compressed FLAGS of QR3 and later).

:func:`rice_decode_rows` hands whole-row tiles to the Rust decoder (``_core.rice_decode_rows``,
``rust/src/rice.rs``: CFITSIO's algorithm with every read bounds-checked, run with the GIL
released) and gets their FLAGS back as uint32, columns ``x0:x1`` only. Malformed bytes are a
``ValueError`` naming the tile, never a crash or a read past the buffer.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np

from . import _core

Sizes = Union[Sequence[int], np.ndarray]


def rice_decode_rows(heap: np.ndarray, offsets: Sizes, lengths: Sizes, rows: Sizes, nx: int, x0: int, x1: int,
                     bytepix: int, blocksize: int, bzero: int) -> np.ndarray:
    """FLAGS ``(sum(rows), x1 - x0)`` uint32 of RICE_1 tiles of whole rows of ``nx`` pixels: tile ``k``
    is ``heap[offsets[k]:offsets[k] + lengths[k]]`` and holds ``rows[k]`` rows; ``bytepix`` 2
    values are sign-extended, then the unsigned offset ``bzero`` is added modulo 2**32."""
    return _core.rice_decode_rows(
        heap=np.ascontiguousarray(heap, dtype=np.uint8), offsets=np.asarray(offsets, dtype=np.int64),
        lengths=np.asarray(lengths, dtype=np.int64), rows=np.asarray(rows, dtype=np.int64), nx=int(nx), x0=int(x0),
        x1=int(x1), bytepix=int(bytepix), blocksize=int(blocksize), bzero=int(bzero))


__all__ = ["rice_decode_rows"]
