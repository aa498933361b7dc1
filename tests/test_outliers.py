"""Outlier rejection (issue 19): cosmic rays, asteroids and satellite trails out of the cube,
bright stars and emission lines kept, few-input voxels marked, the same rejections whatever the
frame order or the strips.

The field: 16 simulated 0.1 deg cutouts of one place (the field centre on nearly the same
detector row in every exposure, so every voxel of the 4' cube gets ~14 frames), the default sky
(five stars, an extended source with an emission line) plus two stars near saturation. The
outliers are added to copies of the same files (:func:`simulate.inject_file`), so the clean and
the dirty cube differ only by them. Zodi is subtracted with its fixed scale (the per-frame fit
is not what is tested here).
"""

import shutil
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import frames as frames_mod
from spxquery.drizzle3d import pipeline as pipeline_mod
from spxquery.drizzle3d.accumulate import DrizzleCube, drizzle_frame
from spxquery.drizzle3d.analysis import read_cube
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.cubefile import load_cube
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import OutputGrid, build_output_wcs
from spxquery.drizzle3d.outliermodel import ModelBuilder, SkyModel, build_model, local_steps
from spxquery.drizzle3d.outliers import EDGE, MAX_UNDEFINED, Screen, blot, dilate, mask_path
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.simulate import (
    EmissionLine,
    ExtendedSource,
    Injections,
    Spectrum,
    bright_stars,
    default_sky,
    inject_file,
    lvf_model,
    simulate_field,
)
from spxquery.drizzle3d.simulate.sky import gnomonic_inverse
from spxquery.drizzle3d.spectral import ZGrid

RA, DEC = 150.0, 2.0
#: Outliers per exposure: 4 cosmic-ray hits (10-1000 sigma, up to 3x3 clusters), an asteroid
#: (500 sigma peak, its own spectral slope), a satellite trail in one exposure of eight.
INJECTIONS = Injections(cosmic_rays=4, asteroids=1, trails=1, trail_fraction=0.125)


def _config(out, **kw):
    return Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=4.0, height=4.0, detector=3, output_dir=out,
                           exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS), static_zodi=True, progress=False,
                           overwrite=True, **kw)


def _drizzle(paths, out, **kw):
    cfg = _config(out, **kw)
    return load_cube(drizzle_detector(paths, cfg, 3, build_output_wcs(cfg)))


#: The emission-line source: 0.9' east and south of the centre, a line at the wavelength the
#: field centre has on the detector (row ~1020), 3 MJy/sr over a 0.1 MJy/sr continuum.
LINE_OFFSET_ARCMIN = (0.9, -0.9)


def _line_source():
    ra, dec = gnomonic_inverse(LINE_OFFSET_ARCMIN[0] / 60.0, LINE_OFFSET_ARCMIN[1] / 60.0, RA, DEC)
    lam = float(lvf_model(3, 1020.0, 1020.0)[0][0])
    line = EmissionLine(centre_um=lam, sigma_um=0.5 * lam / 40.0, amplitude=3.0)
    return ExtendedSource(float(ra), float(dec), 10.0, 10.0, 0.0, Spectrum(0.1, 0.0, [line]), name="line")


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """Clean and dirty cutouts and their cubes with and without rejection."""
    root = tmp_path_factory.mktemp("outliers")
    sky = default_sky(RA, DEC)
    sky.point_sources.extend(bright_stars(RA, DEC))
    sky.extended_sources.append(_line_source())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = simulate_field(root / "clean", RA, DEC, detectors=(3,), n_pointings=16, cutout_size_deg=0.1, seed=3,
                              psf_size=21, psf_zones=1, sky=sky, y_range=(1000.0, 1040.0), x_jitter=20.0)
    shutil.copytree(root / "clean", root / "dirty")
    clean = list(info.paths)
    dirty = [root / "dirty" / p.relative_to(root / "clean") for p in clean]
    for path, meta in zip(dirty, info.frames):
        inject_file(path, meta, INJECTIONS)
    cubes = {
        "clean": _drizzle(clean, root / "c"),
        "clean_rej": _drizzle(clean, root / "cr", reject_outliers=True),
        "dirty": _drizzle(dirty, root / "d"),
        "dirty_rej": _drizzle(dirty, root / "dr", reject_outliers=True, outlier_masks=True),
    }
    return SimpleNamespace(root=root, clean=clean, dirty=dirty, cubes=cubes)


def _tested(cubes):
    c = cubes
    return (np.isfinite(c["clean"]["sci"]) & np.isfinite(c["dirty"]["sci"]) & np.isfinite(c["dirty_rej"]["sci"])
            & (c["dirty_rej"]["rejected"] >= 0))


