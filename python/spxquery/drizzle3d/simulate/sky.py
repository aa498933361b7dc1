"""Analytic sky model of the simulator, its exact evaluation and cube scoring.

Conventions: angles in degrees unless a name says arcsec, wavelengths in um,
surface brightness in MJy/sr, 0-based pixels. The tangent plane used for local
geometry is the gnomonic projection (xi east, eta north) about a reference point.

Units of spectra: a :class:`PointSource` spectrum is a flux density in mJy; an
:class:`ExtendedSource` spectrum is its central (peak) surface brightness in MJy/sr
before PSF convolution. A spectrum is a power-law continuum
``amp * (lambda / 1 um) ** index`` plus Gaussian emission lines
``amp * exp(-(lambda - centre)**2 / (2 sigma**2))`` (same units as the continuum).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

__all__ = [
    "EmissionLine",
    "Spectrum",
    "PointSource",
    "ExtendedSource",
    "SkyModel",
    "gnomonic",
    "gnomonic_inverse",
    "band_average",
    "truth_cube",
    "centroid_offsets",
    "emission_line_centre",
    "normalised_residuals",
    "score_cube",
    "MJY_PER_MJY",
]

#: 1 mJy expressed in MJy.
MJY_PER_MJY = 1e-9
_ARCSEC_RAD = math.pi / (180.0 * 3600.0)
_DEG_RAD = math.pi / 180.0
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))

_erf_u = np.frompyfunc(math.erf, 1, 1)


def _erf(x: ArrayLike) -> np.ndarray:
    """Exact (libm) error function, vectorised."""
    return np.asarray(_erf_u(np.asarray(x, dtype=np.float64)), dtype=np.float64)


def _gauss_legendre_unit(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes on [-0.5, 0.5] and weights summing to 1."""
    t, w = np.polynomial.legendre.leggauss(n)
    return 0.5 * t, 0.5 * w


# ── tangent-plane geometry ───────────────────────────────────────────────────


