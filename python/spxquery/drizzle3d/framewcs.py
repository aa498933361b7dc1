"""The celestial WCS of an L2 frame, built from its celestial keywords only, after checks.

astropy/wcslib never see an untrusted header: a broken alternate WCS elsewhere in it (the ``W``
wavelength lookup, say) has aborted the whole process in ``astropy.wcs.WCS(header)``. Here
the keywords of the primary celestial WCS are read with the strict parser, checked, and the
``astropy.wcs.WCS`` is built programmatically (CTYPE, CRPIX, CRVAL, CD or PC+CDELT or
CDELT+CROTA2, CUNIT, RADESYS/EQUINOX, LONPOLE/LATPOLE, SIP ``A``/``B``/``AP``/``BP``): the
same transformations, bit for bit, as ``WCS(header, naxis=2)`` for a valid header.

Checks (:class:`WcsError` with the reason): a celestial ``RA``/``DEC`` pair with a zenithal
projection; CRPIX, CRVAL, the matrix and the SIP coefficients finite; the matrix non-singular
with a pixel scale in [:data:`MIN_SCALE_DEG`, :data:`MAX_SCALE_DEG`] and not too skewed;
the SIP distortion over the image at most :data:`MAX_SIP_SHIFT_PIX` pixels, its Jacobian
not folding, and the inverse (AP/BP) undoing it to :data:`MAX_SIP_INVERSE_ERROR_PIX`.
Conventions: FITS 1-based CRPIX in the header, degrees.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import Optional, Tuple

import numpy as np
from astropy.wcs import WCS, FITSFixedWarning, Sip

from .fitsheader import Header, HeaderError

#: Projections accepted for the celestial axes (SPHEREx: TAN, with SIP).
PROJECTIONS = ("TAN", "SIN", "ARC", "ZEA", "STG")
#: Pixel scale limits (deg): SPHEREx pixels are 6.15" = 0.0017 deg.
MIN_SCALE_DEG = 1e-6
MAX_SCALE_DEG = 1.0
#: Largest ratio of the matrix's singular values (a square pixel is 1).
MAX_SKEW = 10.0
#: Largest SIP shift (pixels) anywhere on the image (SPHEREx: a few pixels at the corners).
MAX_SIP_SHIFT_PIX = 100.0
#: Largest SIP order accepted.
MAX_SIP_ORDER = 9
#: Largest error (pixels) of the inverse SIP (AP/BP) undoing the forward one on the image.
MAX_SIP_INVERSE_ERROR_PIX = 2.0


class WcsError(ValueError):
    """A celestial WCS that cannot be used; the message says which keyword and why."""


def _axis_types(header: Header) -> Tuple[str, str, bool]:
    c1 = header.get_str("CTYPE1").strip().upper()
    c2 = header.get_str("CTYPE2").strip().upper()
    sip = c1.endswith("-SIP") and c2.endswith("-SIP")
    b1, b2 = (c[:-4] if sip else c for c in (c1, c2))
    if not (b1[:5] == "RA---" and b2[:5] == "DEC--" and len(b1) == 8 and len(b2) == 8):
        raise WcsError(f"CTYPE1/CTYPE2 = {c1!r:.30}/{c2!r:.30} are not an RA---/DEC-- celestial pair")
    if b1[5:] != b2[5:] or b1[5:] not in PROJECTIONS:
        raise WcsError(f"CTYPE1/CTYPE2 = {c1!r:.30}/{c2!r:.30}: projection not one of {PROJECTIONS}")
    return c1, c2, sip


def _matrix(header: Header) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray], float]:
    """``(effective CD matrix, CD or None, PC or None, CROTA2)``: the header gives CD, or PC
    (default identity) with CDELT, or CDELT with CROTA2 (deg)."""
    cd_keys = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
    if any(k in header for k in cd_keys):
        cd = np.array([header.get_float(k, 0.0) for k in cd_keys]).reshape(2, 2)
        return cd, cd, None, 0.0
    cdelt = np.array([header.get_float("CDELT1"), header.get_float("CDELT2")])
    pc_keys = ("PC1_1", "PC1_2", "PC2_1", "PC2_2")
    if any(k in header for k in pc_keys):
        pc = np.array([header.get_float(k, d) for k, d in zip(pc_keys, (1.0, 0.0, 0.0, 1.0))]).reshape(2, 2)
        return pc * cdelt[:, None], None, pc, 0.0
    crota = header.get_float("CROTA2", 0.0)
    c, s = math.cos(math.radians(crota)), math.sin(math.radians(crota))
    eff = np.array([[cdelt[0] * c, -cdelt[1] * s], [cdelt[0] * s, cdelt[1] * c]])
    return eff, None, None, crota


#: Relative margin from the limits within which the closed-form singular values decide alone.
_CLEAR = 1e-9


def _clearly_usable(m: np.ndarray) -> bool:
    """True when the 2x2 matrix passes :func:`_check_matrix` by a margin of :data:`_CLEAR` (relative)
    judged on its singular values in closed form (``Q + R``, ``|Q - R|``, ``Q``, ``R`` the norms of
    its conformal and anti-conformal parts), which agree with ``numpy.linalg.svd`` to within
    rounding (~1e-16): the verdict is the SVD's, without a LAPACK call (its first use in a process
    cost milliseconds on the first frame). False: let the SVD judge (and word the reason)."""
    a, b, c, d = (float(v) for v in m.ravel())
    q = math.hypot((a + d) / 2, (c - b) / 2)
    r = math.hypot((a - d) / 2, (c + b) / 2)
    s0, s1 = q + r, abs(q - r)
    if not (math.isfinite(s0) and s1 > 0.0):
        return False
    scale = math.sqrt(s0 * s1)
    return (MIN_SCALE_DEG * (1 + _CLEAR) <= scale <= MAX_SCALE_DEG * (1 - _CLEAR)
            and s0 / s1 <= MAX_SKEW * (1 - _CLEAR))


def _check_matrix(cd: np.ndarray) -> None:
    if _clearly_usable(cd):
        return
    sv = np.linalg.svd(cd, compute_uv=False)
    # Singular to rounding: a smallest singular value within a few ulps of the largest's (an exactly
    # singular matrix's is 0 or +-1e-20 as the LAPACK build rounds: AVX2 and AVX-512 ones differ).
    if not np.all(np.isfinite(sv)) or sv[-1] <= 4 * np.finfo(np.float64).eps * sv[0]:
        raise WcsError(f"the pixel-to-sky matrix {cd.ravel().tolist()} is singular")
    scale = math.sqrt(sv[0] * sv[1])
    if not MIN_SCALE_DEG <= scale <= MAX_SCALE_DEG:
        raise WcsError(f"pixel scale {scale * 3600:.4g} arcsec is outside "
                       f"[{MIN_SCALE_DEG * 3600:g}, {MAX_SCALE_DEG * 3600:g}] arcsec")
    if sv[0] / sv[1] > MAX_SKEW:
        raise WcsError(f"the pixel-to-sky matrix {cd.ravel().tolist()} is degenerate (axis ratio "
                       f"{sv[0] / sv[1]:.3g} > {MAX_SKEW:g})")


def _sip_matrix(header: Header, prefix: str, required: bool) -> Optional[np.ndarray]:
    """SIP coefficients ``prefix_i_j`` as an ``(order+1, order+1)`` array (None when absent)."""
    key = f"{prefix}_ORDER"
    if key not in header:
        if required:
            raise WcsError(f"CTYPE says -SIP but {key} is missing")
        return None
    order = header.get_int(key)
    if not 0 <= order <= MAX_SIP_ORDER:
        raise WcsError(f"{key} = {order} is outside 0-{MAX_SIP_ORDER}")
    keys, rows, cols = _sip_terms(prefix, order)
    m = np.zeros((order + 1, order + 1))
    m[rows, cols] = header.get_floats(keys, 0.0)
    return m


@functools.lru_cache(maxsize=64)
def _sip_terms(prefix: str, order: int) -> Tuple[Tuple[str, ...], np.ndarray, np.ndarray]:
    """The keywords ``prefix_i_j`` (i + j <= order) and their rows ``i`` and columns ``j``."""
    where = [(i, j) for i in range(order + 1) for j in range(order + 1 - i)]
    rows, cols = (np.array(v, dtype=np.intp) for v in zip(*where))
    rows.flags.writeable = cols.flags.writeable = False
    return tuple(f"{prefix}_{i}_{j}" for i, j in where), rows, cols


def _powers(u: np.ndarray, n: int) -> np.ndarray:
    """``(len(u), n)``: ``u**0 .. u**(n-1)`` by repeated products (no ``pow`` calls)."""
    out = np.empty((u.size, n))
    out[:, 0] = 1.0
    for k in range(1, n):
        np.multiply(out[:, k - 1], u, out=out[:, k])
    return out


def _poly(m: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``sum m[i, j] u**i v**j`` (i + j <= order) at the points ``u``, ``v`` (1-D arrays)."""
    n = m.shape[0]
    tri = np.add.outer(np.arange(n), np.arange(n)) <= n - 1
    return np.einsum("pj,pj->p", _powers(u, n) @ np.where(tri, m, 0.0), _powers(v, n))


