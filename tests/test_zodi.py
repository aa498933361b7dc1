"""Zodiacal-light scale fit and subtraction."""

import logging

import numpy as np
import pytest

from spxquery.drizzle3d.zodi import background_mask, fit_zodi_scale, subtract_zodi

SOURCE = 21
BAD = (1 << 6) | (1 << 10)  # NONFUNC, HOT


def _scene(scale=1.37, n=200, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n]
    zodi = 0.2 + 0.1 * xx / n + 0.05 * yy / n
    var = np.full((n, n), 1e-4)
    img = scale * zodi + rng.normal(0.0, 1e-2, (n, n))
    flags = np.zeros((n, n), np.uint32)
    # bright sources flagged SOURCE and hot pixels flagged HOT: both must be ignored by the fit
    src = (xx % 17 == 3) & (yy % 13 == 5)
    img[src] += 50.0
    flags[src] |= np.uint32(1 << SOURCE)
    hot = (xx % 29 == 0) & (yy % 31 == 0)
    img[hot] += 1e4
    flags[hot] |= np.uint32(1 << 10)
    img[0, :5] = np.nan
    return img, zodi, var, flags


def test_fit_recovers_known_scale():
    img, zodi, var, flags = _scene(scale=1.37)
    s, ok = fit_zodi_scale(img, zodi, var, flags, BAD, SOURCE)
    assert ok
    assert s == pytest.approx(1.37, rel=0.01)


def test_fit_is_biased_without_masks():
    # sanity check of the test scene: ignoring the flags would ruin the fit
    img, zodi, var, flags = _scene(scale=1.37)
    s, ok = fit_zodi_scale(np.nan_to_num(img), zodi, var, None, 0, None)
    assert abs(s - 1.37) > 0.05 or not ok


def test_background_mask_excludes_flags_and_nonfinite():
    img, zodi, var, flags = _scene()
    m = background_mask(img, zodi, var, flags, BAD, SOURCE)
    assert not m[0, 0]
    assert not np.any(m[(flags & np.uint32(1 << SOURCE)) != 0])
    assert not np.any(m[(flags & np.uint32(1 << 10)) != 0])
    assert m.sum() > 0.9 * m.size


def test_fallback_too_few_pixels(caplog):
    img, zodi, var, flags = _scene(n=20)
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.zodi"):
        s, ok = fit_zodi_scale(img, zodi, var, flags, BAD, SOURCE, min_pixels=1000, name="frame_a.fits")
    assert (s, ok) == (1.0, False)
    assert "frame_a.fits" in caplog.text and "background pixels" in caplog.text


@pytest.mark.parametrize("scale", [-0.5, 12.0])
def test_fallback_scale_out_of_range(scale, caplog):
    img, zodi, var, flags = _scene(scale=scale)
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.zodi"):
        s, ok = fit_zodi_scale(img, zodi, var, flags, BAD, SOURCE, name="frame_b.fits")
    assert (s, ok) == (1.0, False)
    assert "outside" in caplog.text and "frame_b.fits" in caplog.text


def test_subtract_static_and_fitted():
    img, zodi, var, flags = _scene(scale=2.0)
    out, s, ok = subtract_zodi(img, zodi, var, flags, BAD, SOURCE, static=True)
    assert (s, ok) == (1.0, False)
    np.testing.assert_allclose(out[5:], (img - zodi)[5:])
    out, s, ok = subtract_zodi(img, zodi, var, flags, BAD, SOURCE)
    assert ok and s == pytest.approx(2.0, rel=0.01)
    bg = background_mask(img, zodi, var, flags, BAD, SOURCE)
    assert abs(np.mean(out[bg])) < 1e-3
    out, s, ok = subtract_zodi(img, zodi, scale=0.5)
    np.testing.assert_allclose(out[5:], (img - 0.5 * zodi)[5:])
