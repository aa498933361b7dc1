"""Spectral boxcar overlaps (Rust) through spatial.compute_spectral_overlaps."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d import _core
from spxquery.drizzle3d.spatial import compute_spectral_overlaps
from spxquery.drizzle3d.spectral import build_z_grid


@st.composite
def grids(draw):
    n = draw(st.integers(1, 30))
    steps = draw(st.lists(st.floats(1e-4, 0.2), min_size=n, max_size=n))
    start = draw(st.floats(0.5, 4.0))
    return start + np.concatenate([[0.0], np.cumsum(steps)])


@settings(max_examples=300, deadline=None)
@given(grids(), st.floats(0.3, 6.0), st.floats(1e-5, 1.0), st.floats(0.01, 1.0))
def test_fractions_sum_to_the_fraction_of_the_top_hat_inside_the_grid(edges, lam, dlam, shrink):
    idx, frac = compute_spectral_overlaps(lam, dlam, shrink, edges)
    assert idx.dtype == np.int32 and frac.dtype == np.float64
    lo, hi = lam - dlam * shrink / 2, lam + dlam * shrink / 2
    inside = max(0.0, min(hi, edges[-1]) - max(lo, edges[0])) / (hi - lo)
    assert frac.sum() == pytest.approx(inside, abs=1e-12)
    assert np.all(frac > 0) and np.all(frac <= 1.0)
    assert np.all(np.diff(idx) == 1)  # contiguous, increasing bins
    # Each fraction is the overlap length of that bin.
    for k, f in zip(idx, frac, strict=True):
        ov = min(hi, edges[k + 1]) - max(lo, edges[k])
        assert f == pytest.approx(ov / (hi - lo), rel=1e-9, abs=1e-12)


def test_native_grid_examples_and_no_renormalisation():
    z = build_z_grid(3)
    e = z.edges
    mid = 0.5 * (e[4] + e[5])
    idx, frac = compute_spectral_overlaps(mid, 0.2 * (e[5] - e[4]), 1.0, e, z.centers, z.widths)
    assert idx.tolist() == [4] and frac.tolist() == [1.0]
    idx, frac = compute_spectral_overlaps(e[0], 0.01, 1.0, e)
    assert idx.tolist() == [0] and frac[0] == pytest.approx(0.5, abs=1e-12)
    idx, frac = compute_spectral_overlaps(e[0] - 1.0, 0.01, 1.0, e)
    assert idx.size == 0 and frac.size == 0


@pytest.mark.parametrize("bad", [[1.0], [1.0, 1.0], [2.0, 1.0], [1.0, np.nan]])
def test_bad_edges_raise_value_error(bad):
    with pytest.raises(ValueError, match="z_edges"):
        compute_spectral_overlaps(1.0, 0.1, 1.0, np.array(bad))


def test_a_rust_panic_becomes_a_python_exception():
    with pytest.raises(RuntimeError, match="internal error in _panic_for_test: boom"):
        _core._panic_for_test("boom")