@pytest.mark.slow
def test_injected_outlier_flux_is_removed(field):
    c = field.cubes
    ok = _tested(c)
    before = np.where(ok, c["dirty"]["sci"] - c["clean"]["sci"], 0.0).sum()
    after = np.where(ok, c["dirty_rej"]["sci"] - c["clean_rej"]["sci"], 0.0).sum()
    assert before > 500.0  # the outliers are there without rejection (MJy/sr summed over voxels)
    assert after / before < 0.01, f"{after / before:.2%} of the injected flux left"
    assert c["dirty_rej"]["header"]["N_OUTPIX"] > 300
    # rejected pixels reach neither SCI nor COUNT: counts before = counts after + rejections
    rejected = np.maximum(c["dirty_rej"]["rejected"], 0)
    np.testing.assert_array_equal(c["dirty"]["count"].astype(np.int64),
                                  c["dirty_rej"]["count"].astype(np.int64) + rejected)


def _near(mask):
    """``mask`` grown by one voxel in x, y and wavelength (a 3x3x3 cube)."""
    out = np.stack([dilate(plane, 1) for plane in mask])
    grown = out.copy()
    grown[1:] |= out[:-1]
    grown[:-1] |= out[1:]
    return grown


@pytest.mark.slow
def test_residuals_at_injected_positions_within_3_sigma(field):
    """Every voxel the outliers reached is within 3 sigma of the clean cube after rejection,
    except where the rejection stands back by design:

    - where the model's own gradient tolerance exceeds the neighbour threshold
      (``outlier_scale[0] * step > outlier_snr[1] * sigma`` of a pixel: the cores and wings of
      the two stars near saturation, ~1.5 % of the voxels). An outlier there hides under the
      tolerance that keeps the stars' fluxes (drizzlepac and JWST behave alike): with the
      tolerance off (scale 0.01) these voxels come out clean, but 2.5 % of the clean pixels are
      rejected and the stars lose up to 66 % of their flux (measured on this field);
    - next to voxels of fewer than ``outlier_min_inputs`` frames (REJECTED -1): pixels there
      are blotted from a partly undefined model or not tested (the issue: marked, not rejected).
    """
    c = field.cubes
    sigma = np.sqrt(c["clean"]["variance"])
    hit = _tested(c) & (c["dirty"]["sci"] - c["clean"]["sci"] > 3 * sigma)
    with fits.open(field.clean[0]) as hdul:
        sigma_pixel = float(np.sqrt(np.nanmedian(hdul["VARIANCE"].data)))
    cfg = _config(field.root / "x")
    tolerance = cfg.outlier_scale[0] * np.nan_to_num(local_steps(c["clean"]["sci"].astype(np.float32)))
    protected = tolerance > cfg.outlier_snr[1] * sigma_pixel
    assert 0 < protected.mean() < 0.03
    marked = _near(c["dirty_rej"]["rejected"] < 0)
    kept = hit & ~protected & ~marked
    assert kept.sum() > 400 and kept.sum() > 0.7 * hit.sum()
    resid = np.abs(c["dirty_rej"]["sci"] - c["clean_rej"]["sci"]) / sigma
    assert resid[kept].max() < 3.0, f"{np.sum(resid[kept] >= 3)} of {kept.sum()} hit voxels beyond 3 sigma"
    away = hit & ~protected  # next to few-input voxels too: almost all
    assert np.mean(resid[away] < 3.0) > 0.995


@pytest.mark.slow
def test_clean_field_loses_almost_nothing(field):
    cr = field.cubes["clean_rej"]
    h = cr["header"]
    assert h["N_OUTPIX"] == sum(h[f"ORJ{i:05d}"] for i in range(1, h["NFRAMLOG"] + 1))
    assert h["N_OUTTST"] > 16 * 1000
    assert h["N_OUTPIX"] < 0.001 * h["N_OUTTST"]  # fewer than 0.1 % of the clean pixels
    np.testing.assert_array_equal(cr["count"], field.cubes["clean"]["count"][...] - np.maximum(cr["rejected"], 0))


def _box_sums(cube, k, j, i, r):
    return np.nansum(cube["sci"][k, max(j - r, 0):j + r + 1, max(i - r, 0):i + r + 1])


