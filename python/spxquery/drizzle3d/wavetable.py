"""The wavelength lookup of a SPHEREx L2 image: the ``WCS-WAVE`` table of its ``W`` WCS.

Every pixel of a SPHEREx detector has its own central wavelength and bandwidth (um), given by
a coarse table of control points interpolated bilinearly (FITS ``WAVE-TAB``). Pixel positions
are 0-based in the file's pixel grid; for IRSA cutouts the table's CRPIX/CRVAL map them onto
the parent detector, so a cutout's wavelengths equal its parent frame's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from astropy.io import fits

#: Default name of the wavelength lookup table extension.
WAVE_EXTNAME = "WCS-WAVE"


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

    def evaluate_crop(self, x0: int, x1: int, y0: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lambda_c, delta_lambda) (um) on the pixel centres of rows y0:y1, columns x0:x1.

        wcslib's -TAB arithmetic: the pixel positions go through ``psi = CDELT*(p + 1 -
        CRPIX) + CRVAL``, each axis is inverted piecewise-linearly (:func:`_cell_index`), and
        VALUES are interpolated bilinearly -- in separable form on the rectangular grid
        (along x at every knot row, then along y), with two full-size arrays only.
        """
        xs = np.arange(x0, x1, dtype=np.float64)
        ys = np.arange(y0, y1, dtype=np.float64)
        ix, fx = _cell_index(self.cdelt[0] * (xs + 1.0 - self.crpix[0]) + self.crval[0], self.x)
        iy, fy = _cell_index(self.cdelt[1] * (ys + 1.0 - self.crpix[1]) + self.crval[1], self.y)
        wy0, wy1 = (1.0 - fy)[:, None], fy[:, None]
        out = []
        for m in range(2):
            v = self.values[..., m]
            along_x = (1.0 - fx) * v[:, ix] + fx * v[:, ix + 1]  # (n knot rows, nx)
            # (1 - fy) * along_x[iy] + fy * along_x[iy + 1], with two full-size arrays only
            res = np.take(along_x, iy, axis=0)
            res *= wy0
            upper = np.take(along_x, iy + 1, axis=0)
            upper *= wy1
            res += upper
            out.append(res)
        return out[0], out[1]


def _cell_index(psi: np.ndarray, knots: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` (knots[i] <= psi <= knots[i+1], first match) and fraction within it.

    Zero-length cells (repeated knots) are skipped; beyond the ends the outermost
    non-degenerate cell is extrapolated linearly (wcslib returns NaN there when the
    end cell is degenerate; pixel centres never fall there).
    """
    good = np.flatnonzero(np.diff(knots) > 0)
    starts = knots[good]
    j = np.clip(np.searchsorted(starts, psi, side="left") - 1, 0, good.size - 1)
    i = good[j]
    f = (psi - knots[i]) / (knots[i + 1] - knots[i])
    return i, f


def read_wave_table(hdul: fits.HDUList, header: fits.Header) -> WaveTable:
    """Parse the ``W`` WAVE-TAB WCS of ``header`` (the IMAGE header) and its table in ``hdul``.

    Raises ValueError with the reason when either is missing or inconsistent.
    """
    if str(header.get("CTYPE1W", "")).upper() != "WAVE-TAB":
        raise ValueError("not a SPHEREx L2 image: IMAGE header has no WAVE-TAB wavelength WCS (CTYPE1W)")
    extname = str(header.get("PS1_0W", WAVE_EXTNAME)).strip()
    vcol = str(header.get("PS1_1W", "VALUES")).strip()
    xcol = str(header.get("PS1_2W", "X")).strip()
    ycol = str(header.get("PS2_2W", "Y")).strip()
    for key in ("PC1_2W", "PC2_1W", "CD1_2W", "CD2_1W", "CD1_1W", "CD2_2W"):
        if key in header and float(header[key]) not in (0.0, 1.0):
            raise ValueError(f"unsupported wavelength WCS: {key} = {header[key]!r}")
    try:
        tab = hdul[extname]
    except KeyError:
        raise ValueError(f"missing extension {extname} (wavelength lookup table)") from None
    # (truncation of every extension, this one included, is checked by the frame reader)
    try:
        row = tab.data[0]
        x = np.asarray(row[xcol], dtype=np.float64).ravel()
        y = np.asarray(row[ycol], dtype=np.float64).ravel()
        values = np.asarray(row[vcol], dtype=np.float64)
    except Exception as exc:
        raise ValueError(f"{extname} table unreadable ({type(exc).__name__}: {exc})") from exc
    if values.shape != (len(y), len(x), 2) or len(x) < 2 or len(y) < 2:
        raise ValueError(
            f"{extname} {vcol} has shape {values.shape}, expected ({len(y)}, {len(x)}, 2) from {xcol}/{ycol}"
        )
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise ValueError(f"{extname} control points {xcol}/{ycol} are not monotonic")
    if np.count_nonzero(np.diff(x) > 0) < 1 or np.count_nonzero(np.diff(y) > 0) < 1:
        raise ValueError(f"{extname} control points {xcol}/{ycol} need two distinct values each")
    return WaveTable(
        x=x,
        y=y,
        values=values,
        crpix=(float(header.get("CRPIX1W", 1.0)), float(header.get("CRPIX2W", 1.0))),
        crval=(float(header.get("CRVAL1W", 1.0)), float(header.get("CRVAL2W", 1.0))),
        cdelt=(float(header.get("CDELT1W", 1.0)), float(header.get("CDELT2W", 1.0))),
    )


__all__ = ["WaveTable", "read_wave_table", "WAVE_EXTNAME"]
