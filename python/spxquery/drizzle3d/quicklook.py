"""Quick-look pictures and a text summary of a drizzled cube (PNG via matplotlib's Agg canvas).

All functions take either a cube path (read with :func:`spxquery.drizzle3d.io.load_cube`) or the
dict that ``load_cube`` returns. Conventions: 0-based pixels ``(x, y)`` of the output image
(pixel ``j`` covers ``[j-0.5, j+0.5]``), plane ``k`` 0-based, wavelengths in um, SCI in MJy/sr.
No pyplot and no global backend switch: figures are drawn on their own Agg canvas, so this
module works without a display and does not disturb an interactive session. matplotlib is the
optional ``plot`` extra, imported only when a picture is drawn: the summary and the pixel helpers
work without it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
from astropy.wcs.utils import proj_plane_pixel_scales

from .cubefile import load_cube
from .grid import celestial

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

CubeLike = Union[str, Path, Mapping[str, Any]]

#: How to install what the pictures need (matplotlib).
PLOT_INSTALL = "pip install 'spxquery-drizzle3d[plot]'"

#: Percentiles (of finite pixels) mapped to the ends of the colour scale.
STRETCH_PERCENTILES = (1.0, 99.8)

#: Radius of the quick-look aperture [arcsec]: 2.9 native pixels, which hold nearly all of a
#: point source's flux; the peak pixel of an undersampled source jumps +-15% between planes.
QUICKLOOK_APERTURE_ARCSEC = 18.0


def _cube(cube: CubeLike) -> Mapping[str, Any]:
    if isinstance(cube, Mapping):
        return cube
    path = Path(cube)
    if not path.is_file():
        raise FileNotFoundError(f"cube file not found: {path}")
    return load_cube(path)


def _celestial_wcs(cube: Mapping[str, Any]) -> Any:
    wcs = cube.get("wcs")
    return None if wcs is None else celestial(wcs)


def wavelengths(cube: CubeLike) -> Tuple[np.ndarray, np.ndarray]:
    """(centres, widths) of the planes [um] from the WAVELENGTH table."""
    c = _cube(cube)
    wl = c["wavelength"]
    return np.asarray(wl["LAMBDA"], dtype=np.float64), np.asarray(wl["DLAMBDA"], dtype=np.float64)


def collapsed_image(cube: CubeLike) -> np.ndarray:
    """Inverse-variance weighted mean of SCI over the planes [MJy/sr], shape (ny, nx).

    Voxels with non-finite SCI or non-positive/non-finite VARIANCE are ignored; pixels
    without any usable voxel are NaN.
    """
    c = _cube(cube)
    sci = np.asarray(c["sci"], dtype=np.float64)
    var = np.asarray(c["variance"], dtype=np.float64)
    good = np.isfinite(sci) & np.isfinite(var) & (var > 0)
    w = np.zeros_like(sci)
    np.divide(1.0, var, out=w, where=good)
    num = np.where(good, sci, 0.0) * w
    wsum = w.sum(axis=0)
    out = np.full(wsum.shape, np.nan)
    np.divide(num.sum(axis=0), wsum, out=out, where=wsum > 0)
    return out


def plane_coverage(cube: CubeLike) -> np.ndarray:
    """Number of planes with COUNT > 0 at each pixel, shape (ny, nx)."""
    c = _cube(cube)
    return (np.asarray(c["count"]) > 0).sum(axis=0)


def brightest_pixel(cube: CubeLike, min_coverage: float = 0.5) -> Tuple[int, int]:
    """0-based (x, y) of the maximum of :func:`collapsed_image`, among pixels covered in at
    least ``min_coverage`` times the largest number of covered planes (so that a noisy pixel
    at the edge of the coverage cannot win). ValueError when the cube holds no data."""
    img, ok = _well_covered(_cube(cube), min_coverage, "brightest pixel")
    y, x = np.unravel_index(np.argmax(np.where(ok, img, -np.inf)), img.shape)
    return int(x), int(y)


def _well_covered(c: Mapping[str, Any], min_coverage: float, what: str) -> Tuple[np.ndarray, np.ndarray]:
    """(:func:`collapsed_image`, pixels with data covered in at least ``min_coverage`` times the
    largest number of covered planes); ValueError naming ``what`` when no pixel qualifies."""
    img = collapsed_image(c)
    cov = plane_coverage(c)
    ok = np.isfinite(img) & (cov >= max(1, min_coverage * cov.max()))
    if not ok.any():
        raise ValueError(f"the cube holds no finite data; no {what}")
    return img, ok


def world_to_pixel(cube: CubeLike, ra: float, dec: float) -> Tuple[float, float]:
    """0-based (x, y) of (ra, dec) [deg] in the cube's image."""
    wcs = _celestial_wcs(_cube(cube))
    if wcs is None:
        raise ValueError("cube has no WCS")
    x, y = wcs.wcs_world2pix([ra], [dec], 0)
    return float(x[0]), float(y[0])


