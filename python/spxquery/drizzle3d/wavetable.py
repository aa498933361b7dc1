"""The wavelength lookup of a SPHEREx L2 image: the ``WCS-WAVE`` table of its ``W`` WCS.

Every pixel of a SPHEREx detector has its own central wavelength and bandwidth (um), given by
a coarse table of control points interpolated bilinearly (FITS ``WAVE-TAB``). Pixel positions
are 0-based in the file's pixel grid; for IRSA cutouts the table's CRPIX/CRVAL map them onto
the parent detector, so a cutout's wavelengths equal its parent frame's.

The table is the same calibration product in every frame of a detector: its arrays (and the
verdicts of :func:`check_wave_table` on them) are remembered by the exact bytes of the table
(header cards and data part, when at most :data:`MEMO_TABLE_BYTES`), so a frame whose table
equals one read before is not parsed or checked again. The arrays are read-only.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from . import _core
from .access import ByteSource
from .fitsheader import Header, HeaderError
from .fitsstructure import Hdu
from .fitstable import Column, TableError, cell_values, descriptors, element_bytes, heap_start, table_columns

#: Default name of the wavelength lookup table extension.
WAVE_EXTNAME = "WCS-WAVE"
#: Tables whose data part is at most this many bytes are remembered by their bytes (SPHEREx: ~1 KB).
MEMO_TABLE_BYTES = 1 << 16
#: Distinct tables remembered (one per detector and release is the common case).
MEMO_TABLES = 16


@dataclass
class WaveTable:
    """The ``WCS-WAVE`` lookup: control points X (nX,), Y (nY,) in 1-based pixels of
    the parent detector grid (after ``psi = CDELT*(p - CRPIX) + CRVAL``), VALUES (nY, nX, 2)
    = (wavelength, bandwidth) in um."""

    x: np.ndarray
    y: np.ndarray
    values: np.ndarray
    crpix: Tuple[float, float]
    crval: Tuple[float, float]
    cdelt: Tuple[float, float]
    verdicts: Optional[Dict[Any, Optional[str]]] = field(default=None, repr=False, compare=False)
    """:func:`check_wave_table`'s reasons by its arguments, shared by the frames of one remembered
    table (None: not remembered)."""

    def evaluate_crop(self, x0: int, x1: int, y0: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lambda_c, delta_lambda) (um) on the pixel centres of rows y0:y1, columns x0:x1.

        wcslib's -TAB arithmetic: the pixel positions go through ``psi = CDELT*(p + 1 -
        CRPIX) + CRVAL``, each axis is inverted piecewise-linearly (:func:`_cell_index`), and
        VALUES are interpolated bilinearly in separable form on the rectangular grid: along x at
        the two knot rows of each pixel row, then along y (``_core.wave_lookup``, Rust, the GIL
        released: ``(1 - fy) * ax[iy] + fy * ax[iy + 1]``, ``ax[k] = (1 - fx) * v[k, ix] + fx *
        v[k, ix + 1]``).
        """
        xs = np.arange(x0, x1, dtype=np.float64)
        ys = np.arange(y0, y1, dtype=np.float64)
        ix, fx = _cell_index(self.cdelt[0] * (xs + 1.0 - self.crpix[0]) + self.crval[0], self.x)
        iy, fy = _cell_index(self.cdelt[1] * (ys + 1.0 - self.crpix[1]) + self.crval[1], self.y)
        return _core.wave_lookup(values=np.ascontiguousarray(self.values, dtype=np.float64),
                                 row_cell=iy.astype(np.int64), row_frac=np.ascontiguousarray(fy, dtype=np.float64),
                                 column_cell=ix.astype(np.int64),
                                 column_frac=np.ascontiguousarray(fx, dtype=np.float64))


