"""Quick-look pictures and cube summaries on a real drizzled cube of simulated SPHEREx cutouts:
the PNGs exist, are images that are not uniform, and the brightest spot of the collapsed image
is where the simulated truth puts the brightest source."""

import logging
import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest

from spxquery.drizzle3d import quicklook as ql
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.io import load_cube
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.simulate import load_truth, simulate_field, truth_cube
from spxquery.drizzle3d.spectral import build_z_grid

RA0, DEC0 = 150.0, 2.0
N_POINTINGS = 6


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("ql")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = simulate_field(root / "archive", RA0, DEC0, detectors=(3,), n_pointings=N_POINTINGS,
                              cutout_size_deg=12.0 / 60.0, seed=3, psf_size=21, psf_zones=1)
        cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=8.0, height=8.0, detector=3,
                              exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS), output_dir=root / "out", progress=False)
        wcs = build_output_wcs(cfg)
        path = drizzle_detector(info.paths, cfg, 3, wcs)
    cube = load_cube(path)
    sky, _ = load_truth(info.root)
    zgrid = build_z_grid(3, cfg.z_oversample, cfg.z_lambda_edges)
    truth = truth_cube(sky, wcs, zgrid, shape=cube["sci"].shape[1:])
    return {"path": path, "cube": cube, "sky": sky, "truth": truth, "wcs": wcs, "root": root}


def _expected_brightest(made):
    """Pixel of the brightest true source, from the truth cube on the output WCS."""
    t = made["truth"].mean(axis=0)
    y, x = np.unravel_index(np.argmax(t), t.shape)
    return int(x), int(y)


def test_collapsed_image_is_weighted_mean(made):
    cube = made["cube"]
    img = ql.collapsed_image(cube)
    assert img.shape == cube["sci"].shape[1:]
    assert np.isfinite(img).mean() > 0.95
    # one pixel by hand: inverse-variance weighted mean over the planes
    y, x = 40, 30
    s, v = cube["sci"][:, y, x].astype(float), cube["variance"][:, y, x].astype(float)
    ok = np.isfinite(s) & np.isfinite(v) & (v > 0)
    assert img[y, x] == pytest.approx(np.sum(s[ok] / v[ok]) / np.sum(1 / v[ok]), rel=1e-9)
    # path and dict inputs agree
    np.testing.assert_array_equal(ql.collapsed_image(made["path"]), img)


def test_brightest_pixel_is_the_brightest_simulated_source(made):
    ex, ey = _expected_brightest(made)
    # the expected pixel is the brightest point source of the truth, seen through the cube WCS
    truth_img = made["truth"].mean(axis=0)

    def truth_at(s):
        x, y = (int(round(v)) for v in ql.world_to_pixel(made["cube"], s.ra, s.dec))
        inside = 0 <= x < truth_img.shape[1] and 0 <= y < truth_img.shape[0]
        return float(truth_img[y, x]) if inside else -np.inf

    src = max(made["sky"].point_sources, key=truth_at)
    sx, sy = ql.world_to_pixel(made["cube"], src.ra, src.dec)
    assert np.hypot(sx - ex, sy - ey) <= 1.0
    bx, by = ql.brightest_pixel(made["cube"])
    assert np.hypot(bx - sx, by - sy) <= 1.5, ((bx, by), (sx, sy), src.name)
    # and every other point source is a local bright spot as well (well above the median)
    img = ql.collapsed_image(made["cube"])
    med = np.nanmedian(img)
    for s in made["sky"].point_sources:
        x, y = (int(round(v)) for v in ql.world_to_pixel(made["cube"], s.ra, s.dec))
        if 2 <= x < img.shape[1] - 2 and 2 <= y < img.shape[0] - 2:
            assert np.nanmax(img[y - 1:y + 2, x - 1:x + 2]) > med + 0.1, s.name