def _check_sip(sip: Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]],
               crpix: Tuple[float, float], shape: Tuple[int, int]) -> None:
    """Distortion bounded and not folding over the image; the inverse undoing it."""
    a, b, ap, bp = sip
    ny, nx = shape
    xs = np.linspace(0.5, nx + 0.5, 7)  # 1-based pixel edges of the image and points between
    ys = np.linspace(0.5, ny + 0.5, 7)
    u, v = (g.ravel() for g in np.meshgrid(xs - crpix[0], ys - crpix[1]))
    h = 0.5  # central differences, half a pixel each way
    uu = np.concatenate([u, u + h, u - h, u, u])
    vv = np.concatenate([v, v, v, v + h, v - h])
    pa, pb = (_poly(m, uu, vv).reshape(5, -1) for m in (a, b))
    du, dv = pa[0], pb[0]
    shift = float(np.max(np.hypot(du, dv)))
    if not shift <= MAX_SIP_SHIFT_PIX:
        raise WcsError(f"SIP distortion reaches {shift:.3g} pixels on the image (limit {MAX_SIP_SHIFT_PIX:g})")
    jac = (1 + (pa[1] - pa[2]) / (2 * h)) * (1 + (pb[3] - pb[4]) / (2 * h)) \
        - (pa[3] - pa[4]) / (2 * h) * (pb[1] - pb[2]) / (2 * h)
    if not (np.all(np.isfinite(jac)) and 0.5 <= float(np.min(jac)) and float(np.max(jac)) <= 2.0):
        raise WcsError("SIP distortion folds or stretches the image (Jacobian outside [0.5, 2])")
    if ap is not None and bp is not None:
        fu, fv = u + du, v + dv
        err = float(np.max(np.hypot(fu + _poly(ap, fu, fv) - u, fv + _poly(bp, fu, fv) - v)))
        if not err <= MAX_SIP_INVERSE_ERROR_PIX:
            raise WcsError(f"inverse SIP (AP/BP) misses the forward SIP by {err:.3g} pixels on the image "
                           f"(limit {MAX_SIP_INVERSE_ERROR_PIX:g})")


