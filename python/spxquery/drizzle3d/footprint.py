"""Which input pixels of a frame can land on the output grid: the footprint crop.

A frame's pixels are read only inside the crop: the bounding box of the part of the output
region that the frame sees, projected into the frame's pixels (0-based, end-exclusive box
``(x0, x1, y0, y1)``) and grown by the reach of the kernel's droplets plus a margin. Far-away
frames are ruled out on the sky first, at the cost of a few header values.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import TYPE_CHECKING, Optional, Tuple

import numpy as np

if TYPE_CHECKING:
    from .frames import Frame
    from .grid import OutputGrid

#: Extra margin (input pixels) added around the crop for corner-map error and edge sampling.
DEFAULT_CROP_MARGIN = 1.0

#: Bound on the ratio of the frame -> grid mapping's mean stretch (``sqrt(|det|)`` of the pixel
#: scales) to its least stretch in any direction (SIP distortion, anisotropy): the bilinear reach.
STRETCH_BOUND = 1.25


def _angsep(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular separation (deg) by the haversine formula."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def _boundary(nx: int, ny: int, step: float = 20.0) -> Tuple[np.ndarray, np.ndarray]:
    """Closed polygon (counter-clockwise, first point not repeated) along the outer edge of an
    (ny, nx) pixel grid (0-based, edges at -0.5 and n-0.5), a point every ``step`` pixels."""
    xs = np.linspace(-0.5, nx - 0.5, max(2, int(math.ceil(nx / step)) + 1))
    ys = np.linspace(-0.5, ny - 0.5, max(2, int(math.ceil(ny / step)) + 1))
    bx = np.concatenate([xs[:-1], np.full(len(ys) - 1, nx - 0.5), xs[::-1][:-1], np.full(len(ys) - 1, -0.5)])
    by = np.concatenate([np.full(len(xs) - 1, -0.5), ys[:-1], np.full(len(xs) - 1, ny - 0.5), ys[::-1][:-1]])
    return bx, by


def _clip_polygon(px: np.ndarray, py: np.ndarray, xmin: float, xmax: float, ymin: float, ymax: float):
    """Sutherland-Hodgman clip of a closed polygon to a rectangle; returns (x, y) lists (maybe empty)."""
    if px.size and px.min() >= xmin and px.max() <= xmax and py.min() >= ymin and py.max() <= ymax:
        return px.tolist(), py.tolist()  # wholly inside: the clip keeps every point, in order
    pts = list(zip(px.tolist(), py.tolist()))
    for axis, bound, keep_ge in ((0, xmin, True), (0, xmax, False), (1, ymin, True), (1, ymax, False)):
        if not pts:
            break
        inside = (lambda p, a=axis, b=bound: p[a] >= b) if keep_ge else (lambda p, a=axis, b=bound: p[a] <= b)
        out = []
        prev = pts[-1]
        for cur in pts:
            ci, pi = inside(cur), inside(prev)
            if ci != pi:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                q = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append(q)
            if ci:
                out.append(cur)
            prev = cur
        pts = out
    return [p[0] for p in pts], [p[1] for p in pts]


@functools.lru_cache(maxsize=8)
def _grid_outline(grid: "OutputGrid") -> Tuple[float, float, float, np.ndarray, np.ndarray]:
    """What the crop needs of the grid alone (cached per grid object, ``OutputGrid`` compares by
    identity): the sky position (deg) of the region's centre, the radius (deg) of its
    circumscribed circle, and the sky positions of its outer boundary (see :func:`footprint_crop`)."""
    ny_out, nx_out = grid.shape
    oy, ox = grid.origin
    out = grid.wcs
    cx_out = np.array([-0.5, nx_out - 0.5, -0.5, nx_out - 0.5, (nx_out - 1) / 2])
    cy_out = np.array([-0.5, -0.5, ny_out - 0.5, ny_out - 0.5, (ny_out - 1) / 2])
    ra_out, dec_out = out.wcs_pix2world(cx_out + ox, cy_out + oy, 0)
    r_out = float(np.max(_angsep(ra_out[4], dec_out[4], ra_out[:4], dec_out[:4])))
    bx, by = _boundary(nx_out, ny_out)
    ra, dec = out.wcs_pix2world(bx + ox, by + oy, 0)
    ra.flags.writeable = dec.flags.writeable = False  # shared by every frame of the grid
    return float(ra_out[4]), float(dec_out[4]), r_out, ra, dec


def droplet_reach(kernel: str, in_arcsec: float, out_arcsec: float) -> float:
    """How far (input pixels, per axis) from the grid's outline in the frame the centre of an input
    pixel that lands can lie, for input and output pixels of these sizes (arcsec).

    ``square``: half a pixel (its droplet lies within the pixel; a droplet that lands overlaps
    the grid). ``bilinear``: the droplet is the pixel's centre, which gives weight to output pixels
    whose centres are within one output pixel per axis, so it lands within half an output pixel
    (per axis) of the grid's outer edge, at most ``0.5 * sqrt(2)`` output pixels away, which is at
    most that many output pixels over the mapping's least stretch (``in / out /`` :data:`STRETCH_BOUND`
    output pixels per input pixel); at least half a pixel."""
    if kernel == "bilinear":
        return max(0.5, 0.5 * math.sqrt(2.0) * STRETCH_BOUND * out_arcsec / in_arcsec)
    return 0.5


def footprint_crop(
    frame: "Frame",
    grid: "OutputGrid",
    margin_pix: float = DEFAULT_CROP_MARGIN,
    kernel: str = "square",
) -> Optional[Tuple[int, int, int, int]]:
    """Input-pixel box ``(x0, x1, y0, y1)`` (0-based, end-exclusive) whose droplets can touch the output.

    The outer boundary of the output region (``grid.shape = (ny, nx)`` from pixel
    ``grid.origin`` of ``grid.wcs``: a tile is a sub-array of its grid), sampled
    every 20 output pixels plus the corners, is projected into the input frame with
    the full input WCS (SIP included) as a polygon; the polygon is clipped
    (Sutherland-Hodgman) to the frame grown by ``g`` = the reach of ``kernel``'s droplets
    (:func:`droplet_reach`: half an input pixel for ``square``) + ``margin_pix``, and the
    bounding box of what remains, grown by ``g`` and clipped to the image, is the crop.
    The clipped polygon contains the projected interior, so a frame lying wholly inside
    the output region gets the full frame. Returns None when the frame and the region are disjoint (first
    tested on the sky with circumscribed circles, so far-away frames cost no
    projection).
    """
    ny_in, nx_in = frame.shape
    wcs_in = frame.wcs
    ra_c, dec_c, r_out, ra, dec = _grid_outline(grid)  # a tile's outline lies at its place in grid.wcs

    # Coarse sky test with circumscribed circles.
    cx_in, cy_in = np.array([-0.5, nx_in - 0.5, -0.5, nx_in - 0.5, (nx_in - 1) / 2]), np.array(
        [-0.5, -0.5, ny_in - 0.5, ny_in - 0.5, (ny_in - 1) / 2]
    )
    ra_in, dec_in = wcs_in.all_pix2world(cx_in, cy_in, 0)
    r_in = float(np.max(_angsep(ra_in[4], dec_in[4], ra_in[:4], dec_in[:4])))
    in_scale_deg = float(np.sqrt(abs(np.linalg.det(wcs_in.pixel_scale_matrix))))
    reach = droplet_reach(kernel, in_scale_deg * 3600.0, float(grid.pixscale))
    sep = float(_angsep(ra_in[4], dec_in[4], ra_c, dec_c))
    if sep > r_in + r_out + (margin_pix + reach + 0.5) * in_scale_deg:
        return None

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        px, py = wcs_in.all_world2pix(ra, dec, 0, quiet=True)
    extra = 0.0
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        # SIP inversion failed far outside the frame: use the linear part plus a distortion margin.
        px, py = wcs_in.wcs_world2pix(ra, dec, 0)
        ex, ey = wcs_in.all_pix2world(cx_in, cy_in, 0)
        lx, ly = wcs_in.wcs_world2pix(ex, ey, 0)
        extra = float(np.max(np.hypot(lx - cx_in, ly - cy_in))) * 2.0 + 2.0
    grow = reach + margin_pix + extra
    # Keep only the part of the projected region within `grow` of the frame, then its bounding box.
    qx, qy = _clip_polygon(px, py, -0.5 - grow, nx_in - 0.5 + grow, -0.5 - grow, ny_in - 0.5 + grow)
    if not qx:
        return None
    x0 = int(math.floor(min(qx) - grow))
    x1 = int(math.ceil(max(qx) + grow)) + 1
    y0 = int(math.floor(min(qy) - grow))
    y1 = int(math.ceil(max(qy) + grow)) + 1
    x0, x1 = max(x0, 0), min(x1, nx_in)
    y0, y1 = max(y0, 0), min(y1, ny_in)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


__all__ = ["footprint_crop", "droplet_reach", "DEFAULT_CROP_MARGIN", "STRETCH_BOUND"]