@pytest.mark.slow
def test_bright_stars_and_emission_line_keep_their_flux(field):
    """No over-flagging: the two stars near saturation (7x7 voxel sums) and the emission line's
    peak (3x3) are within 0.5 % of the clean cube, with rejection on the clean and dirty field."""
    c = field.cubes
    wcs = c["clean"]["wcs"].celestial
    planes = np.unique(np.nonzero(_tested(c))[0])
    places = []
    for star in bright_stars(RA, DEC):
        x, y = wcs.world_to_pixel_values(star.ra, star.dec)
        places += [(int(k), int(round(float(y))), int(round(float(x))), 3) for k in planes]
    ra, dec = _line_source().ra, _line_source().dec
    x, y = (int(round(float(v))) for v in wcs.world_to_pixel_values(ra, dec))
    spectrum = np.nan_to_num(c["clean"]["sci"][:, y, x])
    places.append((int(np.argmax(spectrum)), y, x, 1))
    assert spectrum.max() > 1.0  # the line is in the cube
    tested = _tested(c)
    places = [(k, j, i, r) for k, j, i, r in places if tested[k, j, i] and _box_sums(c["clean"], k, j, i, r) > 1.0]
    assert len(places) >= 3
    for k, j, i, r in places:
        ref = _box_sums(c["clean"], k, j, i, r)
        for name in ("clean_rej", "dirty_rej"):
            assert abs(_box_sums(c[name], k, j, i, r) / ref - 1) < 0.005, (k, j, i, name)


@pytest.mark.slow
def test_outlier_masks_and_frame_log(field):
    h = field.cubes["dirty_rej"]["header"]
    total = 0
    for i in range(1, h["NFRAMLOG"] + 1):
        name = h[f"INF{i:05d}"]
        path = next(p for p in field.dirty if p.name == name)
        mask_file = mask_path(_config(field.root / "dr"), path)
        with fits.open(mask_file) as hdul:
            assert int(hdul["OUTLIERS"].data.sum()) == h[f"ORJ{i:05d}"]
        total += h[f"ORJ{i:05d}"]
    assert total == h["N_OUTPIX"] > 0
    cube_file = field.root / "dr" / "drizzle_D3.fits"
    with fits.open(cube_file) as hdul:  # REJECTED comes after the seven HDUs and WCS-TAB, with the cube's WCS
        hdul.verify("exception")
        names = [h.name for h in hdul]  # other optional HDUs (covariance) may come between or after
        assert names.count("REJECTED") == 1 and names.index("REJECTED") > names.index("WCS-TAB") >= 7
        assert hdul["REJECTED"].header["CTYPE3"] == hdul["SCI"].header["CTYPE3"]
    assert read_cube(cube_file).sci.shape == field.cubes["dirty_rej"]["sci"].shape


@pytest.mark.slow
def test_covariance_with_rejection_leaves_the_rejected_pixels_out(field):
    """Covariance and outlier rejection together: the same rejections and science as rejection
    alone, the cross terms of the kept pixels only (the float64 variance plane is the VARIANCE of
    the rejected cube, not of the dirty one), the stencil intact after the model pass, and the
    HDUs in the documented order (the seven, WCS-TAB, REJECTED, COVARIANCE, COVAR-OFFSETS)."""
    from spxquery.drizzle3d.covariance import aperture_variance, stencil
    from spxquery.drizzle3d.spectral import build_z_grid

    ref, dirty = field.cubes["dirty_rej"], field.cubes["dirty"]
    out = field.root / "drc"
    cube = _drizzle(field.dirty, out, reject_outliers=True, covariance=True)
    np.testing.assert_array_equal(cube["rejected"], ref["rejected"])
    np.testing.assert_array_equal(cube["count"], ref["count"])
    assert cube["sci"].tobytes() == ref["sci"].tobytes()
    landed = ref["count"] > 0
    np.testing.assert_allclose(cube["covariance"][0][landed], ref["variance"][landed], rtol=1e-6)
    hit = landed & (ref["rejected"] > 0)
    assert hit.sum() > 100 and np.all(cube["covariance"][0][hit] != dirty["variance"][hit])
    cfg = _config(out, reject_outliers=True, covariance=True)
    full = [tuple(int(v) for v in o) for o in stencil(cfg, build_z_grid(3, 1.0).edges, 3)]
    written = [tuple(int(v) for v in o) for o in cube["cov_offsets"][1:]]  # those some pixel coupled
    assert written == [o for o in full if o in set(written)] and {(0, 0, 1), (0, 1, 0), (1, 0, 0)} <= set(written)
    with fits.open(out / "drizzle_D3.fits") as hdul:
        assert [h.name for h in hdul][7:] == ["WCS-TAB", "REJECTED", "COVARIANCE", "COVAR-OFFSETS"]
    mask = np.zeros(cube["sci"].shape, bool)
    mask[5:8, 10:20, 10:20] = True
    mask &= landed
    assert aperture_variance(cube, mask) > 1.2 * cube["covariance"][0][mask].sum()


