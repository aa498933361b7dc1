"""Simulated fields: many pointings of one sky, an archive-like mirror tree, its index and the truth.

Layout written under ``root``::

    root/<release>/level2/<plan>/<version>/<det>/level2_<OBSID>D<det>_spx_<version>.fits
    root/archive_index.json   {"rows": [...]}  (TAP column names, see docs/design.md)
    root/truth.json           sky model, zodi/noise parameters, per-frame meta
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..testing.archive_index import INDEX_FILE, load_index, write_index
from ..testing.archive_index import index_row as make_index_row
from .calproduct import calibration_row, product_maps, write_spectral_wcs_product
from .injections import Injections
from .instrument import (
    NPIX,
    PHOTON_GAIN,
    READ_NOISE,
    ZODI_PARAMS,
    FrameMeta,
    detector_band,
    frame_pixel_to_world,
    make_frame_meta,
)
from .l2file import build_l2_hdulist, cutout_box, cutout_meta, l2_relpath, make_cutout, render_frame, write_l2_file
from .sky import EmissionLine, ExtendedSource, PointSource, SkyModel, Spectrum, gnomonic, gnomonic_inverse

logger = logging.getLogger(__name__)

__all__ = [
    "RELEASE_VERSIONS",
    "FieldInfo",
    "default_sky",
    "frame_footprint",
    "index_row",
    "load_index",
    "load_truth",
    "simulate_field",
    "simulate_frame",
    "solve_pointing",
]

#: Current and superseded processing versions per release.
RELEASE_VERSIONS = {
    "qr2": ("l2b-v12-2025-164", "l2b-v11-2025-150"),
    "qr3": ("l2b-v20-2025-247", "l2b-v19-2025-230"),
}
EXPOSURE_DAYS = 112.0 / 86400.0
TRUTH_FILE = "truth.json"


def default_sky(center_ra: float, center_dec: float, detectors: Sequence[int] = (3,),
                psf_fwhm_arcsec: float = 2.2 * 6.15) -> SkyModel:
    """Default sky around (center_ra, center_dec): five point sources (10-40 mJy, different
    spectral slopes) within ~4', one extended source (sigma 30" x 18", PA 35 deg; continuum
    0.3 MJy/sr plus one emission line near 45% of each requested detector's band), and empty
    sky south-west of the centre (offsets xi < -1', eta < -1' are source-free)."""
    def at(dxi_arcmin: float, deta_arcmin: float) -> tuple[float, float]:
        ra, dec = gnomonic_inverse(dxi_arcmin / 60.0, deta_arcmin / 60.0, center_ra, center_dec)
        return float(ra), float(dec)

    pts = []
    for i, (dx, dy, flux, idx) in enumerate([(0.0, 0.0, 30.0, -1.0), (2.5, 1.0, 20.0, 0.0), (-1.5, 2.5, 15.0, -2.0),
                                             (3.0, -2.5, 40.0, 1.0), (1.2, 3.4, 10.0, -0.5)]):
        ra, dec = at(dx, dy)
        pts.append(PointSource(ra, dec, Spectrum(flux, idx), name=f"ps{i}"))
    lines = []
    for det in detectors:
        lo, hi = detector_band(det)
        lc = lo + 0.45 * (hi - lo)
        lines.append(EmissionLine(centre_um=round(lc, 4), sigma_um=round(0.5 * lc / 40.0, 5), amplitude=1.0))
    ra, dec = at(-2.5, 0.5)
    ext = ExtendedSource(ra, dec, 30.0, 18.0, 35.0, Spectrum(0.3, -0.5, lines), name="ext0")
    return SkyModel(point_sources=pts, extended_sources=[ext], psf_fwhm_arcsec=psf_fwhm_arcsec)


def solve_pointing(meta: FrameMeta, x: float, y: float, ra: float, dec: float) -> FrameMeta:
    """Move CRVAL of ``meta`` (in place, returned) so that 0-based pixel (x, y) sees (ra, dec)."""
    for _ in range(20):
        wra, wdec = frame_pixel_to_world(meta, np.array([x]), np.array([y]))
        txi, teta = gnomonic(ra, dec, meta.ra, meta.dec)
        wxi, weta = gnomonic(wra[0], wdec[0], meta.ra, meta.dec)
        dxi, deta = float(txi - wxi), float(teta - weta)
        nra, ndec = gnomonic_inverse(dxi, deta, meta.ra, meta.dec)
        meta.ra, meta.dec = float(nra), float(ndec)
        if math.hypot(dxi, deta) < 1e-12:
            break
    return meta


def frame_footprint(meta: FrameMeta) -> list[float]:
    """Sky corners [ra1, dec1, ..., ra4, dec4] (deg) of the file's pixel grid (outer pixel edges)."""
    ny, nx = meta.shape
    xs = np.array([-0.5, nx - 0.5, nx - 0.5, -0.5])
    ys = np.array([-0.5, -0.5, ny - 0.5, ny - 0.5])
    ra, dec = frame_pixel_to_world(meta, xs, ys)
    return [float(v) for pair in zip(ra, dec) for v in pair]