def gnomonic(ra: ArrayLike, dec: ArrayLike, ra0: ArrayLike, dec0: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Gnomonic (TAN) projection of (ra, dec) about (ra0, dec0): (xi east, eta north) in degrees."""
    ra = np.asarray(ra, dtype=np.float64) * _DEG_RAD
    dec = np.asarray(dec, dtype=np.float64) * _DEG_RAD
    ra0 = np.asarray(ra0, dtype=np.float64) * _DEG_RAD
    dec0 = np.asarray(dec0, dtype=np.float64) * _DEG_RAD
    dra = ra - ra0
    cd, sd, cd0, sd0 = np.cos(dec), np.sin(dec), np.cos(dec0), np.sin(dec0)
    cosc = sd0 * sd + cd0 * cd * np.cos(dra)
    xi = cd * np.sin(dra) / cosc
    eta = (cd0 * sd - sd0 * cd * np.cos(dra)) / cosc
    return np.degrees(xi), np.degrees(eta)


def gnomonic_inverse(xi: ArrayLike, eta: ArrayLike, ra0: ArrayLike, dec0: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`gnomonic`: (xi, eta) degrees about (ra0, dec0) -> (ra, dec) degrees, ra in [0, 360)."""
    xi = np.asarray(xi, dtype=np.float64) * _DEG_RAD
    eta = np.asarray(eta, dtype=np.float64) * _DEG_RAD
    ra0r = np.asarray(ra0, dtype=np.float64) * _DEG_RAD
    dec0r = np.asarray(dec0, dtype=np.float64) * _DEG_RAD
    cd0, sd0 = np.cos(dec0r), np.sin(dec0r)
    rho = np.sqrt(1.0 + xi * xi + eta * eta)
    dec = np.arcsin((sd0 + eta * cd0) / rho)
    ra = ra0r + np.arctan2(xi, cd0 - eta * sd0)
    return np.mod(np.degrees(ra), 360.0), np.degrees(dec)


# ── spectra ──────────────────────────────────────────────────────────────────


@dataclass
class EmissionLine:
    """Gaussian emission line: centre and sigma in um, peak amplitude in the spectrum's units."""

    centre_um: float
    sigma_um: float
    amplitude: float


@dataclass
class Spectrum:
    """Power-law continuum ``amp * (lambda/1um)**index`` plus Gaussian emission lines."""

    continuum_amp: float
    continuum_index: float = 0.0
    lines: list[EmissionLine] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lines = [ln if isinstance(ln, EmissionLine) else EmissionLine(**ln) for ln in self.lines]

    def value(self, lam: ArrayLike) -> np.ndarray:
        """Spectrum at wavelength ``lam`` [um]."""
        lam = np.asarray(lam, dtype=np.float64)
        out = self.continuum_amp * lam**self.continuum_index
        for ln in self.lines:
            out = out + ln.amplitude * np.exp(-0.5 * ((lam - ln.centre_um) / ln.sigma_um) ** 2)
        return out

    def band_average(self, lam_lo: ArrayLike, lam_hi: ArrayLike) -> np.ndarray:
        """Exact mean of the spectrum over the top-hat ``[lam_lo, lam_hi]`` [um] (vectorised)."""
        return band_average(self, lam_lo, lam_hi)


def band_average(spec: Spectrum, lam_lo: ArrayLike, lam_hi: ArrayLike) -> np.ndarray:
    """Exact mean of ``spec`` over ``[lam_lo, lam_hi]`` um; zero-width bands give the point value."""
    a = np.asarray(lam_lo, dtype=np.float64)
    b = np.asarray(lam_hi, dtype=np.float64)
    a, b = np.broadcast_arrays(a, b)
    width = b - a
    mid = 0.5 * (a + b)
    narrow = np.abs(width) <= 1e-12 * np.maximum(np.abs(mid), 1e-300)
    safe_w = np.where(narrow, 1.0, width)
    k = spec.continuum_index
    if abs(k + 1.0) < 1e-12:
        cont = spec.continuum_amp * (np.log(np.where(narrow, 1.0, b)) - np.log(np.where(narrow, 1.0, a))) / safe_w
    else:
        cont = spec.continuum_amp * (b ** (k + 1.0) - a ** (k + 1.0)) / ((k + 1.0) * safe_w)
    out = np.where(narrow, spec.continuum_amp * mid**k, cont)
    for ln in spec.lines:
        s2 = math.sqrt(2.0) * ln.sigma_um
        integ = ln.amplitude * ln.sigma_um * math.sqrt(math.pi / 2.0) * (
            _erf((b - ln.centre_um) / s2) - _erf((a - ln.centre_um) / s2)
        )
        point = ln.amplitude * np.exp(-0.5 * ((mid - ln.centre_um) / ln.sigma_um) ** 2)
        out = out + np.where(narrow, point, integ / safe_w)
    return out


# ── sources ──────────────────────────────────────────────────────────────────


@dataclass
class PointSource:
    """Unresolved source at (ra, dec) degrees; spectrum = flux density in mJy."""

    ra: float
    dec: float
    spectrum: Spectrum
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spectrum, Spectrum):
            self.spectrum = Spectrum(**self.spectrum)


@dataclass
class ExtendedSource:
    """Elliptical Gaussian: sigmas in arcsec, PA of the major axis in degrees east of north;
    spectrum = central surface brightness in MJy/sr (before PSF convolution)."""

    ra: float
    dec: float
    sigma_major_arcsec: float
    sigma_minor_arcsec: float
    pa_deg: float
    spectrum: Spectrum
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.spectrum, Spectrum):
            self.spectrum = Spectrum(**self.spectrum)

    def covariance_arcsec2(self, psf_sigma_arcsec: float = 0.0) -> np.ndarray:
        """2x2 covariance in the (xi east, eta north) plane [arcsec^2], PSF variance added."""
        pa = math.radians(self.pa_deg)
        u = np.array([math.sin(pa), math.cos(pa)])  # major axis direction (east, north)
        v = np.array([math.cos(pa), -math.sin(pa)])
        cov = self.sigma_major_arcsec**2 * np.outer(u, u) + self.sigma_minor_arcsec**2 * np.outer(v, v)
        return cov + psf_sigma_arcsec**2 * np.eye(2)


