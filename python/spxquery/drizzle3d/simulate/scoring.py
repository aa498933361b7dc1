"""Scoring a drizzled cube against the simulator's truth: positions, line centres, residuals.

:func:`score_cube` compares a cube with :func:`~.sky.truth_cube` of the same grid: coverage,
relative errors where there is signal, the spread of normalised residuals on empty sky, the
centroid offsets of point sources (pixel-integrated Gaussian fits, output pixels) and the
centre errors of emission lines (um). Arrays are ``(n_z, ny, nx)`` in MJy/sr, 0-based pixels.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .sky import SkyModel, _celestial, _erf

__all__ = ["centroid_offsets", "emission_line_centre", "normalised_residuals", "score_cube"]


def _pixel_gauss_model(p: np.ndarray, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    amp, x0, y0, sig, bg = p
    sig = abs(sig) + 1e-6
    r2 = math.sqrt(2.0) * sig
    px = 0.5 * (_erf((xx + 0.5 - x0) / r2) - _erf((xx - 0.5 - x0) / r2))
    py = 0.5 * (_erf((yy + 0.5 - y0) / r2) - _erf((yy - 0.5 - y0) / r2))
    model: np.ndarray = amp * px * py + bg
    return model


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
            diff = _pixel_gauss_model(p + dp, xx, yy) - _pixel_gauss_model(p - dp, xx, yy)
            jac[:, k] = (diff / (2 * dp[k])).ravel()
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
        cx, cy = round(ex), round(ey)
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
        edges = [cut[0][np.isfinite(cut[0])], cut[-1][np.isfinite(cut[-1])]]
        bg0 = float(np.median(np.concatenate(edges))) if cut.size else 0.0
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
    res: np.ndarray = (sci[ok] - truth[ok]) / np.sqrt(var[ok])
    return res


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
        res["max_centroid_offset"] = (float(np.nanmax(np.hypot(offs[:, 0], offs[:, 1])))
                                      if np.isfinite(offs).any() else float("nan"))
        if wavelengths is not None and sci.ndim == 3:
            lam = np.asarray(wavelengths, dtype=np.float64)
            cw = _celestial(output_wcs)
            errs = []
            for src in sky.extended_sources:
                ex, ey = (round(float(v[0])) for v in cw.wcs_world2pix(np.array([src.ra]), np.array([src.dec]), 0))
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