@pytest.mark.slow
def test_rejections_do_not_depend_on_frame_order_threads_or_strips(field, monkeypatch):
    ref = field.cubes["dirty_rej"]
    shuffled = [field.dirty[i] for i in np.random.default_rng(5).permutation(len(field.dirty))]
    other = _drizzle(shuffled, field.root / "shuffled", reject_outliers=True)
    np.testing.assert_array_equal(other["rejected"], ref["rejected"])
    per_frame = lambda h: {h[f"INF{i:05d}"]: h[f"ORJ{i:05d}"] for i in range(1, h["NFRAMLOG"] + 1)}  # noqa: E731
    assert per_frame(other["header"]) == per_frame(ref["header"])
    models = []
    for paths in (field.dirty, shuffled):  # the model itself, bit for bit
        cfg = _config(field.root / "m", reject_outliers=True)
        grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
        cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3)
        models.append(build_model(paths, cfg, grid, cube, lambda n: 0))
    assert models[0].values.tobytes() == models[1].values.tobytes()
    assert models[0].steps.tobytes() == models[1].steps.tobytes()
    monkeypatch.setattr(pipeline_mod, "_kernel_threads", lambda n: 2)  # both passes on two threads
    threads = _drizzle(field.dirty, field.root / "threads", reject_outliers=True)
    np.testing.assert_array_equal(threads["rejected"], ref["rejected"])
    assert threads["sci"].tobytes() == ref["sci"].tobytes()
    monkeypatch.setattr(frames_mod, "STRIP_PIXELS", 400)  # strips of a few rows: growth across strips
    strips = _drizzle(field.dirty, field.root / "strips", reject_outliers=True)
    np.testing.assert_array_equal(strips["rejected"], ref["rejected"])
    assert strips["sci"].tobytes() == ref["sci"].tobytes()


def test_few_inputs_per_voxel_no_rejection_voxels_marked(drizzled_cubes, tmp_path):
    """Six exposures at different wavelengths: 1-3 frames per voxel, below outlier_min_inputs."""
    cfg = drizzled_cubes.configs["native"].replace(reject_outliers=True, output_dir=tmp_path)
    cube = load_cube(drizzle_detector(drizzled_cubes.field.paths, cfg, 3, build_output_wcs(cfg)))
    ref = load_cube(drizzled_cubes.paths["native"])
    assert cube["header"]["N_OUTPIX"] == 0
    landed = ref["count"] > 0
    assert np.all(cube["rejected"][landed] == -1) and np.all(cube["rejected"][~landed] == 0)
    assert cube["sci"].tobytes() == ref["sci"].tobytes()
    assert cube["count"].tobytes() == ref["count"].tobytes()


# ── pieces ──────────────────────────────────────────────────────────────────


def test_dilate_is_a_square_without_wraparound():
    m = np.zeros((7, 9), dtype=bool)
    m[0, 0] = m[4, 6] = True
    g = dilate(m, 1)
    assert g.sum() == 4 + 9
    assert g[:2, :2].all() and g[3:6, 5:8].all() and not g[-1, -1] and not g[6, 0]
    np.testing.assert_array_equal(dilate(m, 0), m)


def test_blot_is_exact_on_a_linear_model_and_ignores_undefined_voxels():
    z, y, x = np.mgrid[0:4, 0:5, 0:6].astype(np.float64)
    model = (1.0 + 2.0 * x - 0.5 * y + 3.0 * z).astype(np.float32)
    steps = local_steps(model)
    np.testing.assert_allclose(steps[1:-1, 1:-1, 1:-1], 3.0)  # the steepest axis (z)
    px, py, pz = np.array([1.25, 4.5]), np.array([2.75, 0.5]), np.array([0.4, 2.9])
    np.testing.assert_allclose(blot(model, px, py, pz), 1.0 + 2.0 * px - 0.5 * py + 3.0 * pz, rtol=1e-6)
    holes = model.copy()
    holes[0, 2, 1] = np.nan  # weight 0.6 * 0.25 * 0.75 < 0.5 of the first cell: renormalised
    holes[2:, 0:2, 4:6] = np.nan  # the whole second cell: undefined
    value = blot(holes, px, py, pz)
    assert np.isfinite(value[0]) and np.isnan(value[1])
    assert np.isnan(local_steps(holes)[0, 2, 1]) and local_steps(holes)[0, 2, 2] == 3.0


# The numpy formulation of the blot and the test (the pipeline's before the Rust engine took them
# over): the engine must give the same bits.


