"""The drizzle engine through its Python API: exactness, conservation, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d import _core
from spxquery.drizzle3d.accumulate import DrizzleCube, drizzle_frame, drizzle_image
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.spatial import compute_spatial_mapping, corner_map
from spxquery.drizzle3d.spectral import ZGrid

WIDE_EDGES = np.array([0.5, 1.0, 1.5, 2.0])


def make_cube(ny, nx, edges=WIDE_EDGES, **cfg):
    config = Drizzle3DConfig(center_ra=10.0, center_dec=0.0, width=1.0, height=1.0, **cfg)
    cube = DrizzleCube.create(WCS(naxis=2), 6.15, ZGrid.from_edges(edges), config, 3)
    # Replace the accumulators with the requested grid size.
    for name in ("flux_weighted", "weight_total", "var_accum"):
        setattr(cube, name, np.zeros((len(edges) - 1, ny, nx)))
    for name in ("count_map", "and_mask", "or_mask"):
        setattr(cube, name, np.zeros((len(edges) - 1, ny, nx), dtype=np.uint32))
    return cube


def affine_corners(ny, nx, a, t):
    """Corner map of an affine input->output map: out = a @ (x, y) + t."""
    yy, xx = np.mgrid[0 : ny + 1, 0 : nx + 1].astype(float) - 0.5
    cx = a[0][0] * xx + a[0][1] * yy + t[0]
    cy = a[1][0] * xx + a[1][1] * yy + t[1]
    return cx, cy


def rotation(theta, scale, flip=False):
    c, s = np.cos(theta), np.sin(theta)
    a = np.array([[scale * c, -scale * s], [scale * s, scale * c]])
    if flip:
        a[0] = -a[0]
    return a


def frame_arrays(ny, nx, value=None, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.normal(1.0, 0.3, (ny, nx)) if value is None else np.full((ny, nx), float(value))
    variance = rng.uniform(0.5, 2.0, (ny, nx))
    flags = rng.integers(0, 8, (ny, nx)).astype(np.int32)
    lam = np.full((ny, nx), 1.25)
    dlam = np.full((ny, nx), 0.02)
    return image, variance, flags, lam, dlam


def run(cube, corners, arrays, **kw):
    image, variance, flags, lam, dlam = arrays
    return drizzle_frame(cube, *corners, image, variance, flags, lam, dlam, **kw)


# ---------------------------------------------------------------------------
# Analytic cases through the Python API


def test_aligned_pixels_land_whole_and_shifted_pixels_split_by_area():
    cube = make_cube(6, 6, xy_shrink=1.0)
    corners = affine_corners(1, 1, np.eye(2), (2.5, 3.0))  # centre at x = 2.5: half in 2, half in 3
    image, variance, flags, lam, dlam = frame_arrays(1, 1, value=4.0)
    variance[:] = 0.5
    run(cube, corners, (image, variance, flags, lam, dlam))
    w = cube.weight_total[1]
    assert np.count_nonzero(w) == 2
    assert w[3, 2] == pytest.approx(0.5 * 2.0, rel=1e-15)
    assert w[3, 3] == pytest.approx(0.5 * 2.0, rel=1e-15)
    assert cube.var_accum[1, 3, 2] == pytest.approx(1.0**2 * 0.5, rel=1e-15)


def test_xy_shrink_shrinks_the_droplet_regression_defect_2():
    """spxquery 0.4.1 defect 2: xy_shrink only scaled weights. Here it changes where flux lands."""
    out = {}
    for shrink in (1.0, 0.5):
        cube = make_cube(5, 5, xy_shrink=shrink)
        corners = affine_corners(1, 1, np.eye(2), (2.25, 2.0))
        run(cube, corners, frame_arrays(1, 1, value=1.0))
        out[shrink] = cube.weight_total[1, 2] / cube.weight_total[1].sum()
    assert out[1.0][2] == pytest.approx(0.75) and out[1.0][3] == pytest.approx(0.25)
    assert out[0.5][2] == 1.0 and out[0.5][3] == 0.0


def test_bilinear_point_kernel_has_no_half_pixel_shift_regression_defect_1():
    """spxquery 0.4.1 defect 1: its bilinear kernel put centres at ox + 0.5. A pixel centred on an
    output pixel centre must land entirely in that pixel."""
    cube = make_cube(8, 8, kernel="bilinear")
    corners = affine_corners(1, 1, np.eye(2), (5.0, 3.0))
    run(cube, corners, frame_arrays(1, 1, value=2.0))
    nz = np.argwhere(cube.count_map[1] > 0)
    assert nz.tolist() == [[3, 5]]
    # Off-centre: weights are bilinear in the distance to integer centres.
    cube = make_cube(8, 8, kernel="bilinear")
    run(cube, affine_corners(1, 1, np.eye(2), (5.25, 3.5)), frame_arrays(1, 1, value=2.0))
    w = cube.weight_total[1] / cube.weight_total[1].sum()
    assert w[3, 5] == pytest.approx(0.375) and w[4, 6] == pytest.approx(0.125)


def test_pixels_are_skipped_for_each_documented_reason():
    cube = make_cube(10, 10, xy_shrink=1.0)
    image, variance, flags, lam, dlam = frame_arrays(2, 4, value=1.0)
    flags[:] = 0
    image[0, 0] = np.nan
    variance[0, 1] = 0.0
    variance[0, 2] = np.inf
    lam[0, 3] = np.nan
    dlam[1, 0] = 0.0
    excl = np.zeros((2, 4), bool)
    excl[1, 1:3] = True  # e.g. flagged bits the configuration excludes
    stats = drizzle_frame(cube, *affine_corners(2, 4, np.eye(2), (3, 3)), image, variance, flags, lam, dlam,
                          exclude_mask=excl)
    assert stats.n_pixels == 1
    assert cube.count_map.sum() == 1
    assert cube.count_map[1, 4, 6] == 1  # pixel (1, 3) at output (3+3, 3+1)


def test_min_overlap_drops_small_fractions():
    cube = make_cube(5, 5, xy_shrink=1.0, min_overlap=0.3)
    run(cube, affine_corners(1, 1, np.eye(2), (2.25, 2.0)), frame_arrays(1, 1, value=1.0))
    assert cube.count_map[1, 2].tolist() == [0, 0, 1, 0, 0]


def test_masks_and_counts_accumulate_over_frames():
    cube = make_cube(4, 4, xy_shrink=1.0)
    corners = affine_corners(1, 1, np.eye(2), (1.0, 1.0))
    for f in (0b0110, 0b0011):
        image, variance, flags, lam, dlam = frame_arrays(1, 1, value=1.0)
        flags[:] = f
        run(cube, corners, (image, variance, flags, lam, dlam))
    assert cube.count_map[1, 1, 1] == 2
    assert cube.and_mask[1, 1, 1] == 0b0010
    assert cube.or_mask[1, 1, 1] == 0b0111
    assert cube.and_mask[1, 0, 0] == 0 and cube.or_mask[1, 0, 0] == 0
    assert cube.n_inputs == 2
    assert cube.n_input_sc.tolist() == [0, 2, 0]


def test_high_flag_bits_survive_int32_to_uint32():
    cube = make_cube(3, 3, xy_shrink=1.0)
    image, variance, flags, lam, dlam = frame_arrays(1, 1, value=1.0)
    flags[:] = np.int32(-(2**31))  # bit 31 set in an int32 FLAGS image
    run(cube, affine_corners(1, 1, np.eye(2), (1.0, 1.0)), (image, variance, flags, lam, dlam))
    assert cube.or_mask[1, 1, 1] == 2**31


def test_spectral_top_hat_split_and_lost_off_grid():
    cube = make_cube(3, 3, xy_shrink=1.0)
    image, variance, flags, lam, dlam = frame_arrays(1, 1, value=1.0)
    lam[:] = 1.0  # on the edge between bins 0 and 1
    dlam[:] = 0.2
    run(cube, affine_corners(1, 1, np.eye(2), (1.0, 1.0)), (image, variance, flags, lam, dlam))
    w = cube.weight_total[:, 1, 1] / (1 / variance[0, 0])
    assert w.tolist() == pytest.approx([0.5, 0.5, 0.0], abs=1e-15)
    cube = make_cube(3, 3, xy_shrink=1.0)
    lam[:] = 2.0  # half beyond the last edge: half lost, not renormalised
    run(cube, affine_corners(1, 1, np.eye(2), (1.0, 1.0)), (image, variance, flags, lam, dlam))
    assert cube.weight_total[:, 1, 1].sum() * variance[0, 0] == pytest.approx(0.5, rel=1e-14)


def test_errors_become_value_errors_naming_the_array():
    cube = make_cube(4, 4)
    image, variance, flags, lam, dlam = frame_arrays(2, 2)
    with pytest.raises(ValueError, match="variance"):
        drizzle_frame(cube, *affine_corners(2, 2, np.eye(2), (1, 1)), image, variance[:1], flags, lam, dlam)
    with pytest.raises(ValueError, match="corners_x"):
        drizzle_frame(cube, *affine_corners(3, 2, np.eye(2), (1, 1)), image, variance, flags, lam, dlam)
    bad = make_cube(4, 4)
    bad.count_map = np.zeros((3, 4, 5), dtype=np.uint32)
    with pytest.raises(ValueError, match="count_map"):
        drizzle_frame(bad, *affine_corners(2, 2, np.eye(2), (1, 1)), image, variance, flags, lam, dlam)
    bad = make_cube(4, 4, kernel="square")
    object.__setattr__(bad.config, "kernel", "gaussian")
    with pytest.raises(ValueError, match="kernel"):
        drizzle_frame(bad, *affine_corners(2, 2, np.eye(2), (1, 1)), image, variance, flags, lam, dlam)
    with pytest.raises(ValueError, match="pixel_idx"):
        drizzle_image(cube, image, variance, flags, lam, dlam, np.array([7]), np.array([0]), np.array([0]),
                      np.array([1.0]))
    with pytest.raises(ValueError, match="outside"):
        drizzle_image(cube, image, variance, flags, lam, dlam, np.array([0]), np.array([4]), np.array([0]),
                      np.array([1.0]))


def test_the_same_array_twice_is_refused_not_corrupted():
    cube = make_cube(4, 4)
    cube.weight_total = cube.flux_weighted  # aliasing two accumulators
    with pytest.raises(Exception, match="(?i)borrow|alias|already"):
        run(cube, affine_corners(2, 2, np.eye(2), (1, 1)), frame_arrays(2, 2))


# ---------------------------------------------------------------------------
# The engine-parameter object and the keyword-only binding


def _params(**kw):
    args = {"z_edges": WIDE_EDGES, "xy_shrink": 0.8, "z_shrink": 1.0, "ivar_max": 1e10, "min_overlap": 0.0,
            "kernel": "square", **kw}
    return _core.EngineParams(**args)


@pytest.mark.parametrize("name, value", [
    ("z_edges", [1.0]), ("z_edges", [1.0, 1.0]), ("z_edges", [1.0, np.nan]), ("xy_shrink", 0.0), ("xy_shrink", np.nan),
    ("z_shrink", 1.5), ("ivar_max", 0.0), ("min_overlap", 1.0), ("min_overlap", -0.1), ("kernel", "gaussian"),
])
def test_engine_params_name_the_bad_parameter(name, value):
    with pytest.raises(ValueError, match=f"^{name}"):
        _params(**{name: value})


def test_engine_params_hold_the_settings_and_survive_pickling():
    import pickle

    p = _params(xy_shrink=0.7, z_shrink=0.5, min_overlap=0.1, kernel="bilinear")
    assert (p.n_z, p.xy_shrink, p.z_shrink, p.ivar_max, p.min_overlap, p.kernel) == (3, 0.7, 0.5, 1e10, 0.1, "bilinear")
    np.testing.assert_array_equal(p.z_edges, WIDE_EDGES)
    q = pickle.loads(pickle.dumps(p))
    assert q.as_dict() == p.as_dict() and type(q) is _core.EngineParams
    assert "kernel='bilinear'" in repr(p).replace('"', "'")


def test_entry_points_take_keywords_only():
    cube = make_cube(4, 4)
    (cx, cy), arrays = affine_corners(2, 2, np.eye(2), (1, 1)), frame_arrays(2, 2)
    with pytest.raises(TypeError):
        _core.EngineParams(WIDE_EDGES, 0.8, 1.0, 1e10, 0.0, "square")
    with pytest.raises(TypeError):
        _core.accumulate_frame(cube.accumulators(), cube.engine_params, cx, cy, *arrays)
    with pytest.raises(TypeError):
        _core.spectral_overlaps(1.0, 0.1, 1.0, WIDE_EDGES)
    with pytest.raises(TypeError):
        _core.densify(np.zeros((5, 5)), 16, 4, 4)


def test_cube_builds_its_engine_params_once_and_again_when_the_config_changes():
    import dataclasses

    cube = make_cube(5, 5, xy_shrink=1.0)
    first = cube.engine_params
    assert cube.engine_params is first and first.xy_shrink == 1.0
    corners = affine_corners(1, 1, np.eye(2), (2.25, 2.0))
    run(cube, corners, frame_arrays(1, 1, value=1.0))
    assert cube.engine_params is first
    # A user swaps the config (0.4.1 dataclass): the next frame uses the new droplet size.
    cube.config = dataclasses.replace(cube.config, xy_shrink=0.5)
    run(cube, corners, frame_arrays(1, 1, value=1.0))
    assert cube.engine_params is not first and cube.engine_params.xy_shrink == 0.5
    w = cube.weight_total[1, 2]
    assert w[3] == pytest.approx(0.25 * w.sum() / 2)  # first frame 1/4 in column 3, the second none
    # ... or edits a setting in place, or swaps the spectral grid.
    second = cube.engine_params
    cube.config.min_overlap = 0.2
    assert cube.engine_params is not second and cube.engine_params.min_overlap == 0.2
    third = cube.engine_params
    cube.zgrid = ZGrid.from_edges(np.array([0.5, 1.0, 1.5, 2.5]))
    assert cube.engine_params is not third and cube.engine_params.z_edges[-1] == 2.5
    assert cube.engine_params.z_shrink == cube.config.effective_z_shrink()


def test_cube_and_params_that_do_not_fit_are_reported():
    cube = make_cube(4, 4)
    corners, arrays = affine_corners(2, 2, np.eye(2), (1, 1)), frame_arrays(2, 2)
    image, variance, flags, lam, dlam = arrays
    frame = {"corners_x": corners[0], "corners_y": corners[1], "image": image, "variance": variance,
             "flags": flags.view(np.uint32), "lambda_c": lam, "delta_lambda": dlam}
    with pytest.raises(ValueError, match="planes"):
        _core.accumulate_frame(cube=cube.accumulators(), params=_params(z_edges=[0.5, 1.0, 2.0]), **frame)
    incomplete = cube.accumulators()
    del incomplete["or_mask"]
    with pytest.raises(KeyError, match="or_mask"):
        _core.accumulate_frame(cube=incomplete, params=cube.engine_params, **frame)
    wrong = cube.accumulators()
    wrong["count_map"] = wrong["count_map"].astype(np.int64)
    with pytest.raises(TypeError, match="count_map"):
        _core.accumulate_frame(cube=wrong, params=cube.engine_params, **frame)
    assert cube.count_map.sum() == 0


# ---------------------------------------------------------------------------
# Properties (hypothesis)

affine = st.tuples(
    st.floats(0, 2 * np.pi), st.floats(0.3, 2.5), st.booleans(), st.floats(-1, 1), st.floats(-1, 1)
)


@settings(max_examples=40, deadline=None)
@given(affine, st.floats(0.05, 1.0), st.sampled_from(["square", "bilinear"]))
def test_fractions_sum_to_one_inside_the_grid(geom, shrink, kernel):
    theta, scale, flip, tx, ty = geom
    cx, cy = affine_corners(6, 6, rotation(theta, scale, flip), (20 + tx, 20 + ty))
    valid, pix, _, _, f = _core.spatial_mapping(corners_x=cx, corners_y=cy, out_ny=40, out_nx=40, xy_shrink=shrink,
                                                kernel=kernel)
    assert valid.all()
    sums = np.bincount(pix, weights=f, minlength=36)
    np.testing.assert_allclose(sums, 1.0, atol=1e-12, rtol=0)
    assert np.all(f > 0)


@settings(max_examples=40, deadline=None)
@given(affine, st.floats(0.05, 1.0), st.sampled_from(["square", "bilinear"]))
def test_constant_image_gives_the_constant_wherever_covered(geom, shrink, kernel):
    theta, scale, flip, tx, ty = geom
    cube = make_cube(20, 20, xy_shrink=shrink, kernel=kernel)
    run(cube, affine_corners(25, 25, rotation(theta, scale, flip), (10 + tx, 10 + ty)), frame_arrays(25, 25, value=7.5))
    sci = cube.flux
    covered = cube.weight_total > 0
    assert covered.any()
    np.testing.assert_allclose(sci[covered], 7.5, rtol=1e-12)


@settings(max_examples=40, deadline=None)
@given(affine)
def test_flux_is_conserved_for_one_input_under_an_affine_map(geom):
    """xy_shrink = 1: sum(SCI * output pixel area) = sum(input * input pixel area)."""
    theta, scale, flip, tx, ty = geom
    a = rotation(theta, scale, flip)
    n_out, n_in = 16, int(np.ceil(16 * 1.5 * 2 / scale)) + 4
    # Centre the input on the output grid so it covers every output pixel completely.
    centre_in = (n_in - 1) / 2
    t = np.array([(n_out - 1) / 2 + tx, (n_out - 1) / 2 + ty]) - a @ np.array([centre_in, centre_in])
    cx, cy = affine_corners(n_in, n_in, a, t)
    image, variance, flags, lam, dlam = frame_arrays(n_in, n_in)
    variance[:] = 1.0
    # Only pixels whose droplets lie wholly inside the grid carry signal.
    qx = np.stack([cx[:-1, :-1], cx[:-1, 1:], cx[1:, 1:], cx[1:, :-1]])
    qy = np.stack([cy[:-1, :-1], cy[:-1, 1:], cy[1:, 1:], cy[1:, :-1]])
    wholly_inside = (qx.min(0) >= -0.5) & (qx.max(0) <= n_out - 0.5) & (qy.min(0) >= -0.5) & (qy.max(0) <= n_out - 0.5)
    image = np.where(wholly_inside, image, 0.0)
    cube = make_cube(n_out, n_out, xy_shrink=1.0)
    run(cube, (cx, cy), (image, variance, flags, lam, dlam))
    assert (cube.weight_total[1] > 0).all(), "the input must cover the whole output grid"
    out_total = cube.flux[1].sum() * 1.0  # output pixel area = 1 (output pixel units)
    in_total = image.sum() * abs(np.linalg.det(a))  # input pixel area in output units
    assert out_total == pytest.approx(in_total, rel=1e-9, abs=1e-9)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_input_order_changes_only_rounding(seed):
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(3):
        a = rotation(rng.uniform(0, 6.3), rng.uniform(0.6, 1.4))
        frames.append((affine_corners(12, 12, a, rng.uniform(3, 8, 2)), frame_arrays(12, 12, seed=seed + k)))
    cubes = []
    for order in ([0, 1, 2], [2, 0, 1]):
        cube = make_cube(16, 16, xy_shrink=0.7)
        for k in order:
            run(cube, *frames[k])
        cubes.append(cube)
    np.testing.assert_allclose(cubes[0].flux_weighted, cubes[1].flux_weighted, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cubes[0].weight_total, cubes[1].weight_total, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(cubes[0].count_map, cubes[1].count_map)
    np.testing.assert_array_equal(cubes[0].and_mask, cubes[1].and_mask)
    np.testing.assert_array_equal(cubes[0].or_mask, cubes[1].or_mask)


@pytest.mark.parametrize("kernel", ["square", "bilinear"])
def test_bitwise_identical_for_any_thread_count(kernel):
    rng = np.random.default_rng(5)
    corners = affine_corners(150, 140, rotation(0.4, 0.9), (3, -2))
    arrays = frame_arrays(150, 140, seed=3)
    lam = rng.uniform(0.9, 1.9, (150, 140))
    arrays = (*arrays[:3], lam, arrays[4] * 10)
    results = []
    for threads in (1, 2, 3, 7):
        cube = make_cube(120, 130, xy_shrink=0.8, kernel=kernel)
        run(cube, corners, arrays, threads=threads)
        results.append([a.tobytes() for a in cube.accumulators().values()])
    for r in results[1:]:
        assert r == results[0]


def _mapping(corners, ny, nx, xy_shrink, kernel):
    cx, cy = corners
    return _core.spatial_mapping(corners_x=cx, corners_y=cy, out_ny=ny, out_nx=nx, xy_shrink=xy_shrink, kernel=kernel)


def test_0_4_1_api_matches_fused_path():
    rng = np.random.default_rng(1)
    corners = affine_corners(30, 30, rotation(0.2, 1.1), (4.0, 3.0))
    arrays = frame_arrays(30, 30, seed=2)
    arrays = (*arrays[:3], rng.uniform(0.9, 1.9, (30, 30)), arrays[4] * 20)
    fused = make_cube(40, 40, xy_shrink=0.6)
    run(fused, corners, arrays)
    listed = make_cube(40, 40, xy_shrink=0.6)
    _, pix, oy, ox, f = _mapping(corners, 40, 40, 0.6, "square")
    drizzle_image(listed, *arrays, pix, oy, ox, f)
    for a, b in zip(fused.accumulators().values(), listed.accumulators().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("kernel", ["square", "bilinear"])
@pytest.mark.parametrize("scale", [0.08, 0.3, 1.1, 3.0, 6.0])
def test_fused_path_matches_0_4_1_api_across_bands(kernel, scale):
    """Regression: with input pixels smaller than output pixels, the bilinear kernel lost the
    share of pixels whose centre lay within one output pixel of a band boundary (48 output
    rows span three bands of rows). Scales 3 and 6 exercise droplets wider than 2x2 output pixels (the
    general per-pixel area path)."""
    n = int(40 / scale)
    corners = affine_corners(n, n, rotation(0.2, scale), (4.0, 3.0))
    arrays = frame_arrays(n, n, seed=2)
    fused = make_cube(48, 48, xy_shrink=0.6, kernel=kernel)
    run(fused, corners, arrays)
    listed = make_cube(48, 48, xy_shrink=0.6, kernel=kernel)
    _, pix, oy, ox, f = _mapping(corners, 48, 48, 0.6, kernel)
    drizzle_image(listed, *arrays, pix, oy, ox, f)
    for a, b in zip(fused.accumulators().values(), listed.accumulators().values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------
# Agreement with STScI drizzle (cdrizzle)


@pytest.mark.parametrize("pixfrac", [1.0, 0.8, 0.5])
def test_square_kernel_matches_stsci_drizzle(pixfrac):
    resample = pytest.importorskip("drizzle.resample")
    ny_in, nx_in, ny_out, nx_out = 60, 70, 64, 64
    a = rotation(np.deg2rad(17.0), 0.9)
    t = np.array([8.0, 5.5])
    rng = np.random.default_rng(0)
    image = rng.uniform(1.0, 2.0, (ny_in, nx_in)).astype(np.float32)
    yy, xx = np.mgrid[0:ny_in, 0:nx_in].astype(float)
    pixmap = np.dstack([a[0, 0] * xx + a[0, 1] * yy + t[0], a[1, 0] * xx + a[1, 1] * yy + t[1]])
    d = resample.Drizzle(kernel="square", out_shape=(ny_out, nx_out), fillval=0.0)
    d.add_image(image, exptime=1.0, pixmap=pixmap, pixfrac=pixfrac, in_units="cps")

    cube = make_cube(ny_out, nx_out, xy_shrink=pixfrac)
    _, variance, flags, lam, dlam = frame_arrays(ny_in, nx_in)
    variance[:] = 1.0
    run(cube, affine_corners(ny_in, nx_in, a, t), (image.astype(float), variance, flags, lam, dlam))
    ours = cube.flux[1]
    theirs = d.out_img
    both = (d.out_wht > 1e-6) & (cube.weight_total[1] > 1e-6)
    # cdrizzle drops input pixels whose centres map outside the output frame, so the
    # outermost ring of output pixels differs by construction; compare the interior.
    both[[0, -1], :] = False
    both[:, [0, -1]] = False
    assert both.sum() > 0.5 * ny_out * nx_out
    np.testing.assert_allclose(ours[both], theirs[both], rtol=1e-4)
    # Both weight by overlap area / droplet area (times the unit weight map).
    np.testing.assert_allclose(cube.weight_total[1][both], d.out_wht[both], rtol=1e-4)


# ---------------------------------------------------------------------------
# Corner maps from the WCS


def sip_wcs(crpix=(1020.5, 1020.5)):
    """A SPHEREx-like TAN-SIP frame: 6.15"/pix, rotated, a few pixels of distortion at the corners."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    w.wcs.crval = [150.0, 2.0]
    w.wcs.crpix = list(crpix)
    s = 6.15 / 3600
    th = np.deg2rad(32.0)
    w.wcs.cd = [[-s * np.cos(th), s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]]
    a = np.zeros((4, 4))
    b = np.zeros((4, 4))
    a[2, 0], a[1, 1], a[0, 2], a[3, 0], a[1, 2] = 1.5e-6, -8e-7, 6e-7, 2.0e-9, -1.2e-9
    b[0, 2], b[1, 1], b[2, 0], b[0, 3], b[2, 1] = 1.2e-6, 9e-7, -5e-7, 1.8e-9, 1.0e-9
    from astropy.wcs import Sip

    w.sip = Sip(a, b, None, None, w.wcs.crpix)
    return w


