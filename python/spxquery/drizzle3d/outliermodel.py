"""The robust sky model of outlier rejection (issue 19), built in one streaming pass.

There is no per-exposure image to median (every pixel has its own wavelength), so the model
is a cube on the output grid: per voxel, the weighted mean of the frames without the two
frames of the highest mean (a one-sided version of IRAF imcombine's ``minmax`` at the level of
frames). Each frame is drizzled alone into two scratch arrays (its weighted flux and weight
per voxel), then merged: the totals are summed and the two highest frames are kept, so an
asteroid, a trail or a cosmic ray in one or two frames never pulls the model, however bright
(a plain mean is pulled by 1/N of it). Why the two highest and not the highest and the
lowest: every outlier that matters is bright, and a second one at the same voxel is common
in deep fields; the model only decides the rejections (the cube is the mean of what is kept),
so its slight low bias on noise (about 0.2 of a frame's noise for 16 frames) costs nothing.

Frames are visited in the sorted order of their paths, so the model, and with it every
rejection, is the same bit for bit whatever the order of the input list; within a frame the
engine is bit-identical for any thread count.

Memory: beside the cube's accumulators (36 bytes a voxel, used here for the totals and the
contribution count), two float64 scratch arrays, four float32 (mean and weight of the two
highest frames) and a uint16 frame count: 34 bytes a voxel, for any number of frames. The
merge of a frame touches only the planes and the output box it reached. What is kept for the
second pass: the model and its local steps (float32) and the contribution counts (uint32),
12 bytes a voxel.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np

from . import _core
from .accumulate import DrizzleCube, drizzle_frame
from .config import Drizzle3DConfig
from .covariance import clear_terms
from .frames import Strip
from .grid import OutputGrid
from .objectstore import as_location
from .progress import progress_bar
from .readahead import ReadAhead

logger = logging.getLogger(__name__)

#: Bytes a voxel that the model pass adds to the accumulators (module docs): two float64
#: scratch arrays, four float32 (the two highest frames) and a uint16 frame count.
MODEL_BYTES_PER_VOXEL = 2 * 8 + 4 * 4 + 2


@dataclass
class SkyModel:
    """The robust model: ``values`` float32 ``(n_z, n_y, n_x)`` in MJy/sr, NaN where it is not
    defined (fewer than ``outlier_min_inputs`` frames); ``steps`` float32, the model's local
    change per voxel (MJy/sr); ``contributions`` uint32, the
    contributions (input pixels) every voxel received before any rejection."""

    values: np.ndarray
    steps: np.ndarray
    """float32: the model's largest change to a neighbouring voxel (:func:`local_steps`)."""
    contributions: np.ndarray

    def rejected_counts(self, accepted: np.ndarray) -> np.ndarray:
        """int32 rejected contributions per voxel (``contributions - accepted``); -1 where
        something landed, the model is undefined (fewer than ``outlier_min_inputs`` frames) and
        nothing was rejected (pixels near such voxels are tested against the defined ones)."""
        out = self.contributions.astype(np.int32)
        for k in range(out.shape[0]):
            plane = out[k]
            plane -= accepted[k].astype(np.int32)
            np.maximum(plane, 0, out=plane)
            plane[np.isnan(self.values[k]) & (self.contributions[k] > 0) & (plane == 0)] = -1
        return out


