"""Spectral grids of one cube of all six detectors (issue 18): native, oversampled and custom
edges across the detector boundaries, the detector of each plane, the configuration and the
command line that ask for the cube."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.cli import build_parser, config_from_args
from spxquery.drizzle3d.cubewcs import spectral_axis_fit
from spxquery.drizzle3d.grid import OutputGrid
from spxquery.drizzle3d.preflight import cube_shapes, output_path, run_cubes
from spxquery.drizzle3d.spatial import compute_spectral_overlaps
from spxquery.drizzle3d.spectral import (
    build_z_grid_all,
    build_z_grid_native,
    build_z_grid_native_all,
    build_z_grid_oversampled,
    build_z_grid_oversampled_all,
    detector_boundaries,
    detector_spectral_table,
    detectors_reaching,
    join_detector_edges,
    load_spectral_table,
    plane_detectors,
)

DETS = (1, 2, 3, 4, 5, 6)
BASE = dict(center_ra=150.0, center_dec=2.0, width=2.0, height=2.0)


def test_native_grid_of_all_detectors_tiles_the_102_channels():
    """102 planes, 17 per detector in order; each bin runs from its channel's WL_MIN to the next
    channel's WL_MIN (the last to D6's reddest WL_MAX), so the bins tile 0.743-5.003 um."""
    zg, dets = build_z_grid_native_all()
    t = load_spectral_table().sort_values("WAVELENGTH", kind="stable")
    assert zg.n_z == 102 and np.array_equal(dets, t["DETECTOR"].to_numpy())
    assert list(np.bincount(dets)[1:]) == [17] * 6 and np.all(np.diff(dets) >= 0)
    np.testing.assert_array_equal(zg.edges[:-1], t["WL_MIN"].to_numpy())
    assert zg.edges[-1] == t["WL_MAX"].to_numpy()[-1]
    assert np.all(np.diff(zg.edges) > 0)
    assert zg.edges[0] == pytest.approx(0.743, abs=1e-6) and zg.edges[-1] == pytest.approx(5.003, abs=1e-6)


@pytest.mark.parametrize("det", DETS)
def test_native_planes_keep_their_detector_grid_except_the_cut_boundary_plane(det):
    """Every plane of detector d has the edges of d's own native grid, bit for bit, except the
    reddest plane of D1-D5, which ends where the next detector's first channel begins (the
    overlaps D1/D2 ... D5/D6 are 8-19 nm wide)."""
    zg, dets = build_z_grid_native_all()
    own = build_z_grid_native(det).edges
    mine = np.flatnonzero(dets == det)
    lo, hi = zg.edges[mine], zg.edges[mine + 1]
    np.testing.assert_array_equal(lo, own[:-1])
    np.testing.assert_array_equal(hi[:-1], own[1:-1])
    if det < 6:
        nxt = detector_spectral_table(det + 1)["WL_MIN"].iloc[0]
        assert hi[-1] == nxt and own[-1] > nxt  # an overlap, cut at the redder detector's first edge
        assert 0.0079 < own[-1] - nxt < 0.020
    else:
        assert hi[-1] == own[-1]


@pytest.mark.parametrize("zo", [0.5, 1.5, 2.0, 3.3])
def test_oversampled_grid_of_all_detectors_keeps_each_detectors_resolution(zo):
    """Constant R within each detector: R_eff = mean(R_det) * z_oversample on every plane but
    the boundary ones; the bins of each detector are its own oversampled bins (D5/D6 keep their
    ~3x higher resolution); a boundary plane is 0.5-1.5 of its own bin (no sliver)."""
    zg, dets = build_z_grid_oversampled_all(zo)
    assert np.all(np.diff(zg.edges) > 0) and np.all(np.diff(dets) >= 0) and set(dets.tolist()) == set(DETS)
    for det in DETS:
        own = build_z_grid_oversampled(det, zo)
        mine = np.flatnonzero(dets == det)
        assert np.isin(zg.edges[mine], own.edges).all()
        r_eff = detector_spectral_table(det)["R"].mean() * zo
        own_step = math.log(own.edges[-1] / own.edges[0]) / own.n_z
        assert abs(own.n_z - own_step * own.n_z / math.log1p(1.0 / r_eff)) <= 0.5  # n = round(span / step)
        inner = np.log(zg.edges[mine[1:-1] + 1] / zg.edges[mine[1:-1]])
        np.testing.assert_allclose(inner, own_step, rtol=1e-9)
        cut_from = -1 if det == 6 else np.searchsorted(own.edges, zg.edges[mine[-1]])
        last_ratio = zg.widths[mine[-1]] / own.widths[cut_from]
        assert 0.5 <= last_ratio <= 1.5 + 1e-9
    r = zg.resolving_power()
    assert np.median(r[dets >= 5]) > 2.5 * np.median(r[dets <= 4])


def test_join_closes_a_gap_and_merges_a_remnant():
    edges, dets = join_detector_edges([(1, np.array([1.0, 2.0, 3.0])), (2, np.array([3.5, 4.0]))])
    np.testing.assert_array_equal(edges, [1.0, 2.0, 3.0, 3.5, 4.0])  # the gap 3.0-3.5 becomes D1's
    np.testing.assert_array_equal(dets, [1, 1, 1, 2])
    edges, dets = join_detector_edges([(1, np.array([1.0, 2.0, 3.0])), (2, np.array([2.2, 4.0]))], merge_remnant=True)
    np.testing.assert_array_equal(edges, [1.0, 2.2, 4.0])  # 2.0-2.2 is 20% of its bin: merged
    np.testing.assert_array_equal(dets, [1, 2])
    edges, _ = join_detector_edges([(1, np.array([1.0, 2.0, 3.0])), (2, np.array([2.7, 4.0]))], merge_remnant=True)
    np.testing.assert_array_equal(edges, [1.0, 2.0, 2.7, 4.0])  # 70%: kept
    with pytest.raises(ValueError, match="D1"):
        join_detector_edges([(1, np.array([2.0, 3.0])), (2, np.array([1.5, 4.0]))])


def test_custom_edges_across_detectors_take_the_detector_of_their_centre():
    b = detector_boundaries()
    np.testing.assert_array_equal(b, [detector_spectral_table(d)["WL_MIN"].iloc[0] for d in range(2, 7)])
    zg, dets = build_z_grid_all(1.0, [1.0, 1.09, 1.11, 2.0, 3.9, 4.5, 4.9])
    np.testing.assert_array_equal(dets, [1, 2, 2, 4, 5, 6])  # centres 1.045, 1.10, 1.555, 2.95, 4.2, 4.7
    assert plane_detectors([b[0] - 1e-9, b[0], 5.5, 0.1]).tolist() == [1, 2, 6, 1]
    # frames of D1 reach a grid that starts at 1.10 um (their top-hats end at ~1.13 um)
    assert detectors_reaching(1.10, 1.2) == (1, 2)
    assert detectors_reaching(1.7, 1.8) == (3,)
    assert detectors_reaching(0.1, 0.5) == ()
    grid = OutputGrid.all_detectors(Drizzle3DConfig(**BASE, combine_detectors=True, z_lambda_edges=[1.10, 1.2]))
    assert grid.detectors == (2,) and grid.input_detectors == (1, 2)


@settings(max_examples=300, deadline=None)
@given(boundary=st.integers(0, 4), offset=st.floats(-0.06, 0.06), rel_bw=st.floats(0.003, 0.06),
       shrink=st.floats(0.1, 1.0), zo=st.sampled_from([1.0, 2.0, 0.7]))
def test_a_pixel_near_a_boundary_is_counted_once(boundary, offset, rel_bw, shrink, zo):
    """Conservation: a top-hat near a detector boundary is shared between the planes it
    overlaps, of either detector, with fractions summing to 1 (no gap, no double counting)."""
    zg, _ = build_z_grid_all(zo)
    lam = float(detector_boundaries()[boundary]) + offset
    bw = lam * rel_bw
    z_idx, f_z = compute_spectral_overlaps(lam, bw, shrink, zg.edges, zg.centers, zg.widths)
    z_idx, f_z = np.asarray(z_idx), np.asarray(f_z)
    assert float(np.sum(f_z)) == pytest.approx(1.0, abs=1e-12)
    assert len(set(z_idx.tolist())) == z_idx.size and np.all(f_z > 0)
    lo, hi = lam - 0.5 * bw * shrink, lam + 0.5 * bw * shrink
    for k, f in zip(z_idx.tolist(), f_z.tolist()):
        overlap = min(hi, zg.edges[k + 1]) - max(lo, zg.edges[k])
        assert f == pytest.approx(overlap / (hi - lo), rel=1e-9, abs=1e-15)


def test_best_standard_axis_of_the_grid_across_detectors():
    """No standard axis follows R ~40 (D1-D4) then ~120 (D5-D6): the linear WAVE fit is the
    closer one (0.45 um at worst), WAVE-LOG stays on every single-detector grid."""
    zg, _ = build_z_grid_native_all()
    fit = spectral_axis_fit(zg.centers)
    assert fit["CTYPE3"] == "WAVE" and 0.3 < fit["WAVEMAXE"] < 0.5
    for det in DETS:
        assert spectral_axis_fit(build_z_grid_native(det).centers)["CTYPE3"] == "WAVE-LOG"


def test_combine_detectors_configuration_and_outputs(tmp_path):
    with pytest.raises(ValueError, match="combine_detectors.*detector=0.*detector=3"):
        Drizzle3DConfig(**BASE, detector=3, combine_detectors=True)
    cfg = Drizzle3DConfig(**BASE, combine_detectors=True, output_dir=tmp_path)
    assert run_cubes(cfg) == (0,) and output_path(cfg, 0) == tmp_path / "drizzle_all.fits"
    assert run_cubes(cfg.replace(combine_detectors=False)) == DETS
    assert cube_shapes(cfg, (0,)) == [(0, 102, cfg.output_ny(), cfg.output_nx())]
    grid = OutputGrid.for_config(cfg, 0)
    assert grid.nz == 102 and grid.detectors == DETS and grid.input_detectors == DETS
    with pytest.raises(ValueError, match="combine_detectors"):
        OutputGrid.for_config(cfg.replace(combine_detectors=False), 0)


@pytest.mark.parametrize("argv, detector, combined", [
    (["--detector", "all"], 0, True),
    (["--detector", "ALL"], 0, True),
    (["--detector", "0", "--combine-detectors"], 0, True),
    (["--detector", "0"], 0, False),
    (["--detector", "4"], 4, False),
])
def test_command_line_asks_for_one_cube(argv, detector, combined):
    args = build_parser().parse_args(["run", "--ra", "150", "--dec", "2", "--size", "3", *argv])
    cfg = config_from_args(args)
    assert cfg.detector == detector and cfg.combine_detectors is combined


def test_command_line_refuses_a_single_detector_with_combine(capsys):
    args = build_parser().parse_args(["run", "--ra", "150", "--dec", "2", "--size", "3", "--detector", "2",
                                      "--combine-detectors"])
    with pytest.raises(Exception, match="combine_detectors"):
        config_from_args(args)
