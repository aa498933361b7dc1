"""A crop's bands of rows (footprint.Footprint.bands, frames.Frame.strips): every input pixel
whose droplet lands on the grid is inside a band's column window (checked against the engine's
own per-pixel landing on random geometries: rotations, SIP, frame edges, tiles, kernels,
shrink, oversampling); the strips hold the pixels read inside the windows and OUTSIDE elsewhere,
and a cube drizzled from them equals, bit for bit, the cube drizzled from the whole crop
(covariance planes included), whatever the values outside the windows."""

import dataclasses
import math
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.wcs import WCS, Sip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d import _core
from spxquery.drizzle3d import footprint as footprint_module
from spxquery.drizzle3d.accumulate import DrizzleCube, drizzle_frame
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.footprint import _clip_polygon, footprint
from spxquery.drizzle3d.frames import OUTSIDE, prepare_frame
from spxquery.drizzle3d.grid import OutputGrid
from spxquery.drizzle3d.simulate import (
    PointSource,
    SkyModel,
    Spectrum,
    build_l2_hdulist,
    make_frame_meta,
    render_frame,
    write_l2_file,
)
from spxquery.drizzle3d.spatial import corner_map

RA0, DEC0 = 150.0, 2.0
NATIVE = 6.15  # arcsec


def _input_wcs(rng, ny, nx, rot_deg, sip):
    """A TAN(-SIP) WCS of an (ny, nx) frame centred near (RA0, DEC0), rotated by ``rot_deg``,
    maybe flipped, with a SIP distortion of up to ~2 pixels at the frame's edge."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"] if sip else ["RA---TAN", "DEC--TAN"]
    w.wcs.crpix = [nx / 2 + rng.uniform(-10, 10), ny / 2 + rng.uniform(-10, 10)]
    w.wcs.crval = [RA0, DEC0]
    c, s = math.cos(math.radians(rot_deg)), math.sin(math.radians(rot_deg))
    flip = rng.choice([-1.0, 1.0])
    scale = NATIVE * rng.uniform(0.97, 1.03) / 3600.0
    w.wcs.cd = scale * np.array([[-c, flip * s], [s, flip * c]])
    if sip:
        half = max(nx, ny) / 2
        a, b = np.zeros((4, 4)), np.zeros((4, 4))
        for m in (a, b):
            for p, q in ((2, 0), (1, 1), (0, 2)):
                m[p, q] = rng.uniform(-1.0, 1.0) / half**2
            for p, q in ((3, 0), (2, 1), (1, 2), (0, 3)):
                m[p, q] = rng.uniform(-1.0, 1.0) / half**3
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def _landing(wcs_in, shape, grid, whole, xy_shrink, kernel):
    """bool (ny, nx): the input pixels that give a positive fraction to a pixel of ``grid`` (a
    tile of ``whole`` or ``whole``), from the engine's own droplets on the pipeline's corner map."""
    ny, nx = shape
    cx, cy = corner_map(wcs_in, whole.wcs, 0, 0, nx, ny)
    _, idx, oy, ox, f = _core.spatial_mapping(corners_x=cx, corners_y=cy, out_ny=whole.shape[0],
                                              out_nx=whole.shape[1], xy_shrink=xy_shrink, kernel=kernel)
    (r0, c0), (gny, gnx) = grid.origin, grid.shape
    keep = (f > 0) & (oy >= r0) & (oy < r0 + gny) & (ox >= c0) & (ox < c0 + gnx)
    mask = np.zeros(ny * nx, dtype=bool)
    mask[idx[keep]] = True
    return mask.reshape(ny, nx)


def _in_bands(bands, shape):
    mask = np.zeros(shape, dtype=bool)
    for ya, yb, xa, xb in bands:
        mask[ya:yb, xa:xb] = True
    return mask


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), kernel=st.sampled_from(["square", "bilinear"]), sip=st.booleans(),
       tiled=st.booleans(), band_rows=st.sampled_from([1, 7, 32, None]))
def test_bands_hold_every_pixel_that_lands(seed, kernel, sip, tiled, band_rows):
    rng = np.random.default_rng(seed)
    ny, nx = int(rng.integers(8, 260)), int(rng.integers(8, 260))
    rot = float(rng.choice([0.0, 90.0, 45.0, rng.uniform(0, 360)]))
    wcs_in = _input_wcs(rng, ny, nx, rot, sip)
    size = max(nx, ny) * NATIVE / 60.0  # the frame's size, arcmin
    oversample = float(rng.uniform(0.7, 3.0))
    shrink = float(rng.uniform(0.2, 1.0))
    cfg = Drizzle3DConfig(center_ra=RA0 + rng.uniform(-0.7, 0.7) * size / 60.0 / math.cos(math.radians(DEC0)),
                          center_dec=DEC0 + rng.uniform(-0.7, 0.7) * size / 60.0,
                          width=float(rng.uniform(0.1, 1.3) * size), height=float(rng.uniform(0.1, 1.3) * size),
                          detector=3, xy_oversample=oversample, xy_shrink=shrink, kernel=kernel, progress=False)
    whole = OutputGrid.for_detector(cfg, 3)
    grid = whole
    if tiled and min(whole.shape) >= 4:
        gy, gx = whole.shape
        y0, x0 = int(rng.integers(0, gy - 1)), int(rng.integers(0, gx - 1))
        grid = whole.tile(y0, int(rng.integers(y0 + 1, gy + 1)), x0, int(rng.integers(x0 + 1, gx + 1)))
    frame = SimpleNamespace(shape=(ny, nx), wcs=wcs_in)
    lands = _landing(wcs_in, (ny, nx), grid, whole, shrink, kernel)
    fp = footprint(frame, grid, kernel=kernel)
    if fp is None:
        assert not lands.any()
        return
    x0, x1, y0, y1 = fp.crop
    assert not lands[:y0].any() and not lands[y1:].any() and not lands[:, :x0].any() and not lands[:, x1:].any()
    block_rows = int(rng.integers(1, 2 * (y1 - y0) + 1))
    bands = fp.bands(block_rows, band_rows=band_rows)
    assert not any((yb - 1 - y0) // block_rows != (ya - y0) // block_rows for ya, yb, _, _ in bands)
    rows = [r for ya, yb, _, _ in bands for r in (ya, yb)]
    assert rows == sorted(rows), "bands in row order, not overlapping"
    assert all(y0 <= ya < yb <= y1 and x0 <= xa < xb <= x1 for ya, yb, xa, xb in bands)
    missed = lands & ~_in_bands(bands, (ny, nx))
    assert not missed.any(), f"pixels that land outside every band: {np.argwhere(missed)[:5].tolist()}"
    assert fp.bands(block_rows, band_rows=band_rows, merge_pixels=-1) == _reference_bands(fp, block_rows, band_rows)


def _reference_bands(fp, block_rows, band_rows):
    """The unmerged bands by their definition: the x-extent of the polygon clipped
    (Sutherland-Hodgman) to each band's slab of rows, grown by the reach ``g``, in the crop."""
    x0, x1, y0, y1 = fp.crop
    g = fp.grow
    band_rows = band_rows or footprint_module.BAND_ROWS
    out = []
    for b in range(y0, y1, block_rows):
        for ya in range(b, min(b + block_rows, y1), band_rows):
            yb = min(ya + band_rows, b + block_rows, y1)
            qx, _ = _clip_polygon(fp.qx, fp.qy, -np.inf, np.inf, ya - g, yb - 1 + g)
            if qx:
                xa, xb = max(x0, math.floor(min(qx) - g)), min(x1, math.ceil(max(qx) + g) + 1)
                if xa < xb:
                    out.append((ya, yb, xa, xb))
    return out


