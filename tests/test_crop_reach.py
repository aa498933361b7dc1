"""The footprint crop holds every input pixel whose droplet lands on the grid: checked against
the engine's own per-pixel landing on random geometries (rotations, flips, SIP, frame edges,
tiles, both kernels, shrink, output pixels from 0.15 to 3 per native pixel), with a regression
test for bilinear droplets of large output pixels (lost at the grid's corners before the crop
took the kernel's reach)."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.wcs import WCS, Sip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d import _core
from spxquery.drizzle3d import footprint as footprint_module
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.footprint import droplet_reach, footprint_crop
from spxquery.drizzle3d.frames import open_frame, prepare_frame
from spxquery.drizzle3d.grid import OutputGrid
from spxquery.drizzle3d.simulate import SkyModel, build_l2_hdulist, make_frame_meta, render_frame, write_l2_file
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


def _outside(lands, crop):
    """Landing pixels outside the crop ``(x0, x1, y0, y1)`` (None: no crop)."""
    inside = np.zeros_like(lands)
    if crop is not None:
        x0, x1, y0, y1 = crop
        inside[y0:y1, x0:x1] = True
    return lands & ~inside


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), kernel=st.sampled_from(["square", "bilinear"]), sip=st.booleans(),
       tiled=st.booleans())
def test_the_crop_holds_every_pixel_that_lands(seed, kernel, sip, tiled):
    rng = np.random.default_rng(seed)
    ny, nx = int(rng.integers(8, 260)), int(rng.integers(8, 260))
    rot = float(rng.choice([0.0, 90.0, 45.0, rng.uniform(0, 360)]))
    wcs_in = _input_wcs(rng, ny, nx, rot, sip)
    size = max(nx, ny) * NATIVE / 60.0  # the frame's size, arcmin
    oversample = float(rng.choice([rng.uniform(0.15, 0.7), rng.uniform(0.7, 3.0)]))
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
    lands = _landing(wcs_in, (ny, nx), grid, whole, shrink, kernel)
    crop = footprint_crop(SimpleNamespace(shape=(ny, nx), wcs=wcs_in), grid, kernel=kernel)
    missed = _outside(lands, crop)
    assert not missed.any(), f"crop {crop}; pixels that land outside it: {np.argwhere(missed)[:5].tolist()}"


@pytest.mark.parametrize("rot", [30.0, 45.0])
def test_bilinear_droplets_of_large_output_pixels_stay_in_the_crop(rot, monkeypatch):
    """Regression: the crop grew by half an input pixel whatever the kernel; a bilinear point lands
    up to half an output pixel beyond the grid, so with output pixels of 5 native pixels the crop
    lost landing pixels at the grid's corners (1 and 3 here)."""
    rng = np.random.default_rng(1)
    wcs_in = _input_wcs(rng, 200, 200, rot, sip=False)
    cfg = Drizzle3DConfig(center_ra=RA0 + 0.1, center_dec=DEC0 + 0.08, width=10.0, height=8.0, detector=3,
                          xy_oversample=0.2, kernel="bilinear", progress=False)
    grid = OutputGrid.for_detector(cfg, 3)
    lands = _landing(wcs_in, (200, 200), grid, grid, 0.8, "bilinear")
    frame = SimpleNamespace(shape=(200, 200), wcs=wcs_in)
    assert lands.sum() > 6000 and not _outside(lands, footprint_crop(frame, grid, kernel="bilinear")).any()
    monkeypatch.setattr(footprint_module, "droplet_reach", lambda *a: 0.5)  # the old growth
    assert _outside(lands, footprint_crop(frame, grid, kernel="bilinear")).any()


def test_reach_of_the_kernels():
    assert droplet_reach("square", 6.15, 30.0) == 0.5
    assert droplet_reach("bilinear", 6.15, 3.0) == 0.5
    assert droplet_reach("bilinear", 6.15, 6.15) == pytest.approx(0.5 * math.sqrt(2) * footprint_module.STRETCH_BOUND)
    assert droplet_reach("bilinear", 6.15, 30.75) == pytest.approx(5 * droplet_reach("bilinear", 6.15, 6.15))


def test_prepare_frame_crops_for_the_configured_kernel(tmp_path):
    meta = make_frame_meta(3, RA0, DEC0, 37.0, "2025W18_2B_0001_1", release="qr2")
    path = write_l2_file(build_l2_hdulist(meta, render_frame(meta, SkyModel())),
                         tmp_path / "level2_2025W18_2B_0001_1D3_spx_l2b-v12-2025-164.fits")
    crops = {}
    for kernel in ("square", "bilinear"):
        cfg = Drizzle3DConfig(center_ra=RA0 + 0.05, center_dec=DEC0 - 0.03, width=12.0, height=9.0, detector=3,
                              xy_oversample=0.25, kernel=kernel, progress=False)
        grid = OutputGrid.for_detector(cfg, 3)
        crops[kernel] = prepare_frame(path, cfg, grid).crop
        assert crops[kernel] == footprint_crop(open_frame(path), grid, kernel=kernel)
    (a0, a1, b0, b1), (c0, c1, d0, d1) = crops["square"], crops["bilinear"]
    assert c0 < a0 and c1 > a1 and d0 < b0 and d1 > b1