def _np_axis(pos, n):
    pos = np.clip(pos, 0.0, n - 1.0)
    pos[np.isnan(pos)] = 0.0
    i0 = np.minimum(pos.astype(np.intp), max(n - 2, 0))
    return i0, (pos - i0).astype(np.float32)


def _np_blot(cube, x, y, z):
    nz, ny, nx = cube.shape
    (x0, fx), (y0, fy), (z0, fz) = _np_axis(x, nx), _np_axis(y, ny), _np_axis(z, nz)
    base = (z0 * ny + y0) * nx + x0
    dx, dy, dz = int(nx > 1), int(ny > 1) * nx, int(nz > 1) * nx * ny
    value, weight = np.zeros(x.shape, np.float32), np.zeros(x.shape, np.float32)
    flat, one = cube.reshape(-1), np.float32(1.0)
    for wz, oz in ((one - fz, 0), (fz, dz)):
        for wy, oy in ((one - fy, 0), (fy, dy)):
            wzy = wz * wy
            for wx, ox in ((one - fx, 0), (fx, dx)):
                v = flat.take(base + (oz + oy + ox))
                w = wzy * wx
                undefined = np.isnan(v)
                w[undefined] = 0.0
                v[undefined] = 0.0
                value += w * v
                weight += w
    with np.errstate(invalid="ignore", divide="ignore"):
        value /= weight
    value[weight < np.float32(1.0 - MAX_UNDEFINED)] = np.nan
    return value.astype(np.float64)


def _np_test(model, steps, centers, strip, snr, scale):
    cx, cy = strip.corners_x, strip.corners_y
    x = 0.25 * (cx[:-1, :-1] + cx[:-1, 1:] + cx[1:, :-1] + cx[1:, 1:])
    y = 0.25 * (cy[:-1, :-1] + cy[:-1, 1:] + cy[1:, :-1] + cy[1:, 1:])
    z = np.interp(strip.lambda_c, centers, np.arange(centers.size, dtype=np.float64))
    m = _np_blot(model, x, y, z)
    d, var = strip.image, strip.variance
    ny, nx = model.shape[1:]
    with np.errstate(invalid="ignore"):
        inside = (x >= -EDGE) & (x <= nx - 1 + EDGE) & (y >= -EDGE) & (y <= ny - 1 + EDGE)
        tested = np.isfinite(d) & (var > 0) & np.isfinite(var) & np.isfinite(m) & inside
        if strip.exclude_mask is not None:
            tested &= ~strip.exclude_mask
        diff = np.where(tested, np.abs(d - m), 0.0)
        sigma = np.sqrt(np.where(tested, var, 0.0))
    step = np.zeros(diff.shape)
    maybe = diff > snr[1] * sigma
    step[maybe] = np.nan_to_num(_np_blot(steps, x[maybe], y[maybe], z[maybe]))
    core = tested & (diff > snr[0] * sigma + scale[0] * step)
    return core, tested & (diff > snr[1] * sigma + scale[1] * step), int(tested.sum())


def _random_case(rng, nz=7, ny=20, nx=24, rows=33, cols=41):
    """A model with holes and steep parts, and a strip of pixels spread over and beyond it,
    some with hits, some excluded, some with bad values."""
    model = (rng.normal(1.0, 0.3, (nz, ny, nx)) + 40.0 * (rng.random((nz, ny, nx)) < 0.02)).astype(np.float32)
    model[rng.random(model.shape) < 0.15] = np.nan
    model[:, :4, :5] = np.nan
    steps = local_steps(model)
    centers = np.sort(rng.uniform(0.9, 1.6, nz))
    cx = np.linspace(-4.0, nx + 3.0, cols + 1)[None, :] + rng.normal(0, 0.3, (rows + 1, cols + 1))
    cy = np.linspace(-4.0, ny + 3.0, rows + 1)[:, None] + rng.normal(0, 0.3, (rows + 1, cols + 1))
    lam = rng.uniform(0.8, 1.7, (rows, cols))
    image = rng.normal(1.0, 0.1, (rows, cols)) + 30.0 * (rng.random((rows, cols)) < 0.05) * rng.random((rows, cols))
    var = rng.uniform(0.005, 0.02, (rows, cols))
    image[rng.random(image.shape) < 0.02] = np.nan
    var[rng.random(var.shape) < 0.02] = 0.0
    lam[0, :3] = [np.nan, centers[0], centers[-1]]
    exclude = rng.random((rows, cols)) < 0.05
    strip = frames_mod.Strip(cx, cy, image, var, np.zeros((rows, cols), np.uint32), lam, np.full((rows, cols), 0.01),
                             exclude)
    return model, steps, centers, strip


