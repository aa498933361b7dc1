"""Spectral table loading and the three z-grid modes, against the bundled calibration file."""

import math

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d._data import SPECTRAL_CHANNELS_FILE
from spxquery.drizzle3d.spectral import (
    ZGrid,
    _native_edges,
    build_z_grid,
    build_z_grid_custom,
    build_z_grid_native,
    build_z_grid_oversampled,
    detector_spectral_table,
    load_channel_map,
    load_spectral_table,
)

C_SI = 299792458.0
DETS = [1, 2, 3, 4, 5, 6]
# Band limits from the IRSA documentation (um), loose: the table's first WL_MIN / last WL_MAX.
BANDS = {1: (0.75, 1.09), 2: (1.10, 1.62), 3: (1.63, 2.41), 4: (2.42, 3.82), 5: (3.83, 4.41), 6: (4.42, 5.00)}


# ── Table and map ────────────────────────────────────────────────────────────


def test_spectral_table_matches_file():
    df = load_spectral_table()
    assert list(df.columns) == ["DETECTOR", "SUBCHAN", "WAVELENGTH", "WL_MIN", "WL_MAX", "R", "R_STD", "BANDWIDTH"]
    assert len(df) == 102
    with fits.open(SPECTRAL_CHANNELS_FILE) as hdul:
        raw = hdul["SPECTRAL_CHANNELS"].data
        np.testing.assert_array_equal(df["WL_MIN"].to_numpy(), raw["WL_MIN"].astype(np.float64))
        np.testing.assert_array_equal(df["DETECTOR"].to_numpy(), raw["DETECTOR"].astype(int))
    assert df["WL_MIN"].dtype == np.float64
    assert sorted(df["DETECTOR"].unique()) == DETS
    assert (df.groupby("DETECTOR").size() == 17).all()


def test_spectral_table_cache_cannot_be_corrupted():
    df = load_spectral_table()
    df.loc[0, "WL_MIN"] = -1.0
    again = load_spectral_table()
    assert len(again) == 102
    assert again.loc[0, "WL_MIN"] > 0
    t = detector_spectral_table(1)
    t.loc[0, "R"] = 0.0
    assert detector_spectral_table(1).loc[0, "R"] > 0


def test_channel_map_read_only_and_values():
    m = load_channel_map()
    assert m.shape == (2040, 2040)
    assert m.dtype == np.uint8
    assert not m.flags.writeable
    with pytest.raises(ValueError):
        m[0, 0] = 3
    assert load_channel_map() is m
    vals = set(np.unique(m).tolist())
    assert set(range(1, 18)) <= vals <= set(range(0, 19))


@pytest.mark.parametrize("det", DETS)
def test_detector_table_sorted(det):
    t = detector_spectral_table(det)
    assert len(t) == 17
    assert (t["DETECTOR"] == det).all()
    assert np.all(np.diff(t["WAVELENGTH"].to_numpy()) > 0)
    assert list(t.index) == list(range(17))
    lo, hi = BANDS[det]
    assert abs(t["WL_MIN"].iloc[0] - lo) < 0.05 and abs(t["WL_MAX"].iloc[-1] - hi) < 0.05


@pytest.mark.parametrize("bad", [0, 7, -1, 2.5, "3", None, True])
def test_detector_table_rejects(bad):
    with pytest.raises(ValueError, match="detector"):
        detector_spectral_table(bad)


def test_detector_error_names_value():
    with pytest.raises(ValueError, match="7"):
        detector_spectral_table(7)


# ── Native grid ──────────────────────────────────────────────────────────────