def test_corner_map_matches_full_astropy_evaluation_with_sip():
    inp = sip_wcs()
    out = WCS(naxis=2)
    out.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    out.wcs.crval = [150.3, 2.2]
    out.wcs.crpix = [300.5, 300.5]
    out.wcs.cdelt = [-6.15 / 3600 / 1.5, 6.15 / 3600 / 1.5]
    # distortion at the frame corner is a few pixels
    x = np.array([0.0, 2039.0])
    ra, dec = inp.all_pix2world(x, x, 0)
    ra0, dec0 = inp.wcs_pix2world(x, x, 0)
    shift = np.hypot((ra - ra0) * np.cos(np.deg2rad(2)), dec - dec0) * 3600 / 6.15
    assert 1.0 < shift.max() < 20.0
    for (x0, y0, nx, ny) in [(0, 0, 2040, 300), (700, 1500, 333, 257), (1900, 0, 140, 2040)]:
        cx, cy = corner_map(inp, out, x0, y0, nx, ny)
        ex, ey = corner_map(inp, out, x0, y0, nx, ny, step=1)
        err = np.hypot(cx - ex, cy - ey).max()
        assert err < 1e-3, f"crop {(x0, y0, nx, ny)}: max error {err:.2e} output pixel"


def test_corner_map_beyond_the_projection_evaluates_every_corner():
    """A crop reaching past 90 deg from the output's TAN centre (non-finite coarse nodes) gets every
    corner exactly: the same numbers as step=1, NaN where the projection has none."""
    inp, out = WCS(naxis=2), WCS(naxis=2)
    for w, cdelt in ((inp, 1.0), (out, 0.5)):
        w.wcs.ctype = ["RA---CAR", "DEC--CAR"] if w is inp else ["RA---TAN", "DEC--TAN"]
        w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [0.0, 0.0], [1.0, 1.0], [-cdelt, cdelt]
    cx, cy = corner_map(inp, out, 60, -20, 50, 40)
    ex, ey = corner_map(inp, out, 60, -20, 50, 40, step=1)
    assert not np.isfinite(ex).all() and np.isfinite(ex).any()
    assert np.array_equal(cx, ex, equal_nan=True) and np.array_equal(cy, ey, equal_nan=True)


