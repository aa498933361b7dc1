"""World coordinates of the cube file: a standard 3-D WCS and an exact alternate one.

Every image extension of a cube (SCI, VARIANCE, AND_MASK, OR_MASK, COUNT) carries two WCSs
with the same celestial axes (``RA---TAN``, ``DEC--TAN``, 0-based pixel ``(x, y)``):

* the primary WCS (no key): axis 3 is ``WAVE-LOG`` in metres, the least-squares fit of the
  plane centres (:func:`wave_log_fit`) ``lambda_k = CRVAL3 * exp(CDELT3 * k / CRVAL3)`` (plane ``k`` is FITS pixel
  ``k + 1``). It is exact (to rounding) for constant-R grids, whose bin centres form a
  geometric series; for the native channel grid, which is not geometric, it is the best
  standard approximation, and its largest error over the planes (um) is ``WAVEMAXE``. A
  grid across detectors (constant R within each, R jumping from ~40 to ~120 at D4/D5) fits
  no standard axis well: the linear ``WAVE`` is taken when its error is smaller
  (:func:`spectral_axis_fit`; 0.45 um on the 102 native channels). Every
  reader that builds a WCS from the header alone (``WCS(header)``, spectral-cube, specutils)
  sees this axis.
* the alternate WCS ``W`` (:data:`ALT_KEY`): axis 3 is ``WAVE-TAB`` in um (FITS WCS Paper III),
  the exact plane centres read from the one-row table extension ``WCS-TAB``
  (:data:`TAB_EXTNAME`, column ``COORDS``), which follows the seven HDUs of the 0.4.1 layout.
  Read it with ``WCS(header, fobj=hdulist, key="W")`` (:func:`exact_wcs`). Between plane
  centres the table is interpolated linearly.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Tuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from numpy.polynomial import polynomial  # imported here: lazily on first use it cost a run ~7 ms

from . import libmath
from .fitsbytes import Column, bintable
from .grid import celestial

#: Key letter of the exact (``-TAB``) alternate WCS (the letter SPHEREx L2 files use for wavelengths).
ALT_KEY = "W"
#: EXTNAME of the ``-TAB`` coordinate table, and its column of plane centres [um].
TAB_EXTNAME = "WCS-TAB"
TAB_COLUMN = "COORDS"
#: The ``COMMENT`` card of the ``-TAB`` table.
TAB_COMMENT = f"FITS WCS Paper III -TAB coordinates of axis 3 of alternate WCS {ALT_KEY}"
#: Spectral reference frame. SPHEREx wavelengths are the filter calibration in the observatory's
#: frame: no Doppler correction is applied to the frames, and a cube mixes exposures of many
#: dates, so the axis is topocentric (the observer being the spacecraft). The observatory's
#: motion (<= 37 km/s relative to the barycentre) moves wavelengths by <= 1.3e-4 of their
#: value, about 1% of a channel at R = 130.
SPECSYS = "TOPOCENT"

#: One header card: ``(keyword, value, comment)``.
Card = Tuple[str, Any, str]
#: Header keywords that take an alternate-WCS key letter (Paper I-III keyed keywords).
_KEYED = re.compile(
    r"^(WCSAXES|CTYPE\d|CUNIT\d|CRPIX\d|CRVAL\d|CDELT\d|CNAME\d|PC\d_\d|CD\d_\d|PV\d_\d+|PS\d_\d+"
    r"|LONPOLE|LATPOLE|RADESYS|EQUINOX|WCSNAME|SPECSYS)$"
)


def wave_log_fit(centers_um: Any) -> Dict[str, float]:
    """Least-squares ``WAVE-LOG`` axis through the plane centres (um).

    ``lambda_k = CRVAL3 * exp(CDELT3 * k / CRVAL3)`` is a straight line in ``ln(lambda)``; the
    fit minimises ``sum_k (ln(axis_k) - ln(centre_k))**2``, the errors relative to the
    wavelength, i.e. in units of the channel widths (which grow with the wavelength at a
    roughly constant resolving power). Returns ``CRVAL3``, ``CDELT3`` (m) and ``WAVEMAXE``
    (um): the largest ``|axis_k - centre_k|``. One plane: the axis passes through it with
    ``CDELT3`` = 1 nm (the value only sets the pixel's extent).
    """
    c = np.asarray(centers_um, dtype=np.float64) * 1e-6
    if c.ndim != 1 or c.size < 1 or not np.all(np.isfinite(c)) or np.any(c <= 0):
        raise ValueError(f"plane centres must be a non-empty 1-D array of positive um, got {centers_um!r}")
    if c.size == 1:
        return {"CRVAL3": float(c[0]), "CDELT3": 1e-9, "WAVEMAXE": 0.0}
    k = np.arange(c.size, dtype=np.float64)
    log0, rate = polynomial.polyfit(k, libmath.log(c), 1)
    crval = math.exp(float(log0))
    cdelt = crval * float(rate)
    model = crval * libmath.exp(cdelt * k / crval)
    return {"CRVAL3": crval, "CDELT3": cdelt, "WAVEMAXE": float(np.max(np.abs(model - c))) * 1e6}


def wave_linear_fit(centers_um: Any) -> Dict[str, float]:
    """Least-squares linear ``WAVE`` axis ``lambda_k = CRVAL3 + CDELT3 * k`` (m) through the plane
    centres (um); ``WAVEMAXE`` (um) as in :func:`wave_log_fit`."""
    c = np.asarray(centers_um, dtype=np.float64) * 1e-6
    if c.size < 2:
        return wave_log_fit(centers_um)
    k = np.arange(c.size, dtype=np.float64)
    crval, cdelt = polynomial.polyfit(k, c, 1)
    model = crval + cdelt * k
    return {"CRVAL3": float(crval), "CDELT3": float(cdelt), "WAVEMAXE": float(np.max(np.abs(model - c))) * 1e6}


def _max_error_in_planes(centers_um: np.ndarray, ctype: str, fit: Dict[str, Any]) -> float:
    """Largest error of an axis fit in units of the local plane spacing."""
    c = np.asarray(centers_um, dtype=np.float64)
    if c.size < 2:
        return 0.0
    k = np.arange(c.size, dtype=np.float64)
    crval, cdelt = float(fit["CRVAL3"]), float(fit["CDELT3"])
    model = crval * libmath.exp(cdelt * k / crval) if ctype == "WAVE-LOG" else crval + cdelt * k
    return float(np.max(np.abs(model * 1e6 - c) / np.abs(np.gradient(c))))


def spectral_axis_fit(centers_um: Any) -> Dict[str, Any]:
    """The best standard axis through the plane centres (um): the least-squares ``WAVE-LOG``
    (:func:`wave_log_fit`) or, when its largest error in plane spacings is smaller, the linear
    ``WAVE`` (:func:`wave_linear_fit`). ``WAVE-LOG`` is exact for constant-R grids and best on
    every single-detector grid; a grid across detectors (R ~40 for D1-D4, ~120 for D5-D6) is
    neither, and its error is stated in ``WAVEMAXE`` (um). Returns ``CTYPE3`` with the fit."""
    c = np.asarray(centers_um, dtype=np.float64)
    best = {"CTYPE3": "WAVE-LOG", **wave_log_fit(c)}
    if c.size > 2:
        lin = {"CTYPE3": "WAVE", **wave_linear_fit(c)}
        if _max_error_in_planes(c, "WAVE", lin) < _max_error_in_planes(c, "WAVE-LOG", best):
            best = lin
    return best


def spectral_wcs_keywords(zgrid: Any) -> Dict[str, Any]:
    """Axis-3 keywords of the primary WCS for ``zgrid``: ``CTYPE3`` (``WAVE-LOG``, or ``WAVE``
    when better, :func:`spectral_axis_fit`), ``CUNIT3``, ``CRPIX3``, ``CRVAL3``, ``CDELT3`` (m)
    and ``WAVEMAXE`` (um)."""
    fit = spectral_axis_fit(zgrid.centers)
    return {"CUNIT3": "m", "CRPIX3": 1.0, **fit}


def cube_wcs_cards(wcs_2d: WCS, zgrid: Any) -> List[Card]:
    """``(keyword, value, comment)`` of the WCS cards of every image extension: the primary 3-D
    WCS, then the alternate WCS ``W``, in the order :func:`cube_wcs_header` holds them (formatted
    without astropy ``Card`` objects by :mod:`.cubefile`)."""
    src = celestial(wcs_2d).to_header(relax=False)
    cards: List[Card] = [("WCSAXES", 3, "")]
    skip = ("WCSAXES", "COMMENT", "HISTORY", "")
    cards += [(c.keyword, c.value, c.comment) for c in src.cards if c.keyword not in skip]
    spec = spectral_wcs_keywords(zgrid)
    ctype = spec["CTYPE3"]
    cards += [
        ("CTYPE3", ctype, "least-squares fit; exact: WCS W (WAVE-TAB)"),
        ("CUNIT3", "m", ""),
        ("CRPIX3", spec["CRPIX3"], "FITS pixel of plane 0"),
        ("CRVAL3", spec["CRVAL3"], "[m] wavelength of plane 0 (fit)"),
        ("CDELT3", spec["CDELT3"], f"[m] {ctype} step (fit)"),
        ("WAVEMAXE", spec["WAVEMAXE"], f"[um] max error of axis 3 {ctype} vs LAMBDA"),
        ("SPECSYS", SPECSYS, "spectral frame: the observatory's"),
        ("WCSNAME", f"{ctype} FIT", "spectral axis: best standard approximation"),
    ]
    return cards + _alternate_cards(src)


def cube_wcs_header(wcs_2d: WCS, zgrid: Any) -> fits.Header:
    """The WCS cards of every image extension (:func:`cube_wcs_cards`) as an astropy header."""
    hdr = fits.Header()
    for keyword, value, comment in cube_wcs_cards(wcs_2d, zgrid):
        hdr[keyword] = (value, comment)
    return hdr


def _alternate_cards(celestial_header: fits.Header) -> List[Card]:
    """Alternate WCS ``W``: the celestial cards keyed ``W``, axis 3 a ``WAVE-TAB``."""
    alt: List[Card] = [("WCSAXES" + ALT_KEY, 3, "")]
    for card in celestial_header.cards:
        if _KEYED.match(card.keyword) and card.keyword not in ("WCSAXES", "WCSNAME"):
            alt.append((card.keyword + ALT_KEY, card.value, card.comment))
    for key, value, comment in (
        ("CTYPE3", "WAVE-TAB", f"exact plane centres from table {TAB_EXTNAME}"),
        ("CUNIT3", "um", ""),
        ("CRPIX3", 1.0, "FITS pixel of plane 0"),
        ("CRVAL3", 1.0, "table index of plane 0"),
        ("CDELT3", 1.0, "one table row per plane"),
        ("PS3_0", TAB_EXTNAME, "EXTNAME of the coordinate table"),
        ("PS3_1", TAB_COLUMN, "column of plane centres [um]"),
        ("SPECSYS", SPECSYS, "spectral frame: the observatory's"),
        ("WCSNAME", "EXACT", "spectral axis: exact plane centres"),
    ):
        alt.append((key + ALT_KEY, value, comment))
    return alt


def _wcs_tab_column(zgrid: Any) -> Column:
    """The ``-TAB`` table's one column: one row, ``COORDS`` = the plane centres (um), dimensions
    ``(1, n_z)`` as Paper III requires for a one-axis table."""
    centers = np.asarray(zgrid.centers, dtype=np.float64)
    n = centers.size
    return Column(TAB_COLUMN, "D", centers.reshape(1, n, 1), "um", f"(1,{n})")


def wcs_tab_hdu(zgrid: Any) -> fits.BinTableHDU:
    """The ``-TAB`` coordinate table built by astropy (:func:`wcs_tab_bytes` gives its bytes)."""
    c = _wcs_tab_column(zgrid)
    col = fits.Column(name=c.name, format=f"{c.repeat}{c.tform}", dim=c.dim, unit=c.unit, array=c.values)
    hdu = fits.BinTableHDU.from_columns([col], name=TAB_EXTNAME)
    hdu.header["COMMENT"] = TAB_COMMENT
    return hdu


def wcs_tab_bytes(zgrid: Any) -> bytes:
    """The ``-TAB`` coordinate table extension as written (:func:`.fitsbytes.bintable`)."""
    return bintable(TAB_EXTNAME, [_wcs_tab_column(zgrid)], [TAB_COMMENT])


def exact_wcs(header: fits.Header, hdulist: fits.HDUList) -> WCS:
    """The exact 3-D WCS ``W`` of an image extension ``header`` of the open cube ``hdulist``:
    ``pixel_to_world`` gives the plane centres of the WAVELENGTH table exactly."""
    if f"CTYPE3{ALT_KEY}" not in header:
        raise ValueError(f"the header has no alternate WCS {ALT_KEY} (a cube written before -TAB support?)")
    wcs = WCS(header, fobj=hdulist, key=ALT_KEY)
    wcs.sip = None  # never present in a cube; astropy can carry SIP terms onto alternate WCSs
    return wcs


__all__ = ["ALT_KEY", "TAB_EXTNAME", "TAB_COLUMN", "SPECSYS", "wave_log_fit", "wave_linear_fit", "spectral_axis_fit",
           "spectral_wcs_keywords",
           "cube_wcs_cards", "cube_wcs_header", "wcs_tab_hdu", "wcs_tab_bytes", "TAB_COMMENT", "exact_wcs"]
