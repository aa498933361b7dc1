"""The celestial WCS of a frame, built from its celestial keywords only: same transforms as
astropy's ``WCS(header)`` bit for bit on valid headers, a named reason on broken ones."""

import dataclasses
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d.fitsheader import Header
from spxquery.drizzle3d.framewcs import WcsError, celestial_wcs
from spxquery.drizzle3d.simulate import make_frame_meta
from spxquery.drizzle3d.simulate.instrument import fit_inverse_sip, wcs_cards
from spxquery.drizzle3d.simulate.l2file import cutout_meta

SHAPE = (2040, 2040)


def _astropy_header(meta) -> fits.Header:
    h = fits.Header()
    for key, value, comment in wcs_cards(meta):
        h[key] = (value, comment)
    return h


def _ours(h: fits.Header) -> Header:
    text = h.tostring()
    return Header(text[: text.rindex("END" + " " * 77)], "IMAGE header")


def _edit(h: fits.Header, **cards: str) -> Header:
    """Our header of ``h`` with raw value fields replaced (values astropy cannot write, like NaN)."""
    text = h.tostring()
    text = text[: text.rindex("END" + " " * 77)]
    lines = [text[i:i + 80] for i in range(0, len(text), 80)]
    for key, raw in cards.items():
        card = f"{key.replace('__', '-'):<8}= {raw}"
        idx = [i for i, c in enumerate(lines) if c.startswith(f"{key.replace('__', '-'):<8}=")]
        if raw is None:
            lines = [c for i, c in enumerate(lines) if i not in idx]
        elif idx:
            lines[idx[0]] = f"{card:<80}"
        else:
            lines.append(f"{card:<80}")
    return Header("".join(lines), "IMAGE header")


def _same_transforms(ours: WCS, ref: WCS, shape=SHAPE) -> None:
    rng = np.random.default_rng(5)
    x = rng.uniform(-50, shape[1] + 50, 1000)
    y = rng.uniform(-50, shape[0] + 50, 1000)
    a, b = ours.all_pix2world(x, y, 0), ref.all_pix2world(x, y, 0)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    a, b = ours.all_world2pix(*b, 0, quiet=True), ref.all_world2pix(*b, 0, quiet=True)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    np.testing.assert_array_equal(ours.pixel_scale_matrix, ref.pixel_scale_matrix)


def _reference(h: fits.Header) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return WCS(h, naxis=2)


@pytest.mark.parametrize("kind", ["full", "cutout", "rotated-d5"])
def test_same_transforms_as_astropy(kind):
    meta = make_frame_meta(3, 150.0, 2.0, 23.0, "2025W18_2B_0001_1")
    shape = SHAPE
    if kind == "cutout":
        meta = cutout_meta(meta, 700, 1200, (117, 117))
        shape = (117, 117)
    elif kind == "rotated-d5":
        meta = make_frame_meta(5, 271.0, 66.5, 250.0, "2025W18_2B_0001_1")
    h = _astropy_header(meta)
    w = celestial_wcs(_ours(h), shape)
    _same_transforms(w, _reference(h), shape)
    assert w.sip is not None and w.pixel_shape == (shape[1], shape[0])
    # CUNIT is left blank for wcsset() to fill: the wcsprm says degrees, as astropy's does
    assert [str(u) for u in w.wcs.cunit] == [str(u) for u in _reference(h).wcs.cunit] == ["deg", "deg"]


@settings(max_examples=15, deadline=None)
@given(pa=st.floats(0, 360), dec=st.floats(-89, 89), ra=st.floats(0, 359.9),
       scale=st.floats(0.5, 2.0), a20=st.floats(-2e-6, 2e-6))
def test_same_transforms_property(pa, dec, ra, scale, a20):
    """Property: any valid TAN-SIP frame header gives astropy's transforms, bit for bit."""
    meta = make_frame_meta(2, ra, dec, pa, "x")
    sip_a = {**meta.sip_a, "2_0": a20}
    ap, bp = fit_inverse_sip(sip_a, meta.sip_b)
    meta = dataclasses.replace(meta, cd=[[v * scale for v in row] for row in meta.cd], sip_a=sip_a, sip_ap=ap,
                               sip_bp=bp)
    h = _astropy_header(meta)
    _same_transforms(celestial_wcs(_ours(h), SHAPE), _reference(h))


def test_pc_cdelt_and_crota_headers():
    h = fits.Header()
    h.update({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 10.5, "CRPIX2": 20.0, "CRVAL1": 30.0,
              "CRVAL2": -40.0, "CDELT1": -0.0017, "CDELT2": 0.0017, "PC1_1": 0.9, "PC1_2": 0.1, "PC2_1": -0.1,
              "PC2_2": 0.95})
    _same_transforms(celestial_wcs(_ours(h), (50, 40)), _reference(h), (50, 40))
    for k in ("PC1_1", "PC1_2", "PC2_1", "PC2_2"):
        del h[k]
    h["CROTA2"] = 33.0
    _same_transforms(celestial_wcs(_ours(h), (50, 40)), _reference(h), (50, 40))


