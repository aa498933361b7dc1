"""Zodiacal-light subtraction for SPHEREx L2 images.

The L2 ``ZODI`` extension is a model of the zodiacal light (MJy/sr) that is NOT
subtracted from ``IMAGE``. ``subtract_zodi`` removes ``scale * ZODI``, where
``scale`` is 1.0 (``static=True``) or the weighted least-squares amplitude
fitted on background pixels (finite, not SOURCE, no bad flag):

    scale = sum(w * I * Z) / sum(w * Z^2),   w = 1 / VARIANCE

When fewer than ``min_pixels`` background pixels are usable, or the fitted
scale lies outside (0, 10], the scale falls back to 1.0 with a warning.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple

import numpy as np

logger = logging.getLogger(__name__)

#: Minimum number of background pixels for a fitted scale.
DEFAULT_MIN_PIXELS = 1000
#: Accepted range of the fitted scale: (SCALE_MIN, SCALE_MAX].
SCALE_MIN = 0.0
SCALE_MAX = 10.0


def background_mask(
    image: np.ndarray,
    zodi: np.ndarray,
    variance: Optional[np.ndarray],
    flags: Optional[np.ndarray],
    bad_bits: int,
    source_bit: Optional[int],
) -> np.ndarray:
    """Boolean mask of pixels usable for the zodi fit.

    A pixel is usable when image, zodi (and variance, if given, > 0) are finite
    and its flags carry neither ``bad_bits`` nor the SOURCE bit (``source_bit``
    is a bit number, None to ignore SOURCE).
    """
    ok = np.isfinite(image) & np.isfinite(zodi)
    if variance is not None:
        ok &= np.isfinite(variance) & (variance > 0)
    if flags is not None:
        reject = int(bad_bits)
        if source_bit is not None:
            reject |= 1 << int(source_bit)
        if reject:
            f = np.asarray(flags)
            if f.dtype != np.uint32:
                f = f.astype(np.int64, copy=False).astype(np.uint32)
            ok &= (f & np.uint32(reject & 0xFFFFFFFF)) == 0
    return ok


def fit_zodi_scale(
    image: np.ndarray,
    zodi: np.ndarray,
    variance: Optional[np.ndarray],
    flags: Optional[np.ndarray],
    bad_bits: int,
    source_bit: Optional[int],
    min_pixels: int = DEFAULT_MIN_PIXELS,
    name: str = "",
) -> Tuple[float, bool]:
    """Fit ``image ~ scale * zodi`` on background pixels by weighted least squares.

    Parameters
    ----------
    image, zodi : arrays (MJy/sr), same shape
    variance : array ((MJy/sr)^2) or None for unit weights
    flags : integer flag array or None
    bad_bits : bitmask of flags that disqualify a pixel
    source_bit : bit number of SOURCE (excluded from the fit) or None
    min_pixels : minimum number of usable pixels
    name : file name used in the warning messages

    Returns
    -------
    (scale, ok) : the scale and whether it is a valid fit; ``(1.0, False)``
    with a warning when too few pixels are usable or the scale is outside (0, 10].
    """
    where = f" for {name}" if name else ""
    mask = background_mask(image, zodi, variance, flags, bad_bits, source_bit)
    mask &= zodi != 0
    n = int(np.count_nonzero(mask))
    if n < min_pixels:
        logger.warning(
            "zodi fit%s: only %d background pixels (< %d); using scale 1.0", where, n, min_pixels
        )
        return 1.0, False
    img = np.asarray(image, dtype=np.float64)[mask]
    zod = np.asarray(zodi, dtype=np.float64)[mask]
    if variance is not None:
        w = 1.0 / np.asarray(variance, dtype=np.float64)[mask]
    else:
        w = np.ones_like(img)
    den = float(np.sum(w * zod * zod))
    if not np.isfinite(den) or den <= 0:
        logger.warning("zodi fit%s: degenerate zodi model (sum w Z^2 = %r); using scale 1.0", where, den)
        return 1.0, False
    scale = float(np.sum(w * img * zod)) / den
    if not np.isfinite(scale) or scale <= SCALE_MIN or scale > SCALE_MAX:
        logger.warning(
            "zodi fit%s: fitted scale %r outside (%g, %g]; using scale 1.0", where, scale, SCALE_MIN, SCALE_MAX
        )
        return 1.0, False
    return scale, True


def subtract_zodi(
    image: np.ndarray,
    zodi: np.ndarray,
    variance: Optional[np.ndarray] = None,
    flags: Optional[np.ndarray] = None,
    bad_bits: int = 0,
    source_bit: Optional[int] = 21,
    static: bool = False,
    scale: Optional[float] = None,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    name: str = "",
) -> Tuple[np.ndarray, float, bool]:
    """Return ``(image - scale * zodi, scale, fitted_ok)`` as float64 (MJy/sr).

    ``static=True`` uses scale 1.0 without fitting; a given ``scale`` is used
    as is (e.g. fitted beforehand on a larger subsample of the frame);
    otherwise the scale is fitted on this image with :func:`fit_zodi_scale`.
    ``fitted_ok`` is False for static/fallback scales.
    """
    ok = False
    if static:
        s = 1.0
    elif scale is not None:
        s, ok = float(scale), True
    else:
        s, ok = fit_zodi_scale(image, zodi, variance, flags, bad_bits, source_bit, min_pixels, name)
    out = np.asarray(image, dtype=np.float64) - s * np.asarray(zodi, dtype=np.float64)
    return out, s, ok