class _Box:
    """Per plane, the output box a frame reached (a merge touches only those): rows of the LVF
    see one wavelength range each, so each plane gets only the part of the frame that sees it."""

    #: Input rows summarised together (their wavelength range and corner box).
    ROWS = 32

    def __init__(self, edges: np.ndarray, z_shrink: float):
        self.edges = edges
        self.half = 0.5 * max(float(z_shrink), 1.0)  # of the bandwidth: a superset of the engine's top-hat
        nz = edges.size - 1
        self.lo = np.full((nz, 2), np.inf)  # (x, y) lower corner per plane
        self.hi = np.full((nz, 2), -np.inf)

    def add(self, strip: Strip) -> None:
        """Widen the boxes of the planes that each block of :data:`ROWS` rows can reach."""
        lam, dlam = np.asarray(strip.lambda_c, dtype=np.float64), np.asarray(strip.delta_lambda, dtype=np.float64)
        nz = self.lo.shape[0]
        with np.errstate(invalid="ignore"):
            for r0 in range(0, lam.shape[0], self.ROWS):
                r1 = min(r0 + self.ROWS, lam.shape[0])
                reach = self.half * np.abs(dlam[r0:r1])
                lo, hi = np.nanmin(lam[r0:r1] - reach, initial=np.inf), np.nanmax(lam[r0:r1] + reach, initial=-np.inf)
                if not lo <= hi:
                    continue  # no finite wavelength: nothing of these rows lands
                k0 = max(int(np.searchsorted(self.edges, lo, side="right")) - 1, 0)
                k1 = min(int(np.searchsorted(self.edges, hi, side="left")), nz)
                if k0 >= k1:
                    continue
                for axis, c in enumerate((strip.corners_x[r0:r1 + 1], strip.corners_y[r0:r1 + 1])):
                    finite = c[np.isfinite(c)]
                    if finite.size:
                        np.minimum(self.lo[k0:k1, axis], finite.min(), out=self.lo[k0:k1, axis])
                        np.maximum(self.hi[k0:k1, axis], finite.max(), out=self.hi[k0:k1, axis])

    def slices(self, k: int, ny: int, nx: int) -> Optional[Tuple[slice, slice]]:
        """(y, x) slices of plane ``k``'s box, widened by the kernel's reach (1 pixel) and clipped;
        None when nothing of the frame can reach the plane."""
        (x0, y0), (x1, y1) = self.lo[k], self.hi[k]
        if not (x0 <= x1 and y0 <= y1):
            return None
        ya, yb = int(np.clip(np.floor(y0) - 1, 0, ny)), int(np.clip(np.ceil(y1) + 2, 0, ny))
        xa, xb = int(np.clip(np.floor(x0) - 1, 0, nx)), int(np.clip(np.ceil(x1) + 2, 0, nx))
        return slice(ya, yb), slice(xa, xb)


class ModelBuilder:
    """Pass 1: drizzle frames one at a time into scratch arrays and merge them (module docs).

    Uses ``cube``'s accumulators as its totals: call :meth:`finish` and then drizzle the real
    pass into ``cube`` (``finish`` clears it)."""

    def __init__(self, cube: DrizzleCube, threads_for: Callable[[int], int] = lambda n: 0):
        shape = cube.flux_weighted.shape
        self.cube = cube
        self.threads_for = threads_for  # the engine's threads for a merge of so many voxels
        self.fw = np.zeros(shape, dtype=np.float64)
        self.wt = np.zeros(shape, dtype=np.float64)
        self.hi_v = np.full(shape, -np.inf, dtype=np.float32)
        self.hi_w = np.zeros(shape, dtype=np.float32)
        self.hi2_v = np.full(shape, -np.inf, dtype=np.float32)
        self.hi2_w = np.zeros(shape, dtype=np.float32)
        self.n_frames = np.zeros(shape, dtype=np.uint16)
        self.scratch = DrizzleCube(wcs=cube.wcs, pixscale=cube.pixscale, zgrid=cube.zgrid, flux_weighted=self.fw,
                                   weight_total=self.wt, var_accum=cube.var_accum, count_map=cube.count_map,
                                   and_mask=cube.and_mask, or_mask=cube.or_mask, config=cube.config,
                                   detector=cube.detector)
        self.planes = np.zeros(cube.nz, dtype=bool)
        self.box = self._new_box()

    def _new_box(self) -> _Box:
        return _Box(np.asarray(self.cube.zgrid.edges, dtype=np.float64), self.cube.config.effective_z_shrink())

    def add_strip(self, strip: Strip, threads: int = 0) -> None:
        """Drizzle one strip of the current frame into the scratch arrays."""
        stats = drizzle_frame(self.scratch, *strip, record=False, threads=threads)
        if stats.n_pixels:
            self.planes |= stats.planes
            self.box.add(strip)

    def end_frame(self) -> None:
        """Merge the current frame into the totals and the two highest frames; clear the scratch
        (the Rust engine, ``_core.model_merge``: per plane over the box the frame reached)."""
        box, self.box = self.box, self._new_box()
        planes, self.planes = self.planes, np.zeros(self.cube.nz, dtype=bool)
        boxes, voxels = [], 0
        for k in np.flatnonzero(planes):
            where = box.slices(int(k), self.cube.ny, self.cube.nx)
            if where is None:  # cannot happen: the engine put something there (kept as a guard)
                where = (slice(0, self.cube.ny), slice(0, self.cube.nx))
            boxes.append((int(k), where[0].start, where[0].stop, where[1].start, where[1].stop))
            voxels += (where[0].stop - where[0].start) * (where[1].stop - where[1].start)
        if boxes:
            _core.model_merge(scratch_flux=self.fw, scratch_weight=self.wt, flux_weighted=self.cube.flux_weighted,
                              weight_total=self.cube.weight_total, n_frames=self.n_frames, hi_v=self.hi_v,
                              hi_w=self.hi_w, hi2_v=self.hi2_v, hi2_w=self.hi2_w,
                              boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 5),
                              threads=self.threads_for(voxels))

    def finish(self, min_inputs: int) -> SkyModel:
        """The model (module docs), NaN below ``min_inputs`` frames; clears ``cube`` for pass 2."""
        del self.scratch
        del self.fw, self.wt  # the scratch arrays go before the model is made
        cube = self.cube
        values = self.hi_v  # the model overwrites the highest values, plane by plane
        for k in range(cube.nz):
            ok = self.n_frames[k] >= min_inputs  # hence two highest frames and at least two others
            hw, w2 = self.hi_w[k].astype(np.float64), self.hi2_w[k].astype(np.float64)
            with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
                excluded = np.where(ok, hw * self.hi_v[k], 0.0) + np.where(ok, w2 * self.hi2_v[k], 0.0)
                num = cube.flux_weighted[k] - excluded
                den = cube.weight_total[k] - hw - w2
                ok &= den > 1e-6 * cube.weight_total[k]
                values[k] = np.where(ok, num / np.where(ok, den, 1.0), np.nan)
        steps = local_steps(values, out=self.hi2_v)  # the second highest values are no longer needed
        contributions = cube.count_map.copy()
        del self.hi_w, self.hi2_v, self.hi2_w, self.n_frames
        for name, a in cube.accumulators().items():
            if name not in ("cov_offsets", "cov_cross"):  # the covariance stencil is geometry, not a sum
                a.fill(0)
        if cube.cov_cross is not None:
            clear_terms(cube)  # a part of the cross terms nothing was written to stays untouched
        return SkyModel(values=values, steps=steps, contributions=contributions)