def pixel_to_world(cube: CubeLike, x: float, y: float) -> Tuple[float, float]:
    """(ra, dec) [deg] of 0-based pixel (x, y)."""
    wcs = _celestial_wcs(_cube(cube))
    if wcs is None:
        raise ValueError("cube has no WCS")
    ra, dec = wcs.wcs_pix2world([x], [y], 0)
    return float(ra[0]), float(dec[0])


def plane_for_wavelength(cube: CubeLike, wavelength_um: float) -> int:
    """Index of the plane whose [LAMBDA_MIN, LAMBDA_MAX] contains ``wavelength_um`` (um);
    ValueError naming the cube's range when none does."""
    c = _cube(cube)
    wl = c["wavelength"]
    lo = np.asarray(wl["LAMBDA_MIN"], dtype=np.float64)
    hi = np.asarray(wl["LAMBDA_MAX"], dtype=np.float64)
    hit = np.nonzero((lo <= wavelength_um) & (wavelength_um <= hi))[0]
    if hit.size == 0:
        raise ValueError(f"wavelength {wavelength_um} um is outside the cube's range {lo[0]:.4f}-{hi[-1]:.4f} um")
    return int(hit[0])


def nearest_pixel(x: float, y: float) -> Tuple[int, int]:
    """The 0-based pixel containing position (x, y): pixel ``j`` covers ``[j - 0.5, j + 0.5)``."""
    return int(np.floor(float(x) + 0.5)), int(np.floor(float(y) + 0.5))


def spectrum_at(cube: CubeLike, x: float, y: float) -> Dict[str, np.ndarray]:
    """Spectrum of the pixel containing 0-based position (x, y) (rounded, so that
    ``spectrum_at(cube, *world_to_pixel(cube, ra, dec))`` takes the right pixel): ``wavelength``,
    ``dlambda`` [um], ``flux`` [MJy/sr], ``error`` = sqrt(VARIANCE) [MJy/sr] (NaN where nothing
    landed) and ``count``."""
    c = _cube(cube)
    n_z, ny, nx = c["sci"].shape
    x, y = nearest_pixel(x, y)
    if not (0 <= x < nx and 0 <= y < ny):
        raise ValueError(f"pixel (x={x}, y={y}) is outside the cube's image (nx={nx}, ny={ny})")
    lam, dlam = wavelengths(c)
    var = np.asarray(c["variance"][:, y, x], dtype=np.float64)
    with np.errstate(invalid="ignore"):
        err = np.where(var >= 0, np.sqrt(np.abs(var)), np.nan)
    return {
        "wavelength": lam,
        "dlambda": dlam,
        "flux": np.asarray(c["sci"][:, y, x], dtype=np.float64),
        "error": err,
        "count": np.asarray(c["count"][:, y, x]),
    }


