"""The cube file: the 7-HDU FITS layout of a drizzled cube, written atomically and read back.

(:mod:`.io` re-exports :func:`save_cube` and :func:`load_cube` under their spxquery 0.4.1 path.)

HDUs: 0 PRIMARY (metadata, input files and their zodi scales), 1 SCI (float32,
MJy/sr), 2 VARIANCE (float32, (MJy/sr)^2), 3 AND_MASK (uint32), 4 OR_MASK (uint32),
5 COUNT (uint32, contributing input pixels), 6 WAVELENGTH (binary table).

SCI and VARIANCE carry a 3-D WCS (RA---TAN, DEC--TAN, wavelength in metres):

* log-uniform z grids (``zgrid.is_log_uniform()``): ``CTYPE3 = 'WAVE-LOG'``, exact —
  the arithmetic bin centres of a geometric grid form a geometric series, so
  ``lambda_k = CRVAL3 * exp(CDELT3 * k / CRVAL3)`` reproduces ``zgrid.centers``;
* otherwise ``CTYPE3 = 'WAVE'``, the least-squares linear fit of the centres, with
  its largest deviation (um) in ``WAVEMAXE``; the WAVELENGTH table is the exact
  reference in both cases.

Plane ``k`` (0-based) of the cube is FITS pixel ``k + 1`` on axis 3.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .grid import celestial
from .settings import header_cards

logger = logging.getLogger(__name__)

#: Keyword-series prefixes in the PRIMARY header (5-digit 1-based index follows).
INPUT_KEY = "INF"  # input file name
ZODI_KEY = "ZSC"  # zodi scale applied to that input


def _versions() -> Dict[str, str]:
    from . import __version__

    try:
        from ._core import __version__ as core_version
    except Exception:  # pragma: no cover - the extension is always built in this package
        core_version = "unknown"
    return {"package": str(__version__), "core": str(core_version)}


def spectral_wcs_keywords(zgrid) -> Dict[str, Any]:
    """Axis-3 keywords (CTYPE3, CUNIT3, CRPIX3, CRVAL3, CDELT3 and WAVEMAXE) for ``zgrid``.

    ``WAVEMAXE`` is the largest |WCS - centre| over the planes in um (0 for WAVE-LOG
    up to rounding).
    """
    centers_m = np.asarray(zgrid.centers, dtype=np.float64) * 1e-6
    n = centers_m.size
    k = np.arange(n, dtype=np.float64)
    if n >= 2 and zgrid.is_log_uniform():
        crval = float(centers_m[0])
        # ln steps of the centres: mean over the grid (all equal for a geometric grid).
        dln = float(np.mean(np.diff(np.log(centers_m))))
        cdelt = crval * dln
        model = crval * np.exp(cdelt * k / crval)
        ctype = "WAVE-LOG"
    elif n >= 2:
        a, b = np.polynomial.polynomial.polyfit(k, centers_m, 1)
        crval, cdelt = float(a), float(b)
        model = crval + cdelt * k
        ctype = "WAVE"
    else:
        crval = float(centers_m[0])
        cdelt = float(zgrid.widths[0]) * 1e-6
        model = np.array([crval])
        ctype = "WAVE"
    maxerr_um = float(np.max(np.abs(model - centers_m))) * 1e6
    return {
        "CTYPE3": ctype,
        "CUNIT3": "m",
        "CRPIX3": 1.0,
        "CRVAL3": crval,
        "CDELT3": cdelt,
        "WAVEMAXE": maxerr_um,
    }


def _cube_wcs_header(wcs_2d: WCS, zgrid) -> fits.Header:
    """3-D WCS header: the celestial WCS of the cube plus the spectral axis."""
    src = celestial(wcs_2d).to_header(relax=False)
    hdr = fits.Header()
    hdr["WCSAXES"] = 3
    for card in src.cards:
        if card.keyword in ("WCSAXES", "COMMENT", "HISTORY", ""):
            continue
        hdr[card.keyword] = (card.value, card.comment)
    spec = spectral_wcs_keywords(zgrid)
    hdr["CTYPE3"] = (spec["CTYPE3"], "exact (log grid)" if spec["CTYPE3"] == "WAVE-LOG" else "linear approximation")
    hdr["CUNIT3"] = "m"
    hdr["CRPIX3"] = (spec["CRPIX3"], "FITS pixel of plane 0")
    hdr["CRVAL3"] = (spec["CRVAL3"], "[m] wavelength of plane 0")
    hdr["CDELT3"] = (spec["CDELT3"], "[m]")
    hdr["WAVEMAXE"] = (spec["WAVEMAXE"], "[um] max |WCS - LAMBDA|; exact: WAVELENGTH HDU")
    return hdr


def _wavelength_table(zgrid, n_input_sc: np.ndarray) -> fits.BinTableHDU:
    n_z = zgrid.n_z
    cols = [
        fits.Column(name="INDEX", format="J", array=np.arange(n_z, dtype=np.int32)),
        fits.Column(name="LAMBDA", format="D", unit="um", array=np.asarray(zgrid.centers, np.float64)),
        fits.Column(name="LAMBDA_MIN", format="D", unit="um", array=np.asarray(zgrid.edges[:-1], np.float64)),
        fits.Column(name="LAMBDA_MAX", format="D", unit="um", array=np.asarray(zgrid.edges[1:], np.float64)),
        fits.Column(name="DLAMBDA", format="D", unit="um", array=np.asarray(zgrid.widths, np.float64)),
        fits.Column(name="NU", format="D", unit="Hz", array=np.asarray(zgrid.frequencies(), np.float64)),
        fits.Column(name="DNU", format="D", unit="Hz", array=np.asarray(zgrid.delta_nu(), np.float64)),
        fits.Column(name="R_EFF", format="D", array=np.asarray(zgrid.resolving_power(), np.float64)),
        fits.Column(name="N_INPUT_SC", format="J", array=np.asarray(n_input_sc, dtype=np.int32)),
    ]
    return fits.BinTableHDU.from_columns(cols, name="WAVELENGTH")


def _primary(cube) -> fits.PrimaryHDU:
    cfg = cube.config
    zgrid = cube.zgrid
    n_z, n_y, n_x = cube.flux_weighted.shape
    h = fits.PrimaryHDU().header
    h["TELESCOP"] = "SPHEREx"
    h["INSTRUME"] = "SPHEREx"
    h["FILETYPE"] = ("DRIZZLED_CUBE", "spxquery.drizzle3d output")
    h["DETECTOR"] = (int(cube.detector), "SPHEREx detector (1-6)")
    h["BAND_NM"] = (f"D{int(cube.detector)}", "band name")
    h["N_INPUTS"] = (int(cube.n_inputs), "input frames that contributed")
    h["N_REJECT"] = (int(cube.n_rejected), "input files rejected (unusable)")
    base = getattr(cfg, "BASE_PIXSCALE", 6.15)
    h["PIXSCALE"] = (float(base), "[arcsec] native pixel scale")
    h["EPIXSCLE"] = (float(cube.pixscale), "[arcsec] output pixel scale")
    h["BUNIT"] = ("MJy/sr", "unit of SCI")
    h["LAM_MIN"] = (float(zgrid.edges[0]), "[um] lowest bin edge")
    h["LAM_MAX"] = (float(zgrid.edges[-1]), "[um] highest bin edge")
    h["NZ"] = (int(n_z), "spectral planes")
    h["NX"] = (int(n_x), "spatial x size")
    h["NY"] = (int(n_y), "spatial y size")
    for keyword, value, comment in header_cards(cfg):  # the settings, from their descriptions
        h[keyword] = (value, comment)
    v = _versions()
    h["DRIZVER"] = (v["package"], "spxquery.drizzle3d version")
    h["COREVER"] = (v["core"], "Rust core version")
    h["DATE"] = (datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"), "UTC file creation")
    log: List[dict] = list(getattr(cube, "frame_log", []) or [])
    h["NFRAMLOG"] = (len(log), f"inputs listed in {INPUT_KEY}nnnnn/{ZODI_KEY}nnnnn")
    for i, entry in enumerate(log, start=1):
        h[f"{INPUT_KEY}{i:05d}"] = (str(entry.get("name", "")), "input file")
        scale = entry.get("zodi_scale")
        if scale is not None and np.isfinite(scale):
            h[f"{ZODI_KEY}{i:05d}"] = (float(scale), f"zodi scale ({entry.get('zodi_source', 'fit')})")
    return fits.PrimaryHDU(header=h)


def _image_header(name: str, dtype, shape, extra: fits.Header | None = None) -> fits.Header:
    """Header of an image extension of ``dtype`` and ``shape`` (no data allocated)."""
    hdu = fits.ImageHDU(np.broadcast_to(np.zeros((), dtype=dtype), shape), name=name)
    if extra is not None:
        hdu.header.update(extra)
    return hdu.header


#: The image extensions in file order, with their data types.
IMAGE_EXTENSIONS = (
    ("SCI", np.float32), ("VARIANCE", np.float32), ("AND_MASK", np.uint32), ("OR_MASK", np.uint32),
    ("COUNT", np.uint32),
)


def _plane(cube, name: str, k: int) -> np.ndarray:
    """Plane ``k`` of the output extension ``name`` (SCI and VARIANCE NaN where empty)."""
    if name in ("SCI", "VARIANCE"):
        w = cube.weight_total[k]
        out = np.full(w.shape, np.nan, dtype=np.float64)
        covered = w > 0
        if name == "SCI":
            np.divide(cube.flux_weighted[k], w, out=out, where=covered)
        else:
            np.divide(cube.var_accum[k], w * w, out=out, where=covered)
        return out.astype(np.float32)
    if name == "AND_MASK":
        return np.where(cube.count_map[k] > 0, np.asarray(cube.and_mask[k], dtype=np.uint32), np.uint32(0))
    if name == "OR_MASK":
        return np.asarray(cube.or_mask[k], dtype=np.uint32)
    return np.asarray(cube.count_map[k], dtype=np.uint32)


def _fits_bytes(a: np.ndarray) -> bytes:
    """Big-endian FITS data bytes; uint32 as int32 with BZERO = 2**31."""
    if a.dtype == np.uint32:
        return (a ^ np.uint32(0x80000000)).view(np.int32).astype(">i4").tobytes()
    return a.astype(a.dtype.newbyteorder(">")).tobytes()


def _pad(f, nbytes: int) -> None:
    if nbytes % 2880:
        f.write(b"\0" * (2880 - nbytes % 2880))


def build_hdulist(cube) -> fits.HDUList:
    """The 7 HDUs of ``cube`` in memory (see module docstring). :func:`save_cube`
    streams the same content plane by plane instead of building this."""
    n_input_sc = _n_input_sc(cube)
    wcs_hdr = _cube_wcs_header(cube.wcs, cube.zgrid)
    hdus = [_primary(cube)]
    for name, _ in IMAGE_EXTENSIONS:
        data = np.stack([_plane(cube, name, k) for k in range(cube.flux_weighted.shape[0])])
        hdu = fits.ImageHDU(data, name=name)
        hdu.header.update(_extension_keywords(name, wcs_hdr))
        hdus.append(hdu)
    hdus.append(_wavelength_table(cube.zgrid, n_input_sc))
    return fits.HDUList(hdus)


def _n_input_sc(cube) -> np.ndarray:
    n_input_sc = getattr(cube, "n_input_sc", None)
    if n_input_sc is None:
        raise ValueError("cube.n_input_sc is missing: cannot write the N_INPUT_SC column")
    return np.asarray(n_input_sc)


def _extension_keywords(name: str, wcs_hdr: fits.Header) -> fits.Header:
    """WCS and BUNIT for SCI/VARIANCE; nothing for the masks and COUNT."""
    extra = fits.Header()
    if name in ("SCI", "VARIANCE"):
        extra.update(wcs_hdr)
        extra["BUNIT"] = "MJy/sr" if name == "SCI" else "(MJy/sr)**2"
    return extra


def _write_streamed(f, cube) -> None:
    """Write the 7 HDUs to the open binary file ``f``: the five image extensions are
    streamed plane by plane (memory: one plane of each, not whole-cube copies)."""
    n_input_sc = _n_input_sc(cube)
    shape = cube.flux_weighted.shape
    wcs_hdr = _cube_wcs_header(cube.wcs, cube.zgrid)
    f.write(_primary(cube).header.tostring().encode("ascii"))
    for name, dtype in IMAGE_EXTENSIONS:
        f.write(_image_header(name, dtype, shape, _extension_keywords(name, wcs_hdr)).tostring().encode("ascii"))
        nbytes = 0
        for k in range(shape[0]):
            chunk = _fits_bytes(_plane(cube, name, k))
            f.write(chunk)
            nbytes += len(chunk)
        _pad(f, nbytes)
    table = fits.HDUList([fits.PrimaryHDU(), _wavelength_table(cube.zgrid, n_input_sc)])
    buf = io.BytesIO()
    table.writeto(buf)
    primary_len = len(fits.PrimaryHDU().header.tostring())
    f.write(buf.getvalue()[primary_len:])  # the table extension without its dummy primary


def save_cube(cube, path, overwrite: bool = False) -> Path:
    """Write ``cube`` as a 7-HDU FITS file, atomically (temporary file + rename).

    The image extensions are written plane by plane, so the extra memory is a few
    planes, not copies of the cube. Raises FileExistsError when ``path`` exists and
    ``overwrite`` is False. On any error the temporary file is removed and an
    existing ``path`` is left untouched. Returns the path written.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"Output file already exists: {path} (set overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".fits.tmp", delete=False)
    tmp_path = Path(tmp.name)
    try:
        with tmp:
            _write_streamed(tmp, cube)
            tmp.flush()
            os.fsync(tmp.fileno())
        # NamedTemporaryFile is created 0600; give the cube the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        if path.exists() and not overwrite:
            raise FileExistsError(f"Output file already exists: {path} (appeared while writing)")
        os.replace(tmp_path, path)
    except BaseException:
        try:
            tmp_path.unlink()
        except FileNotFoundError:
            pass
        raise
    size_mb = path.stat().st_size / 1024 / 1024
    logger.info("Saved D%s cube to %s (%.1f MB)", cube.detector, path, size_mb)
    return path


def load_cube(path) -> Dict[str, Any]:
    """Read a cube written by :func:`save_cube` into memory.

    Returns a dict with ``sci``, ``variance`` (float32), ``and_mask``, ``or_mask``,
    ``count`` (uint32), ``wavelength`` (FITS_rec of the WAVELENGTH table), ``header``
    (PRIMARY), ``sci_header`` and ``wcs`` (3-D astropy WCS of SCI).
    """
    path = Path(path)
    with fits.open(path, memmap=False) as hdul:
        sci_header = hdul["SCI"].header.copy()
        out = {
            "header": hdul[0].header.copy(),
            "sci_header": sci_header,
            "sci": np.array(hdul["SCI"].data),
            "variance": np.array(hdul["VARIANCE"].data),
            "and_mask": np.array(hdul["AND_MASK"].data),
            "or_mask": np.array(hdul["OR_MASK"].data),
            "count": np.array(hdul["COUNT"].data),
            "wavelength": hdul["WAVELENGTH"].data.copy(),
        }
    out["wcs"] = WCS(sci_header)
    logger.debug("Loaded cube %s: SCI shape %s", path, out["sci"].shape)
    return out


__all__ = ["save_cube", "load_cube", "build_hdulist", "spectral_wcs_keywords"]