BROKEN = {
    "nan-crpix": (dict(CRPIX1="NaN"), "CRPIX1 has a malformed value"),
    "inf-crval": (dict(CRVAL2="1E400"), "CRVAL2 = inf is not finite"),
    "dec-over-90": (dict(CRVAL2="95.0"), "CRVAL2 = 95.0 is not a declination"),
    "zero-cd": (dict(CD1_1="0.0", CD1_2="0.0", CD2_1="0.0", CD2_2="0.0"), "singular"),
    "singular-cd": (dict(CD1_1="0.001", CD1_2="0.002", CD2_1="0.002", CD2_2="0.004"), "singular"),
    "skewed-cd": (dict(CD1_1="0.001", CD1_2="0.0", CD2_1="0.0", CD2_2="0.00001"), "degenerate"),
    "huge-scale": (dict(CD1_1="-3.0", CD1_2="0.0", CD2_1="0.0", CD2_2="3.0"), "pixel scale"),
    "absurd-sip": (dict(A_2_0="0.01"), "SIP distortion reaches"),
    "folding-sip": (dict(A_1_0="-0.6", CRPIX1="50.0", CRPIX2="50.0"), "folds or stretches"),
    "bad-inverse": (dict(AP_2_0="0.0003"), "inverse SIP"),
    "no-b-order": (dict(B_ORDER=None), "B_ORDER is missing"),
    "sip-order-99": (dict(A_ORDER="99"), "A_ORDER = 99"),
    "ctype-galactic": (dict(CTYPE1="'GLON-TAN-SIP'"), "not an RA---/DEC-- celestial pair"),
    "ctype-projection": (dict(CTYPE1="'RA---AIT-SIP'", CTYPE2="'DEC--AIT-SIP'"), "projection not one of"),
    "ctype-number": (dict(CTYPE2="5"), "CTYPE2 = '5' is not a string"),
    "cunit-rad": (dict(CUNIT1="'rad'"), "CUNIT1 = 'rad'"),
    "missing-crval": (dict(CRVAL1=None), "CRVAL1 is missing"),
    "repeated-crpix": (dict(CRPIX1="10.0", CRPIX1__="11.0"), None),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_headers_are_refused_with_a_reason(case):
    cards, reason = BROKEN[case]
    h = _astropy_header(make_frame_meta(3, 150.0, 2.0, 23.0, "x"))
    if case == "repeated-crpix":
        text = _ours(h)._text + f"{'CRPIX1  = 11.0':<80}"
        ours, reason = Header(text, "IMAGE header"), "CRPIX1 appears 2 times"
    else:
        ours = _edit(h, **cards)
    with pytest.raises(WcsError, match=reason):
        celestial_wcs(ours, (100, 100) if case == "folding-sip" else SHAPE)


def test_the_sip_verdict_is_remembered_per_coefficients_crpix_and_shape():
    """The SIP check runs once per distinct (A, B, AP, BP, CRPIX, shape): a header accepted before
    is accepted again, and the same coefficients are still refused on an image where they reach
    too far, or with a CRPIX far away."""
    from spxquery.drizzle3d import framewcs

    h = _astropy_header(make_frame_meta(3, 150.0, 2.0, 23.0, "x"))
    framewcs._sip_verdict.cache_clear()
    for _ in range(3):
        celestial_wcs(_ours(h), SHAPE)
    info = framewcs._sip_verdict.cache_info()
    assert (info.misses, info.hits) == (1, 2)
    with pytest.raises(WcsError, match="SIP distortion"):
        celestial_wcs(_ours(h), (20000, 20000))  # the same coefficients, far beyond the frame
    for _ in range(2):  # the same coefficients with CRPIX far away: refused, and refused again
        with pytest.raises(WcsError, match="SIP distortion"):
            celestial_wcs(_edit(h, CRPIX1="30000.0"), SHAPE)
    celestial_wcs(_ours(h), SHAPE)
    assert framewcs._sip_verdict.cache_info().misses == 3


@settings(max_examples=1500, deadline=None)
@given(st.floats(-7.5, 0.5), st.floats(0.0, 1.3), st.floats(0, 6.3), st.floats(-1.5, 1.5), st.booleans(),
       st.sampled_from([0.0, 1e-12, 1e-9]))
def test_closed_form_matrix_verdict_is_the_svds(log_scale, log_ratio, angle, shear, flip, jitter):
    """Property: a pixel-to-sky matrix the closed form accepts (``_clearly_usable``) is one the SVD
    check accepts; matrices near the limits (scale 1e-6 / 1 deg, axis ratio 10) go to the SVD."""
    from spxquery.drizzle3d.framewcs import _check_matrix, _clearly_usable

    s = 10.0 ** log_scale
    r = 10.0 ** log_ratio
    c, n = np.cos(angle), np.sin(angle)
    m = np.array([[c, -n], [n, c]]) @ np.array([[s * np.sqrt(r), shear * s], [0.0, s / np.sqrt(r)]])
    if flip:
        m[0] = -m[0]
    m = m * (1 + jitter)
    sv = np.linalg.svd(m, compute_uv=False)
    svd_ok = bool(sv[-1] > 0 and 1e-6 <= np.sqrt(sv[0] * sv[1]) <= 1.0 and sv[0] / sv[1] <= 10.0)
    if _clearly_usable(m):
        assert svd_ok, (m, sv)
        _check_matrix(m)
    elif not svd_ok:
        with pytest.raises(WcsError):
            _check_matrix(m)
    spherex = np.array([[-0.00162197115674582, 0.000536295016257258], [0.000536295016257258, 0.001621971156745829]])
    assert _clearly_usable(spherex)