def test_bands_leave_out_the_corners_of_a_rotated_grid():
    """A grid rotated by 45 deg in the frame: about half of its crop cannot land and the bands
    leave most of that out (the point of the bands); an unrotated grid's crop stays one band."""
    rng = np.random.default_rng(5)
    wcs_in = _input_wcs(rng, 400, 400, 45.0, sip=False)
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=20.0, height=20.0, detector=3, progress=False)
    fp = footprint(SimpleNamespace(shape=(400, 400), wcs=wcs_in), OutputGrid.for_detector(cfg, 3))
    x0, x1, y0, y1 = fp.crop
    kept = sum((yb - ya) * (xb - xa) for ya, yb, xa, xb in fp.bands(10**6))
    assert kept < 0.65 * (x1 - x0) * (y1 - y0)
    straight = _input_wcs(np.random.default_rng(5), 400, 400, 0.0, sip=False)
    fp = footprint(SimpleNamespace(shape=(400, 400), wcs=straight), OutputGrid.for_detector(cfg, 3))
    x0, x1, y0, y1 = fp.crop
    assert fp.bands(10**6) == [(y0, y1, x0, x1)]


@pytest.fixture(scope="module")
def rotated_frame(tmp_path_factory):
    """A full D3 frame at position angle 37 deg (the grid is rotated in its pixels)."""
    d = tmp_path_factory.mktemp("bands")
    meta = make_frame_meta(3, RA0, DEC0, 37.0, "2025W18_2B_0001_1", release="qr3", zodi_scale_true=1.1)
    sky = SkyModel(point_sources=[PointSource(RA0 + 0.02, DEC0 - 0.01, Spectrum(20.0))])
    return write_l2_file(build_l2_hdulist(meta, render_frame(meta, sky)),
                         d / "level2_2025W18_2B_0001_1D3_spx_l2b-v20-2025-247.fits")


def _full_width(frame):
    """The frame with one full-width band per strip (every pixel of the crop read)."""
    x0, x1, y0, y1 = frame.crop
    blocks = tuple((a, min(a + frame.strip_rows, y1), x0, x1) for a in range(y0, y1, frame.strip_rows))
    return dataclasses.replace(frame, bands=blocks, _pixels=None)


