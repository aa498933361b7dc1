"""The cube object (``read_cube``): units, the exact WCS and wavelengths on real files of every
grid; pixel spectra, aperture spectra in mJy (analytic cube), images, planes and the spectral-cube
conversion; clear errors."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import VarianceUncertainty

from spxquery.drizzle3d import read_cube
from spxquery.drizzle3d.accumulate import DrizzleCube
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.covariance import correction_factor
from spxquery.drizzle3d.cubefile import save_cube
from spxquery.drizzle3d.flags import DEFAULT_FLAG_BITS
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.spectral import build_z_grid

specutils = pytest.importorskip("specutils")

S, V = 2.5, 0.04  # MJy/sr, (MJy/sr)^2 of the analytic cube
PIXSCALE = 6.15  # arcsec


@pytest.fixture
def real(grid, drizzled_cubes):
    return read_cube(drizzled_cubes.paths[grid])


@pytest.fixture
def flat(tmp_path):
    """An analytic cube: SCI = S and VARIANCE = V everywhere, one input pixel per voxel."""
    cfg = Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=2.0, height=2.0, detector=3, progress=False)
    zgrid = build_z_grid(3, 1.0, None)
    cube = DrizzleCube.create(build_output_wcs(cfg), cfg.effective_pixscale(), zgrid, cfg, 3)
    cube.weight_total[...] = 4.0
    cube.flux_weighted[...] = 4.0 * S
    cube.var_accum[...] = 16.0 * V
    cube.count_map[...] = 1
    cube.n_input_sc[...] = 1
    return cube, tmp_path / "flat.fits"


def _centre_coord(cube):
    """Sky position of the centre pixel of a 19 x 19 image (pixel 9, 9)."""
    return cube.celestial_wcs.pixel_to_world(9, 9)


def test_units_wcs_and_exact_wavelengths(real):
    with fits.open(real.path) as hdul:
        lam = np.asarray(hdul["WAVELENGTH"].data["LAMBDA"], dtype=np.float64)
        sci = np.array(hdul["SCI"].data)
    np.testing.assert_array_equal(real.wavelength.to_value(u.um), lam)
    n = lam.size
    world = real.wcs.pixel_to_world(np.zeros(n), np.zeros(n), np.arange(n))[1]
    np.testing.assert_array_equal(world.to_value(u.um), lam)
    assert real.sci.unit == u.MJy / u.sr and real.variance.unit == (u.MJy / u.sr) ** 2
    np.testing.assert_array_equal(real.sci.value, sci)
    assert real.shape == sci.shape and real.count.dtype == np.uint32
    assert real.spectral_axis_error.unit == u.um and real.bin_edges.size == n + 1
    assert "D3" in repr(real)


def test_pixel_rounds_to_the_nearest_pixel(real):
    for dx, expected in [(0.49, 10), (0.51, 11), (-0.49, 10), (-0.51, 9)]:
        c = real.celestial_wcs.pixel_to_world(10 + dx, 12.0)
        assert real.pixel(c) == (expected, 12)
    assert real.pixel((150.0, 2.0)) == real.pixel(SkyCoord(150.0, 2.0, unit="deg"))


def test_pixel_spectrum_is_the_cube_column_with_variance_and_mask(real):
    x, y = real.pixel((150.0, 2.0))
    s = real.spectrum(SkyCoord(150.0, 2.0, unit="deg"))
    np.testing.assert_array_equal(s.spectral_axis.to_value(u.um), real.wavelength.to_value(u.um))
    np.testing.assert_array_equal(s.flux.value, real.sci.value[:, y, x])
    assert s.flux.unit == u.MJy / u.sr
    assert isinstance(s.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(s.uncertainty.array, real.variance.value[:, y, x])
    np.testing.assert_array_equal(s.mask, real.bad()[:, y, x])
    assert (s.mask >= (real.count[:, y, x] == 0)).all()
    assert s.meta["pixel"] == (x, y)


def test_aperture_spectrum_analytic(flat):
    """Constant S over N pixels: S * N * pixel solid angle, in mJy; variance V * N * omega^2;
    a plane is masked when one aperture pixel has no data or an all-flagged voxel."""
    cube, path = flat
    cube.flux_weighted[4, 9, 10] = np.nan  # plane 4: one aperture pixel without data
    cube.weight_total[4, 9, 10] = 0.0
    cube.count_map[4, 9, 10] = 0
    cube.and_mask[7, 8, 9] = 1 << DEFAULT_FLAG_BITS["HOT"]  # plane 7: every input pixel HOT
    c = read_cube(save_cube(cube, path))
    radius = 2.5 * PIXSCALE * u.arcsec
    with pytest.warns(UserWarning, match="no COVARIANCE HDU"):  # the cube was made without covariance
        s = c.spectrum(_centre_coord(c), radius=radius)
    ap = s.meta["aperture"]
    assert ap.n_pixels == 21  # lattice points with dx^2 + dy^2 <= 2.5^2
    omega = (PIXSCALE * u.arcsec) ** 2
    assert ap.pixel_solid_angle.to_value(u.sr) == pytest.approx(omega.to_value(u.sr), rel=1e-9)
    expected = (S * u.MJy / u.sr * 21 * omega).to_value(u.mJy)
    assert s.flux.unit == u.mJy
    ok = np.ones(c.shape[0], bool)
    ok[[4, 7]] = False
    np.testing.assert_allclose(s.flux.value[ok], expected, rtol=1e-6)
    var = V * 21 * (omega.to_value(u.sr) * 1e9) ** 2 * correction_factor(cube.config) ** 2  # the R^2 fallback
    np.testing.assert_allclose(s.uncertainty.array[ok], var, rtol=1e-6)
    assert s.uncertainty.unit == u.mJy**2
    np.testing.assert_array_equal(s.mask, ~ok)
    assert not c.spectrum(_centre_coord(c), radius=radius, flags=[]).mask[7]  # HOT not chosen: plane 7 good
    tiny = c.spectrum(_centre_coord(c), radius=1 * u.arcsec)
    assert tiny.meta["n_pixels"] == 1


def test_aperture_spectrum_variance_includes_the_covariance(tmp_path):
    """A cube with covariance: VARIANCE = V and Cov = C between horizontal neighbours (other
    offsets 0): the aperture's variance is V N + 2 C (horizontal pairs inside), no warning."""
    cfg = Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=2.0, height=2.0, detector=3, progress=False,
                          covariance=True)
    cube = DrizzleCube.create(build_output_wcs(cfg), cfg.effective_pixscale(), build_z_grid(3, 1.0, None), cfg, 3)
    cube.weight_total[...], cube.flux_weighted[...], cube.var_accum[...] = 4.0, 4.0 * S, 16.0 * V
    cube.count_map[...], cube.n_input_sc[...] = 1, 1
    right = [tuple(o) for o in cube.cov_offsets].index((0, 0, 1))
    cube.cov_term(right)[...] = 16.0 * 0.3 * V
    c = read_cube(save_cube(cube, tmp_path / "cov.fits"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = c.spectrum(_centre_coord(c), radius=2.5 * PIXSCALE * u.arcsec)
    m = s.meta["aperture"].mask
    pairs = int(np.count_nonzero(m[:, :-1] & m[:, 1:]))
    omega = (PIXSCALE * u.arcsec).to_value(u.rad) ** 2
    expected = (V * m.sum() + 2 * 0.3 * V * pairs) * (omega * 1e9) ** 2
    np.testing.assert_allclose(s.uncertainty.array, expected, rtol=1e-6)


def test_aperture_spectrum_of_a_simulated_point_source(drizzled_cubes):
    """On a real cube: the aperture sum by hand, and the simulated source's flux (to 25%: the
    cube is a drizzle of six noisy frames; a unit error would be a factor >= 1000)."""
    c = read_cube(drizzled_cubes.paths["native"])
    ps = drizzled_cubes.sky.point_sources[0]
    pos = SkyCoord(ps.ra, ps.dec, unit="deg")
    s = c.spectrum(pos, radius=30 * u.arcsec)
    ap = s.meta["aperture"]
    sep = c.celestial_wcs.pixel_to_world(*np.meshgrid(np.arange(c.shape[2]), np.arange(c.shape[1]))).separation(pos)
    np.testing.assert_array_equal(ap.mask, sep <= 30 * u.arcsec)
    by_hand = np.nansum(c.sci.value[:, ap.mask].astype(np.float64), axis=1) * ap.pixel_solid_angle.to_value(u.sr) * 1e9
    np.testing.assert_allclose(s.flux.value, by_hand, rtol=1e-12)
    truth = ps.spectrum.band_average(c.bin_edges[:-1].value, c.bin_edges[1:].value)
    good = ~s.mask
    assert good.sum() >= 8
    np.testing.assert_allclose(s.flux.value[good], truth[good], rtol=0.25)


def test_image_is_the_inverse_variance_mean_of_the_chosen_planes(real):
    lam = real.wavelength.to_value(u.um)
    lo, hi = lam[1], lam[3]
    img = real.image((lo * u.um, hi * 1000 * u.nm))
    assert img.meta["planes"] == [1, 2, 3]
    assert img.unit == u.MJy / u.sr and isinstance(img.uncertainty, VarianceUncertainty)
    good = ~real.bad()[1:4]
    sci, var = real.sci.value[1:4].astype(float), real.variance.value[1:4].astype(float)
    w = np.where(good & (var > 0), 1.0 / np.where(var > 0, var, 1.0), 0.0)
    wsum = w.sum(axis=0)
    covered = wsum > 0
    expected = np.where(covered, (np.where(w > 0, sci, 0) * w).sum(axis=0) / np.where(covered, wsum, 1), np.nan)
    np.testing.assert_allclose(img.data, expected, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose(img.uncertainty.array[covered], 1.0 / wsum[covered], rtol=1e-12)
    np.testing.assert_array_equal(img.mask, ~covered)
    assert covered.mean() > 0.5
    assert real.image().meta["planes"] == list(range(lam.size))
    with pytest.raises(ValueError, match="no plane centre lies in"):
        real.image((0.5, 0.6))


def test_plane_holds_the_wavelength(real):
    edges = real.bin_edges.to_value(u.um)
    for k in (0, len(edges) // 2 - 1, len(edges) - 2):
        mid = 0.5 * (edges[k] + edges[k + 1])
        for value in (mid, mid * u.um, mid * 1000 * u.nm):
            p = real.plane(value)
            assert p.meta["plane"] == k
        np.testing.assert_array_equal(p.data, real.sci.value[k])
        assert p.unit == u.MJy / u.sr and p.wcs.naxis == 2
    assert real.plane_index(edges[0]) == 0 and real.plane_index(edges[-1]) == len(edges) - 2
    with pytest.raises(ValueError, match="outside the cube's range"):
        real.plane(edges[-1] + 0.01)
    with pytest.raises(ValueError, match="must be a wavelength"):
        real.plane(3 * u.s)


def test_to_spectral_cube_is_exact_and_masked(real):
    pytest.importorskip("spectral_cube")
    sc = real.to_spectral_cube()
    np.testing.assert_allclose(sc.spectral_axis.to_value(u.um), real.wavelength.to_value(u.um), rtol=1e-15, atol=0)
    np.testing.assert_array_equal(sc.mask.include(), ~real.bad())
    assert sc.unit == u.MJy / u.sr
    assert type(real.to_spectral_cube(use_dask=True)).__name__ == "DaskSpectralCube"


def test_clear_errors(tmp_path, drizzled_cubes):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        read_cube(tmp_path / "nope.fits")
    fits.HDUList([fits.PrimaryHDU(np.zeros((3, 3)))]).writeto(tmp_path / "other.fits")
    with pytest.raises(ValueError, match="not a drizzled cube: it has no SCI extension"):
        read_cube(tmp_path / "other.fits")
    c = read_cube(drizzled_cubes.paths["native"])
    with pytest.raises(ValueError, match="outside the cube's image"):
        c.spectrum(SkyCoord(151.0, 2.0, unit="deg"))
    with pytest.raises(ValueError, match="positive angle"):
        c.spectrum(SkyCoord(150.0, 2.0, unit="deg"), radius=3 * u.um)
    with pytest.raises(TypeError, match="SkyCoord or"):
        c.pixel("M51")
