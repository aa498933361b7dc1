"""Analytic sky model of the simulator, its exact evaluation and the true cube it implies.

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
    "MJY_PER_MJY",
    "EmissionLine",
    "ExtendedSource",
    "PointSource",
    "SkyModel",
    "Spectrum",
    "band_average",
    "gnomonic",
    "gnomonic_inverse",
    "truth_cube",
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
    g: np.ndarray = np.exp(-0.5 * q)
    return g


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
    def from_dict(cls, d: dict[str, Any]) -> SkyModel:
        """Inverse of :meth:`to_dict`."""
        d = {k: v for k, v in d.items() if k != "units"}
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_json(cls, text: str) -> SkyModel:
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
        for ext in self.extended_sources:
            cov = ext.covariance_arcsec2(psf_sig_deg * 3600.0)
            cov0 = ext.covariance_arcsec2(0.0)
            peak = math.sqrt(np.linalg.det(cov0) / np.linalg.det(cov))
            xi, eta = gnomonic(ext.ra, ext.dec, ra, dec)
            xi_s = (xi * 3600.0)[..., None, None]
            eta_s = (eta * 3600.0)[..., None, None]
            nx = t * s * 3600.0
            ny = (t * s * 3600.0)[:, None]
            g = _gauss2d(nx - xi_s, ny - eta_s, cov)
            spatial = peak * np.einsum("...ij,i,j->...", g, w, w)
            out += spatial * ext.spectrum.band_average(lam_lo, lam_hi)
        return out

    def bright_positions(self) -> list[tuple[float, float]]:
        """(ra, dec) of every source."""
        return [(s.ra, s.dec) for s in self.point_sources] + [(s.ra, s.dec) for s in self.extended_sources]


# ── truth cubes ──────────────────────────────────────────────────


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
