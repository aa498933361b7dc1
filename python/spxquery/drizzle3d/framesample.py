"""A fixed sample of a frame's own pixels, and the verdict on them.

Every frame that touches the grid is looked at on the same pixels whatever the region: whole
rows, evenly spaced (:func:`sample_rows`: about :data:`SAMPLE_PIXELS` pixels; every row of a
small file such as an IRSA cutout). :class:`FrameSample` holds IMAGE, VARIANCE, ZODI (MJy/sr,
(MJy/sr)^2) and FLAGS (uint32) of those rows, on which the zodi scale is fitted (:mod:`.zodi`);
:func:`sample_verdict` says why a frame cannot
be drizzled (no finite IMAGE pixel, IMAGE all zero or never positive; no finite positive
VARIANCE; ZODI, when it is subtracted, never finite, all zero or never positive) or None.
A frame that passes can still land nothing (for instance when its bad pixels avoid the
sample): the pipeline reports and counts such frames too.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import numpy as np

#: About how many pixels a frame's sample holds (whole rows).
SAMPLE_PIXELS = 65536


def sample_rows(shape: Tuple[int, int]) -> range:
    """The rows of a frame of ``shape = (ny, nx)`` in its sample: every ``step``-th row from
    ``step // 2``, ``step`` chosen so that about :data:`SAMPLE_PIXELS` pixels are sampled
    (every row when the file holds fewer)."""
    ny, nx = int(shape[0]), int(shape[1])
    step = min(max(1, (ny * nx) // SAMPLE_PIXELS), max(ny, 1))
    return range(step // 2, ny, step)


class FrameSample(NamedTuple):
    """The sample's pixels, ``(len(rows), nx)`` each: IMAGE, ZODI (None when not read),
    VARIANCE, FLAGS (uint32)."""

    rows: range
    image: np.ndarray
    zodi: Optional[np.ndarray]
    variance: np.ndarray
    flags: np.ndarray


def _finite_positive(values: np.ndarray) -> bool:
    """Whether any value is finite and positive: looked for in the first sampled row, then
    everywhere (a frame that passes is told by its first row, at a small part of the cost)."""
    with np.errstate(invalid="ignore"):
        first = values[:1]
        return bool(np.any((first > 0) & (first < np.inf)) or np.any((values > 0) & (values < np.inf)))


def _never(values: np.ndarray, name: str) -> Optional[str]:
    """Why a sampled float array cannot be the frame's IMAGE/ZODI: no finite value, all zero,
    no positive value."""
    if _finite_positive(values):  # a finite positive value: none of the reasons below
        return None
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return f"{name} has no finite pixel ({values.size} sampled)"
    if not np.any(finite):
        return f"{name} is all zero ({values.size} pixels sampled)"
    if not np.any(finite > 0):
        return f"{name} has no positive pixel ({values.size} sampled)"
    return None


def sample_verdict(sample: FrameSample) -> Optional[str]:
    """Why the frame of ``sample`` cannot be drizzled, or None (see the module docs)."""
    reason = _never(sample.image, "IMAGE")
    if reason:
        return reason
    var = sample.variance
    if not _finite_positive(var):
        return f"VARIANCE has no finite positive value ({var.size} pixels sampled)"
    if sample.zodi is not None:
        return _never(sample.zodi, "ZODI")
    return None


__all__ = ["SAMPLE_PIXELS", "FrameSample", "sample_rows", "sample_verdict"]
