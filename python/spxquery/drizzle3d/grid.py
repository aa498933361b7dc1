"""The output grid of a cube: celestial WCS, shape, pixel scale and spectral planes.

:class:`OutputGrid` is computed once per cube from the configuration and passed whole: the
frame reader crops and maps frames onto it, the cube is allocated on it, the writer records it.
Conventions: 0-based pixels, ``shape = (ny, nx)``, pixel scale in arcsec, wavelengths in um.
A part of the grid (a tile of a later tiled run) is a sub-array ``[y0:y1, x0:x1]`` of this
grid, never a new projection; each spectral plane records the detector it belongs to, so that
planes of several detectors can share one grid.

:func:`build_output_wcs` (spxquery 0.4.1 API) builds the celestial WCS.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import numpy as np
from astropy.wcs import WCS

from .config import Drizzle3DConfig
from .spectral import ZGrid, build_z_grid, build_z_grid_all, detectors_reaching

logger = logging.getLogger(__name__)


def celestial(wcs: WCS) -> WCS:
    """The 2-D celestial part of ``wcs`` (``wcs`` itself when it has two axes)."""
    return wcs.celestial if wcs.naxis != 2 else wcs


def output_shape(config: Drizzle3DConfig) -> Tuple[int, int]:
    """``(ny, nx)`` of the output image [pixels] (see ``Drizzle3DConfig.output_nx``)."""
    return config.output_ny(), config.output_nx()


#: A region narrower than this many output pixels gets a warning (degrees typed for arcmin?).
SMALL_REGION_PIXELS = 10


def small_region_warning(config: Drizzle3DConfig) -> Optional[str]:
    """A warning when the region is narrower than :data:`SMALL_REGION_PIXELS` pixels on a side
    (e.g. ``--size 0.5`` meant as degrees gives 4 x 4 pixels), suggesting arcmin; else None."""
    ny, nx = output_shape(config)
    if min(nx, ny) >= SMALL_REGION_PIXELS:
        return None
    return (f"the region is only {nx} x {ny} pixels ({config.width:g}' x {config.height:g}' at "
            f"{config.effective_pixscale():.4g}\"/pixel): width and height are in arcmin; if you meant degrees, "
            f"use {config.width * 60:g} x {config.height * 60:g} arcmin (--size {config.width * 60:g})")


def build_output_wcs(config: Drizzle3DConfig) -> WCS:
    """2-D gnomonic (RA---TAN / DEC--TAN, ICRS) WCS of the output image.

    Pixel scale ``config.effective_pixscale() / 3600`` deg with CDELT1 < 0 (RA increases to
    the left). ``(center_ra, center_dec)`` lies at the geometric centre of the
    ``(output_ny, output_nx)`` image: 0-based pixel ``((nx-1)/2, (ny-1)/2)``, i.e. FITS
    ``CRPIX = ((nx+1)/2, (ny+1)/2)``. ``pixel_shape`` is set to ``(nx, ny)``.
    """
    ny, nx = output_shape(config)
    scale_deg = config.effective_pixscale() / 3600.0

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.crval = [config.center_ra, config.center_dec]
    w.wcs.cdelt = [-scale_deg, scale_deg]
    w.wcs.set()
    w.pixel_shape = (nx, ny)

    logger.debug(
        "Output WCS: %d x %d pixels, %.4f arcsec/pixel, centre (%.6f, %.6f) deg at CRPIX (%.1f, %.1f)",
        nx, ny, config.effective_pixscale(), config.center_ra, config.center_dec,
        w.wcs.crpix[0], w.wcs.crpix[1],
    )
    return w


@dataclass(eq=False)
class OutputGrid:
    """Where a cube's voxels are: celestial WCS and ``(ny, nx)``, pixel scale, spectral bins
    and the detector of each plane."""

    wcs: WCS
    """2-D celestial WCS of the image (0-based pixel ``(x, y)``)."""
    shape: Tuple[int, int]
    """``(ny, nx)`` [pixels]."""
    pixscale: float
    """Output pixel scale [arcsec]."""
    zgrid: ZGrid
    """Spectral bins [um]."""
    plane_detector: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """``(n_z,)`` detector (1-6) of each plane."""
    origin: Tuple[int, int] = (0, 0)
    """``(row, column)`` of this grid's first pixel in the pixels of ``wcs``: ``(0, 0)`` for a
    whole grid, the tile's place for a tile (:meth:`tile`). Corner maps are in ``wcs`` pixels."""
    frame_detectors: Tuple[int, ...] = ()
    """Detectors whose frames the cube takes (empty: those of the planes)."""

    @classmethod
    def for_detector(cls, config: Drizzle3DConfig, detector: int, wcs: Optional[WCS] = None) -> "OutputGrid":
        """The grid of one detector's cube: ``config``'s region and spectral bins for ``detector``.

        ``wcs`` replaces the configured celestial WCS (its 2-D part is used); the shape always
        comes from the configuration.
        """
        zgrid = build_z_grid(detector, config.z_oversample, config.z_lambda_edges)
        return cls(
            wcs=celestial(wcs) if wcs is not None else build_output_wcs(config),
            shape=output_shape(config),
            pixscale=config.effective_pixscale(),
            zgrid=zgrid,
            plane_detector=np.full(zgrid.n_z, int(detector), dtype=np.int64),
        )

    def tile(self, y0: int, y1: int, x0: int, x1: int) -> "OutputGrid":
        """The sub-array ``[y0:y1, x0:x1]`` of this (whole) grid: the same WCS and planes, shape
        ``(y1 - y0, x1 - x0)``, ``origin = (y0, x0)``."""
        if self.origin != (0, 0):
            raise ValueError("a tile is cut from a whole grid, not from another tile")
        if not (0 <= y0 < y1 <= self.ny and 0 <= x0 < x1 <= self.nx):
            raise ValueError(f"tile rows {y0}:{y1}, columns {x0}:{x1} are not inside the {self.ny} x {self.nx} grid")
        return replace(self, shape=(int(y1 - y0), int(x1 - x0)), origin=(int(y0), int(x0)))

    @classmethod
    def all_detectors(cls, config: Drizzle3DConfig, wcs: Optional[WCS] = None) -> "OutputGrid":
        """The grid of one cube of every detector (``combine_detectors``): ``config``'s region and
        the spectral grid across detectors (:func:`.spectral.build_z_grid_all`). It takes the
        frames of every detector whose pixels can reach its wavelength range."""
        zgrid, dets = build_z_grid_all(config.z_oversample, config.z_lambda_edges)
        reach = detectors_reaching(float(zgrid.edges[0]), float(zgrid.edges[-1]))
        return cls(
            wcs=celestial(wcs) if wcs is not None else build_output_wcs(config),
            shape=output_shape(config),
            pixscale=config.effective_pixscale(),
            zgrid=zgrid,
            plane_detector=dets,
            frame_detectors=tuple(sorted(set(reach) | set(int(d) for d in dets))),
        )

    @classmethod
    def for_config(cls, config: Drizzle3DConfig, detector: int, wcs: Optional[WCS] = None) -> "OutputGrid":
        """The grid of the cube ``detector`` (1-6) of a run, or of the combined cube
        (``detector`` 0 with ``config.combine_detectors``)."""
        if int(detector) == 0:
            if not config.combine_detectors:
                raise ValueError("detector 0 has a grid only with combine_detectors=True")
            return cls.all_detectors(config, wcs)
        return cls.for_detector(config, detector, wcs)

    @property
    def ny(self) -> int:
        return int(self.shape[0])

    @property
    def nx(self) -> int:
        return int(self.shape[1])

    @property
    def nz(self) -> int:
        return self.zgrid.n_z

    @property
    def cube_shape(self) -> Tuple[int, int, int]:
        """``(n_z, ny, nx)`` of the accumulators."""
        return self.nz, self.ny, self.nx

    @property
    def detectors(self) -> Tuple[int, ...]:
        """The detectors of the planes, each once, in plane order."""
        return tuple(int(d) for d in dict.fromkeys(self.plane_detector.tolist()))

    @property
    def input_detectors(self) -> Tuple[int, ...]:
        """Detectors whose frames land on this grid, ascending (:attr:`frame_detectors`, else the
        detectors of the planes)."""
        return tuple(self.frame_detectors) if self.frame_detectors else tuple(sorted(self.detectors))

    @property
    def detector(self) -> int:
        """The one detector of a single-detector grid (ValueError when planes have several)."""
        dets = self.detectors
        if len(dets) != 1:
            raise ValueError(f"the grid's planes belong to detectors {list(dets)}, not to one")
        return dets[0]


__all__ = ["OutputGrid", "build_output_wcs", "celestial", "output_shape", "small_region_warning"]
