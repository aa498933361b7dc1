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

The blot and the test run in the Rust engine (``_core.outlier_test``, ``rust/src/blot.rs``: one
pass over the strip's pixels, rayon over rows, GIL released); the growth runs here. Each decision
depends on the pixel, its neighbours in the same frame and the model only, so the rejections are
the same for any thread count, strip size and frame order.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, List, Optional, Tuple

import numpy as np
from astropy.io import fits

from . import _core
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


def blot(cube: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray, threads: int = 0) -> np.ndarray:
    """Trilinear interpolation (float32, like the model) of ``cube`` (the model or its local
    steps) at output positions ``x, y`` (pixels) and fractional plane ``z``, float64 like the
    input positions; beyond the outer centres the outer voxels. Undefined (NaN) voxels are left
    out (weights renormalised); NaN where they hold more than :data:`MAX_UNDEFINED` of the
    weight. The Rust engine's blot, the one :meth:`Screen.test` uses."""
    shape = np.shape(x)
    flat = [np.ascontiguousarray(np.ravel(v), dtype=np.float64) for v in (x, y, z)]
    out = _core.blot_cube(cube=np.ascontiguousarray(cube, dtype=np.float32), x=flat[0], y=flat[1], z=flat[2],
                          max_undefined=MAX_UNDEFINED, threads=threads)
    return out.astype(np.float64).reshape(shape)


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

    def __init__(self, model: SkyModel, centers: np.ndarray, config: Drizzle3DConfig, keep_masks: bool = False,
                 threads_for: Callable[[int], int] = lambda n: 0):
        self.skymodel = model
        self.threads_for = threads_for
        self.model = np.ascontiguousarray(model.values, dtype=np.float32)  # the engine reads them flat
        self.steps = np.ascontiguousarray(model.steps, dtype=np.float32)
        self.centers = np.asarray(centers, dtype=np.float64)
        self.snr = (float(config.outlier_snr[0]), float(config.outlier_snr[1]))
        self.scale = (float(config.outlier_scale[0]), float(config.outlier_scale[1]))
        self.grow = int(config.outlier_grow)
        self.keep_masks = keep_masks
        self.frame_rejected = 0
        self.frame_tested = 0
        self.frame_mask: Optional[np.ndarray] = None
        self._rows: List[np.ndarray] = []

    def test(self, strip: Strip) -> Tuple[np.ndarray, np.ndarray]:
        """(detections, candidates): bool ``(ny, nx)`` of the strip's pixels past the first and
        the second thresholds (the Rust engine, ``_core.outlier_test``; module docs)."""
        def f64(a: np.ndarray) -> np.ndarray:
            return np.asarray(a, dtype=np.float64)

        core, candidate, n_tested = _core.outlier_test(
            model=self.model, steps=self.steps, centers=self.centers, corners_x=f64(strip.corners_x),
            corners_y=f64(strip.corners_y), image=f64(strip.image), variance=f64(strip.variance),
            lambda_c=f64(strip.lambda_c), exclude_mask=strip.exclude_mask, snr=self.snr, scale=self.scale, edge=EDGE,
            max_undefined=MAX_UNDEFINED, threads=self.threads_for(strip.image.size))
        self.frame_tested += int(n_tested)
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
    return Screen(model, grid.zgrid.centers, config, keep_masks=bool(config.outlier_masks), threads_for=threads_for)


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


__all__ = ["Screen", "blot", "dilate", "outlier_screen", "record_outliers", "finish_outliers",
           "mask_path", "write_mask", "MASK_DIR"]