def test_engine_blot_and_test_are_bit_identical_to_numpy():
    """The Rust blot and test against the numpy reference, bit for bit, on random models with
    undefined voxels and strips reaching beyond the grid, on one and two threads."""
    rng = np.random.default_rng(19)
    cfg = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=1.0, height=1.0, detector=3)
    for case in range(6):
        model, steps, centers, strip = _random_case(rng, nz=1 if case == 5 else 7)
        screen = Screen(SkyModel(model, steps, np.zeros(model.shape, np.uint32)), centers, cfg,
                        threads_for=lambda n, t=1 + case % 2: t)
        core, candidate = screen.test(strip)
        ref_core, ref_candidate, n = _np_test(model, steps, centers, strip, cfg.outlier_snr, cfg.outlier_scale)
        np.testing.assert_array_equal(core, ref_core)
        np.testing.assert_array_equal(candidate, ref_candidate)
        assert screen.frame_tested == n > 100 and core.sum() > 5 and candidate.sum() > core.sum()
        x, y, z = (rng.uniform(-3.0, s + 2.0, 4000) for s in model.shape[::-1])
        z[:5] = np.nan
        assert blot(model, x, y, z, threads=1 + case % 2).tobytes() == _np_blot(model, x, y, z).tobytes()


def _np_merge(b, k, ys, xs):
    """The numpy formulation of a plane's merge (ModelBuilder.end_frame before the engine)."""
    fw, wt = b.fw[k, ys, xs], b.wt[k, ys, xs]
    landed = wt > 0
    mean = np.full(wt.shape, -np.inf, dtype=np.float32)
    np.divide(fw, wt, out=mean, where=landed, casting="same_kind")
    b.cube.flux_weighted[k, ys, xs] += fw
    b.cube.weight_total[k, ys, xs] += wt
    n = b.n_frames[k, ys, xs]
    hi_v, hi_w, hi2_v, hi2_w = (a[k, ys, xs] for a in (b.hi_v, b.hi_w, b.hi2_v, b.hi2_w))
    first = mean > hi_v
    second = (mean > hi2_v) & ~first
    np.copyto(hi2_v, hi_v, where=first)
    np.copyto(hi2_w, hi_w, where=first)
    np.copyto(hi_v, mean, where=first)
    np.copyto(hi_w, wt, where=first, casting="same_kind")
    np.copyto(hi2_v, mean, where=second)
    np.copyto(hi2_w, wt, where=second, casting="same_kind")
    n += landed & (n < np.iinfo(np.uint16).max)
    fw.fill(0.0)
    wt.fill(0.0)