def test_compute_spatial_mapping_0_4_1_signature():
    inp = WCS(naxis=2)
    inp.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    inp.wcs.crval = [30.0, -5.0]
    inp.wcs.crpix = [10.5, 8.5]
    inp.wcs.cdelt = [-6.15 / 3600, 6.15 / 3600]
    out = inp.deepcopy()
    out.wcs.crpix = [12.5, 12.5]
    valid, pix, oy, ox, f = compute_spatial_mapping(inp, (16, 20), out, (24, 24), 1.0)
    assert valid.shape == (16, 20) and valid.all()
    assert pix.dtype == np.int64 and oy.dtype == np.int32 and ox.dtype == np.int32 and f.dtype == np.float64
    # Same projection, shifted by (2, 4) pixels: every pixel lands whole, shifted
    # (up to slivers of ~1e-12 from rounding in the WCS transforms).
    assert f.max() <= 1.0 and np.all(f[f < 0.5] < 1e-9)
    whole = f > 0.5
    np.testing.assert_allclose(f[whole], 1.0, atol=1e-9)
    assert whole.sum() == 16 * 20
    pix, oy, ox = pix[whole], oy[whole], ox[whole]
    rows, cols = np.unravel_index(pix, (16, 20))
    np.testing.assert_array_equal(oy, rows + 4)
    np.testing.assert_array_equal(ox, cols + 2)


