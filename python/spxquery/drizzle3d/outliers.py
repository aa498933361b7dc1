"""Outlier rejection, pass 2: every input pixel against the robust model at its own (x, y, lambda).

The model (:mod:`.outliermodel`) is "blotted" at each pixel: trilinear interpolation in the
output grid at the pixel's centre (the mean of its four corners in the corner map, output
pixels) and its central wavelength (fractional plane index between the plane centres). The
drizzlepac / JWST test then reads, with ``d`` the pixel's (zodi-subtracted) value, ``m`` the
blotted model, ``sigma`` the square root of the pixel's variance and ``G`` the model's local
step (drizzlepac's derivative in three dimensions: the largest change of the model from a voxel
to a neighbour in x, y or wavelength, interpolated like the model; bright compact sources,
steep spectra and lines raise it)::

    detection:  |d - m| > snr[0] * sigma + scale[0] * G
    neighbour:  |d - m| > snr[1] * sigma + scale[1] * G   within outlier_grow pixels of a detection

on the detector grid (a square of side ``2 * grow + 1``, across strip boundaries). Rejected
pixels are added to the strip's exclude mask, so they reach neither SCI, VARIANCE, COUNT nor
the masks. Pixels not tested: already excluded, non-finite value or variance <= 0, a model cell whose
undefined voxels (fewer than ``outlier_min_inputs`` frames) hold more than half of the
interpolation weight (the defined ones are used otherwise), or a centre
more than :data:`EDGE` output pixels beyond the outer voxel centres (it lands nothing).

Each decision depends on the pixel, its neighbours in the same frame and the model only, so the
rejections are the same for any thread count, strip size and frame order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from astropy.io import fits

from .accumulate import DrizzleCube
from .config import Drizzle3DConfig
from .frames import Frame, Strip
from .grid import OutputGrid
from .outliermodel import SkyModel, build_model
from .readahead import Item
from .textlimits import short_text

logger = logging.getLogger(__name__)

#: Pixels are tested when their centre is within this many output pixels of the outer voxel
#: centres (a droplet centred farther out lands nothing); beyond the outer centres the model of
#: the edge voxel is used.
EDGE = 1.5
#: Largest share of the interpolation weight that undefined voxels may hold (else untested).
MAX_UNDEFINED = 0.5
#: Directory (under ``output_dir``) of the per-input rejection masks (``outlier_masks``).
MASK_DIR = "outlier_masks"


def _axis(pos: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Lower index and weight of the upper neighbour for positions in voxel units (clamped to
    the grid: beyond the outer centres the nearest plane/pixel is used); the upper index is
    ``min(lower + 1, n - 1)``."""
    pos = np.clip(pos, 0.0, n - 1.0)  # NaN stays NaN: cast to an index below, weight NaN
    pos[np.isnan(pos)] = 0.0
    i0 = np.minimum(pos.astype(np.intp), max(n - 2, 0))  # pos >= 0: truncation is floor
    return i0, (pos - i0).astype(np.float32)