def test_engine_merge_is_bit_identical_to_numpy():
    """Random frames (each over random boxes of random planes) merged by the engine and by the
    numpy formulation: every array the same, bit for bit."""
    rng = np.random.default_rng(7)
    cfg = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=3.0, height=3.0, detector=3)
    zgrid = ZGrid(edges=np.linspace(1.0, 2.0, 6), centers=np.linspace(1.1, 1.9, 5), widths=np.full(5, 0.2))
    builders = []
    for threads in (1, 2, None):
        cube = DrizzleCube.create(build_output_wcs(cfg), cfg.effective_pixscale(), zgrid, cfg, 3)
        builders.append(ModelBuilder(cube, threads_for=lambda n, t=threads: t or 1))
    frames = np.random.default_rng(8)
    for _ in range(12):
        shape = builders[0].fw.shape
        fw = frames.normal(1.0, 0.5, shape) * (frames.random(shape) < 0.7)
        wt = np.where(fw != 0, frames.uniform(0.1, 3.0, shape), 0.0)
        fw[frames.random(shape) < 0.01] *= 1e4
        boxes = []
        for k in sorted(rng.choice(shape[0], size=3, replace=False)):
            y0, x0 = rng.integers(0, shape[1] // 3), rng.integers(0, shape[2] // 3)
            boxes.append((int(k), slice(int(y0), int(rng.integers(y0 + 1, shape[1] + 1))),
                          slice(int(x0), int(rng.integers(x0 + 1, shape[2] + 1)))))
        for b in builders:
            b.fw[...], b.wt[...] = fw, wt
        for b in builders[:2]:
            where = {k: (ys, xs) for k, ys, xs in boxes}
            b.box = SimpleNamespace(slices=lambda k, ny, nx, where=where: where[k])
            b.planes = np.isin(np.arange(shape[0]), [k for k, _, _ in boxes])
            b.end_frame()
        for k, ys, xs in boxes:
            _np_merge(builders[2], k, ys, xs)
    names = ("fw", "wt", "hi_v", "hi_w", "hi2_v", "hi2_w", "n_frames")
    for b in builders[:2]:
        for name in names:
            assert getattr(b, name).tobytes() == getattr(builders[2], name).tobytes(), name
        assert b.cube.flux_weighted.tobytes() == builders[2].cube.flux_weighted.tobytes()
        assert b.cube.weight_total.tobytes() == builders[2].cube.weight_total.tobytes()
    assert builders[0].n_frames.max() >= 4 and np.isfinite(builders[0].hi2_v).sum() > 100


@pytest.mark.slow
def test_engine_passes_give_the_numpy_cube_bit_for_bit(field, monkeypatch):
    """The dirty field with the numpy merge and test in place of the engine's: the same cube."""
    from spxquery.drizzle3d import outliers as outliers_mod

    def np_end_frame(self):
        box, self.box = self.box, self._new_box()
        planes, self.planes = self.planes, np.zeros(self.cube.nz, dtype=bool)
        for k in np.flatnonzero(planes):
            _np_merge(self, int(k), *box.slices(int(k), self.cube.ny, self.cube.nx))

    def np_test(self, strip):
        core, candidate, n = _np_test(self.model, self.steps, self.centers, strip, self.snr, self.scale)
        self.frame_tested += n
        return core, candidate

    monkeypatch.setattr(ModelBuilder, "end_frame", np_end_frame)
    monkeypatch.setattr(outliers_mod.Screen, "test", np_test)
    ref = _drizzle(field.dirty, field.root / "numpy", reject_outliers=True)
    engine = field.cubes["dirty_rej"]
    for name in ("sci", "variance", "count", "rejected"):
        assert ref[name].tobytes() == engine[name].tobytes(), name
    assert ref["header"]["N_OUTPIX"] == engine["header"]["N_OUTPIX"] > 300


def test_model_is_not_pulled_by_one_bright_frame():
    """Five frames of a flat 1 MJy/sr field and one with a 1e4 MJy/sr pixel: the model stays
    at 1 where the hit landed (a plain mean would be pulled by ~1e3)."""
    cfg = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=1.0, height=1.0, detector=3, progress=False)
    zgrid = ZGrid(edges=np.array([1.0, 2.0]), centers=np.array([1.5]), widths=np.array([1.0]))
    cube = DrizzleCube.create(build_output_wcs(cfg), cfg.effective_pixscale(), zgrid, cfg, 3)
    builder = ModelBuilder(cube)
    n = 8
    cy, cx = np.mgrid[0:n + 1, 0:n + 1].astype(np.float64) - 0.5
    for k in range(6):
        image = np.ones((n, n))
        if k == 3:
            image[4, 4] = 1e4
        strip = frames_mod.Strip(cx, cy, image, np.full((n, n), 0.01), np.zeros((n, n), np.uint32),
                                 np.full((n, n), 1.5), np.full((n, n), 0.5), None)
        builder.add_strip(strip, threads=1)
        builder.end_frame()
        assert not builder.fw.any() and not builder.wt.any()  # the merge cleared all it touched
    model = builder.finish(4)
    np.testing.assert_allclose(model.values[0, :n, :n], 1.0, rtol=1e-6)
    assert not cube.weight_total.any() and not cube.count_map.any()  # cleared for the real pass
    assert model.contributions[0, 4, 4] == 6
    plain = drizzle_frame  # the plain mean for comparison: the same six frames, one call each
    for k in range(6):
        image = np.ones((n, n))
        if k == 3:
            image[4, 4] = 1e4
        plain(cube, cx, cy, image, np.full((n, n), 0.01), np.zeros((n, n), np.uint32), np.full((n, n), 1.5),
              np.full((n, n), 0.5), threads=1)
    assert cube.flux[0, 4, 4] > 100.0


def test_settings_are_checked_and_reach_the_command_line(tmp_path):
    from spxquery.drizzle3d.cli import build_parser, config_from_args

    with pytest.raises(ValueError, match="outlier_snr"):
        Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=1.0, height=1.0, outlier_snr=(3.0, 5.0))
    with pytest.raises(ValueError, match="outlier_min_inputs"):
        Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=1.0, height=1.0, outlier_min_inputs=2)
    args = build_parser().parse_args(["run", "--ra", "150", "--dec", "2", "--width", "1", "--height", "1",
                                      "--reject-outliers", "--outlier-snr", "6", "4", "--outlier-grow", "2"])
    cfg = config_from_args(args)
    assert cfg.reject_outliers and cfg.outlier_snr == (6.0, 4.0) and cfg.outlier_grow == 2
    cfg.to_yaml_file(tmp_path / "c.yaml")
    assert Drizzle3DConfig.from_yaml_file(tmp_path / "c.yaml").outlier_snr == (6.0, 4.0)