def test_write_quicklooks_pngs(made, tmp_path):
    paths = ql.write_quicklooks(made["path"], tmp_path, plane=5)
    stem = made["path"].stem
    assert paths == {"collapsed": tmp_path / f"{stem}_collapsed.png", "plane": tmp_path / f"{stem}_plane5.png",
                     "spectrum": tmp_path / f"{stem}_spectrum.png"}
    for p in paths.values():
        assert p.is_file() and p.stat().st_size > 5000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        img = mpimg.imread(p)
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 300
        rgb = img[..., :3]
        assert rgb.std() > 0.05
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50  # a picture, not a blank canvas
    # default output dir = next to the cube; default plane = best covered
    paths2 = ql.write_quicklooks(made["path"])
    assert all(p.parent == made["path"].parent for p in paths2.values())
    assert paths2["plane"].name == f"{stem}_plane{ql.default_plane(made['cube'])}.png"


def test_collapsed_png_shows_a_bright_spot(made, tmp_path):
    """The stretched picture holds a few very bright pixels (the sources) over a darker sky."""
    p = ql.plot_collapsed(made["cube"], tmp_path / "c.png")
    rgb = mpimg.imread(p)[..., :3]
    lum = rgb.mean(axis=2)
    # magma: sources are near-white/yellow, the sky is dark purple
    assert (lum > 0.8).sum() > 20
    assert np.median(lum) < 0.5


def test_spectrum_at_source(made):
    cube = made["cube"]
    src = next(s for s in made["sky"].point_sources if s.spectrum.continuum_index > 0)
    x, y = (int(round(v)) for v in ql.world_to_pixel(cube, src.ra, src.dec))
    s = ql.spectrum_at(cube, x, y)
    ok = np.isfinite(s["flux"])
    assert ok.sum() >= 10
    assert np.all(s["error"][ok] > 0) and np.all(np.isfinite(s["error"][ok]))
    np.testing.assert_allclose(s["error"][ok] ** 2, cube["variance"][:, y, x][ok], rtol=1e-6)
    # a rising (red) power law: the last covered planes are brighter than the first
    f = s["flux"][ok]
    assert f[-3:].mean() > f[:3].mean()
    assert np.all(np.diff(s["wavelength"]) > 0)


def test_bad_positions_and_planes(made, tmp_path):
    cube = made["cube"]
    n_z, ny, nx = cube["sci"].shape
    with pytest.raises(ValueError, match="outside"):
        ql.spectrum_at(cube, nx, 0)
    with pytest.raises(ValueError, match="plane must be in"):
        ql.plot_plane(cube, tmp_path / "p.png", n_z)
    with pytest.raises(ValueError, match="outside the cube's range"):
        ql.plane_for_wavelength(cube, 5.0)
    lo = float(cube["wavelength"]["LAMBDA_MIN"][3])
    hi = float(cube["wavelength"]["LAMBDA_MAX"][3])
    assert ql.plane_for_wavelength(cube, 0.5 * (lo + hi)) == 3
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        ql.collapsed_image(tmp_path / "nope.fits")


def test_brightest_pixel_ignores_thinly_covered_edges(made):
    cube = dict(made["cube"])
    sci = cube["sci"].copy()
    count = cube["count"].copy()
    sci[:, 0, 0] = 1e6  # a spike covered in one plane only
    count[:, 0, 0] = 0
    count[0, 0, 0] = 1
    cube["sci"], cube["count"] = sci, count
    bx, by = ql.brightest_pixel(cube)
    assert (bx, by) != (0, 0)


def test_summary(made):
    s = ql.cube_summary(made["path"])
    n_z, ny, nx = made["cube"]["sci"].shape
    assert s["shape"] == (n_z, ny, nx) and n_z == 17
    assert s["n_inputs"] == N_POINTINGS and s["n_rejected"] == 0
    assert len(s["inputs"]) == N_POINTINGS and all(n.endswith(".fits") for n in s["inputs"])
    assert 0.5 < s["coverage"] <= 1.0
    assert 1 <= s["count_min"] <= s["count_median"] <= s["count_max"]
    assert s["zodi_scales"].size == N_POINTINGS and np.all(np.abs(s["zodi_scales"] - 1) < 0.1)
    assert s["lambda_min"] < s["lambda_centers"][0] < s["lambda_centers"][-1] < s["lambda_max"]
    text = ql.format_summary(s, made["path"])
    for word in ("17 planes", f"{ny} x {nx}", "N_INPUTS 6", "COUNT > 0", "zodi scales", s["inputs"][0]):
        assert word in text, word


