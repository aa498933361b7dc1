"""The simulated spectral-WCS calibration product: the true per-pixel wavelengths of a detector.

With ``true_wavelengths`` (opt-in, :func:`~.field.simulate_field`), a simulated frame's pixel
values come from the smooth LVF model evaluated at every pixel (:func:`true_wave_maps`), while
the frame's ``WCS-WAVE`` table stays the coarse lookup of control points (11 x 11 in QR2,
9 x 9 in QR3) interpolated bilinearly: the two differ by 0.2-1.6 nm rms (up to 4 nm in D4), as
on the sky. The maps are written, as the archive does, into one file per detector and version::

    <release>/spectral_wcs/<tag>/<det>/spectral_wcs_D<det>_spx_<tag>.fits
    PRIMARY (DETECTOR, VERSION), CWAVE (2040 x 2040 float32, um), CBAND (float32, um), WCS-WAVE

and listed in the archive index for the server's SIA collection ``spherex_<release>_cal``.
0-based pixels; wavelengths in um.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits

from ..calnames import ProductName
from ..testing.archive_index import md5_of
from .instrument import NPIX, detector_band, lvf_model, wave_table

__all__ = ["CAL_TAGS", "calibration_row", "product_maps", "true_wave_maps", "write_spectral_wcs_product"]

#: Version tag of the simulated product of each release.
CAL_TAGS = {"qr2": "cal-wcs-v4-2025-254", "qr3": "cal-wcs-v6-2025-302"}
#: Rows computed at once (bounds the LVF model's temporary arrays to ~20 MB).
_CHUNK_ROWS = 64


@functools.lru_cache(maxsize=1)
def _maps32(detector: int) -> tuple[np.ndarray, np.ndarray]:
    lam = np.empty((NPIX, NPIX), dtype=np.float32)
    bw = np.empty((NPIX, NPIX), dtype=np.float32)
    xs = np.arange(NPIX, dtype=np.float64)[None, :]
    for y0 in range(0, NPIX, _CHUNK_ROWS):
        ys = np.arange(y0, min(y0 + _CHUNK_ROWS, NPIX), dtype=np.float64)[:, None]
        lam[y0:y0 + ys.shape[0]], bw[y0:y0 + ys.shape[0]] = lvf_model(detector, xs, ys)
    lam.setflags(write=False)
    bw.setflags(write=False)
    return lam, bw


def true_wave_maps(detector: int) -> tuple[np.ndarray, np.ndarray]:
    """(central wavelength, bandwidth) [um] of every pixel of ``detector``, ``(2040, 2040)``: the
    LVF model (:func:`~.instrument.lvf_model`) rounded to float32 as the product stores it,
    returned as float64. These are the wavelengths a frame rendered with ``true_wavelengths``
    computes its pixel values from."""
    lam, bw = _maps32(int(detector))
    return lam.astype(np.float64), bw.astype(np.float64)


def _wave_table_hdu(detector: int, release: str) -> fits.BinTableHDU:
    tx, ty, vals = wave_table(detector, "qr2" if release == "qr2" else "qr3")
    cols = [
        fits.Column("X", f"{tx.size}E", array=tx[None].astype(np.float32)),
        fits.Column("Y", f"{ty.size}E", array=ty[None].astype(np.float32)),
        fits.Column("VALUES", f"{2 * tx.size * ty.size}E", dim=f"(2,{tx.size},{ty.size})",
                    array=vals[None].astype(np.float32)),
    ]
    return fits.BinTableHDU.from_columns(cols, name="WCS-WAVE")


def write_spectral_wcs_product(root: str | Path, release: str, detector: int, tag: str | None = None,
                               maps: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write the product of ``detector`` under ``root`` at its archive path and return the path.

    ``tag`` defaults to :data:`CAL_TAGS` of the release; ``maps`` = (CWAVE, CBAND) replaces the
    true maps (tests write wrong versions with it)."""
    det = int(detector)
    name = ProductName(det, tag or CAL_TAGS[release])
    lam, bw = maps if maps is not None else _maps32(det)
    prim = fits.PrimaryHDU()
    prim.header["TELESCOP"] = "SPHEREx"
    prim.header["DETECTOR"] = (det, "SPHEREx detector 1-6")
    prim.header["VERSION"] = (name.tag, "calibration product version")
    prim.header["SIMULATE"] = (True, "written by spxquery.drizzle3d.simulate")
    hdus = [prim]
    for extname, data in (("CWAVE", lam), ("CBAND", bw)):
        hdu = fits.ImageHDU(np.asarray(data, dtype=np.float32), name=extname)
        hdu.header["BUNIT"] = ("um", "central wavelength" if extname == "CWAVE" else "bandwidth")
        hdu.header["DETECTOR"] = det
        hdus.append(hdu)
    hdus.append(_wave_table_hdu(det, release))
    path = Path(root) / name.relpath(release)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    fits.HDUList(hdus).writeto(tmp, overwrite=True)
    tmp.replace(path)
    return path


def product_maps(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(CWAVE, CBAND) of a written product as float64 [um] (what the frames were rendered with)."""
    with fits.open(path, memmap=False) as hdul:
        return np.asarray(hdul["CWAVE"].data, dtype=np.float64), np.asarray(hdul["CBAND"].data, dtype=np.float64)


def calibration_row(path: str | Path, root: str | Path, release: str, detector: int) -> dict[str, Any]:
    """The archive index's entry of a product file (an SIA row of ``spherex_<release>_cal``):
    ``uri`` (``ibe/data/spherex/...``), ``obs_collection``, ``obs_id``, ``energy_bandpassname``,
    ``dataproduct_subtype``, ``access_estsize`` (kB), ``contentlength``, ``contentchecksum``."""
    path = Path(path)
    rel = path.resolve().relative_to(Path(root).resolve()).as_posix()
    lo, hi = detector_band(detector)
    return {
        "uri": f"ibe/data/spherex/{rel}",
        "obs_collection": f"spherex_{release}_cal",
        "obs_id": path.stem,
        "obs_publisher_did": f"ivo://irsa.ipac/spherex_{release}_cal?{path.stem}",
        "dataproduct_type": "image",
        "dataproduct_subtype": "spectral_wcs",
        "energy_bandpassname": f"SPHEREx-D{int(detector)}",
        "em_min": lo * 1e-6,
        "em_max": hi * 1e-6,
        "access_format": "image/fits",
        "access_estsize": int(round(path.stat().st_size / 1024)),
        "contentlength": int(path.stat().st_size),
        "contentchecksum": f"md5:{md5_of(path)}",
    }