def _pixel_scale_arcsec(cube: Mapping[str, Any]) -> float:
    wcs = _celestial_wcs(cube)
    if wcs is None:
        raise ValueError("cube has no WCS")
    return float(np.mean(proj_plane_pixel_scales(wcs))) * 3600.0


def _disk_offsets(radius_px: float) -> np.ndarray:
    """(dy, dx) of the pixels whose centre lies within ``radius_px`` of a pixel centre (>= itself)."""
    r = int(np.floor(radius_px))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    keep = dy**2 + dx**2 <= radius_px**2
    return np.column_stack([dy[keep], dx[keep]]) if keep.any() else np.zeros((1, 2), dtype=int)


def aperture_mask(shape: Tuple[int, int], x: int, y: int, radius_px: float) -> np.ndarray:
    """(ny, nx) bool: the pixels whose centre lies within ``radius_px`` of pixel (x, y)."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    mask = (yy - y) ** 2 + (xx - x) ** 2 <= radius_px**2
    mask[y, x] = True
    return mask


def aperture_spectrum(cube: CubeLike, x: float, y: float,
                      radius_arcsec: float = QUICKLOOK_APERTURE_ARCSEC) -> Dict[str, Any]:
    """Aperture spectrum around the pixel containing (x, y): ``wavelength``, ``dlambda`` [um],
    ``flux`` [mJy] (SCI summed over the pixels within ``radius_arcsec`` times the pixel solid
    angle), ``error`` [mJy] (:func:`.analysis.aperture_sums`: exact with the COVARIANCE HDU, else
    the pixel variances summed x R^2 with a warning), ``bad`` (an aperture pixel
    has no data or an all-flagged voxel: flux NaN), ``n_pixels``, ``radius_arcsec``."""
    from .analysis import aperture_sums, bad_voxels, pixel_solid_angle

    c = _cube(cube)
    n_z, ny, nx = c["sci"].shape
    x, y = nearest_pixel(x, y)
    if not (0 <= x < nx and 0 <= y < ny):
        raise ValueError(f"pixel (x={x}, y={y}) is outside the cube's image (nx={nx}, ny={ny})")
    mask = aperture_mask((ny, nx), x, y, radius_arcsec / _pixel_scale_arcsec(c))
    bad = bad_voxels(c["sci"], c["variance"], c["count"], c["and_mask"])
    wcs = _celestial_wcs(c)
    omega = pixel_solid_angle(wcs, wcs.pixel_to_world(x, y)).to_value("sr")
    flux, var, masked = aperture_sums(c["sci"], c["variance"], bad, mask, omega, cube=c)
    lam, dlam = wavelengths(c)
    return {"wavelength": lam, "dlambda": dlam, "flux": np.where(masked, np.nan, flux),
            "error": np.where(masked, np.nan, np.sqrt(var)), "bad": masked, "n_pixels": int(mask.sum()),
            "radius_arcsec": float(radius_arcsec)}


def brightest_source(cube: CubeLike, radius_arcsec: float = QUICKLOOK_APERTURE_ARCSEC,
                     min_coverage: float = 0.5) -> Tuple[int, int]:
    """0-based (x, y) of the brightest source: where the aperture of ``radius_arcsec`` holds the
    most of :func:`collapsed_image`, among pixels covered in at least ``min_coverage`` times the
    largest number of covered planes. ValueError when the cube holds no data."""
    c = _cube(cube)
    img, ok = _well_covered(c, min_coverage, "brightest source")
    offsets = _disk_offsets(radius_arcsec / _pixel_scale_arcsec(c))
    r = int(np.abs(offsets).max())
    ny, nx = img.shape
    padded = np.pad(np.where(np.isfinite(img), img, 0.0), r)
    total = np.zeros_like(img)
    for dy, dx in offsets:
        total += padded[r + dy:r + dy + ny, r + dx:r + dx + nx]
    y, x = np.unravel_index(np.argmax(np.where(ok, total, -np.inf)), img.shape)
    return int(x), int(y)


def stretch_limits(img: np.ndarray, percentiles: Tuple[float, float] = STRETCH_PERCENTILES) -> Tuple[float, float]:
    """(vmin, vmax) at the given percentiles of the finite pixels ((0, 1) if none)."""
    finite = np.asarray(img)[np.isfinite(img)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(finite, percentiles)
    if not hi > lo:
        hi = lo + (abs(lo) if lo else 1.0)
    return float(lo), float(hi)


def _new_figure(figsize: Tuple[float, float]) -> Figure:
    """A figure on its own Agg canvas; ImportError saying how to install matplotlib when it is missing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(f"quick-look pictures need matplotlib, which is not installed: {PLOT_INSTALL}") from exc
    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def image_png(
    img: np.ndarray,
    cube: Mapping[str, Any],
    png: Union[str, Path],
    title: str,
    label: str,
    mark: Optional[Tuple[float, float]] = None,
) -> Path:
    """Draw ``img`` with an asinh percentile stretch and RA/Dec axes (``cube["wcs"]``, None: pixel
    axes); returns the PNG path. Also draws the quick-look of a tiled mosaic (:mod:`.mosaiclook`)."""
    fig = _new_figure((6.0, 5.2))
    from matplotlib.colors import AsinhNorm  # matplotlib >= 3.6

    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    vmin, vmax = stretch_limits(img)
    norm = AsinhNorm(linear_width=max((vmax - vmin) * 0.05, 1e-12), vmin=vmin, vmax=vmax)
    wcs = _celestial_wcs(cube)
    if wcs is not None:
        ax = fig.add_subplot(1, 1, 1, projection=wcs)
        ax.coords[0].set_axislabel("RA (ICRS)")
        ax.coords[1].set_axislabel("Dec (ICRS)")
        ax.coords[0].set_major_formatter("hh:mm:ss")
    else:
        ax = fig.add_subplot(1, 1, 1)
        ax.set_xlabel("x [pixel]")
        ax.set_ylabel("y [pixel]")
    cmap = "magma"
    im = ax.imshow(np.ma.masked_invalid(img), origin="lower", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_facecolor("0.6")
    if mark is not None:
        ax.plot([mark[0]], [mark[1]], marker="o", markersize=14, markerfacecolor="none",
                markeredgecolor="cyan", markeredgewidth=1.2)
    ax.set_title(title, fontsize=10)
    # ticks evenly spaced in the stretched scale, so that they never pile up near zero
    ticks = norm.inverse(np.linspace(0.0, 1.0, 6))
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, ticks=np.asarray(ticks, dtype=float))
    cb.ax.set_yticklabels([f"{t:.2g}" for t in np.asarray(ticks, dtype=float)])
    cb.set_label(label)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight layout vs WCSAxes
        fig.savefig(png, bbox_inches="tight")
    logger.debug("wrote %s", png)
    return png


