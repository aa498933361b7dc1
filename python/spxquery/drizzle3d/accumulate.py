"""Cube accumulators and the per-image accumulation (Rust engine).

Weight of one contribution of input pixel ``i`` to voxel ``(k, y, x)``:
``w = min(1/variance_i, ivar_max) * f_xy * f_z``. Accumulators, shape
``(n_z, n_y, n_x)``: ``flux_weighted = Σ w F`` (MJy/sr), ``weight_total = Σ w``,
``var_accum = Σ w² σ²``, ``count_map`` (uint32, contributing input pixels),
``and_mask`` / ``or_mask`` (uint32 AND / OR of the input FLAGS; AND is 0 where
nothing landed). Results are bit-for-bit identical for any thread count.

The engine's parameters (wavelength bin edges, shrink factors, ``ivar_max``,
``min_overlap``, kernel) are validated once per cube into a
``_core.EngineParams`` (:attr:`DrizzleCube.engine_params`) that every call hands
to Rust; the accumulators go to Rust as one mapping
(:meth:`DrizzleCube.accumulators`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.wcs import WCS

from . import _core, vmhints
from .config import Drizzle3DConfig
from .covariance import bytes_per_voxel as cov_bytes_per_voxel
from .covariance import cross_terms, stencil, term
from .flags import as_uint32
from .spectral import ZGrid

logger = logging.getLogger(__name__)


@dataclass
class FrameStats:
    """What one accumulation call did."""

    n_pixels: int
    """Input pixels that deposited into at least one voxel."""
    n_contributions: int
    """Voxel updates."""
    planes: np.ndarray
    """(n_z,) bool: planes that received anything."""


@dataclass
class DrizzleCube:
    """Accumulation buffers of one detector's cube; arrays are ``(n_z, n_y, n_x)``."""

    wcs: WCS
    pixscale: float
    zgrid: ZGrid
    flux_weighted: np.ndarray
    weight_total: np.ndarray
    var_accum: np.ndarray
    count_map: np.ndarray
    and_mask: np.ndarray
    or_mask: np.ndarray
    config: Drizzle3DConfig
    detector: int
    n_inputs: int = 0
    n_rejected: int = 0
    n_empty: int = 0
    """Frames that overlap the region but landed no pixel (all flagged, non-finite or off the grid)."""
    n_input_sc: np.ndarray | None = None
    """(n_z,) uint32: input frames that contributed to each plane."""
    frame_log: list[dict[str, Any]] = field(default_factory=list)
    """One entry per contributing frame: name, zodi_scale, n_pixels, ..."""
    origin: tuple[int, int] = (0, 0)
    """``(row, column)`` of the first voxel in the output grid the corner maps refer to: (0, 0)
    for a whole cube, the tile's place for a tile of a larger grid (:mod:`.tiling`)."""
    reject_count: np.ndarray | None = None
    """int32 ``(n_z, n_y, n_x)`` rejected contributions per voxel, -1 where nothing was tested
    (outlier rejection, :mod:`.outliers`); None when rejection is off."""
    cov_cross: np.ndarray | None = None
    """With ``config.covariance``: the covariance cross terms ``sum w_k w_l sigma^2`` of the voxel
    pairs ``(k, k + cov_offsets[n])``, float64 ``(n_parts, n_z, n_y, n_x, slots)``
    (``covariance.cross_terms``: the offsets with ``|dz| <= 1`` in part 0, the others in part 1;
    one anchor's terms are neighbours in memory); :meth:`cov_term` is offset ``n``'s
    ``(n_z, n_y, n_x)`` view (:mod:`.covariance`). None otherwise."""
    cov_offsets: np.ndarray | None = None
    """int64 ``(n_offsets, 3)``: the ``(dz, dy, dx)`` of each offset of ``cov_cross`` (the stencil's order)."""
    plane_detector: np.ndarray | None = None
    """(n_z,) detector (1-6) of each plane (None: ``detector`` for every plane)."""
    _engine: tuple[tuple, _core.EngineParams] | None = field(default=None, init=False, repr=False, compare=False)
    """The engine parameters and the settings they were built from (see :attr:`engine_params`)."""

    def __post_init__(self) -> None:
        if self.n_input_sc is None:
            self.n_input_sc = np.zeros(self.zgrid.n_z, dtype=np.uint32)
        if self.plane_detector is None:
            self.plane_detector = np.full(self.zgrid.n_z, int(self.detector), dtype=np.int64)

    @property
    def label(self) -> str:
        """``D3`` for a detector's cube, ``all`` for a cube of several detectors (detector 0)."""
        return f"D{int(self.detector)}" if int(self.detector) else "all"

    @property
    def nz(self) -> int:
        return self.zgrid.n_z

    @property
    def ny(self) -> int:
        return self.flux_weighted.shape[1]

    @property
    def nx(self) -> int:
        return self.flux_weighted.shape[2]

    @property
    def flux(self) -> np.ndarray:
        """Weighted mean surface brightness (MJy/sr, float64); NaN where nothing landed."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight_total > 0, self.flux_weighted / self.weight_total, np.nan)

    @property
    def variance(self) -> np.ndarray:
        """Propagated variance ``var_accum / weight_total²`` ((MJy/sr)², float64); NaN where empty."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.weight_total > 0, self.var_accum / self.weight_total**2, np.nan)

    @property
    def engine_params(self) -> _core.EngineParams:
        """The engine's parameters for this cube, validated once (ValueError naming the parameter).

        Built from ``config`` and ``zgrid`` on first use and kept; rebuilt when either is replaced
        or one of the settings the engine reads changes.
        """
        settings = _engine_settings(self.config, self.zgrid)
        if self._engine is None or not _same_settings(self._engine[0], settings):
            edges, xy_shrink, z_shrink, ivar_max, min_overlap, kernel = settings
            params = _core.EngineParams(z_edges=np.ascontiguousarray(edges, dtype=np.float64), xy_shrink=xy_shrink,
                                        z_shrink=z_shrink, ivar_max=ivar_max, min_overlap=min_overlap, kernel=kernel)
            self._engine = (settings, params)
        return self._engine[1]

    def cov_term(self, n: int) -> np.ndarray:
        """The ``(n_z, n_y, n_x)`` cross terms of offset ``cov_offsets[n]`` (a view of ``cov_cross``)."""
        if self.cov_cross is None:
            raise ValueError("the cube has no covariance cross terms (config.covariance is off)")
        return term(self, n)

    def accumulators(self) -> dict[str, np.ndarray]:
        """The six accumulator arrays by field name, as the engine takes them (with
        ``cov_cross`` and ``cov_offsets`` when the cube accumulates the covariance)."""
        arrays = {
            "flux_weighted": self.flux_weighted,
            "weight_total": self.weight_total,
            "var_accum": self.var_accum,
            "count_map": self.count_map,
            "and_mask": self.and_mask,
            "or_mask": self.or_mask,
        }
        if self.cov_cross is not None and self.cov_offsets is not None:
            arrays["cov_cross"] = self.cov_cross
            arrays["cov_offsets"] = self.cov_offsets
        return arrays

    @classmethod
    def create(cls, wcs: WCS, pixscale: float, zgrid: ZGrid, config: Drizzle3DConfig, detector: int,
               plane_detector: np.ndarray | None = None, *, shape: tuple[int, int] | None = None,
               origin: tuple[int, int] = (0, 0)) -> DrizzleCube:
        """Allocate an empty cube of ``(zgrid.n_z, config.output_ny(), config.output_nx())``, or of
        ``(zgrid.n_z, *shape)`` at ``origin`` for a tile of the grid (``wcs`` is then the tile's).
        ``detector`` 0 with ``plane_detector`` (the detector of each plane): a cube of several detectors."""
        size = (config.output_ny(), config.output_nx()) if shape is None else (int(shape[0]), int(shape[1]))
        shape3 = (zgrid.n_z, *size)
        offsets = stencil(config, zgrid.edges, detector) if config.covariance else None
        nbytes = int(np.prod(shape3)) * (3 * 8 + 3 * 4 + (0 if offsets is None else cov_bytes_per_voxel(offsets)))
        logger.info("%s: allocating cube %s (%.1f MB of accumulators)", f"D{detector}" if detector else "all",
                    "x".join(map(str, shape3)), nbytes / 1e6)
        if plane_detector is not None and np.shape(plane_detector) != (zgrid.n_z,):
            raise ValueError(f"plane_detector has shape {np.shape(plane_detector)}, expected ({zgrid.n_z},)")
        cube = cls(
            wcs=wcs,
            pixscale=pixscale,
            zgrid=zgrid,
            flux_weighted=np.zeros(shape3, dtype=np.float64),
            weight_total=np.zeros(shape3, dtype=np.float64),
            var_accum=np.zeros(shape3, dtype=np.float64),
            count_map=np.zeros(shape3, dtype=np.uint32),
            and_mask=np.zeros(shape3, dtype=np.uint32),
            or_mask=np.zeros(shape3, dtype=np.uint32),
            config=config,
            detector=detector,
            origin=(int(origin[0]), int(origin[1])),
            cov_cross=None if offsets is None else cross_terms(shape3, offsets),
            cov_offsets=offsets,
            plane_detector=None if plane_detector is None else np.asarray(plane_detector, dtype=np.int64),
        )
        _ = cube.engine_params  # validated now, not at the first frame
        return cube

    def populate(self) -> None:
        """Fault the six accumulators' pages in now, writable, contents unchanged
        (:func:`.vmhints.populate`; nothing where the system cannot). Left to the engine, each page
        is first read, so the shared zero page is mapped, then written: a second fault, a copy and a
        TLB shootdown of the other CPU (a 30' cube from 48 frames in a fresh process: -1.6 ms of CPU
        and -0.8 ms per frame, docs/performance.md, issue 23 eighth part). The frame loop calls it while the
        reader prepares the first frame. The covariance cross terms populate on their own thread
        (:func:`.covariance.cross_terms`)."""
        for a in (self.flux_weighted, self.weight_total, self.var_accum, self.count_map, self.and_mask,
                  self.or_mask):
            vmhints.populate(a)

    def record_frame(self, n_pixels: int, n_contrib: int, planes: np.ndarray) -> FrameStats:
        """Count one input frame that put ``n_pixels`` pixels into ``planes`` (bool, n_z)."""
        if n_pixels > 0:
            assert self.n_input_sc is not None  # set in __post_init__
            self.n_inputs += 1
            self.n_input_sc += planes.astype(np.uint32)
        return FrameStats(int(n_pixels), int(n_contrib), planes)