def local_steps(values: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Per voxel, the largest ``|neighbour - voxel|`` over its six face neighbours (x, y and
    plane), NaN neighbours ignored (0 where none is defined, NaN where the voxel itself is): the
    model's change over one voxel, drizzlepac's "derivative" in three dimensions."""
    out = np.empty(values.shape, dtype=np.float32) if out is None else out
    nz = values.shape[0]
    with np.errstate(invalid="ignore"):
        for k in range(nz):
            v = values[k]
            step = np.zeros(v.shape, dtype=np.float32)
            diffs = [np.abs(v[:, 1:] - v[:, :-1]), np.abs(v[1:, :] - v[:-1, :])]
            np.fmax(step[:, :-1], diffs[0], out=step[:, :-1])
            np.fmax(step[:, 1:], diffs[0], out=step[:, 1:])
            np.fmax(step[:-1, :], diffs[1], out=step[:-1, :])
            np.fmax(step[1:, :], diffs[1], out=step[1:, :])
            for j in (k - 1, k + 1):
                if 0 <= j < nz:
                    np.fmax(step, np.abs(values[j] - v), out=step)
            step[np.isnan(v)] = np.nan  # undefined like the model (left out when blotted)
            out[k] = step
    return out


def build_model(paths: List[Any], config: Drizzle3DConfig, grid: OutputGrid, cube: DrizzleCube,
                threads_for: Callable[[int], int], waves: Any = None) -> SkyModel:
    """Pass 1 over ``paths`` (paths or object locations, in sorted order: the model does not
    depend on the input order), each frame with the wavelengths ``waves`` (a
    :class:`.wavesources.WaveSources`; None: the L2 lookup) gives it, as in pass 2.

    Unusable frames are left out quietly here (the real pass reports them); ``threads_for``
    gives the engine's thread count for a strip of so many pixels."""
    builder = ModelBuilder(cube, threads_for)
    ordered = sorted((as_location(p) for p in paths), key=str)
    current: Optional[Any] = None
    with progress_bar(len(ordered), f"D{cube.detector} model", "frame", config.progress) as bar:
        for path, kind, payload in ReadAhead(ordered, config, grid, waves=waves):
            if kind == "frame":
                current = path
            elif kind == "strip":
                builder.add_strip(payload, threads=threads_for(payload.image.size))
                del payload
            else:
                if kind in ("end", "broken") and current is not None:
                    builder.end_frame()
                    current = None
                bar.update(1)
    model = builder.finish(int(config.outlier_min_inputs))
    defined = np.count_nonzero(~np.isnan(model.values))
    logger.info("D%d: outlier model defined in %d of %d voxels (>= %d frames)", cube.detector, defined,
                model.values.size, config.outlier_min_inputs)
    return model


__all__ = ["SkyModel", "ModelBuilder", "build_model"]