def _gauss2d(dxi: np.ndarray, deta: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """exp(-0.5 d^T cov^-1 d) for offsets in arcsec."""
    inv = np.linalg.inv(cov)
    q = inv[0, 0] * dxi * dxi + 2.0 * inv[0, 1] * dxi * deta + inv[1, 1] * deta * deta
    return np.exp(-0.5 * q)


@dataclass
class SkyModel:
    """The true sky: point sources, extended sources, and the instrument PSF FWHM [arcsec]."""

    point_sources: list[PointSource] = field(default_factory=list)
    extended_sources: list[ExtendedSource] = field(default_factory=list)
    psf_fwhm_arcsec: float = 2.2 * 6.15

    def __post_init__(self) -> None:
        self.point_sources = [s if isinstance(s, PointSource) else PointSource(**s) for s in self.point_sources]
        self.extended_sources = [
            s if isinstance(s, ExtendedSource) else ExtendedSource(**s) for s in self.extended_sources
        ]

    # serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (see module docstring for units)."""
        d = asdict(self)
        d["units"] = {
            "point_source_spectrum": "mJy",
            "extended_source_spectrum": "MJy/sr (peak, before PSF)",
            "wavelength": "um",
            "angles": "deg; sigmas and PSF FWHM in arcsec",
        }
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SkyModel":
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k != "units"}
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "SkyModel":
        return cls.from_dict(json.loads(text))

    @property
    def psf_sigma_arcsec(self) -> float:
        return self.psf_fwhm_arcsec * _FWHM_TO_SIGMA

    # evaluation
    def mean_surface_brightness(
        self,
        ra: ArrayLike,
        dec: ArrayLike,
        lam_lo: ArrayLike,
        lam_hi: ArrayLike,
        pixel_size_deg: float,
        psf: bool = True,
        n_quad: int = 8,
    ) -> np.ndarray:
        """True surface brightness [MJy/sr] averaged over a square pixel and a wavelength band.

        The pixel is a square of side ``pixel_size_deg`` centred on (ra, dec), aligned with
        RA/Dec in the tangent plane at that position; the band is ``[lam_lo, lam_hi]`` um.
        ``ra, dec, lam_lo, lam_hi`` broadcast together. ``psf=True`` convolves the sky with the
        Gaussian PSF (what a drizzled cube should show); ``psf=False`` gives the intrinsic sky.
        Point sources are integrated exactly (erf); extended sources with an ``n_quad`` x ``n_quad``
        Gauss-Legendre rule over the pixel.
        """
        ra, dec = np.broadcast_arrays(np.asarray(ra, dtype=np.float64), np.asarray(dec, dtype=np.float64))
        lam_lo, lam_hi = np.broadcast_arrays(np.asarray(lam_lo, dtype=np.float64), np.asarray(lam_hi, dtype=np.float64))
        # spatial factors depend on position only, spectral factors on the band only: evaluate each
        # on its own (un-broadcast) shape and combine by broadcasting
        out = np.zeros(np.broadcast_shapes(ra.shape, lam_lo.shape), dtype=np.float64)
        if out.size == 0:
            return out
        s = float(pixel_size_deg)
        psf_sig_deg = (self.psf_sigma_arcsec if psf else 0.0) / 3600.0
        omega = (s * _DEG_RAD) ** 2
        for src in self.point_sources:
            xi, eta = gnomonic(src.ra, src.dec, ra, dec)
            sig = max(psf_sig_deg, 1e-12)
            r2 = math.sqrt(2.0) * sig
            px = 0.5 * (_erf((0.5 * s - xi) / r2) - _erf((-0.5 * s - xi) / r2))
            py = 0.5 * (_erf((0.5 * s - eta) / r2) - _erf((-0.5 * s - eta) / r2))
            out += px * py * (MJY_PER_MJY / omega) * src.spectrum.band_average(lam_lo, lam_hi)
        t, w = _gauss_legendre_unit(n_quad)
        for src in self.extended_sources:
            cov = src.covariance_arcsec2(psf_sig_deg * 3600.0)
            cov0 = src.covariance_arcsec2(0.0)
            peak = math.sqrt(np.linalg.det(cov0) / np.linalg.det(cov))
            xi, eta = gnomonic(src.ra, src.dec, ra, dec)
            xi_s = (xi * 3600.0)[..., None, None]
            eta_s = (eta * 3600.0)[..., None, None]
            nx = t * s * 3600.0
            ny = (t * s * 3600.0)[:, None]
            g = _gauss2d(nx - xi_s, ny - eta_s, cov)
            spatial = peak * np.einsum("...ij,i,j->...", g, w, w)
            out += spatial * src.spectrum.band_average(lam_lo, lam_hi)
        return out

    def bright_positions(self) -> list[tuple[float, float]]:
        """(ra, dec) of every source."""
        return [(s.ra, s.dec) for s in self.point_sources] + [(s.ra, s.dec) for s in self.extended_sources]