@pytest.mark.parametrize("det", DETS)
def test_native_grid(det):
    t = detector_spectral_table(det)
    g = build_z_grid_native(det)
    assert g.n_z == 17
    np.testing.assert_array_equal(g.edges[:-1], t["WL_MIN"].to_numpy())
    assert g.edges[-1] == t["WL_MAX"].iloc[-1]
    assert np.all(g.widths > 0)
    np.testing.assert_allclose(g.widths, np.diff(g.edges), rtol=0, atol=0)
    np.testing.assert_allclose(g.centers, 0.5 * (g.edges[1:] + g.edges[:-1]))
    # Each channel's WAVELENGTH lies inside its bin (within the ~1 nm channel overlap).
    assert np.all(t["WAVELENGTH"].to_numpy() > g.edges[:-1])
    assert np.all(t["WAVELENGTH"].to_numpy() < g.edges[1:] + 0.002)
    assert build_z_grid(det).edges.tolist() == g.edges.tolist()


def test_native_edges_fallback_for_nonmonotonic_channels():
    # Channel 2 starts below channel 1 (nested): boundary becomes the midpoint of the centres.
    wl_min = np.array([1.00, 0.99, 1.10])
    wl_max = np.array([1.06, 1.12, 1.16])
    wl_c = np.array([1.03, 1.07, 1.13])
    e = _native_edges(wl_min, wl_max, wl_c)
    assert e.tolist() == [1.00, 1.05, 1.10, 1.16]
    # Equal WL_MIN twice -> still strictly increasing, never zero width.
    e2 = _native_edges(np.array([1.0, 1.0, 1.1]), wl_max, wl_c)
    assert np.all(np.diff(e2) > 0)


# ── Oversampled grid ─────────────────────────────────────────────────────────


@pytest.mark.parametrize("det", DETS)
@pytest.mark.parametrize("zo", [2.0, 3.0, 0.5])
def test_oversampled_grid(det, zo):
    t = detector_spectral_table(det)
    g = build_z_grid_oversampled(det, zo)
    lam_min, lam_max = t["WL_MIN"].iloc[0], t["WL_MAX"].iloc[-1]
    # exact span
    assert g.edges[0] == lam_min
    assert g.edges[-1] == lam_max
    # equal log steps
    steps = np.diff(np.log(g.edges))
    np.testing.assert_allclose(steps, steps.mean(), rtol=1e-9)
    assert g.is_log_uniform()
    # number of bins and effective R
    r_eff = t["R"].mean() * zo
    n_expected = max(1, round(math.log(lam_max / lam_min) / math.log1p(1 / r_eff)))
    assert g.n_z == n_expected
    # rounding n to an integer changes R by at most ~0.5/n relative
    r_realised = 1.0 / math.expm1(steps.mean())
    tol = 0.6 / g.n_z + 0.01
    assert r_realised == pytest.approx(r_eff, rel=tol)
    np.testing.assert_allclose(g.resolving_power(), r_eff + 0.5, rtol=tol)
    if zo >= 2:
        assert r_realised == pytest.approx(r_eff, rel=0.03)


@pytest.mark.parametrize("det", DETS)
def test_oversample_two_doubles_bins(det):
    n1 = build_z_grid_oversampled(det, 1.0).n_z
    n2 = build_z_grid_oversampled(det, 2.0).n_z
    assert abs(n2 - 2 * n1) <= 1
    native = build_z_grid_native(det)
    assert 1.7 <= n2 / native.n_z <= 2.2
    # bins narrower than the mean native width
    assert np.mean(build_z_grid(det, 2.0).widths) < 0.6 * np.mean(native.widths)


def test_oversampled_tiny_factor_gives_one_bin():
    g = build_z_grid_oversampled(3, 1e-4)
    assert g.n_z == 1
    t = detector_spectral_table(3)
    assert g.edges.tolist() == [t["WL_MIN"].iloc[0], t["WL_MAX"].iloc[-1]]


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_oversampled_rejects_bad_factor(bad):
    with pytest.raises(ValueError, match="z_oversample"):
        build_z_grid_oversampled(1, bad)


# ── Custom grid ──────────────────────────────────────────────────────────────