def test_spectrum_at_rounds_to_the_pixel_holding_the_position(made):
    cube = made["cube"]
    for dx, expected in [(0.4, 20), (0.6, 21), (-0.4, 20), (-0.6, 19)]:
        s = ql.spectrum_at(cube, 20 + dx, 30.0)
        np.testing.assert_array_equal(s["flux"], cube["sci"][:, 30, expected].astype(float))
    ra, dec = ql.pixel_to_world(cube, 33.7, 12.2)  # the README's idiom: world_to_pixel, then spectrum_at
    s = ql.spectrum_at(cube, *ql.world_to_pixel(cube, ra, dec))
    np.testing.assert_array_equal(s["flux"], cube["sci"][:, 12, 34].astype(float))


def test_brightest_source_and_its_aperture_spectrum(made):
    """The quick-look spectrum is an aperture spectrum of the brightest source (by integrated
    flux), in mJy: the same as read_cube's spectrum, smooth where a peak pixel jumps."""
    from astropy import units as u

    from spxquery.drizzle3d import read_cube

    cube = made["cube"]
    bx, by = ql.brightest_source(cube)
    lam = ql.wavelengths(cube)[0]

    def true_flux(s):
        x, y = ql.world_to_pixel(cube, s.ra, s.dec)
        inside = 3 <= x < cube["sci"].shape[2] - 3 and 3 <= y < cube["sci"].shape[1] - 3
        return float(np.mean(s.spectrum.value(lam))) if inside else -np.inf

    src = max(made["sky"].point_sources, key=true_flux)
    sx, sy = ql.world_to_pixel(cube, src.ra, src.dec)
    assert np.hypot(bx - sx, by - sy) <= 1.5, ((bx, by), (sx, sy), src.name)
    a = ql.aperture_spectrum(cube, bx, by)
    assert a["radius_arcsec"] == ql.QUICKLOOK_APERTURE_ARCSEC and a["n_pixels"] == 25  # r = 2.93 pixels
    ref = read_cube(made["path"]).spectrum(ql.pixel_to_world(cube, bx, by), radius=a["radius_arcsec"] * u.arcsec)
    np.testing.assert_array_equal(a["bad"], ref.mask)
    good = ~a["bad"]
    assert good.sum() >= 10
    np.testing.assert_allclose(a["flux"][good], ref.flux.to_value(u.mJy)[good], rtol=1e-9)
    np.testing.assert_allclose(a["error"][good] ** 2, ref.uncertainty.array[good], rtol=1e-9)
    assert np.isnan(a["flux"][a["bad"]]).all()
    # the aperture spectrum varies smoothly where the peak pixel jumps from plane to plane
    peak = ql.spectrum_at(cube, bx, by)["flux"][good]
    flux = a["flux"][good]
    assert np.std(np.diff(np.log(flux))) < np.std(np.diff(np.log(peak)))


def test_write_quicklooks_draws_the_aperture_spectrum(made, tmp_path, caplog):
    bx, by = ql.brightest_source(made["cube"])
    with caplog.at_level(logging.INFO, logger="spxquery.drizzle3d.quicklook"):
        ql.write_quicklooks(made["path"], tmp_path, plane=2)
    assert f'spectrum: aperture r = 18" (25 pixels) around pixel ({bx}, {by})' in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="spxquery.drizzle3d.quicklook"):
        ql.write_quicklooks(made["path"], tmp_path, plane=2, aperture_arcsec=None, position=(10.6, 3.2))
    assert "spectrum: pixel (11, 3)" in caplog.text