# ── truth cubes and scoring ──────────────────────────────────────────────────


def _zgrid_edges(zgrid: Any) -> tuple[np.ndarray, np.ndarray]:
    """(lam_lo, lam_hi) arrays from a ZGrid, an edges array, or a (lo, hi) pair."""
    if hasattr(zgrid, "edges"):
        e = np.asarray(zgrid.edges, dtype=np.float64)
        return e[:-1], e[1:]
    if isinstance(zgrid, tuple) and len(zgrid) == 2:
        return np.asarray(zgrid[0], dtype=np.float64), np.asarray(zgrid[1], dtype=np.float64)
    e = np.asarray(zgrid, dtype=np.float64)
    if e.ndim != 1 or e.size < 2:
        raise ValueError(f"zgrid must be a ZGrid, 1-D edges (>= 2) or a (lo, hi) pair; got shape {e.shape}")
    return e[:-1], e[1:]


def _celestial(wcs: Any) -> Any:
    return wcs.celestial if getattr(wcs, "naxis", 2) > 2 else wcs


def truth_cube(
    sky: SkyModel,
    output_wcs: Any,
    zgrid: Any,
    psf: bool = True,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """True cube ``(n_z, ny, nx)`` [MJy/sr]: the sky averaged over each output pixel and bin.

    ``output_wcs`` is a 2-D (or 3-D, celestial part used) astropy WCS; ``shape`` = (ny, nx)
    defaults to ``output_wcs.array_shape``. ``zgrid`` is a ZGrid (uses ``edges``), an edges
    array, or a ``(lam_lo, lam_hi)`` pair. The pixel size is the WCS's mean pixel scale.
    """
    cw = _celestial(output_wcs)
    if shape is None:
        if cw.array_shape is None:
            raise ValueError("truth_cube: output_wcs has no array_shape; pass shape=(ny, nx)")
        shape = tuple(cw.array_shape)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    ra, dec = cw.wcs_pix2world(xx.astype(float), yy.astype(float), 0)
    scales = cw.proj_plane_pixel_scales()
    pix = float(np.mean([abs(float(getattr(v, "value", v))) for v in scales]))
    lo, hi = _zgrid_edges(zgrid)
    cube = sky.mean_surface_brightness(
        ra[None, :, :], dec[None, :, :], lo[:, None, None], hi[:, None, None], pix, psf=psf
    )
    return cube


def _pixel_gauss_model(p: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    amp, x0, y0, sig, bg = p
    sig = abs(sig) + 1e-6
    r2 = math.sqrt(2.0) * sig
    px = 0.5 * (_erf((xx + 0.5 - x0) / r2) - _erf((xx - 0.5 - x0) / r2))
    py = 0.5 * (_erf((yy + 0.5 - y0) / r2) - _erf((yy - 0.5 - y0) / r2))
    return amp * px * py + bg


def _fit_pixel_gaussian(img: np.ndarray, xx: np.ndarray, yy: np.ndarray, p0: np.ndarray) -> np.ndarray:
    """Levenberg-Marquardt fit of a pixel-integrated circular Gaussian + constant."""
    p = p0.astype(np.float64).copy()
    lam = 1e-3
    res = img - _pixel_gauss_model(p, xx, yy)
    cost = float(np.sum(res**2))
    for _ in range(100):
        jac = np.empty((img.size, p.size))
        for k in range(p.size):
            dp = np.zeros_like(p)
            dp[k] = 1e-6 * max(abs(p[k]), 1e-3)
            jac[:, k] = ((_pixel_gauss_model(p + dp, xx, yy) - _pixel_gauss_model(p - dp, xx, yy)) / (2 * dp[k])).ravel()
        a = jac.T @ jac
        g = jac.T @ res.ravel()
        step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-30), g)
        pn = p + step
        rn = img - _pixel_gauss_model(pn, xx, yy)
        cn = float(np.sum(rn**2))
        if cn <= cost:
            conv = abs(cost - cn) <= 1e-14 * max(cost, 1e-300) or np.max(np.abs(step[1:3])) < 1e-9
            p, res, cost = pn, rn, cn
            lam = max(lam / 10.0, 1e-12)
            if conv:
                break
        else:
            lam *= 10.0
            if lam > 1e12:
                break
    return p