def blot(cube: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``cube`` (the model or its local steps) at output positions
    ``x, y`` (pixels) and fractional plane ``z``. Undefined (NaN) voxels are left out (weights
    renormalised); NaN where they hold more than :data:`MAX_UNDEFINED` of the weight."""
    nz, ny, nx = cube.shape
    (x0, fx), (y0, fy), (z0, fz) = _axis(x, nx), _axis(y, ny), _axis(z, nz)
    base = (z0 * ny + y0) * nx + x0
    dx, dy, dz = int(nx > 1), int(ny > 1) * nx, int(nz > 1) * nx * ny
    value = np.zeros(x.shape, dtype=np.float32)  # float32 like the model: half the memory traffic
    weight = np.zeros(x.shape, dtype=np.float32)
    flat = cube.reshape(-1)
    one = np.float32(1.0)
    for wz, oz in ((one - fz, 0), (fz, dz)):
        for wy, oy in ((one - fy, 0), (fy, dy)):
            wzy = wz * wy
            for wx, ox in ((one - fx, 0), (fx, dx)):
                v = flat.take(base + (oz + oy + ox))
                w = wzy * wx
                undefined = np.isnan(v)
                if undefined.any():
                    w[undefined] = 0.0
                    v[undefined] = 0.0
                value += w * v
                weight += w
    with np.errstate(invalid="ignore", divide="ignore"):
        value /= weight
    value[weight < np.float32(1.0 - MAX_UNDEFINED)] = np.nan
    return value.astype(np.float64)


def fractional_plane(lam: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Fractional plane index of wavelengths ``lam`` (um) between the plane ``centers``."""
    return np.interp(lam, centers, np.arange(centers.size, dtype=np.float64))


def dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` grown by a square of side ``2 * radius + 1`` (no wrap-around at the edges)."""
    out = mask.copy()
    if radius <= 0 or not mask.any():
        return out
    rows = mask.copy()
    for d in range(1, radius + 1):
        rows[d:] |= mask[:-d]
        rows[:-d] |= mask[d:]
    out = rows.copy()
    for d in range(1, radius + 1):
        out[:, d:] |= rows[:, :-d]
        out[:, :-d] |= rows[:, d:]
    return out


class _Tested:
    """One strip's test results, waiting for the next strip's detections (growth)."""

    def __init__(self, strip: Strip, core: np.ndarray, candidate: np.ndarray):
        self.strip, self.core, self.candidate = strip, core, candidate


class Screen:
    """Pass 2: turns the pipeline's items into items whose strips exclude the rejected pixels.

    Use ``for item in screen.screen(items)``; after a frame's ``end`` item,
    :attr:`frame_rejected` holds that frame's rejected pixels (and :attr:`frame_mask`, when
    ``keep_masks``, its crop's rejection mask)."""

    def __init__(self, model: SkyModel, centers: np.ndarray, config: Drizzle3DConfig, keep_masks: bool = False):
        self.skymodel = model
        self.model = model.values
        self.steps = model.steps
        self.centers = np.asarray(centers, dtype=np.float64)
        self.snr = tuple(float(v) for v in config.outlier_snr)
        self.scale = tuple(float(v) for v in config.outlier_scale)
        self.grow = int(config.outlier_grow)
        self.keep_masks = keep_masks
        self.frame_rejected = 0
        self.frame_tested = 0
        self.frame_mask: Optional[np.ndarray] = None
        self._rows: List[np.ndarray] = []

    def test(self, strip: Strip) -> Tuple[np.ndarray, np.ndarray]:
        """(detections, candidates): bool ``(ny, nx)`` of the strip's pixels past the first and
        the second thresholds."""
        cx, cy = strip.corners_x, strip.corners_y
        x = 0.25 * (cx[:-1, :-1] + cx[:-1, 1:] + cx[1:, :-1] + cx[1:, 1:])
        y = 0.25 * (cy[:-1, :-1] + cy[:-1, 1:] + cy[1:, :-1] + cy[1:, 1:])
        z = fractional_plane(np.asarray(strip.lambda_c, dtype=np.float64), self.centers)
        m = blot(self.model, x, y, z)
        d = np.asarray(strip.image, dtype=np.float64)
        var = np.asarray(strip.variance, dtype=np.float64)
        ny, nx = self.model.shape[1:]
        with np.errstate(invalid="ignore"):
            inside = (x >= -EDGE) & (x <= nx - 1 + EDGE) & (y >= -EDGE) & (y <= ny - 1 + EDGE)
            tested = np.isfinite(d) & (var > 0) & np.isfinite(var) & np.isfinite(m) & inside
            if strip.exclude_mask is not None:
                tested &= ~strip.exclude_mask
            diff = np.where(tested, np.abs(d - m), 0.0)
            sigma = np.sqrt(np.where(tested, var, 0.0))
        # the local step only matters where the noise term alone is exceeded (rare): blotted there
        step = np.zeros(diff.shape, dtype=np.float64)
        maybe = diff > self.snr[1] * sigma
        step[maybe] = np.nan_to_num(blot(self.steps, x[maybe], y[maybe], z[maybe]))
        core = tested & (diff > self.snr[0] * sigma + self.scale[0] * step)
        candidate = tested & (diff > self.snr[1] * sigma + self.scale[1] * step)
        self.frame_tested += int(np.count_nonzero(tested))
        return core, candidate

    def _release(self, held: _Tested, above: Optional[np.ndarray], below: Optional[np.ndarray]) -> Strip:
        """The held strip with its rejections: candidates within ``grow`` of a detection in this
        strip or in the last/first ``grow`` rows of the strips above/below."""
        parts = [p for p in (above, held.core, below) if p is not None]
        start = 0 if above is None else above.shape[0]
        grown = dilate(np.concatenate(parts, axis=0), self.grow)[start:start + held.core.shape[0]]
        rejected = held.candidate & grown
        n = int(np.count_nonzero(rejected))
        self.frame_rejected += n
        if self.keep_masks:
            self._rows.append(rejected)
        strip = held.strip
        if n:
            exclude = rejected if strip.exclude_mask is None else (strip.exclude_mask | rejected)
            strip = strip._replace(exclude_mask=exclude)
        return strip

    def screen(self, items: Iterable[Item]) -> Iterator[Item]:
        """The items of :class:`~.readahead.ReadAhead` with each strip's rejections applied;
        a strip is handed on once the next one of its frame was tested (growth across strips;
        a strip shorter than ``outlier_grow`` rows lets its next strip's rows reach only its own)."""
        held: Optional[_Tested] = None
        above: Optional[np.ndarray] = None
        for item in items:
            if item.kind == "strip":
                core, candidate = self.test(item.payload)
                if held is not None:
                    out = self._release(held, above, core[:self.grow] if self.grow else None)
                    if self.grow:  # the last rows above the next strip (from several strips if short)
                        rows = held.core if above is None else np.concatenate([above, held.core], axis=0)
                        above = rows[-self.grow:]
                    yield item._replace(payload=out)
                held = _Tested(item.payload, core, candidate)
                continue
            if held is not None:  # end or broken: the frame's last strip goes first
                yield Item(item.path, "strip", self._release(held, above, None))
                held, above = None, None
            if item.kind == "frame":
                self.frame_rejected = self.frame_tested = 0
                self._rows = []
                self.frame_mask = None
            elif item.kind in ("end", "broken") and self.keep_masks:
                self.frame_mask = np.concatenate(self._rows, axis=0) if self._rows else None
                self._rows = []
            yield item


def outlier_screen(paths: List[Any], config: Drizzle3DConfig, grid: OutputGrid, cube: DrizzleCube,
                   threads_for: Callable[[int], int], waves: Any = None) -> Screen:
    """Pass 1 (the model, :func:`.outliermodel.build_model`, with the frames' wavelengths from
    ``waves`` as in pass 2; ``cube`` is left empty), then the :class:`Screen` of pass 2."""
    model = build_model(paths, config, grid, cube, threads_for, waves=waves)
    return Screen(model, grid.zgrid.centers, config, keep_masks=bool(config.outlier_masks))


def record_outliers(cube: DrizzleCube, screen: Screen, frame: Frame) -> None:
    """After a frame's ``end``: its rejected pixels in the frame log (``n_outliers``) and, with
    ``outlier_masks``, its rejection mask file."""
    entry = cube.frame_log[-1]
    entry["n_outliers"] = screen.frame_rejected
    entry["n_tested"] = screen.frame_tested
    if screen.frame_rejected:
        logger.debug("D%d: %s: %d outlier pixels rejected of %d tested", cube.detector, frame.name,
                     screen.frame_rejected, screen.frame_tested)
    if screen.frame_mask is not None:
        path = mask_path(cube.config, frame.path)
        write_mask(path, screen.frame_mask, frame)
        entry["outlier_mask"] = str(path)


def finish_outliers(cube: DrizzleCube, screen: Screen) -> None:
    """The rejected contributions per voxel (``cube.reject_count``, int32, -1 where nothing
    was tested), from the contributions before and after rejection."""
    cube.reject_count = screen.skymodel.rejected_counts(cube.count_map)
    total = sum(int(e.get("n_outliers", 0)) for e in cube.frame_log)
    logger.info("D%d: %d outlier pixels rejected (%d voxel contributions)", cube.detector, total,
                int(cube.reject_count[cube.reject_count > 0].sum(dtype=np.int64)))


def mask_path(config: Drizzle3DConfig, frame_path: Path) -> Path:
    """``output_dir/outlier_masks/<frame file stem>_outliers.fits``."""
    return Path(config.output_dir) / MASK_DIR / f"{Path(frame_path.name).stem}_outliers.fits"


def write_mask(path: Path, mask: np.ndarray, frame: Frame) -> None:
    """A frame's rejection mask (uint8, 1 = rejected) over its crop, written atomically;
    ``CROPX0``/``CROPY0`` give the crop's first pixel in the frame (0-based)."""
    x0, _, y0, _ = frame.crop
    header = fits.Header()
    header["EXTNAME"] = "OUTLIERS"
    header["FRAME"] = (short_text(frame.name, 60), "input file")
    header["CROPX0"] = (int(x0), "0-based x of the first pixel in the frame")
    header["CROPY0"] = (int(y0), "0-based y of the first pixel in the frame")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(mask.astype(np.uint8), header=header)]).writeto(
            tmp, overwrite=True)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


__all__ = ["Screen", "blot", "dilate", "fractional_plane", "outlier_screen", "record_outliers", "finish_outliers",
           "mask_path", "write_mask", "MASK_DIR"]
