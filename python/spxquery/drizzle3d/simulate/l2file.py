"""Rendering one simulated SPHEREx L2 frame and writing it as a QR2/QR3 file or an IRSA-style cutout.

Extensions (by EXTNAME): PRIMARY, IMAGE, FLAGS, VARIANCE, ZODI, PSF (QR2) / EPSF (QR3+), WCS-WAVE.
IMAGE/ZODI in MJy/sr float32, VARIANCE (MJy/sr)^2 float32, FLAGS int32 (QR3: RICE_1, one row
per tile). 0-based pixels throughout; the headers carry the FITS 1-based CRPIX values.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .injections import Injections, injected_image
from .instrument import (
    FLAG_BITS,
    NPIX,
    PHOTON_GAIN,
    READ_NOISE,
    FrameMeta,
    frame_pixel_to_world,
    frame_world_to_pixel,
    wave_lookup_bilinear,
    wave_table,
    wcs_cards,
    zodi_map,
)
from .sky import MJY_PER_MJY, SkyModel, _gauss2d, _gauss_legendre_unit, gnomonic

logger = logging.getLogger(__name__)

__all__ = [
    "build_l2_hdulist",
    "cutout_meta",
    "file_wave_table",
    "frame_rng",
    "l2_filename",
    "l2_relpath",
    "make_cutout",
    "render_frame",
    "write_l2_file",
]

_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_STRUCTURE_KEYS = ("XTENSION", "BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT")
_IMAGE_EXTS = ("IMAGE", "FLAGS", "VARIANCE", "ZODI")



def _isot(mjd: float) -> str:
    """ISO-8601 UTC time of an MJD (what real headers carry beside MJD-*)."""
    from astropy.time import Time

    return str(Time(float(mjd), format="mjd", scale="utc").isot)

def l2_filename(obsid: str, detector: int, version: str) -> str:
    """Archive file name ``level2_<OBSID>D<det>_spx_<version>.fits`` (version like ``l2b-v12-2025-164``)."""
    return f"level2_{obsid}D{int(detector)}_spx_{version}.fits"


def l2_relpath(release: str, plan: str, version: str, detector: int, obsid: str) -> str:
    """Mirror path ``<release>/level2/<plan>/<version>/<det>/<file>``."""
    return f"{release}/level2/{plan}/{version}/{int(detector)}/{l2_filename(obsid, detector, version)}"


def frame_rng(meta: FrameMeta, stream: int) -> np.random.Generator:
    """Deterministic generator from (seed, obsid, detector, version, stream)."""
    key = zlib.crc32(f"{meta.obsid}|{meta.version}".encode())
    return np.random.default_rng([int(meta.seed), key, int(meta.detector), int(stream)])


def file_wave_table(meta: FrameMeta) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, Y, VALUES) exactly as stored in the file (float32-rounded, returned as float64)."""
    tx, ty, vals = wave_table(meta.detector, meta.wave_grid)

    def as_stored(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, dtype=np.float32).astype(np.float64)

    return as_stored(tx), as_stored(ty), as_stored(vals)