@functools.lru_cache(maxsize=32)
def _sip_verdict(key: Tuple[Tuple[Tuple[int, ...], bytes], ...], crpix: Tuple[float, float],
                 shape: Tuple[int, int]) -> Optional[str]:
    """:func:`_check_sip`'s reason (None: the SIP is usable) for the coefficients in ``key``
    (``(shape, bytes)`` of A, B, AP, BP; an empty shape for an absent matrix). Frames of one
    detector share their SIP: the check runs once per distinct set of coefficients."""
    a, b, ap, bp = (np.frombuffer(raw, dtype=np.float64).reshape(dims) if dims else None for dims, raw in key)
    assert a is not None and b is not None  # A and B are required with SIP
    try:
        _check_sip((a, b, ap, bp), crpix, shape)
    except WcsError as exc:
        return str(exc)
    return None


def _checked_sip(sip: Tuple[np.ndarray, np.ndarray, Optional[np.ndarray], Optional[np.ndarray]],
                 crpix: Tuple[float, float], shape: Tuple[int, int]) -> None:
    """:func:`_check_sip`, its verdict remembered for the same coefficients, CRPIX and shape."""
    key = tuple(((), b"") if m is None else (m.shape, np.ascontiguousarray(m, dtype=np.float64).tobytes())
                for m in sip)
    reason = _sip_verdict(key, (float(crpix[0]), float(crpix[1])), (int(shape[0]), int(shape[1])))
    if reason is not None:
        raise WcsError(reason)