def _engine_settings(config: Drizzle3DConfig, zgrid: ZGrid) -> tuple:
    """What the engine reads from a cube's configuration and spectral grid."""
    return (zgrid.edges, float(config.xy_shrink), float(config.effective_z_shrink()), float(config.ivar_max),
            float(config.min_overlap), config.kernel)


def _same_settings(a: tuple, b: tuple) -> bool:
    """The same edges array (the very object, unchanged) and equal scalars."""
    return a[0] is b[0] and a[1:] == b[1:]


def _f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _flat(a: np.ndarray) -> np.ndarray:
    """A per-pixel array as contiguous float64, flattened row-major."""
    return np.ascontiguousarray(_f64(a).ravel())


def _mask(mask: np.ndarray | None) -> np.ndarray | None:
    return None if mask is None else np.asarray(mask, dtype=bool)


def drizzle_frame(
    cube: DrizzleCube,
    corners_x: np.ndarray,
    corners_y: np.ndarray,
    image: np.ndarray,
    variance: np.ndarray,
    flags: np.ndarray,
    lambda_c: np.ndarray,
    delta_lambda: np.ndarray,
    exclude_mask: np.ndarray | None = None,
    *,
    threads: int = 0,
    record: bool = True,
) -> FrameStats:
    """Drizzle one frame (or crop) straight from its corner map into ``cube``, in place.

    ``image`` (MJy/sr), ``variance`` ((MJy/sr)²), ``flags``, ``lambda_c`` and
    ``delta_lambda`` (um) are ``(ny, nx)``; ``corners_x/y`` are ``(ny+1, nx+1)``
    output positions of the pixel corners (see :mod:`.spatial`; for a tile, in the pixels of the
    whole grid, ``cube.origin`` being the tile's place). Pixels with
    ``exclude_mask`` True are skipped, as are pixels with non-finite
    value/wavelength/bandwidth, bandwidth <= 0 or variance <= 0. ``threads=0`` uses all cores (``RAYON_NUM_THREADS``).
    ``record=False`` leaves ``n_inputs`` / ``n_input_sc`` alone (for a frame drizzled
    in several pieces; call :meth:`DrizzleCube.record_frame` once with the totals).
    """
    n_pix, n_con, planes = _core.accumulate_frame(
        cube=cube.accumulators(), params=cube.engine_params,
        corners_x=_f64(corners_x), corners_y=_f64(corners_y), image=_f64(image), variance=_f64(variance),
        flags=as_uint32(flags), lambda_c=_f64(lambda_c), delta_lambda=_f64(delta_lambda),
        exclude_mask=_mask(exclude_mask), threads=int(threads), origin=cube.origin,
    )
    if not record:
        return FrameStats(int(n_pix), int(n_con), planes)
    return cube.record_frame(n_pix, n_con, planes)