# ---------------------------------------------------------------------------
# The type stub describes the extension


def _stub_signatures():
    """Parameters ``(name, kind, has default)`` of each function (and ``EngineParams.__init__``) in _core.pyi."""
    import ast
    from pathlib import Path

    tree = ast.parse((Path(_core.__file__).parent / "_core.pyi").read_text())

    def params(fn):
        a = fn.args
        pos = [(p.arg, "POSITIONAL_OR_KEYWORD") for p in a.posonlyargs + a.args if p.arg != "self"]
        n_pos_defaults = len(a.defaults)
        out = [(n, k, i >= len(pos) - n_pos_defaults) for i, (n, k) in enumerate(pos)]
        out += [(p.arg, "KEYWORD_ONLY", d is not None) for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)]
        return out

    sigs = {fn.name: params(fn) for fn in tree.body if isinstance(fn, ast.FunctionDef)}
    for cls in (c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == "EngineParams"):
        init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
        sigs["EngineParams"] = params(init)
    return sigs


def test_core_stub_matches_every_entry_point():
    import inspect

    stub = _stub_signatures()
    public = {n for n in dir(_core) if callable(getattr(_core, n)) and not n.startswith("__")}
    assert public == set(stub)
    for name, expected in stub.items():
        runtime = inspect.signature(getattr(_core, name))
        got = [(p.name, p.kind.name, p.default is not inspect.Parameter.empty) for p in runtime.parameters.values()]
        assert got == expected, name
