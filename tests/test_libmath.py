"""Values that decide a cube's bits are computed the same way on every CPU (libmath).

Regression: on a machine with AVX-512 numpy's float64 ``power``/``log10`` run other SIMD loops
than on an AVX2 one, so ``np.geomspace`` gave an oversampled wavelength grid other edges in the
last bit, and the golden cube of ``qr2_cutouts_bilinear_oversampled`` (z_oversample 2) other
bits, than on the machine where it was recorded.
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from spxquery.drizzle3d import libmath
from spxquery.drizzle3d.spectral import build_z_grid_oversampled

#: sha256 (first 16 hex digits) of the little-endian float64 edges of oversampled grids, as the
#: C library's log10/pow give them (numpy's values on a CPU without AVX-512).
EDGE_DIGESTS = {
    (1, 2.0): "0d56f0de432da513", (1, 0.5): "674245b9d98de428", (1, 3.7): "98bd63e19878041c",
    (3, 2.0): "50fe2c3ab839f95d", (3, 0.5): "015617644deccfd6", (3, 3.7): "e946d409265ef5fd",
    (6, 2.0): "331a81e4ae44ab0b", (6, 0.5): "fb3b300c8f078371", (6, 3.7): "88149b3455853918",
}


@pytest.mark.parametrize("detector,oversample", sorted(EDGE_DIGESTS))
def test_oversampled_edges_do_not_depend_on_the_cpu(detector, oversample):
    edges = build_z_grid_oversampled(detector, oversample).edges
    got = hashlib.sha256(edges.astype("<f8").tobytes()).hexdigest()[:16]
    assert got == EDGE_DIGESTS[(detector, oversample)]


def test_geomspace_is_numpys_algorithm_with_the_c_library():
    lo, hi, n = 0.7497, 1.0983, 34
    got = libmath.geomspace(lo, hi, n)
    y = np.linspace(math.log10(lo), math.log10(hi), n)
    want = np.array([lo] + [10.0 ** float(v) for v in y[1:-1]] + [hi])
    assert got.tobytes() == want.tobytes()
    np.testing.assert_allclose(got, np.geomspace(lo, hi, n), rtol=4e-16, atol=0)  # numpy: the same or 1 ulp off
    ratios = got[1:] / got[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-13)
    with pytest.raises(ValueError, match="num >= 2"):
        libmath.geomspace(lo, hi, 1)
    with pytest.raises(ValueError, match="start, stop > 0"):
        libmath.geomspace(0.0, hi, 5)


def test_exp_and_log_are_the_c_library_values_elementwise():
    a = np.array([[1e-300, 0.5, 1.0], [2.0, 700.0, 1e300]])
    assert libmath.log(a).tobytes() == np.array([[math.log(v) for v in row] for row in a]).tobytes()
    b = np.linspace(-700, 700, 11)
    assert libmath.exp(b).tobytes() == np.array([math.exp(v) for v in b]).tobytes()
    assert libmath.exp(b).shape == b.shape and libmath.log(a).shape == a.shape