def _name(cube: Mapping[str, Any]) -> str:
    h = cube.get("header", {}) or {}
    det = h.get("DETECTOR")
    if det is not None and int(det) == 0:
        return str(h.get("BAND_NM", "all"))
    return f"D{det}" if det is not None else "cube"


def plot_collapsed(cube: CubeLike, png: Union[str, Path], mark: Optional[Tuple[float, float]] = None) -> Path:
    """PNG of :func:`collapsed_image` (asinh stretch between the 1st and 99.8th percentiles,
    RA/Dec axes); ``mark`` = optional 0-based (x, y) circled. Returns the PNG path."""
    c = _cube(cube)
    img = collapsed_image(c)
    lam, _ = wavelengths(c)
    title = f"{_name(c)}: inverse-variance mean over {lam.size} planes ({lam[0]:.3f}-{lam[-1]:.3f} um)"
    return image_png(img, c, png, title, "MJy/sr", mark)


def plot_plane(cube: CubeLike, png: Union[str, Path], plane: int,
               mark: Optional[Tuple[float, float]] = None) -> Path:
    """PNG of SCI plane ``plane`` (0-based). Returns the PNG path."""
    c = _cube(cube)
    n_z = c["sci"].shape[0]
    if not 0 <= int(plane) < n_z:
        raise ValueError(f"plane must be in 0..{n_z - 1}, got {plane}")
    lam, dlam = wavelengths(c)
    k = int(plane)
    title = f"{_name(c)}: plane {k}, {lam[k]:.4f} um (width {dlam[k]:.4f} um)"
    return image_png(np.asarray(c["sci"][k], dtype=np.float64), c, png, title, "MJy/sr", mark)