def celestial_wcs(header: Header, shape: Tuple[int, int]) -> WCS:
    """The checked 2-D celestial WCS of an image header (``shape = (ny, nx)``).

    :class:`WcsError` (a ``ValueError``) names the keyword and the reason when the WCS
    cannot be used.
    """
    try:
        c1, c2, has_sip = _axis_types(header)
        crpix = (header.get_float("CRPIX1"), header.get_float("CRPIX2"))
        crval = (header.get_float("CRVAL1"), header.get_float("CRVAL2"))
        if not -90.0 <= crval[1] <= 90.0:
            raise WcsError(f"CRVAL2 = {crval[1]} is not a declination")
        for k in ("CUNIT1", "CUNIT2"):
            unit = header.get_str(k, "deg").strip().lower()
            if unit not in ("deg", ""):
                raise WcsError(f"{k} = {unit!r:.20}: celestial axes must be in degrees")
        eff, cd, pc, crota = _matrix(header)
        _check_matrix(eff)
        sip = None
        if has_sip or "A_ORDER" in header:
            a, b = _sip_matrix(header, "A", True), _sip_matrix(header, "B", True)
            ap, bp = _sip_matrix(header, "AP", False), _sip_matrix(header, "BP", False)
            if (ap is None) != (bp is None):
                raise WcsError("only one of AP_ORDER / BP_ORDER is present")
            assert a is not None and b is not None
            _checked_sip((a, b, ap, bp), crpix, shape)
            sip = Sip(a, b, ap, bp, crpix)
        radesys = header.get_str("RADESYS", "").strip().upper()
        equinox = header.get_float("EQUINOX", None)
        lonpole = header.get_float("LONPOLE", None)
        latpole = header.get_float("LATPOLE", None)
    except HeaderError as exc:
        raise WcsError(str(exc)) from None
    w = WCS(naxis=2)
    w.wcs.ctype = [c1, c2]
    w.wcs.crpix = list(crpix)
    w.wcs.crval = list(crval)
    if cd is not None:
        w.wcs.cd = cd
    else:
        w.wcs.cdelt = [header.get_float("CDELT1"), header.get_float("CDELT2")]
        if pc is not None:
            w.wcs.pc = pc
        elif crota:
            w.wcs.crota = [0.0, crota]
    # CUNIT stays blank: wcsset() makes it "deg" for celestial axes (the same wcsprm as setting
    # "deg" here, without astropy parsing and printing the unit twice a frame).
    if radesys in ("ICRS", "FK5", "FK4", "FK4-NO-E", "GAPPT"):
        w.wcs.radesys = radesys
    if equinox is not None:
        w.wcs.equinox = equinox
    if lonpole is not None:
        w.wcs.lonpole = lonpole
    if latpole is not None:
        w.wcs.latpole = latpole
    w.sip = sip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            w.wcs.set()
        except Exception as exc:  # wcslib rejects what the checks above let through
            raise WcsError(f"invalid celestial WCS ({type(exc).__name__}: {exc})") from None
    w.pixel_shape = (int(shape[1]), int(shape[0]))
    return w


__all__ = ["WcsError", "celestial_wcs", "MAX_SIP_SHIFT_PIX", "MAX_SIP_INVERSE_ERROR_PIX"]