def _cube(frame, cfg, grid, full, poison=False):
    """The cube of ``frame``'s strips (``full``: of the whole crop; ``poison``: of the whole crop
    with every pixel outside the bands' windows made valid, bright, heavy and fully flagged)."""
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3, grid.plane_detector, shape=grid.shape,
                              origin=grid.origin)
    ya = frame.crop[2]
    for strip in (_full_width(frame) if full or poison else frame).strips():
        if poison:
            strip = _poisoned(strip, _outside_mask(frame, ya, strip.image.shape[0]))
        ya += strip.image.shape[0]
        drizzle_frame(cube, *strip, threads=1, record=False)
    return cube


def _outside_mask(frame, ya, rows):
    """bool ``(rows, crop width)``: True outside every band's window in rows ``ya .. ya + rows``."""
    x0, x1, _, _ = frame.crop
    inside = np.zeros((rows, x1 - x0), dtype=bool)
    for a, b, c, d in frame.bands:
        if ya <= a < ya + rows:
            inside[a - ya:b - ya, c - x0:d - x0] = True
    return ~inside


def _poisoned(strip, outside):
    """``strip`` with value 1e3, variance 1e-3 and every flag set outside (wavelengths kept)."""
    image, variance, flags = strip.image.copy(), strip.variance.copy(), strip.flags.copy()
    image[outside], variance[outside], flags[outside] = 1e3, 1e-3, np.uint32(0xFFFFFFFF)
    return strip._replace(image=image, variance=variance, flags=flags)


@pytest.mark.parametrize("case", [
    dict(kernel="square", covariance=True),
    dict(kernel="bilinear", xy_oversample=0.75, covariance=True),
    dict(kernel="square", xy_shrink=1.0, xy_oversample=2.0, exclude_flags=["HOT"]),
    dict(kernel="bilinear", tile=True),
    dict(kernel="square", strip_pixels=3000, covariance=True),
])
def test_cube_from_the_bands_is_the_cube_from_the_whole_crop(rotated_frame, case, monkeypatch):
    monkeypatch.setattr(footprint_module, "BAND_ROWS", 8)  # many bands, none merged
    monkeypatch.setattr(footprint_module, "MERGE_PIXELS", 0)
    case = dict(case)
    tile, strip_pixels = case.pop("tile", False), case.pop("strip_pixels", 2**62)
    cfg = Drizzle3DConfig(center_ra=RA0 + 0.05, center_dec=DEC0 - 0.03, width=7.0, height=5.0, detector=3,
                          z_oversample=0.5, progress=False, **case)
    grid = OutputGrid.for_detector(cfg, 3)
    if tile:
        grid = grid.tile(5, grid.shape[0] - 3, 7, grid.shape[1] // 2)
    frame = prepare_frame(rotated_frame, cfg, grid, strip_pixels=strip_pixels)
    x0, x1, y0, y1 = frame.crop
    assert len(frame.bands) > 5 and sum((yb - ya) * (xb - xa) for ya, yb, xa, xb in frame.bands) < 0.8 * frame.n_pixels
    # The strips: what the whole crop holds inside the windows, OUTSIDE elsewhere; flags, exclude
    # mask and corners everywhere.
    ya = y0
    for strip, whole in zip(frame.strips(), _full_width(frame).strips()):
        outside = _outside_mask(frame, ya, strip.image.shape[0])
        ya += strip.image.shape[0]
        for k in (2, 3, 5, 6):
            assert np.array_equal(strip[k][~outside], whole[k][~outside]) and (strip[k][outside] == OUTSIDE).all()
        for k in (0, 1, 4, 7):
            assert np.array_equal(strip[k], whole[k]) if whole[k] is not None else strip[k] is None
    assert ya == y1
    bands, full, poisoned = (_cube(frame, cfg, grid, False), _cube(frame, cfg, grid, True),
                             _cube(frame, cfg, grid, False, poison=True))
    assert full.count_map.sum() > 0
    for name, a in full.accumulators().items():
        assert getattr(bands, name).tobytes() == a.tobytes(), name
        assert getattr(poisoned, name).tobytes() == a.tobytes(), name


def test_outlier_rejection_keeps_whole_rows(rotated_frame):
    """Outlier rejection tests and grows rejections across whole rows of the crop: its frames
    keep full-width bands."""
    cfg = Drizzle3DConfig(center_ra=RA0 + 0.05, center_dec=DEC0 - 0.03, width=7.0, height=5.0, detector=3,
                          reject_outliers=True, progress=False)
    frame = prepare_frame(rotated_frame, cfg, OutputGrid.for_detector(cfg, 3))
    x0, x1, y0, y1 = frame.crop
    assert frame.bands == ((y0, y1, x0, x1),)
