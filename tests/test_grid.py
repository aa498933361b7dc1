"""The output grid: build_output_wcs (centring, pixel scale, orientation, shape) and OutputGrid."""

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.grid import build_output_wcs

CASES = [
    # (ra, dec, width', height', xy_oversample) -> odd/even combinations
    (150.0, 2.2, 6.15 * 11 / 60, 6.15 * 7 / 60, 1.0),  # 11 x 7 (odd, odd)
    (150.0, 2.2, 6.15 * 12 / 60, 6.15 * 8 / 60, 1.0),  # 12 x 8 (even, even)
    (10.0, -45.0, 6.15 * 12 / 60, 6.15 * 9 / 60, 1.0),  # even x odd
    (359.9, 89.0, 10.0, 10.0, 2.0),  # near the pole and RA wrap
    (0.05, -89.5, 3.0, 5.0, 1.5),
    (270.0, 66.56, 30.0, 30.0, 1.0),  # NEP deep field
]


def _d(ra1, ra2):
    return (ra1 - ra2 + 180.0) % 360.0 - 180.0


@pytest.mark.parametrize("ra, dec, w, h, ov", CASES)
def test_centre_shape_scale_orientation(ra, dec, w, h, ov):
    cfg = Drizzle3DConfig(center_ra=ra, center_dec=dec, width=w, height=h, xy_oversample=ov)
    nx, ny = cfg.output_nx(), cfg.output_ny()
    wcs = build_output_wcs(cfg)

    # shape
    assert wcs.pixel_shape == (nx, ny)
    assert wcs.array_shape == (ny, nx)
    assert wcs.naxis == 2
    assert list(wcs.wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    assert wcs.wcs.radesys == "ICRS"
    np.testing.assert_allclose(wcs.wcs.crpix, [(nx + 1) / 2, (ny + 1) / 2])

    # geometric centre (0-based) maps to the configured centre
    cra, cdec = wcs.pixel_to_world_values((nx - 1) / 2.0, (ny - 1) / 2.0)
    assert abs(_d(float(cra), ra)) * np.cos(np.radians(dec)) < 1e-10
    assert abs(float(cdec) - dec) < 1e-10
    # and back
    px, py = wcs.world_to_pixel_values(ra, dec)
    assert abs(px - (nx - 1) / 2.0) < 1e-6 and abs(py - (ny - 1) / 2.0) < 1e-6

    # pixel scale: separation of neighbouring pixels at the centre
    scale = cfg.effective_pixscale()
    np.testing.assert_allclose(np.abs(wcs.wcs.cdelt), scale / 3600.0, rtol=1e-14)
    x0, y0 = (nx - 1) / 2.0, (ny - 1) / 2.0
    c0 = SkyCoord(*wcs.pixel_to_world_values(x0, y0), unit="deg")
    cx = SkyCoord(*wcs.pixel_to_world_values(x0 + 1, y0), unit="deg")
    cy = SkyCoord(*wcs.pixel_to_world_values(x0, y0 + 1), unit="deg")
    assert c0.separation(cx).to_value(u.arcsec) == pytest.approx(scale, rel=1e-6)
    assert c0.separation(cy).to_value(u.arcsec) == pytest.approx(scale, rel=1e-6)

    # RA increases to the left (decreasing x), Dec increases upwards
    assert wcs.wcs.cdelt[0] < 0 < wcs.wcs.cdelt[1]
    if abs(dec) < 89.0:
        ra_left = float(wcs.pixel_to_world_values(x0 - 1, y0)[0])
        ra_right = float(wcs.pixel_to_world_values(x0 + 1, y0)[0])
        assert _d(ra_left, ra) > 0 > _d(ra_right, ra)
    assert float(wcs.pixel_to_world_values(x0, y0 + 1)[1]) > float(cdec)


def test_even_size_centre_between_pixels():
    # 12 x 8: centre lies on the corner shared by pixels (5,3),(6,3),(5,4),(6,4)
    cfg = Drizzle3DConfig(150.0, 2.2, 6.15 * 12 / 60, 6.15 * 8 / 60)
    assert (cfg.output_nx(), cfg.output_ny()) == (12, 8)
    wcs = build_output_wcs(cfg)
    px, py = wcs.world_to_pixel_values(150.0, 2.2)
    assert px == pytest.approx(5.5, abs=1e-9) and py == pytest.approx(3.5, abs=1e-9)
    # symmetric: the first and last pixel centres are equidistant from the centre
    c = SkyCoord(150.0, 2.2, unit="deg")
    first = SkyCoord(*wcs.pixel_to_world_values(0, 0), unit="deg")
    last = SkyCoord(*wcs.pixel_to_world_values(11, 7), unit="deg")
    assert c.separation(first).arcsec == pytest.approx(c.separation(last).arcsec, rel=1e-9)


def test_footprint_matches_requested_size():
    cfg = Drizzle3DConfig(200.0, 30.0, 20.0, 12.0, xy_oversample=2.0)
    wcs = build_output_wcs(cfg)
    nx, ny = cfg.output_nx(), cfg.output_ny()
    left = SkyCoord(*wcs.pixel_to_world_values(-0.5, (ny - 1) / 2), unit="deg")
    right = SkyCoord(*wcs.pixel_to_world_values(nx - 0.5, (ny - 1) / 2), unit="deg")
    assert left.separation(right).arcmin == pytest.approx(nx * cfg.effective_pixscale() / 60, rel=1e-4)
    assert nx * cfg.effective_pixscale() / 60 <= 20.0 + 1e-9
    assert 20.0 - nx * cfg.effective_pixscale() / 60 < cfg.effective_pixscale() / 60


def test_header_round_trip():
    from astropy.wcs import WCS

    cfg = Drizzle3DConfig(45.0, 10.0, 5.0, 4.0)
    wcs = build_output_wcs(cfg)
    back = WCS(wcs.to_header())
    np.testing.assert_allclose(back.wcs.crpix, wcs.wcs.crpix)
    np.testing.assert_allclose(back.wcs.crval, [45.0, 10.0])
    np.testing.assert_allclose(back.wcs.cdelt, wcs.wcs.cdelt)


def test_output_grid_is_the_config_grid():
    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.spectral import build_z_grid

    cfg = Drizzle3DConfig(150.0, 2.2, 10.0, 6.0, detector=0, xy_oversample=2.0, z_oversample=1.5)
    g = OutputGrid.for_detector(cfg, 4)
    assert g.shape == (cfg.output_ny(), cfg.output_nx()) == (g.ny, g.nx)
    assert g.cube_shape == (g.zgrid.n_z, g.ny, g.nx) and g.nz == g.zgrid.n_z
    assert g.pixscale == cfg.effective_pixscale()
    assert g.wcs.to_header() == build_output_wcs(cfg).to_header()
    np.testing.assert_array_equal(g.zgrid.edges, build_z_grid(4, 1.5, None).edges)
    assert g.plane_detector.shape == (g.nz,) and g.detectors == (4,) and g.detector == 4


def test_output_grid_keeps_a_given_wcs_and_the_detector_of_each_plane():
    from astropy.wcs import WCS

    from spxquery.drizzle3d.grid import OutputGrid, celestial

    cfg = Drizzle3DConfig(45.0, 10.0, 5.0, 4.0)
    w2 = build_output_wcs(cfg)
    assert celestial(w2) is w2
    w3 = WCS(naxis=3)
    w3.wcs.ctype = ["RA---TAN", "DEC--TAN", "WAVE"]
    w3.wcs.crval = [45.0, 10.0, 1e-6]
    assert celestial(w3).naxis == 2 and list(celestial(w3).wcs.ctype) == ["RA---TAN", "DEC--TAN"]
    g = OutputGrid.for_detector(cfg, 2, wcs=w3)
    assert g.wcs.naxis == 2 and g.shape == (cfg.output_ny(), cfg.output_nx())
    # planes of several detectors in one grid (room for an all-detector cube)
    g.plane_detector = np.repeat([2, 5], [10, g.nz - 10])
    assert g.detectors == (2, 5)
    with pytest.raises(ValueError, match=r"detectors \[2, 5\]"):
        g.detector
