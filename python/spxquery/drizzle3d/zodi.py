"""Zodiacal light: every rule deciding what is subtracted from a SPHEREx L2 image.

The L2 ``ZODI`` extension is a model of the zodiacal light (MJy/sr) that is NOT subtracted
from ``IMAGE``. A frame's pixels become ``IMAGE - scale * ZODI``, with the scale chosen per
frame by :func:`frame_scale` from the frame alone:

* ``subtract_zodi`` false: nothing is subtracted (source ``none``);
* ``static_zodi``: scale 1.0 (``static``);
* otherwise the weighted least-squares amplitude on background pixels (finite, variance > 0,
  neither SOURCE nor any of :data:`BAD_FLAG_NAMES`)::

      scale = sum(w * I * Z) / sum(w * Z^2),   w = 1 / VARIANCE

  fitted once per frame on the frame's fixed sample of its own pixels
  (:mod:`.framesample`: whole rows, about 65536 pixels; every pixel of a cutout), the same
  whatever the output region, tile or strip (source ``sample``); a fit with fewer than
  :data:`MIN_PIXELS` background pixels, a degenerate model or a scale outside
  ``(SCALE_MIN, SCALE_MAX]`` falls back to 1.0 with a warning (``fallback``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Mapping, NamedTuple, Optional, Tuple

import numpy as np

from . import _core
from .flags import as_uint32

logger = logging.getLogger(__name__)

#: Flags that disqualify a pixel from the zodi fit (looked up by name in the file's bits).
BAD_FLAG_NAMES = (
    "TRANSIENT", "OVERFLOW", "SUR_ERROR", "NONFUNC", "DICHROIC", "MISSING_DATA",
    "HOT", "COLD", "PHANMISS", "NONLINEAR", "PERSIST", "OUTLIER",
)
#: Bit of the SOURCE flag when the file does not name it.
DEFAULT_SOURCE_BIT = 21
#: Minimum number of background pixels for a fitted scale.
MIN_PIXELS = 1000
#: Accepted range of the fitted scale: (SCALE_MIN, SCALE_MAX].
SCALE_MIN = 0.0
SCALE_MAX = 10.0


class ZodiPixels(NamedTuple):
    """The arrays a fit uses, same shape: IMAGE, ZODI (MJy/sr), VARIANCE ((MJy/sr)^2), FLAGS."""

    image: np.ndarray
    zodi: np.ndarray
    variance: Optional[np.ndarray]
    flags: Optional[np.ndarray]


@dataclass(frozen=True)
class ZodiScale:
    """What is subtracted from one frame: ``scale * ZODI`` (``scale`` None: nothing), and which
    rule chose the scale: ``none``, ``static``, ``sample`` or ``fallback``."""

    scale: Optional[float]
    source: str

    @property
    def fitted(self) -> bool:
        """True when the scale is a valid fit."""
        return self.source == "sample"

    def subtract(self, image: np.ndarray, zodi: Optional[np.ndarray], consume: bool = False) -> None:
        """``image -= scale * zodi`` in place (nothing when the scale is None). ``consume``: ``zodi``
        (float64, not needed afterwards) holds ``scale * zodi`` instead of a temporary array (the
        same products, bit for bit)."""
        if self.scale is None:
            return
        if zodi is None:
            raise ValueError(f"zodi scale {self.scale} ({self.source}) given without the ZODI pixels")
        if consume and zodi.dtype == np.float64 and zodi.flags.writeable and zodi.shape == image.shape:
            image -= np.multiply(zodi, self.scale, out=zodi)
        else:
            image -= self.scale * zodi


NOT_SUBTRACTED = ZodiScale(None, "none")


def fit_bits(flag_bits: Mapping[str, int]) -> Tuple[int, int]:
    """``(bad_bits, source_bit)`` of a file: the mask of :data:`BAD_FLAG_NAMES` and the SOURCE bit."""
    bad = 0
    for name in BAD_FLAG_NAMES:
        if name in flag_bits:
            bad |= 1 << int(flag_bits[name])
    return bad, int(flag_bits.get("SOURCE", DEFAULT_SOURCE_BIT))


def frame_scale(
    config: Any,
    flag_bits: Mapping[str, int],
    sample: Optional[ZodiPixels],
    name: str = "",
) -> ZodiScale:
    """The zodi scale of one frame (rules in the module docstring).

    ``config`` gives ``subtract_zodi`` and ``static_zodi``; ``flag_bits`` are the file's flag
    names; ``sample`` holds the frame's fixed sample (needed only for a fit); ``name`` names
    the file in warnings.
    """
    if not config.subtract_zodi:
        return NOT_SUBTRACTED
    if config.static_zodi:
        return ZodiScale(1.0, "static")
    if sample is None:
        raise ValueError(f"{name}: a fitted zodi scale needs the frame's sample")
    bad, source_bit = fit_bits(flag_bits)
    scale, ok = fit_zodi_scale(*sample, bad, source_bit, name=name)
    return ZodiScale(scale, "sample" if ok else "fallback")


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
            ok &= (as_uint32(flags) & np.uint32(reject & 0xFFFFFFFF)) == 0
    return ok


def fit_zodi_scale(
    image: np.ndarray,
    zodi: np.ndarray,
    variance: Optional[np.ndarray],
    flags: Optional[np.ndarray],
    bad_bits: int,
    source_bit: Optional[int],
    min_pixels: int = MIN_PIXELS,
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
    n, num, den = fit_sums(ZodiPixels(image, zodi, variance, flags), bad_bits, source_bit)
    if n < min_pixels:
        logger.warning(
            "zodi fit%s: only %d background pixels (< %d); using scale 1.0", where, n, min_pixels
        )
        return 1.0, False
    if not np.isfinite(den) or den <= 0:
        logger.warning("zodi fit%s: degenerate zodi model (sum w Z^2 = %r); using scale 1.0", where, den)
        return 1.0, False
    scale = num / den
    if not np.isfinite(scale) or scale <= SCALE_MIN or scale > SCALE_MAX:
        logger.warning(
            "zodi fit%s: fitted scale %r outside (%g, %g]; using scale 1.0", where, scale, SCALE_MIN, SCALE_MAX
        )
        return 1.0, False
    return scale, True


def fit_sums(pixels: ZodiPixels, bad_bits: int, source_bit: Optional[int]) -> Tuple[int, float, float]:
    """``(n, sum(w * I * Z), sum(w * Z * Z))`` over the :func:`background_mask` pixels with
    ``Z != 0`` (``w = 1 / VARIANCE``, 1 without a variance), in the pixels' C order: computed by
    ``_core.zodi_fit_sums`` (``rust/src/zodifit.rs``) with the GIL released, bit for bit what
    ``np.sum(w * I[mask] * Z[mask])`` and ``np.sum(w * Z[mask] * Z[mask])`` give."""
    image, zodi, variance, flags = pixels
    reject = int(bad_bits) | (0 if source_bit is None else 1 << int(source_bit))
    reject &= 0xFFFFFFFF
    shape = np.shape(image)
    for what, a in (("zodi", zodi), ("variance", variance), ("flags", flags)):
        if a is not None and np.shape(a) != shape:
            raise ValueError(f"zodi fit: {what} has shape {np.shape(a)}, the image {shape}")
    return _core.zodi_fit_sums(
        image=_flat64(image), zodi=_flat64(zodi), variance=None if variance is None else _flat64(variance),
        flags=None if flags is None or not reject else np.ascontiguousarray(as_uint32(flags)).reshape(-1),
        reject=reject)


def _flat64(a: np.ndarray) -> np.ndarray:
    """``a`` as a contiguous 1-D float64 array (no copy when it is one already)."""
    return np.ascontiguousarray(a, dtype=np.float64).reshape(-1)


__all__ = [
    "BAD_FLAG_NAMES", "MIN_PIXELS", "ZodiPixels", "ZodiScale", "NOT_SUBTRACTED",
    "fit_bits", "frame_scale", "background_mask", "fit_zodi_scale", "fit_sums",
]