def _cell_index(psi: np.ndarray, knots: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` (knots[i] <= psi <= knots[i+1], first match) and fraction within it.

    Zero-length cells (repeated knots) are skipped; beyond the ends the outermost
    non-degenerate cell is extrapolated linearly (wcslib returns NaN there when the
    end cell is degenerate; pixel centres never fall there).
    """
    good, starts, widths = _cells(knots.dtype.str, knots.tobytes())
    j = np.clip(np.searchsorted(starts, psi, side="left") - 1, 0, good.size - 1)
    return good[j], (psi - starts[j]) / widths[j]


@functools.lru_cache(maxsize=64)
def _cells(dtype: str, raw: bytes) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The non-degenerate cells of the knots ``raw`` (bytes of a 1-D array of ``dtype``): their
    indices ``i``, ``knots[i]`` and ``knots[i + 1] - knots[i]`` (in the knots' dtype), once per
    distinct table axis (every frame of a release shares its table)."""
    knots = np.frombuffer(raw, dtype=dtype)
    good = np.flatnonzero(np.diff(knots) > 0)
    out = (good, knots[good], knots[good + 1] - knots[good])
    for a in out:
        a.setflags(write=False)
    return out


#: Tolerance on the table's wavelengths beyond the detector's band, as a fraction of the band.
BAND_TOLERANCE = 0.15


def _w_keywords(header: Header) -> Tuple[str, str, str, str]:
    """``(table extension, VALUES column, X column, Y column)`` of the ``W`` WAVE-TAB WCS, after
    checking its keywords (FITS Paper III, the SPHEREx layout: two axes, one table)."""
    for i in (1, 2):
        ctype = header.get_str(f"CTYPE{i}W", "").strip().upper()
        if ctype != "WAVE-TAB":
            what = "missing" if f"CTYPE{i}W" not in header else f"{ctype!r:.20}"
            raise ValueError(f"not a SPHEREx L2 image: IMAGE header has no WAVE-TAB wavelength WCS (CTYPE{i}W {what})")
    if header.get_int("WCSAXESW", 2) != 2:
        raise ValueError(f"WCSAXESW = {header.get('WCSAXESW')!r} but the wavelength lookup has two axes")
    ext = [header.get_str(f"PS{i}_0W", WAVE_EXTNAME).strip().upper() for i in (1, 2)]
    vals = [header.get_str(f"PS{i}_1W", "VALUES").strip().upper() for i in (1, 2)]
    idx = [header.get_str(f"PS{i}_2W", name).strip().upper() for i, name in ((1, "X"), (2, "Y"))]
    if ext[0] != ext[1] or vals[0] != vals[1]:
        raise ValueError(f"PS1_0W/PS2_0W = {ext} and PS1_1W/PS2_1W = {vals} must name one table and one column")
    for i in (1, 2):
        if header.get_int(f"PV{i}_3W", i) != i:
            raise ValueError(f"PV{i}_3W = {header.get(f'PV{i}_3W')!r}: axis {i} must be axis {i} of {vals[0]}")
        unit = header.get_str(f"CUNIT{i}W", "um").strip().lower()
        if unit not in ("um", "micron", "microns"):
            raise ValueError(f"CUNIT{i}W = {unit!r:.20}: wavelengths must be in um")
    for key in ("PC1_2W", "PC2_1W", "CD1_2W", "CD2_1W", "CD1_1W", "CD2_2W"):
        if key in header and header.get_float(key) not in (0.0, 1.0):
            raise ValueError(f"unsupported wavelength WCS: {key} = {header.get_float(key)!r}")
    return ext[0], vals[0], idx[0], idx[1]


def _table_row(src: ByteSource, hdus: Mapping[str, Hdu], extname: str) -> Tuple[Hdu, Dict[str, Column], np.ndarray]:
    tab = hdus.get(extname)
    if tab is None:
        raise ValueError(f"missing extension {extname} (wavelength lookup table)")
    if tab.xtension != "BINTABLE":
        raise ValueError(f"PS1_0W names extension {extname}, which is not a binary table "
                         f"({tab.xtension or 'primary'} HDU)")
    cols = table_columns(tab)
    if tab.shape[0] < 1:
        raise ValueError(f"{extname} table has no rows")
    row = src.read(tab.data_offset, tab.shape[1])
    return tab, cols, row


def _column(src: ByteSource, tab: Hdu, cols: Mapping[str, Column], name: str, row: np.ndarray) -> np.ndarray:
    """The numbers of one cell of the table's first row (a fixed array or a heap array)."""
    col = cols.get(name)
    if col is None:
        raise ValueError(f"{tab.label} table has no column {name} (columns: {sorted(cols)[:10]})")
    if not col.is_descriptor:
        return cell_values(row, col).astype(np.float64)
    count, offset = (int(v[0]) for v in descriptors(row.reshape(1, -1), col))
    heap, heap_bytes = heap_start(tab)
    nbytes = count * element_bytes(col.heap_code)
    if count < 0 or offset < 0 or offset + nbytes > heap_bytes:
        raise ValueError(f"{tab.label} column {name} points outside the table's heap")
    cell = Column(name, 0, nbytes, col.heap_code, count)
    return cell_values(src.read(heap + offset, nbytes), cell).astype(np.float64)


def check_wave_table(wave: "WaveTable", shape: Tuple[int, int], band: Tuple[float, float]) -> None:
    """ValueError unless the lookup is finite, positive, inside ``band`` (um, widened by
    :data:`BAND_TOLERANCE`) and covers the image's pixels (``shape = (ny, nx)``)."""
    if wave.verdicts is None:
        _check(wave, shape, band)
        return
    key = (tuple(shape), tuple(band), wave.crpix, wave.crval, wave.cdelt)
    if key not in wave.verdicts:
        try:
            _check(wave, shape, band)
            wave.verdicts[key] = None
        except ValueError as exc:
            wave.verdicts[key] = str(exc)
    reason = wave.verdicts[key]
    if reason is not None:
        raise ValueError(reason)


def _check(wave: "WaveTable", shape: Tuple[int, int], band: Tuple[float, float]) -> None:
    lo, hi = band
    tol = BAND_TOLERANCE * (hi - lo)
    lam, bw = wave.values[..., 0], wave.values[..., 1]
    if not (np.all(np.isfinite(wave.values)) and np.all(np.isfinite(wave.x)) and np.all(np.isfinite(wave.y))):
        raise ValueError(f"{WAVE_EXTNAME} table holds non-finite values")
    if not (np.all(lam > 0) and np.all(bw > 0)):
        raise ValueError(f"{WAVE_EXTNAME} wavelengths/bandwidths are not all positive "
                         f"(min {float(lam.min()):.4g} / {float(bw.min()):.4g} um)")
    if float(lam.min()) < lo - tol or float(lam.max()) > hi + tol or float(bw.max()) > hi - lo:
        raise ValueError(f"{WAVE_EXTNAME} wavelengths {float(lam.min()):.4g}-{float(lam.max()):.4g} um "
                         f"(bandwidths up to {float(bw.max()):.4g} um) do not fit the detector's band "
                         f"{lo:.4g}-{hi:.4g} um")
    for axis, (knots, n) in enumerate(((wave.x, shape[1]), (wave.y, shape[0]))):
        psi = wave.cdelt[axis] * (np.array([0.0, n - 1.0]) + 1.0 - wave.crpix[axis]) + wave.crval[axis]
        margin = 1.0 + abs(wave.cdelt[axis])
        if float(psi.min()) < knots[0] - margin or float(psi.max()) > knots[-1] + margin:
            key = "XY"[axis]
            raise ValueError(f"the image's pixels map to {key} = {float(psi.min()):.6g}-{float(psi.max()):.6g} of "
                             f"{WAVE_EXTNAME}, which covers {knots[0]:.6g}-{knots[-1]:.6g} "
                             f"(CRPIX{axis + 1}W/CRVAL{axis + 1}W/CDELT{axis + 1}W)")


def read_wave_table(src: ByteSource, hdus: Mapping[str, Hdu], header: Header) -> WaveTable:
    """The ``W`` WAVE-TAB lookup of ``header`` (the IMAGE header) from its table among ``hdus``.

    Raises ValueError with the reason when the keywords or the table are missing or
    inconsistent (values are checked by :func:`check_wave_table`).
    """
    try:
        extname, vcol, xcol, ycol = _w_keywords(header)
        crpix = (header.get_float("CRPIX1W", 1.0), header.get_float("CRPIX2W", 1.0))
        crval = (header.get_float("CRVAL1W", 1.0), header.get_float("CRVAL2W", 1.0))
        cdelt = (header.get_float("CDELT1W", 1.0), header.get_float("CDELT2W", 1.0))
    except HeaderError as exc:
        raise ValueError(str(exc)) from None
    for i, d in enumerate(cdelt):
        if d == 0.0:
            raise ValueError(f"CDELT{i + 1}W = 0: every pixel would get the same wavelength")
    tab = hdus.get(extname)
    key = None
    if tab is not None and tab.xtension == "BINTABLE" and 0 < tab.data_bytes <= MEMO_TABLE_BYTES:
        key = (tab.header._text, tab.shape, tab.pcount, src.read_bytes(tab.data_offset, tab.data_bytes),
               vcol, xcol, ycol)
        with _MEMO_LOCK:
            hit = _MEMO.get(key)
        if hit is not None:
            return WaveTable(x=hit[0], y=hit[1], values=hit[2], crpix=crpix, crval=crval, cdelt=cdelt,
                             verdicts=hit[3])
    x, y, values = _table_arrays(src, hdus, extname, vcol, xcol, ycol)
    verdicts: Optional[Dict[Any, Optional[str]]] = None
    if key is not None:
        for a in (x, y, values):
            a.setflags(write=False)
        verdicts = {}
        with _MEMO_LOCK:
            _MEMO[key] = (x, y, values, verdicts)
            while len(_MEMO) > MEMO_TABLES:
                _MEMO.popitem(last=False)
    return WaveTable(x=x, y=y, values=values, crpix=crpix, crval=crval, cdelt=cdelt, verdicts=verdicts)


_MEMO: "OrderedDict[Any, Tuple[np.ndarray, np.ndarray, np.ndarray, Dict[Any, Optional[str]]]]" = OrderedDict()
_MEMO_LOCK = threading.Lock()


def _table_arrays(src: ByteSource, hdus: Mapping[str, Hdu], extname: str, vcol: str, xcol: str,
                  ycol: str) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, VALUES (nY, nX, 2))`` of the table, checked (ValueError with the reason)."""
    try:
        tab, cols, row = _table_row(src, hdus, extname)
        x = _column(src, tab, cols, xcol, row)
        y = _column(src, tab, cols, ycol, row)
        values = _column(src, tab, cols, vcol, row)
    except (TableError, HeaderError) as exc:
        raise ValueError(f"{extname} table unreadable ({exc})") from None
    if len(x) < 2 or len(y) < 2 or values.size != len(y) * len(x) * 2:
        raise ValueError(
            f"{extname} {vcol} has {values.size} values, expected ({len(y)}, {len(x)}, 2) from {xcol}/{ycol}"
        )
    values = values.reshape(len(y), len(x), 2)
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise ValueError(f"{extname} control points {xcol}/{ycol} are not monotonic")
    if np.count_nonzero(np.diff(x) > 0) < 1 or np.count_nonzero(np.diff(y) > 0) < 1:
        raise ValueError(f"{extname} control points {xcol}/{ycol} need two distinct values each")
    return x, y, values


__all__ = ["WaveTable", "read_wave_table", "check_wave_table", "WAVE_EXTNAME", "BAND_TOLERANCE", "MEMO_TABLE_BYTES"]