def test_custom_grid():
    g = build_z_grid_custom([1.0, 1.2, 1.5, 2.0])
    assert g.n_z == 3
    np.testing.assert_allclose(g.centers, [1.1, 1.35, 1.75])
    np.testing.assert_allclose(g.widths, [0.2, 0.3, 0.5])
    assert g.edges.dtype == np.float64


def test_custom_overrides_oversample():
    g = build_z_grid(2, z_oversample=3.0, z_lambda_edges=np.array([1.2, 1.3]))
    assert g.n_z == 1 and g.edges.tolist() == [1.2, 1.3]


def test_custom_grid_does_not_alias_input():
    e = np.array([1.0, 2.0, 3.0])
    g = build_z_grid_custom(e)
    e[0] = 99.0
    assert g.edges[0] == 1.0


@pytest.mark.parametrize(
    "edges, pattern",
    [
        ([[1.0, 2.0], [3.0, 4.0]], r"1-D.*\(2, 2\)"),
        ([1.0], r"at least 2.*got 1"),
        ([], r"at least 2.*got 0"),
        ([1.0, float("nan"), 2.0], r"finite.*nan at index 1"),
        ([1.0, 2.0, float("inf")], r"finite.*inf at index 2"),
        ([0.0, 1.0], r"> 0.*index 0"),
        ([-1.0, 1.0], r"> 0.*-1.0 at index 0"),
        ([1.0, 2.0, 2.0], r"strictly increasing.*\[1\]=2.0 >= .*\[2\]=2.0"),
        ([1.0, 3.0, 2.0], r"strictly increasing.*\[1\]=3.0"),
        (["a", "b"], r"sequence of numbers"),
    ],
)
def test_custom_grid_errors(edges, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_z_grid_custom(edges)


# ── ZGrid methods ────────────────────────────────────────────────────────────


@pytest.mark.parametrize("det", DETS)
def test_zgrid_frequency_methods(det):
    for g in (build_z_grid_native(det), build_z_grid_oversampled(det, 2.0)):
        nu = g.frequencies()
        np.testing.assert_allclose(nu, C_SI / (g.centers * 1e-6), rtol=1e-14)
        assert np.all(np.diff(nu) < 0)  # wavelength increases -> frequency decreases
        dnu = g.delta_nu()
        assert dnu.shape == (g.n_z,)
        assert np.all(dnu > 0)
        nu_edges = C_SI / (g.edges * 1e-6)
        assert dnu.sum() == pytest.approx(nu_edges[0] - nu_edges[-1], rel=1e-12)
        # narrow bins: dnu ~ nu * dlambda / lambda
        np.testing.assert_allclose(dnu, nu * g.widths / g.centers, rtol=2e-3)
        np.testing.assert_allclose(g.resolving_power(), g.centers / g.widths)


def test_is_log_uniform():
    assert ZGrid.from_edges(np.geomspace(1.0, 5.0, 40)).is_log_uniform()
    assert not ZGrid.from_edges(np.linspace(1.0, 5.0, 40)).is_log_uniform()
    assert ZGrid.from_edges([1.0, 2.0]).is_log_uniform()
    e = np.geomspace(1.0, 5.0, 10)
    e[4] *= 1 + 1e-6
    assert not ZGrid.from_edges(e).is_log_uniform()
    assert ZGrid.from_edges(e).is_log_uniform(rtol=1e-3)


def test_zgrid_shape_validation():
    with pytest.raises(ValueError, match="centers"):
        ZGrid(edges=np.array([1.0, 2.0, 3.0]), centers=np.array([1.5]), widths=np.array([1.0, 1.0]))


@pytest.mark.parametrize("det", range(1, 7))
def test_channel_band_is_the_detector_tables_extent(det):
    from spxquery.drizzle3d.spectral import channel_band

    t = detector_spectral_table(det)
    lo, hi = channel_band(det)
    assert (lo, hi) == (float(t["WL_MIN"].min()), float(t["WL_MAX"].max()))
    assert lo < hi and type(lo) is float
    with pytest.raises(ValueError, match="1-6"):
        channel_band(7)