def index_row(meta: FrameMeta, path: Path) -> dict[str, Any]:
    """One archive_index.json row for the file at ``path`` described by ``meta``."""
    return make_index_row(path, f"ibe/data/spherex/{meta.relpath}", release=meta.release, obs_id=meta.obsid,
                          detector=meta.detector, band_um=detector_band(meta.detector),
                          mjd=(float(meta.mjd_beg), float(meta.mjd_end)), poly=frame_footprint(meta))


def simulate_frame(path: str | Path, meta: FrameMeta, sky: SkyModel,
                   cutout: tuple[float, float, float] | None = None,
                   psf_size: int = 101, psf_zones: int = 11, injections: Injections | None = None,
                   wave_maps: tuple[np.ndarray, np.ndarray] | None = None) -> FrameMeta:
    """Render the full frame ``meta`` of ``sky`` and write it (or, with ``cutout`` =
    (ra, dec, size_deg), its IRSA-style cutout) to ``path``. Returns the meta of the written file
    (shifted CRPIX and ``x0, y0`` for cutouts). ``psf_size``/``psf_zones`` shrink the PSF
    extension (default: the real 121 x 101 x 101). ``injections``: outliers of this exposure
    (:mod:`.injections`, none by default). ``wave_maps``: the true per-pixel wavelengths (see
    :func:`.l2file.render_frame`)."""
    arrays = render_frame(meta, sky, injections=injections, wave_maps=wave_maps)
    hdul = build_l2_hdulist(meta, arrays, psf_size=psf_size, psf_zones=psf_zones)
    out_meta = meta
    if cutout is not None:
        ra, dec, size = cutout
        x0, x1, y0, y1 = cutout_box(hdul["IMAGE"].header, arrays["image"].shape, ra, dec, size)
        hdul = make_cutout(hdul, ra, dec, size)
        out_meta = cutout_meta(meta, x0, y0, (y1 - y0, x1 - x0))
    write_l2_file(hdul, path)
    return out_meta


@dataclass
class FieldInfo:
    """What :func:`simulate_field` wrote. ``frames`` = metas of the written files (current and
    superseded); ``paths`` = their local paths (same order)."""

    root: Path
    index_path: Path
    truth_path: Path
    sky: SkyModel
    center_ra: float
    center_dec: float
    release: str
    detectors: tuple[int, ...]
    frames: list[FrameMeta] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)

    def current_frames(self) -> list[tuple[FrameMeta, Path]]:
        """(meta, path) of the newest processing version of every exposure."""
        return [(m, p) for m, p in zip(self.frames, self.paths) if not m.extra.get("superseded")]


