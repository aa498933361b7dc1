"""Simulated SPHEREx instrument: detector geometry (TAN-SIP), LVF wavelength maps, zodi, noise, flags.

Pixels are 0-based in the file's own grid (pixel ``j`` covers ``[j-0.5, j+0.5]``); FITS
1-based values appear only in header keywords (CRPIX) and in the WCS-WAVE control points.
The intended celestial mapping of a frame is :func:`frame_pixel_to_world`, which evaluates
CD + SIP + TAN exactly as the FITS SIP convention defines it.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from astropy.io import fits
from numpy.typing import ArrayLike

from .sky import gnomonic, gnomonic_inverse

logger = logging.getLogger(__name__)

NPIX = 2040
PIXSCALE_ARCSEC = 6.15
PIXSCALE_DEG = PIXSCALE_ARCSEC / 3600.0
DEFAULT_PSF_FWHM_PIX = 2.2
#: SPHEREx FLAGS bits (name -> bit).
FLAG_BITS: dict[str, int] = {
    "TRANSIENT": 0, "OVERFLOW": 1, "SUR_ERROR": 2, "PHANTOM": 4, "REFERENCE": 5, "NONFUNC": 6,
    "DICHROIC": 7, "MISSING_DATA": 9, "HOT": 10, "COLD": 11, "FULLSAMPLE": 12, "PHANMISS": 14,
    "NONLINEAR": 15, "PERSIST": 17, "OUTLIER": 19, "CROSSTALK": 20, "SOURCE": 21, "GHOST1": 22,
    "GHOST2": 23, "GHOST3": 24, "STREAK": 25, "BLOOM": 26, "SNOWBALL": 27, "HALO": 28,
    "SATELLITE_HALO": 29,
}
SIP_ORDER = 3
INV_SIP_ORDER = 4


# ── spectral calibration data ────────────────────────────────────────────────


@functools.lru_cache(maxsize=1)
def _tables() -> tuple[Any, np.ndarray]:
    """(spectral DataFrame, channel map) from spectral.py, or read directly as a fallback."""
    try:
        from ..spectral import load_channel_map, load_spectral_table

        return load_spectral_table(), np.asarray(load_channel_map())
    except (ImportError, AttributeError):  # pragma: no cover - fallback while spectral.py is absent
        import pandas as pd

        from .._data import SPECTRAL_CHANNELS_FILE

        with fits.open(SPECTRAL_CHANNELS_FILE) as hd:
            t = hd["SPECTRAL_CHANNELS"].data
            df = pd.DataFrame({n: np.asarray(t[n]).astype(np.float64) for n in t.names})
            df["DETECTOR"] = df["DETECTOR"].astype(int)
            df["SUBCHAN"] = df["SUBCHAN"].astype(int)
            cmap = np.array(hd["CHANNEL_MAP"].data, dtype=np.uint8)
        return df, cmap


def detector_band(detector: int) -> tuple[float, float]:
    """(min WL_MIN, max WL_MAX) of the detector's 17 channels [um]."""
    df = _tables()[0]
    t = df[df["DETECTOR"] == int(detector)]
    if t.empty:
        raise ValueError(f"detector must be 1-6, got {detector!r}")
    return float(t["WL_MIN"].min()), float(t["WL_MAX"].max())


@functools.lru_cache(maxsize=1)
def _channel_centre_rows() -> tuple[np.ndarray, np.ndarray]:
    """Polynomial fits (deg 4 in x/1020-1) of the centre row of channels 1..17: coef (17, 5)."""
    cmap = _tables()[1]
    xs = np.arange(0, cmap.shape[1], 8)
    rows = np.arange(cmap.shape[0], dtype=np.float64)
    coefs = []
    for k in range(1, 18):
        centres = []
        for x in xs:
            sel = cmap[:, x] == k
            centres.append(rows[sel].mean() if sel.any() else np.nan)
        c = np.asarray(centres)
        ok = np.isfinite(c)
        coefs.append(np.polyfit(xs[ok] / 1019.5 - 1.0, c[ok], 4))
    return np.asarray(coefs), xs