def plot_spectrum(cube: CubeLike, png: Union[str, Path], x: float, y: float, title: Optional[str] = None,
                  radius_arcsec: Optional[float] = None) -> Path:
    """PNG of the spectrum at 0-based pixel (x, y) against wavelength (horizontal bars = bin
    width): without ``radius_arcsec`` SCI with sqrt(VARIANCE) error bars [MJy/sr]; with it the
    :func:`aperture_spectrum` [mJy]. Returns the PNG path."""
    c = _cube(cube)
    fig = _new_figure((6.4, 4.0))
    x, y = nearest_pixel(x, y)
    s = spectrum_at(c, x, y) if radius_arcsec is None else aperture_spectrum(c, x, y, radius_arcsec)
    png = Path(png)
    png.parent.mkdir(parents=True, exist_ok=True)
    ax = fig.add_subplot(1, 1, 1)
    ok = np.isfinite(s["flux"])
    ax.errorbar(s["wavelength"][ok], s["flux"][ok], yerr=s["error"][ok], xerr=0.5 * s["dlambda"][ok],
                fmt="o", ms=3.5, color="C0", ecolor="0.45", elinewidth=1.0, capsize=0)
    ax.axhline(0.0, color="0.8", lw=0.8, zorder=0)
    ax.set_xlabel("wavelength [um]")
    ax.set_ylabel("surface brightness [MJy/sr]" if radius_arcsec is None else "flux density [mJy]")
    if title is None:
        try:
            ra, dec = pixel_to_world(c, x, y)
            where = f"pixel ({x}, {y}) = RA {ra:.5f}, Dec {dec:.5f}"
        except ValueError:
            where = f"pixel ({x}, {y})"
        what = "spectrum" if radius_arcsec is None else f"aperture spectrum (r = {radius_arcsec:g}\")"
        title = f"{_name(c)} {what} at {where}"
    ax.set_title(title, fontsize=10)
    if not ok.any():
        ax.text(0.5, 0.5, "no data at this position", transform=ax.transAxes, ha="center", va="center")
    fig.savefig(png, bbox_inches="tight")
    logger.debug("wrote %s", png)
    return png


