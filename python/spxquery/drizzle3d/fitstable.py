"""Columns of a FITS binary table (BINTABLE) and the bytes of their cells, from the header alone.

:func:`table_columns` reads ``TFIELDS``/``TTYPEn``/``TFORMn``/``TDIMn`` and lays the columns
out in a row (FITS 4.0 section 7.3): each :class:`Column` knows its byte offset in a row,
its element type and count, and whether it holds heap descriptors (variable-length arrays,
``P``/``Q``). Cells are decoded from the bytes a :class:`~.access.ByteSource` returns; heap
ranges are checked against the heap. Big-endian, as FITS stores them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .fitsheader import HeaderError
from .fitsstructure import Hdu

#: Bytes per element and numpy dtype of the TFORM type codes read here.
_TYPES: Dict[str, Tuple[int, Optional[str]]] = {
    "L": (1, None), "X": (1, None), "B": (1, ">u1"), "I": (2, ">i2"), "J": (4, ">i4"), "K": (8, ">i8"),
    "A": (1, None), "E": (4, ">f4"), "D": (8, ">f8"), "C": (8, None), "M": (16, None),
}
_TFORM = re.compile(r"^\s*(\d*)([LXBIJKAEDCMPQ])([LXBIJKAEDCM]?)(?:\((\d+)\))?\s*$")
#: Most columns a table may declare.
MAX_COLUMNS = 999


class TableError(ValueError):
    """A table whose layout cannot be read; the message names the table and the keyword."""


@dataclass(frozen=True)
class Column:
    """One column: ``offset`` (bytes into a row), ``width`` (bytes in a row), element ``code``
    and ``repeat``; for ``P``/``Q`` columns ``heap_code`` is the type of the heap elements."""

    name: str
    offset: int
    width: int
    code: str
    repeat: int
    heap_code: str = ""
    dim: Optional[Tuple[int, ...]] = None

    @property
    def is_descriptor(self) -> bool:
        return self.code in ("P", "Q")


def _parse_tform(table: str, n: int, tform: str) -> Tuple[str, int, str, int]:
    """``(code, repeat, heap code, width in bytes)`` of one TFORM."""
    m = _TFORM.match(tform)
    if not m:
        raise TableError(f"{table}: TFORM{n} = {tform!r:.30} is not a binary-table format")
    repeat = int(m.group(1)) if m.group(1) else 1
    code, heap = m.group(2), m.group(3)
    if code in ("P", "Q"):
        if not heap:
            raise TableError(f"{table}: TFORM{n} = {tform!r:.30} has no element type for its heap array")
        return code, repeat, heap, repeat * (8 if code == "P" else 16)
    if code == "X":
        return code, repeat, "", (repeat + 7) // 8
    return code, repeat, "", repeat * _TYPES[code][0]


def table_columns(hdu: Hdu) -> Dict[str, Column]:
    """The columns of a BINTABLE HDU by upper-cased ``TTYPEn`` (unnamed ones as ``COL<n>``)."""
    h = hdu.header
    if hdu.xtension != "BINTABLE" or len(hdu.shape) != 2:
        raise TableError(f"{hdu.label} is not a binary table (XTENSION {hdu.xtension!r}, NAXIS {len(hdu.shape)})")
    try:
        n_fields = h.get_int("TFIELDS")
        if not 0 <= n_fields <= MAX_COLUMNS:
            raise TableError(f"{hdu.label}: TFIELDS = {n_fields} is outside 0-{MAX_COLUMNS}")
        cols: Dict[str, Column] = {}
        offset = 0
        for n in range(1, n_fields + 1):
            code, repeat, heap, width = _parse_tform(hdu.label, n, h.get_str(f"TFORM{n}"))
            name = h.get_str(f"TTYPE{n}", f"COL{n}").strip().upper()
            dim = None
            tdim = h.get_str(f"TDIM{n}", "")
            if tdim:
                try:
                    dim = tuple(int(v) for v in tdim.strip().strip("()").split(","))
                except ValueError:
                    raise TableError(f"{hdu.label}: TDIM{n} = {tdim!r:.30} is not a list of integers") from None
            if name in cols:
                raise TableError(f"{hdu.label}: two columns named {name}")
            cols[name] = Column(name, offset, width, code, repeat, heap, dim)
            offset += width
    except HeaderError as exc:
        raise TableError(str(exc)) from None
    row_bytes = hdu.shape[1]
    if offset != row_bytes:
        raise TableError(f"{hdu.label}: the columns' TFORMs add up to {offset} bytes a row, NAXIS1 = {row_bytes}")
    return cols


def cell_values(row: np.ndarray, col: Column) -> np.ndarray:
    """The elements of a fixed-size numeric cell from the bytes of one row (float64 for reals)."""
    dtype = _TYPES[col.code][1]
    if dtype is None or col.is_descriptor:
        raise TableError(f"column {col.name} (type {col.code}) is not a fixed-size numeric column")
    return np.frombuffer(row[col.offset:col.offset + col.width].tobytes(), dtype=dtype)


def descriptors(rows: np.ndarray, col: Column) -> Tuple[np.ndarray, np.ndarray]:
    """``(count, heap offset)`` int64 arrays of a ``P``/``Q`` column, from rows' bytes ``(n, row_bytes)``."""
    if not col.is_descriptor:
        raise TableError(f"column {col.name} holds no heap descriptors (type {col.code})")
    dt = ">i4" if col.code == "P" else ">i8"
    size = 4 if col.code == "P" else 8
    raw = np.ascontiguousarray(rows[:, col.offset:col.offset + 2 * size])
    pairs = raw.view(dt).reshape(-1, 2).astype(np.int64)
    return pairs[:, 0], pairs[:, 1]


def heap_start(hdu: Hdu) -> Tuple[int, int]:
    """``(byte offset of the heap in the file, heap bytes)``: THEAP (default: right after the rows)."""
    rows_bytes = hdu.shape[0] * hdu.shape[1]
    try:
        theap = hdu.header.get_int("THEAP", rows_bytes)
    except HeaderError as exc:
        raise TableError(str(exc)) from None
    if not rows_bytes <= theap <= rows_bytes + hdu.pcount:
        raise TableError(f"{hdu.label}: THEAP = {theap} is outside the data part ({rows_bytes}-"
                         f"{rows_bytes + hdu.pcount} bytes)")
    return hdu.data_offset + theap, rows_bytes + hdu.pcount - theap


def element_bytes(code: str) -> int:
    return _TYPES[code][0]


__all__ = ["Column", "TableError", "table_columns", "cell_values", "descriptors", "heap_start", "element_bytes"]