def test_model_pass_reads_frames_in_sorted_order(monkeypatch, tmp_path):
    """The model's sums run in the sorted order of the paths (float sums depend on their order;
    the float32 model hides it almost always, so the order is checked where it is decided)."""
    from spxquery.drizzle3d import outliermodel

    seen = []

    class Recorder:
        def __init__(self, paths, config, grid, **kwargs):
            seen.extend(paths)

        def __iter__(self):
            return iter(())

    monkeypatch.setattr(outliermodel, "ReadAhead", Recorder)
    cfg = _config(tmp_path, reject_outliers=True)
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3)
    names = [tmp_path / n for n in ("b.fits", "a.fits", "c/a.fits", "a2.fits")]
    model = build_model(names, cfg, grid, cube, lambda n: 1)
    assert seen == sorted(names, key=str)
    assert np.isnan(model.values).all()  # no frame: nothing defined, nothing tested


def test_preflight_counts_the_model_pass(tmp_path):
    from spxquery.drizzle3d.preflight import RunBudgetError, check_budget

    cfg = _config(tmp_path, reject_outliers=False).replace(width=30.0, height=30.0)
    voxels = 17 * cfg.output_ny() * cfg.output_nx()
    memory = (512 << 20) + voxels * 50  # enough for 36 bytes a voxel, not for 36 + 34
    check_budget(cfg, [3], memory=memory, disk=1 << 40)
    with pytest.raises(RunBudgetError, match="70 bytes with outlier rejection"):
        check_budget(cfg.replace(reject_outliers=True), [3], memory=memory, disk=1 << 40)


def test_rejection_is_refused_in_tiles(tmp_path):
    """The outlier model is built over the whole grid: tiles (given or automatic) are refused."""
    from spxquery.drizzle3d.preflight import RunBudgetError, check_budget
    from spxquery.drizzle3d.tiling import effective_tile_arcmin

    with pytest.raises(ValueError, match=r"reject_outliers=True and tile_arcmin=5 cannot be combined"):
        _config(tmp_path, reject_outliers=True, tile_arcmin=5.0)
    _config(tmp_path, reject_outliers=False, tile_arcmin=5.0)  # either alone is fine
    cfg = _config(tmp_path, reject_outliers=True).replace(width=30.0, height=30.0)
    memory = (512 << 20) + 17 * cfg.output_ny() * cfg.output_nx() * 30  # not even the accumulators: tiles
    check_budget(cfg.replace(reject_outliers=False), [3], memory=memory, disk=1 << 40)
    assert effective_tile_arcmin(cfg.replace(reject_outliers=False), [3], memory=memory) is not None
    with pytest.raises(RunBudgetError, match="reject_outliers cannot be drizzled in tiles"):
        check_budget(cfg, [3], memory=memory, disk=1 << 40)
    with pytest.raises(RunBudgetError, match="reject_outliers cannot be drizzled in tiles"):
        effective_tile_arcmin(cfg, [3], memory=memory)
    assert effective_tile_arcmin(cfg, [3], memory=1 << 50) is None
    with pytest.raises(ValueError, match="reject_outliers cannot be drizzled in tiles"):
        pipeline_mod.drizzle_tiled([], cfg, 3, 5.0)
    grid = OutputGrid.for_detector(cfg, 3).tile(0, 8, 0, 8)
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3, shape=grid.shape, origin=grid.origin)
    with pytest.raises(ValueError, match="reject_outliers cannot be drizzled in tiles"):
        pipeline_mod.drizzle_frames([], cfg, grid, cube)


@pytest.mark.slow
def test_merge_boxes_cover_everything_a_frame_put_in_the_scratch(field):
    """Each plane is merged over the box its wavelengths reach only: nothing may stay behind."""
    from spxquery.drizzle3d.readahead import ReadAhead

    cfg = _config(field.root / "boxes", reject_outliers=True, kernel="bilinear")
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    builder = ModelBuilder(DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3))
    frames = 0
    for _, kind, payload in ReadAhead(field.dirty[:6], cfg, grid):
        if kind == "strip":
            builder.add_strip(payload, threads=1)
        elif kind == "end":
            builder.end_frame()
            assert not builder.fw.any() and not builder.wt.any()
            frames += 1
    assert frames == 6 and builder.n_frames.max() == 6