def centroid_offsets(
    sci_image: np.ndarray,
    output_wcs: Any,
    sky: SkyModel,
    box_radius: int = 5,
) -> np.ndarray:
    """Per point source, fitted minus expected position (dx, dy) in output pixels.

    ``sci_image`` is a 2-D image (e.g. the wavelength-mean of a cube, NaNs ignored) on the
    celestial grid of ``output_wcs``. Each source is fitted with a pixel-integrated circular
    Gaussian plus constant in a ``(2*box_radius+1)^2`` box. Rows are NaN for sources outside
    the image or with too few finite pixels. Returns shape ``(n_point_sources, 2)``.
    """
    img = np.asarray(sci_image, dtype=np.float64)
    cw = _celestial(output_wcs)
    out = np.full((len(sky.point_sources), 2), np.nan)
    ny, nx = img.shape
    for i, src in enumerate(sky.point_sources):
        ex, ey = (float(v[0]) for v in cw.wcs_world2pix(np.array([src.ra]), np.array([src.dec]), 0))
        cx, cy = int(round(ex)), int(round(ey))
        x0, x1 = cx - box_radius, cx + box_radius + 1
        y0, y1 = cy - box_radius, cy + box_radius + 1
        if x0 < 0 or y0 < 0 or x1 > nx or y1 > ny:
            continue
        cut = img[y0:y1, x0:x1]
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        good = np.isfinite(cut)
        if good.sum() < 0.7 * cut.size:
            continue
        c, xg, yg = cut[good], xx[good], yy[good]
        bg0 = float(np.median(np.concatenate([cut[0][np.isfinite(cut[0])], cut[-1][np.isfinite(cut[-1])]]))) if cut.size else 0.0
        w = np.clip(c - bg0, 0, None)
        if w.sum() <= 0:
            continue
        mx, my = float((w * xg).sum() / w.sum()), float((w * yg).sum() / w.sum())
        p0 = np.array([w.sum(), mx, my, 1.0, bg0])
        p = _fit_pixel_gaussian(c, xg, yg, p0)
        out[i] = (p[1] - ex, p[2] - ey)
    return out