def drizzle_image(
    cube: DrizzleCube,
    image: np.ndarray,
    variance: np.ndarray,
    flags: np.ndarray,
    lambda_c_map: np.ndarray,
    delta_lambda_map: np.ndarray,
    pixel_idx: np.ndarray,
    out_y: np.ndarray,
    out_x: np.ndarray,
    f_xy: np.ndarray,
    exclude_mask: np.ndarray | None = None,
) -> FrameStats:
    """Accumulate one image from a flat contribution list (spxquery 0.4.1 API), in place.

    ``pixel_idx, out_y, out_x, f_xy`` come from
    :func:`.spatial.compute_spatial_mapping`. Same weights and skip rules as
    :func:`drizzle_frame`, which is faster (no contribution arrays).
    """
    mask = _mask(exclude_mask)
    n_pix, n_con, planes = _core.accumulate_contributions(
        cube=cube.accumulators(), params=cube.engine_params,
        image=_flat(image), variance=_flat(variance), flags=np.ascontiguousarray(as_uint32(flags).ravel()),
        lambda_c=_flat(lambda_c_map), delta_lambda=_flat(delta_lambda_map),
        pixel_idx=np.ascontiguousarray(pixel_idx, dtype=np.int64), out_y=np.ascontiguousarray(out_y, dtype=np.int32),
        out_x=np.ascontiguousarray(out_x, dtype=np.int32), f_xy=np.ascontiguousarray(f_xy, dtype=np.float64),
        exclude_mask=None if mask is None else np.ascontiguousarray(mask.ravel()),
    )
    return cube.record_frame(n_pix, n_con, planes)
