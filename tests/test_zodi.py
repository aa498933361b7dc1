"""Zodiacal light: the scale fit, the rule choosing each frame's scale, the subtraction."""

import logging
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d.flags import DEFAULT_FLAG_BITS
from spxquery.drizzle3d.zodi import (
    BAD_FLAG_NAMES,
    MIN_PIXELS,
    NOT_SUBTRACTED,
    ZodiPixels,
    ZodiScale,
    background_mask,
    fit_bits,
    fit_sums,
    fit_zodi_scale,
    frame_scale,
)

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


def test_fit_bits_from_the_file_names():
    bad, source = fit_bits(DEFAULT_FLAG_BITS)
    assert source == 21 and bad == sum(1 << DEFAULT_FLAG_BITS[n] for n in BAD_FLAG_NAMES)
    bad, source = fit_bits({"HOT": 3, "SOURCE": 30})  # a file naming its own bits
    assert (bad, source) == (1 << 3, 30)
    assert fit_bits({})[1] == 21


def _config(subtract=True, static=False):
    return SimpleNamespace(subtract_zodi=subtract, static_zodi=static)


BITS = {**DEFAULT_FLAG_BITS, "SOURCE": SOURCE}


def test_rule_no_subtraction_and_static():
    sample = ZodiPixels(*_scene())
    assert frame_scale(_config(subtract=False), BITS, sample) is NOT_SUBTRACTED
    assert frame_scale(_config(subtract=False, static=True), BITS, sample).scale is None
    static = frame_scale(_config(static=True), BITS, None)  # no sample needed
    assert static == ZodiScale(1.0, "static") and not static.fitted


def test_rule_fit_on_the_frames_sample():
    z = frame_scale(_config(), BITS, ZodiPixels(*_scene(scale=1.37)), name="a.fits")
    assert z.source == "sample" and z.fitted and z.scale == pytest.approx(1.37, rel=0.01)
    with pytest.raises(ValueError, match="a.fits: a fitted zodi scale needs the frame's sample"):
        frame_scale(_config(), BITS, None, name="a.fits")


def test_rule_fallback(caplog):
    small = ZodiPixels(*_scene(scale=3.0, n=20))
    assert background_mask(*small, 0, SOURCE).sum() < MIN_PIXELS
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.zodi"):
        z = frame_scale(_config(), BITS, ZodiPixels(*_scene(scale=12.0)), name="b.fits")
        assert z == ZodiScale(1.0, "fallback") and not z.fitted
        z = frame_scale(_config(), BITS, ZodiPixels(*_scene(scale=-1.0)), name="c.fits")
        assert z == ZodiScale(1.0, "fallback")
        z = frame_scale(_config(), BITS, small, name="d.fits")
        assert z == ZodiScale(1.0, "fallback")
    assert "b.fits" in caplog.text and "c.fits" in caplog.text and "only" in caplog.text


def test_subtract_in_place():
    img, zodi, var, flags = _scene(scale=2.0)
    out = img.copy()
    ZodiScale(0.5, "sample").subtract(out, zodi)
    np.testing.assert_array_equal(out[5:], (img - 0.5 * zodi)[5:])
    out = img.copy()
    NOT_SUBTRACTED.subtract(out, None)
    np.testing.assert_array_equal(out, img)
    # consuming the ZODI array as the scratch: the same bits, the products left in it
    kept, used = img.copy(), img.copy()
    scratch = zodi.astype(np.float64)
    ZodiScale(0.37, "sample").subtract(kept, zodi)
    ZodiScale(0.37, "sample").subtract(used, scratch, consume=True)
    assert kept.tobytes() == used.tobytes() and scratch.tobytes() == (0.37 * zodi).tobytes()


def _numpy_sums(image, zodi, variance, flags, bad, source_bit):
    """The fit's sums as the numpy code before issue 23 computed them (the reference of the Rust sums)."""
    mask = background_mask(image, zodi, variance, flags, bad, source_bit)
    mask &= zodi != 0
    img, zod = np.asarray(image, np.float64)[mask], np.asarray(zodi, np.float64)[mask]
    w = 1.0 / np.asarray(variance, np.float64)[mask] if variance is not None else np.ones_like(img)
    return int(np.count_nonzero(mask)), float(np.sum(w * img * zod)), float(np.sum(w * zod * zod))


@settings(max_examples=300, deadline=None)
@given(n=st.one_of(st.integers(0, 300), st.sampled_from([1000, 4095, 8192, 8193, 65280, 65281])),
       seed=st.integers(0, 2**32 - 1), with_variance=st.booleans(), with_flags=st.booleans())
def test_fit_sums_are_numpys_bit_for_bit(n, seed, with_variance, with_flags):
    """The Rust sums (GIL released) equal numpy's pairwise sums of the same products, bit for bit,
    whatever the length and whichever pixels fail a test (the golden cubes pin the fitted scales)."""
    rng = np.random.default_rng(seed)
    image = rng.normal(1.0, 10.0, n) * 10.0 ** rng.integers(-3, 4, n)
    zodi = rng.uniform(-0.5, 2.0, n)
    var = rng.uniform(-0.1, 3.0, n) ** 3
    flags = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) & np.uint32(0x00602440)
    for a in (image, zodi, var):
        a[rng.random(n) < 0.03] = np.nan
        a[rng.random(n) < 0.01] = np.inf
    zodi[rng.random(n) < 0.05] = 0.0
    args = (image, zodi, var if with_variance else None, flags if with_flags else None, BAD, SOURCE)
    n_mine, num, den = fit_sums(ZodiPixels(*args[:4]), *args[4:])
    n_ref, num_ref, den_ref = _numpy_sums(*args)
    assert n_mine == n_ref
    assert (np.float64(num).tobytes(), np.float64(den).tobytes()) == (np.float64(num_ref).tobytes(),
                                                                      np.float64(den_ref).tobytes())


def test_fit_sums_refuse_arrays_of_other_shapes():
    with pytest.raises(ValueError, match="variance has shape"):
        fit_sums(ZodiPixels(np.ones((4, 5)), np.ones((4, 5)), np.ones(20), None), 0, None)