def emission_line_centre(
    spectrum: ArrayLike,
    wavelengths: ArrayLike,
    window: tuple[float, float] | None = None,
) -> float:
    """Centre [um] of the strongest emission line in a sampled spectrum.

    A quadratic continuum is fitted away from the line, then a Gaussian is fitted to the
    continuum-subtracted excess around its peak. ``window`` = (lo, hi) um restricts where the
    peak is searched. Returns NaN when no positive excess is found.
    """
    s = np.asarray(spectrum, dtype=np.float64)
    lam = np.asarray(wavelengths, dtype=np.float64)
    good = np.isfinite(s) & np.isfinite(lam)
    s, lam = s[good], lam[good]
    order = np.argsort(lam)
    s, lam = s[order], lam[order]
    if s.size < 5:
        return float("nan")
    search = np.ones(s.size, bool) if window is None else (lam >= window[0]) & (lam <= window[1])
    if not np.any(search):
        return float("nan")
    use = np.ones(s.size, bool)
    deg = 2
    peak, half = 0, 0.0
    for _ in range(3):
        d = min(deg, max(int(use.sum()) - 1, 0))
        coef = np.polyfit(lam[use], s[use], d)
        r = s - np.polyval(coef, lam)
        rs = np.where(search, r, -np.inf)
        peak = int(np.argmax(rs))
        if not r[peak] > 0:
            return float("nan")
        lo = peak
        while lo > 0 and r[lo - 1] > 0.5 * r[peak]:
            lo -= 1
        hi = peak
        while hi < s.size - 1 and r[hi + 1] > 0.5 * r[peak]:
            hi += 1
        half = max(lam[min(hi + 1, s.size - 1)] - lam[max(lo - 1, 0)], 1e-6) / 2.0
        use = np.abs(lam - lam[peak]) > 3.0 * half
        if use.sum() < 3:
            use = np.abs(lam - lam[peak]) > 1.5 * half
    sel = np.abs(lam - lam[peak]) <= 2.5 * half
    x, y = lam[sel], r[sel]
    # Gaussian fit (amp, centre, sigma) by Gauss-Newton from moment estimates
    wpos = np.clip(y, 0, None)
    c = float((wpos * x).sum() / wpos.sum())
    sig = max(float(np.sqrt((wpos * (x - c) ** 2).sum() / wpos.sum())), 1e-4)
    p = np.array([float(r[peak]), c, sig])
    for _ in range(50):
        a, c, sg = p
        e = np.exp(-0.5 * ((x - c) / sg) ** 2)
        model = a * e
        jac = np.stack([e, a * e * (x - c) / sg**2, a * e * (x - c) ** 2 / sg**3], axis=1)
        try:
            step = np.linalg.lstsq(jac, y - model, rcond=None)[0]
        except np.linalg.LinAlgError:
            break
        p = p + step
        if abs(step[1]) < 1e-10:
            break
    if not (np.isfinite(p[1]) and x.min() - half <= p[1] <= x.max() + half):
        return c
    return float(p[1])