def _render_sources(meta: FrameMeta, sky: SkyModel, lam: np.ndarray, bw: np.ndarray, n_quad: int = 4) -> np.ndarray:
    """Noiseless sky [MJy/sr] on the file's pixels: PSF-blurred sources averaged over each pixel
    (Gauss-Legendre ``n_quad``^2 nodes through the exact pixel->sky mapping) and over each pixel's
    top-hat bandpass ``lam +- bw/2``. Sources are evaluated in boxes of +-6 sigma only."""
    ny, nx = lam.shape
    img = np.zeros((ny, nx), dtype=np.float64)
    psf_sig = meta.psf_fwhm_arcsec * _FWHM_TO_SIGMA
    pix_arcsec = math.sqrt(abs(np.linalg.det(np.asarray(meta.cd)))) * 3600.0
    t, w = _gauss_legendre_unit(n_quad)
    ww = np.outer(w, w)
    srcs: list[tuple[Any, np.ndarray, float]] = []
    for s in sky.point_sources:
        cov = psf_sig**2 * np.eye(2)
        # mJy -> MJy, times the PSF normalised per steradian
        norm = MJY_PER_MJY / (2.0 * math.pi * (psf_sig * math.pi / 648000.0) ** 2)
        srcs.append((s, cov, norm))
    for e in sky.extended_sources:
        cov = e.covariance_arcsec2(psf_sig)
        norm = math.sqrt(np.linalg.det(e.covariance_arcsec2(0.0)) / np.linalg.det(cov))
        srcs.append((e, cov, norm))
    if not srcs:
        return img
    ras = np.array([s.ra for s, _, _ in srcs])
    decs = np.array([s.dec for s, _, _ in srcs])
    xs, ys = frame_world_to_pixel(meta, ras, decs)
    for (src, cov, norm), xc, yc in zip(srcs, xs, ys):
        sig_pix = math.sqrt(np.max(np.linalg.eigvalsh(cov))) / pix_arcsec
        r = math.ceil(6.0 * sig_pix) + 2
        if not (np.isfinite(xc) and np.isfinite(yc)):
            continue
        x0, x1 = max(math.floor(xc) - r, 0), min(math.floor(xc) + r + 2, nx)
        y0, y1 = max(math.floor(yc) - r, 0), min(math.floor(yc) + r + 2, ny)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        nxq = xx[..., None, None] + t[None, None, None, :]
        nyq = yy[..., None, None] + t[None, None, :, None]
        ra, dec = frame_pixel_to_world(meta, nxq, nyq)
        xi, eta = gnomonic(ra, dec, src.ra, src.dec)
        g = _gauss2d(xi * 3600.0, eta * 3600.0, cov)
        spatial = norm * np.einsum("abij,ij->ab", g, ww)
        lc = lam[y0:y1, x0:x1]
        b = bw[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += spatial * src.spectrum.band_average(lc - 0.5 * b, lc + 0.5 * b)
    return img


def render_frame(meta: FrameMeta, sky: SkyModel, source_threshold: float = 0.05,
                 n_hot_fraction: float = 1e-3, injections: Injections | None = None,
                 wave_maps: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """All pixel arrays of a full frame (``meta`` must describe the full 2040x2040 frame).

    ``wave_maps`` = (central wavelength, bandwidth) [um] of every pixel (the spectral-WCS
    calibration product's, :mod:`.calproduct`) renders the pixels at those wavelengths; None
    renders them at the file's own ``WCS-WAVE`` lookup (the lookup is then the truth).
    Returns ``image, variance, flags, zodi, lam, bw, sky`` (noiseless sources, float64).
    IMAGE = sky + zodi_scale_true * ZODI + N(0, VARIANCE) * noise_scale, then defects:
    HOT (bit 10, ~``n_hot_fraction`` of pixels, values 1e4-2e4), TRANSIENT (bit 0, +30-100),
    one NONFUNC column (bit 6, IMAGE = 0), one MISSING_DATA block (bit 9, IMAGE = VARIANCE = NaN),
    SOURCE (bit 21) where the noiseless sky > ``source_threshold`` MJy/sr. ``injections``
    (:mod:`.injections`; off by default) adds outliers after the noise, before the defects; their
    flux is returned as ``injected`` (float64).
    """
    ny, nx = meta.shape
    if (ny, nx) != (NPIX, NPIX) or meta.x0 or meta.y0:
        raise ValueError(f"render_frame needs a full {NPIX}x{NPIX} frame meta, "
                         f"got shape {meta.shape} at ({meta.x0}, {meta.y0})")
    if wave_maps is None:
        tx, ty, vals = file_wave_table(meta)
        lam, bw = wave_lookup_bilinear(tx, ty, vals, np.arange(nx, dtype=np.float64)[None, :],
                                       np.arange(ny, dtype=np.float64)[:, None])
    else:
        lam, bw = (np.asarray(a, dtype=np.float64) for a in wave_maps)
        if lam.shape != (ny, nx) or bw.shape != (ny, nx):
            raise ValueError(f"wave_maps have shapes {lam.shape}, {bw.shape}; the frame is {(ny, nx)}")
    sky_img = _render_sources(meta, sky, lam, bw)
    zodi = zodi_map(meta, lam).astype(np.float32)
    signal = sky_img + meta.zodi_scale_true * zodi
    variance = (READ_NOISE**2 + PHOTON_GAIN * np.maximum(signal, 0.0)).astype(np.float32)
    rng = frame_rng(meta, 0)
    noise = rng.standard_normal((ny, nx), dtype=np.float32)
    image = (signal + noise * np.sqrt(variance) * np.float32(meta.noise_scale)).astype(np.float32)
    injected = injected_image(meta, variance, lam, injections)
    image += injected.astype(np.float32)
    flags = np.zeros((ny, nx), dtype=np.int32)
    frng = frame_rng(meta, 1)
    n_hot = round(n_hot_fraction * nx * ny)
    hot = frng.choice(nx * ny, size=n_hot, replace=False)
    image.ravel()[hot] = (1e4 * (1.0 + frng.random(n_hot))).astype(np.float32)
    flags.ravel()[hot] |= 1 << FLAG_BITS["HOT"]
    n_tr = 200
    tr = frng.choice(nx * ny, size=n_tr, replace=False)
    image.ravel()[tr] += (30.0 + 70.0 * frng.random(n_tr)).astype(np.float32)
    flags.ravel()[tr] |= 1 << FLAG_BITS["TRANSIENT"]
    col = int(frng.integers(100, nx - 100))
    image[:, col] = 0.0
    flags[:, col] |= 1 << FLAG_BITS["NONFUNC"]
    mx, my = int(frng.integers(50, nx - 90)), int(frng.integers(50, ny - 50))
    image[my:my + 16, mx:mx + 40] = np.nan
    variance[my:my + 16, mx:mx + 40] = np.nan
    flags[my:my + 16, mx:mx + 40] |= 1 << FLAG_BITS["MISSING_DATA"]
    flags[sky_img > source_threshold] |= 1 << FLAG_BITS["SOURCE"]
    return {"image": image, "variance": variance, "flags": flags, "zodi": zodi, "lam": lam, "bw": bw, "sky": sky_img,
            "injected": injected}


def _psf_hdu(meta: FrameMeta, psf_size: int, psf_zones: int, oversamp: int) -> fits.hdu.base.ExtensionHDU:
    """QR2: PSF image cube (psf_zones^2, psf_size, psf_size); QR3: EPSF binary table (one row per zone)."""
    pixel_arcsec = math.sqrt(abs(np.linalg.det(np.asarray(meta.cd)))) * 3600.0
    sig = meta.psf_fwhm_arcsec * _FWHM_TO_SIGMA / pixel_arcsec * oversamp
    c = (psf_size - 1) / 2.0
    g = np.exp(-0.5 * ((np.arange(psf_size) - c) / sig) ** 2)
    psf = np.outer(g, g)
    psf = (psf / psf.sum()).astype(np.float32)
    centres = (np.arange(psf_zones) + 0.5) * NPIX / psf_zones + 0.5  # 1-based pixel
    zx, zy = (a.ravel() for a in np.meshgrid(centres, centres))
    nzone = psf_zones * psf_zones
    if meta.release == "qr2":
        hdu = fits.ImageHDU(np.ascontiguousarray(np.broadcast_to(psf, (nzone, psf_size, psf_size))), name="PSF")
        hdu.header["OVERSAMP"] = (oversamp, "PSF oversampling factor")
        for i in range(nzone):
            hdu.header[f"XCTR_{i}"] = (float(zx[i]), "zone centre x (1-based pixel)")
            hdu.header[f"YCTR_{i}"] = (float(zy[i]), "zone centre y (1-based pixel)")
        return hdu
    cols = [
        fits.Column("XCTR", "E", array=zx.astype(np.float32)),
        fits.Column("YCTR", "E", array=zy.astype(np.float32)),
        fits.Column("PSF", f"{psf_size * psf_size}E", dim=f"({psf_size},{psf_size})",
                    array=np.broadcast_to(psf, (nzone, psf_size, psf_size))),
    ]
    hdu = fits.BinTableHDU.from_columns(cols, name="EPSF")
    hdu.header["OVERSAMP"] = (oversamp, "PSF oversampling factor")
    return hdu


def _wave_hdu(meta: FrameMeta) -> fits.BinTableHDU:
    tx, ty, vals = file_wave_table(meta)
    nx_, ny_ = tx.size, ty.size
    cols = [
        fits.Column("X", f"{nx_}E", array=tx[None].astype(np.float32)),
        fits.Column("Y", f"{ny_}E", array=ty[None].astype(np.float32)),
        fits.Column("VALUES", f"{2 * nx_ * ny_}E", dim=f"(2,{nx_},{ny_})", array=vals[None].astype(np.float32)),
    ]
    return fits.BinTableHDU.from_columns(cols, name="WCS-WAVE")


def _image_header(meta: FrameMeta, extname: str, bunit: str | None) -> fits.Header:
    h = fits.Header()
    if bunit:
        h["BUNIT"] = bunit
    h["DETECTOR"] = (int(meta.detector), "SPHEREx detector 1-6")
    h["OBSID"] = (meta.obsid, "observation ID")
    h["MJD-BEG"] = (float(meta.mjd_beg), "[d] exposure start")
    h["MJD-END"] = (float(meta.mjd_end), "[d] exposure end")
    h["MJD-AVG"] = (float(meta.mjd_avg), "[d] exposure mid-time")
    for key, mjd in (("DATE-BEG", meta.mjd_beg), ("DATE-END", meta.mjd_end), ("DATE-AVG", meta.mjd_avg)):
        h[key] = (_isot(mjd), "UTC, from " + key.replace("DATE", "MJD"))
    h["PSF_FWHM"] = (float(meta.psf_fwhm_arcsec), "[arcsec] PSF FWHM")
    for key, val, com in wcs_cards(meta):
        h[key] = (val, com)
    return h


def build_l2_hdulist(meta: FrameMeta, arrays: dict[str, np.ndarray], psf_size: int = 101,
                     psf_zones: int = 11, oversamp: int = 10) -> fits.HDUList:
    """HDUList of a full frame from :func:`render_frame` arrays, QR2 or QR3 layout after ``meta.release``."""
    prim = fits.PrimaryHDU()
    prim.header["VERSION"] = (meta.version, "pipeline version")
    prim.header["TELESCOP"] = "SPHEREx"
    prim.header["DETECTOR"] = int(meta.detector)
    prim.header["OBSID"] = meta.obsid
    prim.header["SIMULATE"] = (True, "written by spxquery.drizzle3d.simulate")
    ih = _image_header(meta, "IMAGE", "MJy/sr")
    flags = arrays["flags"]
    for name in ("HOT", "MISSING_DATA", "NONFUNC", "TRANSIENT", "SOURCE"):
        ih[f"HIERARCH L2 N_{name}"] = int(np.count_nonzero(flags & (1 << FLAG_BITS[name])))
    image = fits.ImageHDU(arrays["image"], header=ih, name="IMAGE")
    fh = _image_header(meta, "FLAGS", None)
    if meta.release == "qr2":
        for name, bit in FLAG_BITS.items():
            fh[f"HIERARCH MP_{name}"] = bit
        flags_hdu: Any = fits.ImageHDU(flags, header=fh, name="FLAGS")
    else:
        for name, bit in FLAG_BITS.items():
            fh[f"MSKN{bit:04d}"] = name
        flags_hdu = fits.CompImageHDU(flags, header=fh, name="FLAGS", compression_type="RICE_1",
                                      tile_shape=(1, flags.shape[1]))
    var = fits.ImageHDU(arrays["variance"], header=_image_header(meta, "VARIANCE", "(MJy/sr)^2"), name="VARIANCE")
    zodi = fits.ImageHDU(arrays["zodi"], header=_image_header(meta, "ZODI", "MJy/sr"), name="ZODI")
    psf = _psf_hdu(meta, psf_size, psf_zones, oversamp)
    return fits.HDUList([prim, image, flags_hdu, var, zodi, psf, _wave_hdu(meta)])


def write_l2_file(hdul: fits.HDUList, path: str | Path) -> Path:
    """Write an HDUList (via a temporary name, then rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    hdul.writeto(tmp, overwrite=True)
    tmp.replace(path)
    return path


def cutout_meta(meta: FrameMeta, x0: int, y0: int, shape: tuple[int, int]) -> FrameMeta:
    """Meta of a cutout starting at parent pixel (x0, y0) (relative to ``meta``'s own grid)."""
    return replace(meta, crpix=(meta.crpix[0] - x0, meta.crpix[1] - y0), x0=meta.x0 + x0, y0=meta.y0 + y0,
                   shape=(int(shape[0]), int(shape[1])), extra=dict(meta.extra))


def cutout_box(
    header: fits.Header, shape: tuple[int, int], ra: float, dec: float, size_deg: float
) -> tuple[int, int, int, int]:
    """(x0, x1, y0, y1) 0-based half-open pixel box of an IRSA-style square cutout."""
    w = WCS(header)
    xc, yc = (float(v[0]) for v in w.all_world2pix(np.array([ra]), np.array([dec]), 0))
    pix = float(np.sqrt(abs(np.linalg.det(w.pixel_scale_matrix))))
    half = math.ceil(0.5 * float(size_deg) / pix)
    ny, nx = shape
    ix, iy = round(xc), round(yc)
    x0, x1 = max(ix - half, 0), min(ix + half + 1, nx)
    y0, y1 = max(iy - half, 0), min(iy + half + 1, ny)
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"cutout centre ({ra}, {dec}) size {size_deg} deg does not overlap the {nx}x{ny} image "
                         f"(pixel {xc:.1f}, {yc:.1f})")
    return x0, x1, y0, y1


def make_cutout(full: fits.HDUList | str | Path, ra: float, dec: float, size_deg: float) -> fits.HDUList:
    """IRSA-style cutout: IMAGE/FLAGS/VARIANCE/ZODI trimmed to a square of ``size_deg`` around
    (ra, dec) [deg] (clipped at the frame edges), CRPIXn, CRPIXnA and CRPIXnW shifted together;
    PRIMARY, PSF/EPSF and WCS-WAVE copied whole; FLAGS stays RICE_1-compressed when it was."""
    close = False
    if not isinstance(full, fits.HDUList):
        full = fits.open(full)
        close = True
    try:
        ih = full["IMAGE"].header
        shape = full["IMAGE"].data.shape
        x0, x1, y0, y1 = cutout_box(ih, shape, ra, dec, size_deg)
        out = fits.HDUList([fits.PrimaryHDU(header=full[0].header.copy())])
        for hdu in full[1:]:
            name = hdu.name
            if name in _IMAGE_EXTS:
                h = hdu.header.copy()
                for key, off in (("CRPIX1", x0), ("CRPIX2", y0), ("CRPIX1A", x0), ("CRPIX2A", y0),
                                 ("CRPIX1W", x0), ("CRPIX2W", y0)):
                    if key in h:
                        h[key] = float(h[key]) - off
                data = np.ascontiguousarray(hdu.data[y0:y1, x0:x1])
                if isinstance(hdu, fits.CompImageHDU):
                    for k in [k for k in h if k.startswith("Z") or k in _STRUCTURE_KEYS]:
                        del h[k]
                    out.append(fits.CompImageHDU(data, header=h, name=name, compression_type="RICE_1",
                                                 tile_shape=(1, data.shape[1])))
                else:
                    out.append(fits.ImageHDU(data, header=h, name=name))
            else:
                out.append(hdu.copy())
        return out
    finally:
        if close:
            # data were copied above; keep the returned list independent of the file
            for h in out:
                _ = h.data
            full.close()