def lvf_model(detector: int, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Smooth linear-variable-filter model: (central wavelength, bandwidth) [um] at 0-based (x, y).

    Follows the CHANNEL_MAP geometry: the fractional channel index at (x, y) comes from the
    fitted centre rows of channels 1-17 in column x (wavelength decreasing with y, curved
    along x); the wavelength is the log-linear interpolation of the channel WAVELENGTHs (linear
    extrapolation beyond channels 1 and 17); bandwidth = lambda / R(lambda) with R interpolated.
    """
    df = _tables()[0]
    t = df[df["DETECTOR"] == int(detector)].sort_values("SUBCHAN")
    if len(t) != 17:
        raise ValueError(f"detector must be 1-6, got {detector!r}")
    coefs, _ = _channel_centre_rows()
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    shape = np.broadcast_shapes(x.shape, y.shape)
    u = x / 1019.5 - 1.0
    # centre rows of channels 1-17 (decreasing with k), evaluated on x before broadcasting
    rows = [np.broadcast_to(np.polyval(c, u), shape) for c in coefs]
    y = np.broadcast_to(y, shape)
    # fractional channel index k(y): linear in row between centres, extrapolated at the ends
    kk = np.arange(1, 18, dtype=np.float64)
    above = np.zeros(shape, dtype=np.intp)
    for r in rows:
        above += r > y
    idx = np.clip(above - 1, 0, 15)  # rows[idx] > y >= rows[idx+1]
    r0 = np.choose(idx, rows)
    r1 = np.choose(idx + 1, rows)
    k = kk[idx] + (r0 - y) / (r0 - r1)
    lnw = np.log(t["WAVELENGTH"].to_numpy())
    ki = np.clip(np.floor(k).astype(int), 1, 16)
    frac = k - ki
    lam = np.exp(lnw[ki - 1] + frac * (lnw[ki] - lnw[ki - 1]))
    rr = np.interp(lam, t["WAVELENGTH"].to_numpy(), t["R"].to_numpy())
    return lam, lam / rr


def wave_control_points(detector: int, grid: str = "qr2") -> tuple[np.ndarray, np.ndarray]:
    """1-based control-point vectors (X, Y) of the WCS-WAVE table.

    ``qr2``: regular 11 x 11. ``qr3``: regular 9 x 9, plus a duplicated edge row on the
    dichroic side for D3 (Y = 1, its long-wavelength edge) and D4 (Y = 2040, its
    short-wavelength edge), with identical values (a zero-length interval readers must accept).
    """
    if grid == "qr2":
        v = np.linspace(1.0, float(NPIX), 11)
        return v, v.copy()
    if grid == "qr3":
        v = np.linspace(1.0, float(NPIX), 9)
        ys = v.copy()
        if int(detector) == 3:
            ys = np.concatenate([[1.0], ys])
        elif int(detector) == 4:
            ys = np.concatenate([ys, [float(NPIX)]])
        return v.copy(), ys
    raise ValueError(f"wave grid must be 'qr2' or 'qr3', got {grid!r}")


def wave_table(detector: int, grid: str = "qr2") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, VALUES) of the WCS-WAVE table; VALUES has numpy shape ``(nY, nX, 2)`` (FITS dims
    ``(2, nX, nY)``): ``VALUES[j, i] = (wavelength, bandwidth)`` um at 1-based (X[i], Y[j])."""
    tx, ty = wave_control_points(detector, grid)
    xx, yy = np.meshgrid(tx - 1.0, ty - 1.0)
    lam, bw = lvf_model(detector, xx, yy)
    return tx, ty, np.stack([lam, bw], axis=-1)


def _interval(knots: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower knot index and fraction for 1-D linear interpolation/extrapolation.

    Zero-length intervals (duplicated knots) are skipped; beyond the ends the outermost
    non-degenerate interval is extrapolated linearly.
    """
    knots = np.asarray(knots, dtype=np.float64)
    good = np.nonzero(np.diff(knots) > 0)[0]
    if good.size == 0:
        raise ValueError("wave table index vector needs at least two distinct control points")
    j = np.clip(np.searchsorted(knots[good], p, side="right") - 1, 0, good.size - 1)
    i = good[j]
    f = (p - knots[i]) / (knots[i + 1] - knots[i])
    return i, f


def wave_lookup_bilinear(
    table_x: ArrayLike, table_y: ArrayLike, values: ArrayLike, x: ArrayLike, y: ArrayLike,
    crpix: tuple[float, float] = (1.0, 1.0), crval: tuple[float, float] = (1.0, 1.0),
) -> tuple[np.ndarray, np.ndarray]:
    """Bilinear lookup in a WCS-WAVE table: (wavelength, bandwidth) [um] at 0-based (x, y).

    ``values`` is the cell as read from the file, numpy shape ``(nY, nX, 2)`` (a leading row
    axis of length 1 is accepted). Table coordinate = ``x + 1 - CRPIX1W + CRVAL1W`` (and y);
    the defaults are the full-frame values. A row vector ``x`` (1, nx) with a column vector
    ``y`` (ny, 1) takes a fast separable path and returns (ny, nx) maps. Matches astropy/wcslib ``WAVE-TAB`` at pixel
    positions inside the control-point range; duplicated control points are skipped.
    """
    vals = np.asarray(values, dtype=np.float64)
    if vals.ndim == 4 and vals.shape[0] == 1:
        vals = vals[0]
    tx = np.asarray(table_x, dtype=np.float64).ravel()
    ty = np.asarray(table_y, dtype=np.float64).ravel()
    if vals.shape != (ty.size, tx.size, 2):
        raise ValueError(f"WCS-WAVE VALUES shape {vals.shape} != (nY={ty.size}, nX={tx.size}, 2)")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx = 1.0 - crpix[0] + crval[0]
    dy = 1.0 - crpix[1] + crval[1]
    if x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1:
        # separable grid (x row vector, y column vector): interpolate along x, then along y
        ix, fx = _interval(tx, x[0] + dx)
        iy, fy = _interval(ty, y[:, 0] + dy)
        out = []
        for m in range(2):
            v = vals[..., m]
            rows = (1 - fx)[None, :] * v[:, ix] + fx[None, :] * v[:, ix + 1]  # (nY, nx)
            out.append((1 - fy)[:, None] * rows[iy] + fy[:, None] * rows[iy + 1])
        return out[0], out[1]
    x, y = np.broadcast_arrays(x, y)
    ix, fx = _interval(tx, x + dx)
    iy, fy = _interval(ty, y + dy)
    out = []
    for m in range(2):
        v = vals[..., m]
        out.append(
            (1 - fy) * ((1 - fx) * v[iy, ix] + fx * v[iy, ix + 1])
            + fy * ((1 - fx) * v[iy + 1, ix] + fx * v[iy + 1, ix + 1])
        )
    return out[0], out[1]


# ── celestial geometry ───────────────────────────────────────────────────────


def _sip_terms(order: int, min_order: int) -> list[tuple[int, int]]:
    return [(p, q) for n in range(min_order, order + 1) for p in range(n + 1) for q in [n - p]]


def default_sip(detector: int) -> tuple[dict[str, float], dict[str, float]]:
    """Forward SIP A, B coefficients (``'p_q' -> coef``), distortion ~3-6 pixels at the corners."""
    d = int(detector)
    s = 0.5 * (1.0 + 0.1 * (d - 3.5))
    a = {"2_0": 2.0e-6 * s, "1_1": -1.2e-6 * s, "0_2": 1.0e-6 * s, "3_0": -1.5e-9 * s, "2_1": 0.6e-9 * s,
         "1_2": -1.1e-9 * s, "0_3": 0.4e-9 * s}
    b = {"2_0": -0.8e-6 * s, "1_1": 1.6e-6 * s, "0_2": -1.4e-6 * s, "3_0": 0.5e-9 * s, "2_1": -1.3e-9 * s,
         "1_2": 0.7e-9 * s, "0_3": -1.6e-9 * s}
    return a, b


def _poly(coef: dict[str, float], u: np.ndarray, v: np.ndarray) -> np.ndarray:
    out = np.zeros(np.broadcast(u, v).shape)
    for key, c in coef.items():
        p, q = (int(t) for t in key.split("_"))
        out = out + c * u**p * v**q
    return out


def fit_inverse_sip(a: dict[str, float], b: dict[str, float], order: int = INV_SIP_ORDER,
                    half_range: float = 1100.0) -> tuple[dict[str, float], dict[str, float]]:
    """Least-squares AP, BP (all terms 0 <= p+q <= order) with u = U + AP(U, V) on a grid."""
    g = np.linspace(-half_range, half_range, 61)
    u, v = (m.ravel() for m in np.meshgrid(g, g))
    uu = u + _poly(a, u, v)
    vv = v + _poly(b, u, v)
    terms = _sip_terms(order, 0)
    sc = half_range
    m = np.stack([(uu / sc) ** p * (vv / sc) ** q for p, q in terms], axis=1)
    ca = np.linalg.lstsq(m, u - uu, rcond=None)[0]
    cb = np.linalg.lstsq(m, v - vv, rcond=None)[0]
    ap = {f"{p}_{q}": float(c / sc ** (p + q)) for (p, q), c in zip(terms, ca)}
    bp = {f"{p}_{q}": float(c / sc ** (p + q)) for (p, q), c in zip(terms, cb)}
    return ap, bp


@dataclass
class FrameMeta:
    """Everything defining one simulated frame (JSON-serialisable via ``asdict``).

    ``crpix`` is the FITS 1-based reference pixel of this file (shifted in cutouts);
    ``x0, y0`` = parent-frame 0-based position of this file's pixel (0, 0); ``cd`` in
    degrees/pixel; ``pa_deg`` = angle of detector +y from north through east.
    """

    detector: int
    obsid: str
    ra: float
    dec: float
    pa_deg: float
    cd: list[list[float]]
    sip_a: dict[str, float]
    sip_b: dict[str, float]
    sip_ap: dict[str, float]
    sip_bp: dict[str, float]
    crpix: tuple[float, float] = (1020.5, 1020.5)
    shape: tuple[int, int] = (NPIX, NPIX)
    x0: int = 0
    y0: int = 0
    release: str = "qr2"
    plan: str = ""
    version: str = "l2b-v12-2025-164"
    mjd_beg: float = 60800.0
    mjd_end: float = 60800.0013
    psf_fwhm_arcsec: float = DEFAULT_PSF_FWHM_PIX * PIXSCALE_ARCSEC
    zodi_level: float = 1.0
    zodi_scale_true: float = 1.0
    noise_scale: float = 1.0
    seed: int = 0
    relpath: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["crpix"] = list(self.crpix)
        d["shape"] = list(self.shape)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FrameMeta:
        d = dict(d)
        d["crpix"] = tuple(d["crpix"])
        d["shape"] = tuple(d["shape"])
        return cls(**d)

    @property
    def wave_grid(self) -> str:
        return "qr2" if self.release == "qr2" else "qr3"

    @property
    def mjd_avg(self) -> float:
        return 0.5 * (self.mjd_beg + self.mjd_end)


def cd_matrix(pa_deg: float, pixscale_deg: float = PIXSCALE_DEG) -> list[list[float]]:
    """CD matrix [deg/pixel] with RA increasing to the left and detector +y at ``pa_deg`` E of N."""
    t = math.radians(pa_deg)
    c, s = math.cos(t), math.sin(t)
    return [[-pixscale_deg * c, pixscale_deg * s], [pixscale_deg * s, pixscale_deg * c]]


def make_frame_meta(detector: int, ra: float, dec: float, pa_deg: float, obsid: str, **kw: Any) -> FrameMeta:
    """A full-frame :class:`FrameMeta` with the default SIP distortion of ``detector``."""
    a, b = default_sip(detector)
    ap, bp = fit_inverse_sip(a, b)
    return FrameMeta(detector=int(detector), obsid=obsid, ra=float(ra) % 360.0, dec=float(dec),
                     pa_deg=float(pa_deg), cd=cd_matrix(pa_deg), sip_a=a, sip_b=b, sip_ap=ap, sip_bp=bp, **kw)


def frame_pixel_to_world(meta: FrameMeta, x: ArrayLike, y: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Intended sky position (ra, dec) [deg] of 0-based file pixel (x, y): CD @ (u + f, v + g), TAN."""
    u = np.asarray(x, dtype=np.float64) + 1.0 - meta.crpix[0]
    v = np.asarray(y, dtype=np.float64) + 1.0 - meta.crpix[1]
    uu = u + _poly(meta.sip_a, u, v)
    vv = v + _poly(meta.sip_b, u, v)
    cd = meta.cd
    xi = cd[0][0] * uu + cd[0][1] * vv
    eta = cd[1][0] * uu + cd[1][1] * vv
    return gnomonic_inverse(xi, eta, meta.ra, meta.dec)


def frame_world_to_pixel(meta: FrameMeta, ra: ArrayLike, dec: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Exact inverse of :func:`frame_pixel_to_world` (fixed-point iteration on the forward SIP)."""
    xi, eta = gnomonic(ra, dec, meta.ra, meta.dec)
    cd = np.asarray(meta.cd)
    inv = np.linalg.inv(cd)
    uu = inv[0, 0] * xi + inv[0, 1] * eta
    vv = inv[1, 0] * xi + inv[1, 1] * eta
    u, v = uu.copy(), vv.copy()
    for _ in range(60):
        un = uu - _poly(meta.sip_a, u, v)
        vn = vv - _poly(meta.sip_b, u, v)
        done = np.nanmax(np.abs(un - u)) < 1e-11 and np.nanmax(np.abs(vn - v)) < 1e-11 if un.size else True
        u, v = un, vn
        if done:
            break
    return u - 1.0 + meta.crpix[0], v - 1.0 + meta.crpix[1]


def wcs_cards(meta: FrameMeta) -> list[tuple[str, Any, str]]:
    """Header cards of the celestial TAN-SIP WCS, the zero-based 'A' WCS and the 'W' WAVE-TAB WCS."""
    cards: list[tuple[str, Any, str]] = [
        ("WCSAXES", 2, "number of WCS axes"),
        ("CTYPE1", "RA---TAN-SIP", "TAN projection with SIP distortion"),
        ("CTYPE2", "DEC--TAN-SIP", "TAN projection with SIP distortion"),
        ("CUNIT1", "deg", ""), ("CUNIT2", "deg", ""),
        ("CRPIX1", float(meta.crpix[0]), "reference pixel (1-based)"),
        ("CRPIX2", float(meta.crpix[1]), "reference pixel (1-based)"),
        ("CRVAL1", float(meta.ra), "[deg] RA at reference pixel"),
        ("CRVAL2", float(meta.dec), "[deg] Dec at reference pixel"),
        ("CD1_1", float(meta.cd[0][0]), ""), ("CD1_2", float(meta.cd[0][1]), ""),
        ("CD2_1", float(meta.cd[1][0]), ""), ("CD2_2", float(meta.cd[1][1]), ""),
        ("RADESYS", "ICRS", ""),
        ("A_ORDER", SIP_ORDER, ""),
    ]
    for k, c in meta.sip_a.items():
        cards.append((f"A_{k}", float(c), ""))
    cards.append(("B_ORDER", SIP_ORDER, ""))
    for k, c in meta.sip_b.items():
        cards.append((f"B_{k}", float(c), ""))
    cards.append(("AP_ORDER", INV_SIP_ORDER, ""))
    for k, c in meta.sip_ap.items():
        cards.append((f"AP_{k}", float(c), ""))
    cards.append(("BP_ORDER", INV_SIP_ORDER, ""))
    for k, c in meta.sip_bp.items():
        cards.append((f"BP_{k}", float(c), ""))
    cards += [
        ("WCSNAMEA", "DETECTOR", "zero-based parent detector pixels"),
        ("WCSAXESA", 2, ""),
        ("CTYPE1A", "X", ""), ("CTYPE2A", "Y", ""),
        ("CRPIX1A", float(1 - meta.x0), "parent pixel = x + 1 - CRPIX1A"),
        ("CRPIX2A", float(1 - meta.y0), "parent pixel = y + 1 - CRPIX2A"),
        ("CRVAL1A", 0.0, ""), ("CRVAL2A", 0.0, ""),
        ("CDELT1A", 1.0, ""), ("CDELT2A", 1.0, ""),
        ("WCSNAMEW", "WAVELENGTH", "central wavelength and bandwidth lookup"),
        ("WCSAXESW", 2, ""),
        ("CTYPE1W", "WAVE-TAB", ""), ("CTYPE2W", "WAVE-TAB", ""),
        ("CUNIT1W", "um", ""), ("CUNIT2W", "um", ""),
        ("CRPIX1W", float(1 - meta.x0), ""), ("CRPIX2W", float(1 - meta.y0), ""),
        ("CRVAL1W", 1.0, ""), ("CRVAL2W", 1.0, ""),
        ("PS1_0W", "WCS-WAVE", "table extension"), ("PS1_1W", "VALUES", "coordinate array"),
        ("PS1_2W", "X", "index vector"), ("PS2_0W", "WCS-WAVE", "table extension"),
        ("PS2_1W", "VALUES", "coordinate array"), ("PS2_2W", "Y", "index vector"),
        ("PV1_3W", 1, "axis number in VALUES"), ("PV2_3W", 2, "axis number in VALUES"),
    ]
    return cards


# ── zodi, noise, flags ───────────────────────────────────────────────────────

#: Zodiacal-light spectrum parameters: scattered ``a * lam**b`` plus thermal ``c * lam**d`` [MJy/sr].
ZODI_PARAMS = {"scattered_amp": 0.25, "scattered_index": -0.7, "thermal_amp": 0.003, "thermal_index": 3.0,
               "gradient_x": 0.02, "gradient_y": -0.015}
#: Noise model: VARIANCE = READ_NOISE**2 + PHOTON_GAIN * max(signal, 0) [(MJy/sr)^2].
READ_NOISE = 0.08
PHOTON_GAIN = 0.01


def zodi_spectrum(lam: ArrayLike) -> np.ndarray:
    """Zodiacal light at unit level [MJy/sr] versus wavelength [um]."""
    lam = np.asarray(lam, dtype=np.float64)
    p = ZODI_PARAMS
    ln = np.log(lam)
    zodi: np.ndarray = p["scattered_amp"] * np.exp(p["scattered_index"] * ln) + p["thermal_amp"] * np.exp(
        p["thermal_index"] * ln
    )
    return zodi


def zodi_map(meta: FrameMeta, lam: np.ndarray) -> np.ndarray:
    """ZODI model on the file's pixels [MJy/sr]: spectrum(lam) * level * (1 + linear gradient over the parent frame)."""
    ny, nx = lam.shape
    gx = (np.arange(nx) + meta.x0 - (NPIX - 1) / 2) / (NPIX / 2)
    gy = (np.arange(ny) + meta.y0 - (NPIX - 1) / 2) / (NPIX / 2)
    grad = 1.0 + ZODI_PARAMS["gradient_x"] * gx[None, :] + ZODI_PARAMS["gradient_y"] * gy[:, None]
    return zodi_spectrum(lam) * meta.zodi_level * grad