def normalised_residuals(sci: ArrayLike, var: ArrayLike, truth: ArrayLike, mask: ArrayLike | None = None) -> np.ndarray:
    """``(sci - truth) / sqrt(var)`` at finite pixels with var > 0 (and inside ``mask``), 1-D."""
    sci = np.asarray(sci, dtype=np.float64)
    var = np.asarray(var, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    ok = np.isfinite(sci) & np.isfinite(var) & (var > 0) & np.isfinite(truth)
    if mask is not None:
        ok &= np.asarray(mask, dtype=bool)
    return (sci[ok] - truth[ok]) / np.sqrt(var[ok])


def score_cube(
    cube_sci: ArrayLike,
    cube_var: ArrayLike | None,
    truth: ArrayLike,
    *,
    signal_threshold: float | None = None,
    empty_threshold: float = 1e-4,
    sky: SkyModel | None = None,
    output_wcs: Any = None,
    wavelengths: ArrayLike | None = None,
) -> dict[str, Any]:
    """Simple scores of a cube against its truth (all arrays ``(n_z, ny, nx)``, MJy/sr).

    Keys: ``coverage`` (finite fraction), ``median_rel_error`` and ``median_rel_bias`` over voxels
    with truth > ``signal_threshold`` (default 10% of the truth's 99th percentile),
    ``residual_std`` (std of normalised residuals where truth < ``empty_threshold``; NaN without
    variance), ``n_signal``, ``n_empty``. With ``sky`` and ``output_wcs``: ``centroid_offsets``
    (per point source, output pixels, on the wavelength-mean image) and ``max_centroid_offset``.
    With ``sky``, ``output_wcs`` and ``wavelengths`` (bin centres, um): ``line_centre_errors``
    (um, per emission line of each extended source inside the wavelength range, measured at
    the pixel nearest the source centre) and ``max_line_centre_error``.
    """
    sci = np.asarray(cube_sci, dtype=np.float64)
    tru = np.asarray(truth, dtype=np.float64)
    if sci.shape != tru.shape:
        raise ValueError(f"score_cube: cube shape {sci.shape} != truth shape {tru.shape}")
    fin = np.isfinite(sci)
    res: dict[str, Any] = {"coverage": float(fin.mean()) if sci.size else 0.0}
    if signal_threshold is None:
        signal_threshold = 0.1 * float(np.nanpercentile(tru, 99)) if tru.size else 0.0
    sig = fin & (tru > signal_threshold) & (tru > 0)
    rel = (sci[sig] - tru[sig]) / tru[sig]
    res["n_signal"] = int(sig.sum())
    res["median_rel_error"] = float(np.median(np.abs(rel))) if rel.size else float("nan")
    res["median_rel_bias"] = float(np.median(rel)) if rel.size else float("nan")
    empty = fin & (np.abs(tru) < empty_threshold)
    res["n_empty"] = int(empty.sum())
    if cube_var is not None:
        nr = normalised_residuals(sci, cube_var, tru, empty)
        res["residual_std"] = float(np.std(nr)) if nr.size else float("nan")
    else:
        res["residual_std"] = float("nan")
    if sky is not None and output_wcs is not None:
        with np.errstate(all="ignore"):
            white = np.nanmean(sci, axis=0) if sci.ndim == 3 else sci
        offs = centroid_offsets(white, output_wcs, sky)
        res["centroid_offsets"] = offs
        res["max_centroid_offset"] = float(np.nanmax(np.hypot(offs[:, 0], offs[:, 1]))) if np.isfinite(offs).any() else float("nan")
        if wavelengths is not None and sci.ndim == 3:
            lam = np.asarray(wavelengths, dtype=np.float64)
            cw = _celestial(output_wcs)
            errs = []
            for src in sky.extended_sources:
                ex, ey = (int(round(float(v[0]))) for v in cw.wcs_world2pix(np.array([src.ra]), np.array([src.dec]), 0))
                if not (0 <= ey < sci.shape[1] and 0 <= ex < sci.shape[2]):
                    continue
                spec = sci[:, ey, ex]
                for ln in src.spectrum.lines:
                    if not (lam.min() + 3 * ln.sigma_um < ln.centre_um < lam.max() - 3 * ln.sigma_um):
                        continue
                    win = (ln.centre_um - 0.1 * ln.centre_um, ln.centre_um + 0.1 * ln.centre_um)
                    errs.append(emission_line_centre(spec, lam, window=win) - ln.centre_um)
            res["line_centre_errors"] = np.asarray(errs)
            res["max_line_centre_error"] = float(np.max(np.abs(errs))) if errs else float("nan")
    return res