def _pointings(n_pointings: int, seed: int, pa_deg: float, y_range: tuple[float, float],
               x_jitter: float, centre_rows: Sequence[float] | None = None,
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pointing: (x, y) detector pixel (0-based) of the field centre, position angle (deg)
    and zodi level (relative), drawn from ``seed`` (see :func:`simulate_field`); ``centre_rows``
    replaces the rows spread over ``y_range`` (same draws otherwise)."""
    rng = np.random.default_rng([int(seed), 7])
    ys = np.linspace(y_range[0], y_range[1], n_pointings) if n_pointings > 1 else np.array([0.5 * sum(y_range)])
    ys = ys[rng.permutation(n_pointings)]
    if centre_rows is not None:
        ys = np.asarray(centre_rows, dtype=np.float64)
    xs = (NPIX - 1) / 2.0 + rng.uniform(-x_jitter, x_jitter, n_pointings)
    pas = pa_deg + 180.0 * (np.arange(n_pointings) % 2) + rng.uniform(-2.0, 2.0, n_pointings)
    zl = 1.0 + 0.1 * np.sin(np.arange(n_pointings) * 1.3)
    return xs, ys, pas, zl


def _checked_detectors(release: str, n_pointings: int, detectors: Sequence[int]) -> tuple[int, ...]:
    """``detectors`` as ints after checking the arguments of :func:`simulate_field` (ValueError)."""
    if release not in RELEASE_VERSIONS:
        raise ValueError(f"release must be one of {sorted(RELEASE_VERSIONS)}, got {release!r}")
    if n_pointings < 1:
        raise ValueError(f"n_pointings must be >= 1, got {n_pointings}")
    out = tuple(int(d) for d in detectors)
    for d in out:
        detector_band(d)
    return out


def _write_truth(path: Path, sky: SkyModel, field_params: dict[str, Any], frames: Sequence[FrameMeta]) -> None:
    """Write ``truth.json``: sky model, zodi and noise laws, field parameters, frame metas."""
    truth = {
        "sky": sky.to_dict(),
        "zodi": dict(ZODI_PARAMS),
        "noise": {"read_noise": READ_NOISE, "photon_gain": PHOTON_GAIN,
                  "variance": "read_noise**2 + photon_gain * max(sky + zodi_scale_true * ZODI, 0)"},
        "field": field_params,
        "frames": [m.to_dict() for m in frames],
    }
    with open(path, "w") as f:
        json.dump(truth, f, indent=1)


def simulate_field(
    root: str | Path,
    center_ra: float,
    center_dec: float,
    detectors: Sequence[int] = (3,),
    n_pointings: int = 16,
    release: str = "qr2",
    cutout_size_deg: float | None = None,
    seed: int = 0,
    sky: SkyModel | None = None,
    pa_deg: float = 20.0,
    y_range: tuple[float, float] = (150.0, 1890.0),
    x_jitter: float = 300.0,
    zodi_scale_true: float = 1.0,
    noise_scale: float = 1.0,
    include_reprocessed_duplicates: bool = False,
    plan: str | None = None,
    mjd_start: float = 60800.0,
    psf_size: int = 101,
    psf_zones: int = 11,
    injections: Injections | None = None,
    true_wavelengths: bool = False,
    centre_rows: Sequence[float] | None = None,
) -> FieldInfo:
    """Simulate ``n_pointings`` exposures x ``detectors`` of a sky around (center_ra, center_dec).

    Pointings alternate between two position-angle families (``pa_deg`` and ``pa_deg + 180``,
    +-2 deg jitter); pointing k puts the field centre on detector row ``y_k`` (spread evenly over
    ``y_range``, shuffled, i.e. ~+-1.5 deg of detector-y offsets) and column ``1020 +- x_jitter``,
    so the centre stays inside every frame and is seen at many wavelengths. With
    ``cutout_size_deg`` the files are IRSA-style cutouts around the centre instead of full frames.
    ``include_reprocessed_duplicates`` also writes an older processing version (different noise,
    zodi level +20%) of the first two exposures of the first detector. ``injections`` adds
    cosmic rays, asteroids and satellite trails to every exposure (:mod:`.injections`; none by
    default). Writes the mirror tree,
    ``archive_index.json`` and ``truth.json`` under ``root``.

    ``centre_rows``: the detector row of the field centre in each pointing, in order (sets
    ``n_pointings``), instead of rows spread evenly over ``y_range``; e.g. to sample some
    wavelengths densely.

    ``true_wavelengths`` (opt-in; the default keeps the frames of earlier versions bit for bit):
    pixels are rendered at the true per-pixel wavelengths of the LVF model, which the spectral-
    WCS calibration product of each detector holds (:mod:`.calproduct`, written into the tree
    and the index's ``calibration`` list); the frames' ``WCS-WAVE`` lookup stays the coarse
    table, so lookup and truth differ as on the sky. Without it the lookup is the truth.
    """
    if centre_rows is not None:
        n_pointings = len(centre_rows)
        if not all(0.0 <= float(y) <= NPIX - 1 for y in centre_rows):
            raise ValueError(f"centre_rows must lie in [0, {NPIX - 1}], got {list(centre_rows)}")
    detectors = _checked_detectors(release, n_pointings, detectors)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    plan = plan or ("2025W18_2B" if release == "qr2" else "2025W30_1C")
    version, old_version = RELEASE_VERSIONS[release]
    if sky is None:
        sky = default_sky(center_ra, center_dec, detectors)
    xs, ys, pas, zl = _pointings(n_pointings, seed, pa_deg, y_range, x_jitter, centre_rows)
    cut = None if cutout_size_deg is None else (center_ra, center_dec, float(cutout_size_deg))
    info = FieldInfo(root=root, index_path=root / INDEX_FILE, truth_path=root / TRUTH_FILE, sky=sky,
                     center_ra=float(center_ra), center_dec=float(center_dec), release=release, detectors=detectors)
    rows = []
    products: dict[int, Path] = {}
    cal_rows: list[dict[str, Any]] = []
    if true_wavelengths:
        for det in detectors:
            products[det] = write_spectral_wcs_product(root, release, det)
            cal_rows.append(calibration_row(products[det], root, release, det))
    for k in range(n_pointings):
        obsid = f"{plan}_{k // 4 + 1:04d}_{k % 4 + 1}"
        mjd0 = mjd_start + 0.02 * k
        for j, det in enumerate(detectors):
            versions = [(version, False)]
            if include_reprocessed_duplicates and k < 2 and j == 0:
                versions.append((old_version, True))
            for ver, superseded in versions:
                meta = make_frame_meta(det, center_ra, center_dec, float(pas[k]) % 360.0, obsid, release=release,
                                       plan=plan, version=ver, mjd_beg=mjd0, mjd_end=mjd0 + EXPOSURE_DAYS,
                                       psf_fwhm_arcsec=sky.psf_fwhm_arcsec,
                                       zodi_level=float(zl[k]) * (1.2 if superseded else 1.0),
                                       zodi_scale_true=zodi_scale_true, noise_scale=noise_scale, seed=int(seed))
                solve_pointing(meta, float(xs[k]), float(ys[k]), center_ra, center_dec)
                meta.relpath = l2_relpath(release, plan, ver, det, obsid)
                meta.extra = {"superseded": superseded, "centre_pixel": [float(xs[k]), float(ys[k])]}
                maps = None
                if det in products:
                    meta.extra["true_wavelengths"] = products[det].name
                    maps = product_maps(products[det])
                path = root / meta.relpath
                out = simulate_frame(path, meta, sky, cutout=cut, psf_size=psf_size, psf_zones=psf_zones,
                                     injections=injections, wave_maps=maps)
                del maps
                info.frames.append(out)
                info.paths.append(path)
                rows.append(index_row(out, path))
                logger.info("wrote %s", path)
    write_index(root, rows, calibration=cal_rows)
    field_params = {"center_ra": float(center_ra), "center_dec": float(center_dec), "release": release,
                    "detectors": list(detectors), "n_pointings": n_pointings, "seed": int(seed),
                    "cutout_size_deg": cutout_size_deg, "zodi_scale_true": zodi_scale_true,
                    "noise_scale": noise_scale}
    if true_wavelengths:
        field_params["spectral_wcs"] = {str(d): p.relative_to(root).as_posix() for d, p in products.items()}
    _write_truth(info.truth_path, sky, field_params, info.frames)
    return info


def load_truth(root: str | Path) -> tuple[SkyModel, dict[str, Any]]:
    """Read ``root/truth.json`` (or a path to it): (SkyModel, dict) where ``dict['frames']`` holds
    :class:`FrameMeta` objects and the other keys are as written by :func:`simulate_field`."""
    p = Path(root)
    if p.is_dir():
        p = p / TRUTH_FILE
    if not p.exists():
        raise FileNotFoundError(f"truth file not found: {p}")
    with open(p) as f:
        d = json.load(f)
    try:
        sky = SkyModel.from_dict(d["sky"])
        d["frames"] = [FrameMeta.from_dict(m) for m in d.get("frames", [])]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{p}: not a simulator truth file ({exc})") from exc
    return sky, d
