"""Things in one exposure that are not the static sky: cosmic-ray hits, asteroids, satellite
trails (for outlier-rejection tests), and bright stars near saturation (a real, static source).

Off by default: :class:`Injections` with every count 0 injects nothing. Brightness is given in
units of each pixel's noise (``sqrt(VARIANCE)``) so a test can ask for "10-1000 sigma". Each
frame's injections are drawn from its own generator (``frame_rng(meta, 7)``): the same frame
gets the same outliers. Positions are within ``radius_px`` of ``meta.extra["centre_pixel"]``
(the field centre on the detector), so that cutouts hold them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from .instrument import FrameMeta, detector_band
from .sky import PointSource, Spectrum, gnomonic_inverse

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
#: Generator stream of the injections (render_frame uses 0 and 1).
_STREAM = 7


@dataclass(frozen=True)
class Injections:
    """Per frame: ``cosmic_rays`` hits (single pixels or clusters up to ``cr_cluster`` pixels a
    side, core ``cr_snr`` sigma, log-uniform), ``asteroids`` moving point sources (a new place in
    every frame; peak ``asteroid_snr`` sigma, spectrum ``(lambda / band centre) ** slope`` with
    a slope in [-2, 2]), ``trails`` satellite trails in a random ``trail_fraction`` of the frames
    (straight lines across the whole frame through the field, Gaussian profile of
    ``trail_width`` pixels sigma, ``trail_snr`` sigma)."""

    cosmic_rays: int = 0
    cr_snr: tuple[float, float] = (10.0, 1000.0)
    cr_cluster: int = 3
    asteroids: int = 0
    asteroid_snr: float = 500.0
    trails: int = 0
    trail_fraction: float = 1.0
    trail_snr: float = 200.0
    trail_width: float = 0.6
    radius_px: float = 25.0

    @property
    def any(self) -> bool:
        return bool(self.cosmic_rays or self.asteroids or self.trails)


def _centre(meta: FrameMeta) -> tuple[float, float]:
    extra: dict[str, Any] = meta.extra or {}
    cx, cy = extra.get("centre_pixel", ((meta.shape[1] - 1) / 2.0, (meta.shape[0] - 1) / 2.0))
    return float(cx), float(cy)


def _cosmic_rays(out: np.ndarray, sigma: np.ndarray, rng: np.random.Generator, spec: Injections,
                 centre: tuple[float, float]) -> None:
    ny, nx = out.shape
    lo, hi = spec.cr_snr
    for _ in range(spec.cosmic_rays):
        x = int(round(centre[0] + rng.uniform(-spec.radius_px, spec.radius_px)))
        y = int(round(centre[1] + rng.uniform(-spec.radius_px, spec.radius_px)))
        snr = math.exp(rng.uniform(math.log(lo), math.log(hi)))
        side = int(rng.integers(1, spec.cr_cluster + 1))
        for j in range(side):
            for i in range(side):
                yy, xx = y + j, x + i
                if 0 <= yy < ny and 0 <= xx < nx:
                    share = 1.0 if (i, j) == (0, 0) else rng.uniform(0.2, 0.6)
                    out[yy, xx] += share * snr * sigma[yy, xx]


def _asteroids(out: np.ndarray, sigma: np.ndarray, lam: np.ndarray, rng: np.random.Generator, spec: Injections,
               centre: tuple[float, float], psf_sigma_px: float, band_centre: float) -> None:
    ny, nx = out.shape
    for _ in range(spec.asteroids):
        xc = centre[0] + rng.uniform(-spec.radius_px, spec.radius_px)
        yc = centre[1] + rng.uniform(-spec.radius_px, spec.radius_px)
        slope = rng.uniform(-2.0, 2.0)
        r = int(math.ceil(6 * psf_sigma_px)) + 1
        x0, x1 = max(int(xc) - r, 0), min(int(xc) + r + 1, nx)
        y0, y1 = max(int(yc) - r, 0), min(int(yc) + r + 1, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        profile = np.exp(-0.5 * ((xx - xc) ** 2 + (yy - yc) ** 2) / psf_sigma_px**2)
        j, i = min(max(int(round(yc)), 0), ny - 1), min(max(int(round(xc)), 0), nx - 1)
        peak = spec.asteroid_snr * float(sigma[j, i])
        out[y0:y1, x0:x1] += peak * profile * (lam[y0:y1, x0:x1] / band_centre) ** slope


def _trails(out: np.ndarray, sigma: np.ndarray, rng: np.random.Generator, spec: Injections,
            centre: tuple[float, float]) -> None:
    ny, nx = out.shape
    if rng.random() >= spec.trail_fraction:
        return
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    for _ in range(spec.trails):
        angle = rng.uniform(0.0, math.pi)
        px = centre[0] + rng.uniform(-spec.radius_px, spec.radius_px)
        py = centre[1] + rng.uniform(-spec.radius_px, spec.radius_px)
        sin, cos = np.float32(math.sin(angle)), np.float32(math.cos(angle))
        dist = (yy - np.float32(py)) * cos - (xx - np.float32(px)) * sin
        near = np.abs(dist) < 6 * spec.trail_width
        out[near] += spec.trail_snr * float(np.median(sigma)) * np.exp(-0.5 * (dist[near] / spec.trail_width) ** 2)


def injected_image(meta: FrameMeta, variance: np.ndarray, lam: np.ndarray, spec: Injections | None) -> np.ndarray:
    """The flux (MJy/sr, float64, the frame's shape) that ``spec`` adds to the frame ``meta``
    (zeros when ``spec`` is None or injects nothing); ``variance`` sets the sigma units."""
    out = np.zeros(variance.shape, dtype=np.float64)
    if spec is None or not spec.any:
        return out
    from .l2file import frame_rng

    rng = frame_rng(meta, _STREAM)
    sigma = np.sqrt(np.where(np.isfinite(variance) & (variance > 0), variance, 0.0)).astype(np.float64)
    centre = _centre(meta)
    pix_arcsec = math.sqrt(abs(np.linalg.det(np.asarray(meta.cd)))) * 3600.0
    lo, hi = detector_band(meta.detector)
    _cosmic_rays(out, sigma, rng, spec, centre)
    _asteroids(out, sigma, lam, rng, spec, centre, meta.psf_fwhm_arcsec * _FWHM_TO_SIGMA / pix_arcsec, 0.5 * (lo + hi))
    _trails(out, sigma, rng, spec, centre)
    return out


def inject_file(path: str | Path, meta: FrameMeta, spec: Injections) -> np.ndarray:
    """Add ``spec``'s outliers to the L2 file ``path`` written for ``meta`` (a full frame or a
    cutout, as :func:`.field.simulate_frame` returns it), in place, without rendering the frame
    again (the same draws as ``injections=spec`` at render time; trails are scaled by the median
    noise of the file's pixels). Returns the added flux (MJy/sr) of the file's pixels."""
    from astropy.io import fits

    from .instrument import wave_lookup_bilinear
    from .l2file import file_wave_table

    with fits.open(path, mode="update") as hdul:
        variance = np.asarray(hdul["VARIANCE"].data, dtype=np.float64)
        ny, nx = variance.shape
        tx, ty, vals = file_wave_table(meta)
        lam, _ = wave_lookup_bilinear(tx, ty, vals, np.arange(nx, dtype=np.float64)[None, :] + meta.x0,
                                      np.arange(ny, dtype=np.float64)[:, None] + meta.y0)
        cx, cy = _centre(meta)
        local = replace(meta, extra={**(meta.extra or {}), "centre_pixel": [cx - meta.x0, cy - meta.y0]})
        added = injected_image(local, variance, lam, spec)
        hdul["IMAGE"].data = (hdul["IMAGE"].data + added).astype(np.float32)
    return added


def bright_stars(center_ra: float, center_dec: float, fluxes_mjy: tuple[float, ...] = (3000.0, 1500.0),
                 radius_arcmin: float = 1.0, seed: int = 0) -> list[PointSource]:
    """Point sources near saturation (a few thousand mJy: the peak pixel ~ 600 MJy/sr, a few
    hundred sigma) within ``radius_arcmin`` of the centre, flat spectra."""
    rng = np.random.default_rng([int(seed), 11])
    stars = []
    for i, flux in enumerate(fluxes_mjy):
        dxi, deta = rng.uniform(-radius_arcmin, radius_arcmin, 2) / 60.0
        ra, dec = gnomonic_inverse(dxi, deta, center_ra, center_dec)
        stars.append(PointSource(float(ra), float(dec), Spectrum(float(flux), 0.0), name=f"bright{i}"))
    return stars


__all__ = ["Injections", "injected_image", "inject_file", "bright_stars"]