def default_plane(cube: CubeLike) -> int:
    """The plane with the most voxels with COUNT > 0 (the middle one on ties)."""
    c = _cube(cube)
    cov = (np.asarray(c["count"]) > 0).sum(axis=(1, 2))
    best = np.flatnonzero(cov == cov.max())
    return int(best[len(best) // 2])


def write_quicklooks(
    cube_path: Union[str, Path],
    out_dir: Union[str, Path, None] = None,
    plane: Optional[int] = None,
    position: Optional[Tuple[int, int]] = None,
    cube: Optional[Mapping[str, Any]] = None,
    aperture_arcsec: Optional[float] = QUICKLOOK_APERTURE_ARCSEC,
) -> Dict[str, Path]:
    """Write ``<stem>_collapsed.png``, ``<stem>_plane<k>.png`` and ``<stem>_spectrum.png``.

    ``out_dir`` defaults to the cube's directory; ``plane`` (0-based) defaults to
    :func:`default_plane`; ``position`` = 0-based (x, y) of the spectrum, default
    :func:`brightest_source`. The spectrum is the :func:`aperture_spectrum` of radius
    ``aperture_arcsec`` [mJy] (None: the pixel's surface brightness, and ``position`` defaults
    to :func:`brightest_pixel`). ``cube`` = an already loaded cube (skips reading the file).
    Returns ``{"collapsed": path, "plane": path, "spectrum": path}``.
    """
    cube_path = Path(cube_path)
    c = cube if cube is not None else _cube(cube_path)
    out = Path(out_dir) if out_dir is not None else cube_path.parent
    stem = cube_path.stem
    k = default_plane(c) if plane is None else int(plane)
    if position is not None:
        x, y = nearest_pixel(*position)
    else:
        x, y = brightest_pixel(c) if aperture_arcsec is None else brightest_source(c, aperture_arcsec)
    if aperture_arcsec is None:
        logger.info("spectrum: pixel (%d, %d)", x, y)
    else:
        n = int(aperture_mask(c["sci"].shape[1:], x, y, aperture_arcsec / _pixel_scale_arcsec(c)).sum())
        logger.info("spectrum: aperture r = %g\" (%d pixels) around pixel (%d, %d)", aperture_arcsec, n, x, y)
    paths = {
        "collapsed": plot_collapsed(c, out / f"{stem}_collapsed.png", mark=(x, y)),
        "plane": plot_plane(c, out / f"{stem}_plane{k}.png", k, mark=(x, y)),
        "spectrum": plot_spectrum(c, out / f"{stem}_spectrum.png", x, y, radius_arcsec=aperture_arcsec),
    }
    logger.info("quick-look PNGs: %s", ", ".join(str(p) for p in paths.values()))
    return paths


def cube_summary(cube: CubeLike) -> Dict[str, Any]:
    """Facts about a cube: shape (n_z, ny, nx), wavelength range [um], bins, coverage (fraction
    of voxels with COUNT > 0; min/median/max COUNT over those), N_INPUTS, N_REJECT, N_EMPTY, input
    frames and their zodi scales, pixel scale [arcsec], centre (RA, Dec) [deg]."""
    c = _cube(cube)
    h = c.get("header", {}) or {}
    n_z, ny, nx = c["sci"].shape
    count = np.asarray(c["count"])
    covered = count > 0
    wl = c["wavelength"]
    lam = np.asarray(wl["LAMBDA"], dtype=np.float64)
    inputs, scales = [], []
    n_log = int(h.get("NFRAMLOG", 0) or 0)
    for i in range(1, n_log + 1):
        name = h.get(f"INF{i:05d}")
        if name is not None:
            inputs.append(str(name))
        z = h.get(f"ZSC{i:05d}")
        if z is not None:
            scales.append(float(z))
    cnt = count[covered]
    sci = np.asarray(c["sci"])
    finite = sci[np.isfinite(sci)]
    return {
        "shape": (int(n_z), int(ny), int(nx)),
        "detector": h.get("DETECTOR"),
        "lambda_min": float(h.get("LAM_MIN", np.asarray(wl["LAMBDA_MIN"])[0])),
        "lambda_max": float(h.get("LAM_MAX", np.asarray(wl["LAMBDA_MAX"])[-1])),
        "lambda_centers": lam,
        "resolving_power": np.asarray(wl["R_EFF"], dtype=np.float64),
        "n_input_sc": np.asarray(wl["N_INPUT_SC"]),
        "pixscale_arcsec": float(h.get("EPIXSCLE", np.nan)),
        "center": (float(h.get("RA_CEN", np.nan)), float(h.get("DEC_CEN", np.nan))),
        "coverage": float(covered.mean()) if covered.size else 0.0,
        "count_min": int(cnt.min()) if cnt.size else 0,
        "count_median": float(np.median(cnt)) if cnt.size else 0.0,
        "count_max": int(cnt.max()) if cnt.size else 0,
        "n_inputs": int(h.get("N_INPUTS", 0)),
        "n_rejected": int(h.get("N_REJECT", 0)),
        "n_empty": int(h.get("N_EMPTY", 0)),
        "inputs": inputs,
        "zodi_scales": np.asarray(scales, dtype=np.float64),
        "sci_range": (float(finite.min()), float(finite.max())) if finite.size else (np.nan, np.nan),
        "kernel": h.get("KERNEL"),
        "xy_shrink": h.get("XYSHRINK"),
        "z_shrink": h.get("ZSHRINK"),
    }


def format_summary(summary: Mapping[str, Any], path: Union[str, Path, None] = None, max_inputs: int = 10) -> str:
    """Human-readable text of :func:`cube_summary` (several lines)."""
    s = summary
    n_z, ny, nx = s["shape"]
    lam = s["lambda_centers"]
    R = s["resolving_power"]
    lines = []
    if path is not None:
        lines.append(f"cube         {path}")
    det = f"D{s['detector']}" if s.get("detector") is not None else "?"
    lines.append(f"detector     {det}   kernel {s.get('kernel')}   xy_shrink {s.get('xy_shrink')}   "
                 f"z_shrink {s.get('z_shrink')}")
    lines.append(f"shape        {n_z} planes x {ny} x {nx} pixels (n_z, ny, nx), "
                 f"{s['pixscale_arcsec']:.4g} arcsec/pixel "
                 f"({nx * s['pixscale_arcsec'] / 60:.2f}' x {ny * s['pixscale_arcsec'] / 60:.2f}')")
    lines.append(f"centre       RA {s['center'][0]:.6f}  Dec {s['center'][1]:.6f} deg")
    lines.append(f"wavelength   {s['lambda_min']:.4f}-{s['lambda_max']:.4f} um in {n_z} bins "
                 f"(centres {lam[0]:.4f}..{lam[-1]:.4f} um, R {np.nanmin(R):.0f}-{np.nanmax(R):.0f})")
    lines.append(f"coverage     {100 * s['coverage']:.1f}% of voxels have COUNT > 0; COUNT min/median/max "
                 f"{s['count_min']}/{s['count_median']:g}/{s['count_max']} input pixels")
    lines.append(f"inputs       N_INPUTS {s['n_inputs']}, N_REJECT {s['n_rejected']}, N_EMPTY {s.get('n_empty', 0)}; "
                 "frames per plane "
                 f"(N_INPUT_SC) {int(np.min(s['n_input_sc']))}-{int(np.max(s['n_input_sc']))}")
    z = s["zodi_scales"]
    if z.size:
        lines.append(f"zodi scales  {z.size} frames: min {z.min():.3f}, median {np.median(z):.3f}, max {z.max():.3f}")
    else:
        lines.append("zodi scales  none recorded")
    lo, hi = s["sci_range"]
    lines.append(f"SCI range    {lo:.4g} .. {hi:.4g} MJy/sr")
    names = s["inputs"]
    if names:
        shown = names[:max_inputs]
        lines.append(f"input frames ({len(names)}):")
        lines.extend(f"  {n}" for n in shown)
        if len(names) > len(shown):
            lines.append(f"  ... and {len(names) - len(shown)} more")
    return "\n".join(lines)


__all__ = [
    "collapsed_image", "plane_coverage", "brightest_pixel", "brightest_source", "aperture_spectrum", "aperture_mask",
    "nearest_pixel", "QUICKLOOK_APERTURE_ARCSEC", "world_to_pixel", "pixel_to_world",
    "plane_for_wavelength", "spectrum_at", "stretch_limits", "plot_collapsed", "plot_plane",
    "plot_spectrum", "default_plane", "write_quicklooks", "cube_summary", "format_summary", "wavelengths",
]
