"""Which frames each tile of a tiled run reads, from the frames' sky footprints.

The archive lists each frame's footprint (``poly`` of the TAP query: the corners' RA/Dec in
deg, :attr:`.archive.observations.DrizzleObservation.poly`). :func:`frames_by_tile` projects
every footprint onto the output grid once, in the driver, and gives each tile the indices
(in the run's file order) of the frames whose footprint, grown by :func:`margin_pixels`, meets
the tile; a frame outside every tile is never opened. A frame without a footprint (``None``),
or one that cannot be projected (a corner 80 deg or more from the projection centre), goes to
every tile, where the header-only test (:func:`.footprint.footprint_crop`) decides. The
selection is a superset of the frames that land in the tile, and keeps the file order, so the
tile's voxels are the same as when every frame is offered. Edges between corners are sampled
along great circles, so the box holds the projected footprint for any projection. Pixels are
0-based pixels of the whole grid (pixel ``j`` covers ``[j - 0.5, j + 0.5]``).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .footprint import DEFAULT_CROP_MARGIN, _angsep
from .grid import OutputGrid

#: Native SPHEREx pixel [arcsec].
NATIVE_PIXEL_ARCSEC = 6.15
#: Footprint margin [native pixels]: the largest droplet (half a pixel), the crop margin, and two
#: pixels for a listed footprint that rounds the frame's corners.
FOOTPRINT_MARGIN_NATIVE = 0.5 + DEFAULT_CROP_MARGIN + 2.0
#: Points sampled along each footprint edge (great circle), corners included.
EDGE_SAMPLES = 9
#: A footprint with a corner this far from the projection centre [deg] goes to every tile.
MAX_PROJECTED_DEG = 80.0

Footprint = Optional[Sequence[float]]
#: The box of a footprint that meets no tile.
NO_TILE = np.array([np.inf, -np.inf, np.inf, -np.inf])


def margin_pixels(grid: OutputGrid) -> float:
    """The footprint margin in output pixels (:data:`FOOTPRINT_MARGIN_NATIVE` + one output pixel)."""
    return FOOTPRINT_MARGIN_NATIVE * NATIVE_PIXEL_ARCSEC / float(grid.pixscale) + 1.0


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    r, d = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=-1)


def _edge_points(ra: np.ndarray, dec: np.ndarray) -> tuple:
    """RA/Dec [deg] of :data:`EDGE_SAMPLES` points along each great-circle edge of the polygon."""
    a = _unit(ra, dec)
    b = np.roll(a, -1, axis=0)
    t = np.linspace(0.0, 1.0, EDGE_SAMPLES)[None, :, None]
    p = a[:, None, :] * (1.0 - t) + b[:, None, :] * t  # chords, normalised onto the sphere
    p = p.reshape(-1, 3)
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    return np.degrees(np.arctan2(p[:, 1], p[:, 0])) % 360.0, np.degrees(np.arcsin(np.clip(p[:, 2], -1.0, 1.0)))


def footprint_box(grid: OutputGrid, poly: Footprint) -> Optional[np.ndarray]:
    """``[x0, x1, y0, y1]``: the grid pixels the footprint ``poly`` (RA1, Dec1, RA2, Dec2, ... deg)
    can reach, margin included; an empty box (``x0 > x1``) when it is far outside the grid; None
    when it cannot be told (no footprint, or too far from the projection centre to project)."""
    if poly is None or len(poly) < 6:
        return None
    corners = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(corners).all():
        return None
    ra, dec = corners[:, 0], corners[:, 1]
    ra0, dec0 = (float(v) for v in grid.wcs.wcs.crval[:2])
    if float(np.max(_angsep(ra0, dec0, ra, dec))) >= MAX_PROJECTED_DEG:
        ny, nx = grid.shape
        cra, cdec = grid.wcs.wcs_pix2world(np.array([-0.5, nx - 0.5, -0.5, nx - 0.5]),
                                           np.array([-0.5, -0.5, ny - 0.5, ny - 0.5]), 0)
        r_grid = float(np.max(_angsep(ra0, dec0, cra, cdec)))
        centre = _unit(ra, dec).sum(axis=0)
        c_ra = np.degrees(np.arctan2(centre[1], centre[0]))
        c_dec = np.degrees(np.arcsin(centre[2] / max(np.linalg.norm(centre), 1e-300)))
        r_poly = float(np.max(_angsep(c_ra, c_dec, ra, dec)))
        if float(_angsep(ra0, dec0, c_ra, c_dec)) > r_grid + r_poly + 1.0:
            return NO_TILE.copy()  # far away on the sky
        return None
    ex, ey = grid.wcs.wcs_world2pix(*_edge_points(ra, dec), 0)
    if not (np.isfinite(ex).all() and np.isfinite(ey).all()):
        return None
    m = margin_pixels(grid)
    return np.array([ex.min() - m, ex.max() + m, ey.min() - m, ey.max() + m])


def frames_by_tile(grid: OutputGrid, bounds: Sequence[Sequence[int]],
                   footprints: Sequence[Footprint]) -> List[List[int]]:
    """For each tile ``[y0, y1, x0, x1]`` of ``bounds`` (grid pixels, end-exclusive), the indices
    of the frames whose footprint box meets it (frames without a usable footprint: every tile),
    in increasing order."""
    boxes = [footprint_box(grid, fp) for fp in footprints]
    every = np.array([b is None for b in boxes], dtype=bool)
    arr = np.array([b if b is not None else NO_TILE for b in boxes], dtype=np.float64).reshape(-1, 4)
    out = []
    for y0, y1, x0, x1 in bounds:
        # pixel j covers [j - 0.5, j + 0.5]: the tile spans [x0 - 0.5, x1 - 0.5] x [y0 - 0.5, y1 - 0.5]
        meets = ((arr[:, 0] <= x1 - 0.5) & (arr[:, 1] >= x0 - 0.5) & (arr[:, 2] <= y1 - 0.5)
                 & (arr[:, 3] >= y0 - 0.5))
        out.append(np.flatnonzero(meets | every).tolist())
    return out


__all__ = ["FOOTPRINT_MARGIN_NATIVE", "NATIVE_PIXEL_ARCSEC", "footprint_box", "frames_by_tile", "margin_pixels"]
