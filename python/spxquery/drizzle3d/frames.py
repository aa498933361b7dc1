"""Reading SPHEREx Level 2 spectral images (QR2, QR3+ and IRSA cutouts).

Conventions: 0-based pixel coordinates (pixel ``j`` covers ``[j-0.5, j+0.5]``),
wavelengths in um, surface brightness in MJy/sr, variance in (MJy/sr)^2.

Reading is two-stage so that frames cost only what they contribute:

1. :func:`open_frame` reads headers only (by EXTNAME) plus the small
   ``WCS-WAVE`` table and validates the file (:class:`FrameError` otherwise).
2. :func:`footprint_crop` finds the rectangle of input pixels whose droplets
   can touch the output region; :func:`read_frame` reads only that rectangle of
   IMAGE/FLAGS/VARIANCE/ZODI (``hdu.section``: memory-mapped rows for plain
   images, only the needed tiles for RICE-compressed FLAGS), evaluates the
   wavelength lookup and the corner map for it, and subtracts the zodi.

A frame that does not touch the output region costs one header read.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from . import flags as _flags
from . import zodi as _zodi

logger = logging.getLogger(__name__)

#: Extensions the drizzle needs (PSF / EPSF are not read).
REQUIRED_EXTENSIONS = ("IMAGE", "FLAGS", "VARIANCE", "ZODI")
#: Default name of the wavelength lookup table extension.
WAVE_EXTNAME = "WCS-WAVE"

#: Flags that disqualify a pixel from the zodi fit (looked up by name in the file's bits).
ZODI_BAD_FLAG_NAMES = (
    "TRANSIENT", "OVERFLOW", "SUR_ERROR", "NONFUNC", "DICHROIC", "MISSING_DATA",
    "HOT", "COLD", "PHANMISS", "NONLINEAR", "PERSIST", "OUTLIER",
)
#: Extra margin (input pixels) added around the crop for corner-map error and edge sampling.
DEFAULT_CROP_MARGIN = 1.0
#: Decimation (rows) of the full-frame subsample used for the zodi fit when the crop is small.
ZODI_SUBSAMPLE_STEP = 16

_DET_FROM_NAME = re.compile(r"D([1-6])_spx", re.IGNORECASE)


class FrameError(Exception):
    """A file that cannot be used as a SPHEREx L2 frame; carries ``path`` and ``reason``."""

    def __init__(self, path, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass
class WaveTable:
    """The ``WCS-WAVE`` lookup: control points X (nX,), Y (nY,) in 1-based pixels of
    the parent detector grid (after ``psi = CDELT*(p - CRPIX) + CRVAL``), VALUES (nY, nX, 2)
    = (wavelength, bandwidth) in um."""

    x: np.ndarray
    y: np.ndarray
    values: np.ndarray
    crpix: Tuple[float, float]
    crval: Tuple[float, float]
    cdelt: Tuple[float, float]

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """(lambda_c, delta_lambda) in um at 0-based pixel positions (broadcast ``x`` with ``y``).

        Same arithmetic as wcslib's -TAB code: piecewise-linear inverse of each index vector
        (first matching cell for repeated knots, linear extrapolation beyond the ends),
        then bilinear interpolation of VALUES.
        """
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        psi_x = self.cdelt[0] * (x + 1.0 - self.crpix[0]) + self.crval[0]
        psi_y = self.cdelt[1] * (y + 1.0 - self.crpix[1]) + self.crval[1]
        ix, fx = _cell_index(psi_x, self.x)
        iy, fy = _cell_index(psi_y, self.y)
        ix, fx, iy, fy = np.broadcast_arrays(ix, fx, iy, fy)
        out = []
        for m in range(2):
            v = self.values[..., m]
            out.append(
                (1.0 - fy) * ((1.0 - fx) * v[iy, ix] + fx * v[iy, ix + 1])
                + fy * ((1.0 - fx) * v[iy + 1, ix] + fx * v[iy + 1, ix + 1])
            )
        return out[0], out[1]

    def evaluate_crop(self, x0: int, x1: int, y0: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lambda_c, delta_lambda) (um) on the pixel centres of rows y0:y1, columns x0:x1.

        Separable form of :meth:`evaluate` on a rectangular grid (interpolate along x
        at every knot row, then along y): the same arithmetic in the same order, at a
        fraction of the cost.
        """
        xs = np.arange(x0, x1, dtype=np.float64)
        ys = np.arange(y0, y1, dtype=np.float64)
        ix, fx = _cell_index(self.cdelt[0] * (xs + 1.0 - self.crpix[0]) + self.crval[0], self.x)
        iy, fy = _cell_index(self.cdelt[1] * (ys + 1.0 - self.crpix[1]) + self.crval[1], self.y)
        wy0, wy1 = (1.0 - fy)[:, None], fy[:, None]
        out = []
        for m in range(2):
            v = self.values[..., m]
            along_x = (1.0 - fx) * v[:, ix] + fx * v[:, ix + 1]  # (n knot rows, nx)
            # (1 - fy) * along_x[iy] + fy * along_x[iy + 1], with two full-size arrays only
            res = np.take(along_x, iy, axis=0)
            res *= wy0
            upper = np.take(along_x, iy + 1, axis=0)
            upper *= wy1
            res += upper
            out.append(res)
        return out[0], out[1]


def _cell_index(psi: np.ndarray, knots: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Cell index ``i`` (knots[i] <= psi <= knots[i+1], first match) and fraction within it.

    Zero-length cells (repeated knots) are skipped; beyond the ends the outermost
    non-degenerate cell is extrapolated linearly (wcslib returns NaN there when the
    end cell is degenerate; pixel centres never fall there).
    """
    good = np.flatnonzero(np.diff(knots) > 0)
    starts = knots[good]
    j = np.clip(np.searchsorted(starts, psi, side="left") - 1, 0, good.size - 1)
    i = good[j]
    f = (psi - knots[i]) / (knots[i + 1] - knots[i])
    return i, f


@dataclass
class FrameHeader:
    """Header-level facts of one L2 file (no pixel data read)."""

    path: Path
    obsid: str
    detector: int
    mjd: float
    shape: Tuple[int, int]  # (ny, nx)
    wcs: WCS  # celestial, with SIP, in this file's (cutout) pixel grid
    image_header: fits.Header
    flag_bits: Dict[str, int]
    wave: Optional[WaveTable]
    flags_compressed: bool
    parent_offset: Tuple[float, float] = (0.0, 0.0)  # parent pixel = file pixel + offset (0-based)
    is_cutout: bool = False

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def layout(self) -> str:
        """'QR3' when FLAGS is tile-compressed, else 'QR2'."""
        return "QR3" if self.flags_compressed else "QR2"


@dataclass
class Frame:
    """The cropped pixels of one frame, ready for ``accumulate.drizzle_frame``.

    Arrays have the crop shape ``(ny, nx)`` = ``(y1-y0, x1-x0)``; ``corners_x/y`` have
    shape ``(ny+1, nx+1)`` (output-grid positions of the input pixel corners).
    ``image`` is zodi-subtracted when requested (MJy/sr).
    """

    path: Path
    obsid: str
    detector: int
    mjd: float
    image: np.ndarray
    variance: np.ndarray
    flags: np.ndarray  # uint32
    exclude_mask: Optional[np.ndarray]
    lambda_c: np.ndarray
    delta_lambda: np.ndarray
    corners_x: np.ndarray
    corners_y: np.ndarray
    crop: Tuple[int, int, int, int]  # (x0, x1, y0, y1), 0-based, end-exclusive
    zodi_scale: Optional[float]  # None when the zodi was not subtracted
    zodi_fit_ok: bool = False
    zodi_source: str = "none"  # 'none', 'static', 'crop', 'subsample', 'fallback'
    layout: str = "QR2"
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name


# --------------------------------------------------------------------------- headers


def _open_fits(path: Path) -> fits.HDUList:
    try:
        if not path.is_file():
            raise FrameError(path, "file does not exist")
        if path.stat().st_size < 2880:
            raise FrameError(path, f"not a FITS file (only {path.stat().st_size} bytes)")
        with open(path, "rb") as fh:
            if fh.read(6) != b"SIMPLE":
                raise FrameError(path, "not a FITS file (no SIMPLE card)")
        return fits.open(path, memmap=True, lazy_load_hdus=True)
    except FrameError:
        raise
    except Exception as exc:  # astropy raises OSError/ValueError/... for corrupt files
        raise FrameError(path, f"unreadable FITS file ({type(exc).__name__}: {exc})") from exc


def _parse_detector(header: fits.Header, path: Path) -> int:
    val = header.get("DETECTOR")
    if val is not None:
        m = re.search(r"([1-6])", str(val))
        if m and str(val).strip().upper().lstrip("D") == m.group(1):
            return int(m.group(1))
        raise FrameError(path, f"IMAGE keyword DETECTOR = {val!r} is not a SPHEREx detector 1-6")
    m = _DET_FROM_NAME.search(path.name)
    if m:
        logger.debug("%s: no DETECTOR keyword, detector taken from the file name", path.name)
        return int(m.group(1))
    raise FrameError(path, "not a SPHEREx L2 image: IMAGE header has no DETECTOR keyword")


def _read_wave_table(hdul: fits.HDUList, header: fits.Header, path: Path) -> Optional[WaveTable]:
    """Parse the ``W`` WAVE-TAB WCS and its table; FrameError when it is inconsistent."""
    if str(header.get("CTYPE1W", "")).upper() != "WAVE-TAB":
        raise FrameError(path, "not a SPHEREx L2 image: IMAGE header has no WAVE-TAB wavelength WCS (CTYPE1W)")
    extname = str(header.get("PS1_0W", WAVE_EXTNAME)).strip()
    vcol = str(header.get("PS1_1W", "VALUES")).strip()
    xcol = str(header.get("PS1_2W", "X")).strip()
    ycol = str(header.get("PS2_2W", "Y")).strip()
    for key in ("PC1_2W", "PC2_1W", "CD1_2W", "CD2_1W", "CD1_1W", "CD2_2W"):
        if key in header and float(header[key]) not in (0.0, 1.0):
            raise FrameError(path, f"unsupported wavelength WCS: {key} = {header[key]!r}")
    try:
        tab = hdul[extname]
    except KeyError:
        raise FrameError(path, f"missing extension {extname} (wavelength lookup table)") from None
    # (truncation of every extension, this one included, is checked by _validate)
    try:
        row = tab.data[0]
        x = np.asarray(row[xcol], dtype=np.float64).ravel()
        y = np.asarray(row[ycol], dtype=np.float64).ravel()
        values = np.asarray(row[vcol], dtype=np.float64)
    except Exception as exc:
        raise FrameError(path, f"{extname} table unreadable ({type(exc).__name__}: {exc})") from exc
    if values.shape != (len(y), len(x), 2) or len(x) < 2 or len(y) < 2:
        raise FrameError(
            path, f"{extname} {vcol} has shape {values.shape}, expected ({len(y)}, {len(x)}, 2) from {xcol}/{ycol}"
        )
    if np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
        raise FrameError(path, f"{extname} control points {xcol}/{ycol} are not monotonic")
    if np.count_nonzero(np.diff(x) > 0) < 1 or np.count_nonzero(np.diff(y) > 0) < 1:
        raise FrameError(path, f"{extname} control points {xcol}/{ycol} need two distinct values each")
    return WaveTable(
        x=x,
        y=y,
        values=values,
        crpix=(float(header.get("CRPIX1W", 1.0)), float(header.get("CRPIX2W", 1.0))),
        crval=(float(header.get("CRVAL1W", 1.0)), float(header.get("CRVAL2W", 1.0))),
        cdelt=(float(header.get("CDELT1W", 1.0)), float(header.get("CDELT2W", 1.0))),
    )


def _hdu_shape(hdu) -> Tuple[int, ...]:
    h = hdu.header
    n = int(h.get("NAXIS", 0))
    return tuple(int(h[f"NAXIS{i}"]) for i in range(n, 0, -1))


def _validate(hdul: fits.HDUList, path: Path, detector: Optional[int]) -> FrameHeader:
    try:
        names = {str(h.name).upper() for h in hdul}
    except FrameError:
        raise
    except Exception as exc:
        raise FrameError(path, f"truncated or corrupt FITS structure ({type(exc).__name__}: {exc})") from exc
    size = path.stat().st_size
    for idx in range(len(hdul)):
        # The HDU's own fileinfo: HDUList.fileinfo() re-serialises every header per call.
        info = hdul[idx].fileinfo()
        if info is not None and int(info["datLoc"]) + int(info["datSpan"]) > size:
            raise FrameError(
                path,
                f"truncated file: extension {hdul[idx].name or idx} needs "
                f"{int(info['datLoc']) + int(info['datSpan'])} bytes, file has {size}",
            )
    if "IMAGE" not in names:
        raise FrameError(path, f"not a SPHEREx L2 image: no IMAGE extension (extensions: {sorted(names)})")
    for ext in REQUIRED_EXTENSIONS:
        if ext not in names:
            raise FrameError(path, f"missing extension {ext}")
    header = hdul["IMAGE"].header
    det = _parse_detector(header, path)
    if detector is not None and detector != 0 and det != detector:
        raise FrameError(path, f"belongs to detector D{det}, expected D{detector}")
    shape = _hdu_shape(hdul["IMAGE"])
    if len(shape) != 2:
        raise FrameError(path, f"IMAGE is {len(shape)}-D (shape {shape}), expected 2-D")
    for ext in REQUIRED_EXTENSIONS:
        if ext != "IMAGE":
            s = _hdu_shape(hdul[ext])
            if s != shape:
                raise FrameError(path, f"extension {ext} has shape {s}, IMAGE has {shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:
            raise FrameError(path, f"invalid celestial WCS ({type(exc).__name__}: {exc})") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise FrameError(path, "not a SPHEREx L2 image: IMAGE has no celestial WCS")
    wave = _read_wave_table(hdul, header, path)
    flags_hdu = hdul["FLAGS"]
    compressed = isinstance(flags_hdu, fits.CompImageHDU)
    try:
        bits = _flags.flag_bits_from_header(flags_hdu.header)
    except Exception as exc:
        raise FrameError(path, f"FLAGS header unreadable ({type(exc).__name__}: {exc})") from exc
    mjd = header.get("MJD-AVG")
    if mjd is None:
        beg, end = header.get("MJD-BEG"), header.get("MJD-END")
        mjd = 0.5 * (float(beg) + float(end)) if beg is not None and end is not None else float("nan")
    crpix_a = (header.get("CRPIX1A"), header.get("CRPIX2A"))
    if crpix_a[0] is not None and crpix_a[1] is not None:
        offset = (1.0 - float(crpix_a[0]), 1.0 - float(crpix_a[1]))
    else:
        offset = (0.0, 0.0)
    is_cutout = offset != (0.0, 0.0) or abs(wave.crpix[0] - wave.crval[0]) > 0 or abs(wave.crpix[1] - wave.crval[1]) > 0
    return FrameHeader(
        path=path,
        obsid=str(header.get("OBSID", path.stem)),
        detector=det,
        mjd=float(mjd),
        shape=(shape[0], shape[1]),
        wcs=wcs,
        image_header=header,
        flag_bits=dict(bits),
        wave=wave,
        flags_compressed=compressed,
        parent_offset=offset,
        is_cutout=is_cutout,
    )


def open_frame(path, detector: Optional[int] = None) -> FrameHeader:
    """Read and validate the headers of one L2 file (no pixel data read).

    ``detector`` (1-6) rejects frames of another detector; None/0 accepts any.
    Raises :class:`FrameError` (path + reason) for files that are not SPHEREx L2
    images, are truncated, lack an extension or belong to another detector.
    """
    path = Path(path)
    hdul = _open_fits(path)
    try:
        return _validate(hdul, path, detector)
    finally:
        hdul.close()


# --------------------------------------------------------------------------- crop


def _pixel_scale_ratio(fh: FrameHeader, output_wcs: WCS) -> float:
    """Output pixel size in input pixels (approximate, from the linear parts)."""
    in_scale = float(np.sqrt(abs(np.linalg.det(fh.wcs.pixel_scale_matrix))))
    out_scale = float(np.sqrt(abs(np.linalg.det(output_wcs.celestial.pixel_scale_matrix))))
    return out_scale / in_scale if in_scale > 0 else 1.0


def _angsep(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angular separation (deg) by the haversine formula."""
    r1, d1, r2, d2 = map(np.radians, (ra1, dec1, ra2, dec2))
    a = np.sin((d2 - d1) / 2) ** 2 + np.cos(d1) * np.cos(d2) * np.sin((r2 - r1) / 2) ** 2
    return np.degrees(2 * np.arcsin(np.sqrt(np.clip(a, 0, 1))))


def _boundary(nx: int, ny: int, step: float = 20.0) -> Tuple[np.ndarray, np.ndarray]:
    """Closed polygon (counter-clockwise, first point not repeated) along the outer edge of an
    (ny, nx) pixel grid (0-based, edges at -0.5 and n-0.5), a point every ``step`` pixels."""
    xs = np.linspace(-0.5, nx - 0.5, max(2, int(math.ceil(nx / step)) + 1))
    ys = np.linspace(-0.5, ny - 0.5, max(2, int(math.ceil(ny / step)) + 1))
    bx = np.concatenate([xs[:-1], np.full(len(ys) - 1, nx - 0.5), xs[::-1][:-1], np.full(len(ys) - 1, -0.5)])
    by = np.concatenate([np.full(len(xs) - 1, -0.5), ys[:-1], np.full(len(xs) - 1, ny - 0.5), ys[::-1][:-1]])
    return bx, by


def _clip_polygon(px: np.ndarray, py: np.ndarray, xmin: float, xmax: float, ymin: float, ymax: float):
    """Sutherland-Hodgman clip of a closed polygon to a rectangle; returns (x, y) lists (maybe empty)."""
    pts = list(zip(px.tolist(), py.tolist()))
    for axis, bound, keep_ge in ((0, xmin, True), (0, xmax, False), (1, ymin, True), (1, ymax, False)):
        if not pts:
            break
        inside = (lambda p: p[axis] >= bound) if keep_ge else (lambda p: p[axis] <= bound)
        out = []
        prev = pts[-1]
        for cur in pts:
            ci, pi = inside(cur), inside(prev)
            if ci != pi:
                t = (bound - prev[axis]) / (cur[axis] - prev[axis])
                q = (prev[0] + t * (cur[0] - prev[0]), prev[1] + t * (cur[1] - prev[1]))
                out.append(q)
            if ci:
                out.append(cur)
            prev = cur
        pts = out
    return [p[0] for p in pts], [p[1] for p in pts]


def footprint_crop(
    frame_header: FrameHeader,
    output_wcs: WCS,
    output_shape: Tuple[int, int],
    margin_pix: float = DEFAULT_CROP_MARGIN,
) -> Optional[Tuple[int, int, int, int]]:
    """Input-pixel box ``(x0, x1, y0, y1)`` (0-based, end-exclusive) whose droplets can touch the output.

    The outer boundary of the output region (``output_shape = (ny, nx)``), sampled
    every 20 output pixels plus the corners, is projected into the input frame with
    the full input WCS (SIP included) as a polygon; the polygon is clipped
    (Sutherland-Hodgman) to the frame grown by ``g`` = half an input pixel (the
    largest droplet) + ``margin_pix``, and the bounding box of what remains, grown by
    ``g`` and clipped to the image, is the crop. The clipped polygon contains the
    projected interior, so a frame lying wholly inside the output region gets the
    full frame. Returns None when the frame and the region are disjoint (first
    tested on the sky with circumscribed circles, so far-away frames cost no
    projection).
    """
    ny_in, nx_in = frame_header.shape
    ny_out, nx_out = int(output_shape[0]), int(output_shape[1])
    wcs_in = frame_header.wcs
    out = output_wcs.celestial if output_wcs.naxis != 2 else output_wcs

    # Coarse sky test with circumscribed circles.
    cx_in, cy_in = np.array([-0.5, nx_in - 0.5, -0.5, nx_in - 0.5, (nx_in - 1) / 2]), np.array(
        [-0.5, -0.5, ny_in - 0.5, ny_in - 0.5, (ny_in - 1) / 2]
    )
    ra_in, dec_in = wcs_in.all_pix2world(cx_in, cy_in, 0)
    r_in = float(np.max(_angsep(ra_in[4], dec_in[4], ra_in[:4], dec_in[:4])))
    cx_out = np.array([-0.5, nx_out - 0.5, -0.5, nx_out - 0.5, (nx_out - 1) / 2])
    cy_out = np.array([-0.5, -0.5, ny_out - 0.5, ny_out - 0.5, (ny_out - 1) / 2])
    ra_out, dec_out = out.wcs_pix2world(cx_out, cy_out, 0)
    r_out = float(np.max(_angsep(ra_out[4], dec_out[4], ra_out[:4], dec_out[:4])))
    in_scale_deg = float(np.sqrt(abs(np.linalg.det(wcs_in.pixel_scale_matrix))))
    sep = float(_angsep(ra_in[4], dec_in[4], ra_out[4], dec_out[4]))
    if sep > r_in + r_out + (margin_pix + 1.0) * in_scale_deg:
        return None

    bx, by = _boundary(nx_out, ny_out)
    ra, dec = out.wcs_pix2world(bx, by, 0)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        px, py = wcs_in.all_world2pix(ra, dec, 0, quiet=True)
    extra = 0.0
    if not (np.all(np.isfinite(px)) and np.all(np.isfinite(py))):
        # SIP inversion failed far outside the frame: use the linear part plus a distortion margin.
        px, py = wcs_in.wcs_world2pix(ra, dec, 0)
        ex, ey = wcs_in.all_pix2world(cx_in, cy_in, 0)
        lx, ly = wcs_in.wcs_world2pix(ex, ey, 0)
        extra = float(np.max(np.hypot(lx - cx_in, ly - cy_in))) * 2.0 + 2.0
    grow = 0.5 + margin_pix + extra
    # Keep only the part of the projected region within `grow` of the frame, then its bounding box.
    qx, qy = _clip_polygon(px, py, -0.5 - grow, nx_in - 0.5 + grow, -0.5 - grow, ny_in - 0.5 + grow)
    if not qx:
        return None
    x0 = int(math.floor(min(qx) - grow))
    x1 = int(math.ceil(max(qx) + grow)) + 1
    y0 = int(math.floor(min(qy) - grow))
    y1 = int(math.ceil(max(qy) + grow)) + 1
    x0, x1 = max(x0, 0), min(x1, nx_in)
    y0, y1 = max(y0, 0), min(y1, ny_in)
    if x0 >= x1 or y0 >= y1:
        return None
    return x0, x1, y0, y1


# --------------------------------------------------------------------------- data


def _as_uint32(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "i" and a.dtype.itemsize == 4:
        return a.astype(np.int32, copy=False).view(np.uint32)
    if a.dtype == np.uint32:
        return a
    return a.astype(np.int64).astype(np.uint32)


def _bits(names: Sequence[str], bits: Dict[str, int]) -> int:
    mask = 0
    for n in names:
        if n in bits:
            mask |= 1 << int(bits[n])
    return mask


def wavelength_astropy(path, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Reference (lambda_c, delta_lambda) in um from astropy's ``W`` WCS with SIP switched off."""
    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from astropy import log as _alog

        level = _alog.level
        _alog.setLevel("ERROR")
        try:
            w = WCS(hdul["IMAGE"].header, fobj=hdul, key="W")
        finally:
            _alog.setLevel(level)
        w.sip = None
        lam, dlam = w.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lam, dtype=np.float64), np.asarray(dlam, dtype=np.float64)


def _read_block(hdu, rows: slice, cols: slice) -> np.ndarray:
    """Pixels ``[rows, cols]`` of an image HDU, reading only what is needed: a slice of
    the memory map for plain images, only the needed tiles (``.section``) for
    tile-compressed ones. (``.section`` on a plain image reads row by row.)"""
    if isinstance(hdu, fits.CompImageHDU):
        return hdu.section[rows, cols]
    return np.array(hdu.data[rows, cols])


#: Crops larger than this (input pixels) are read and drizzled in strips of rows of
#: about this many pixels, so that a whole frame never sits in memory at once.
STRIP_PIXELS = 1_000_000


def _read_crop_arrays(hdul, path: Path, rows: slice, cols: slice, with_zodi: bool):
    """(image, variance, zodi or None) of one block, float64 as the engine takes them
    (read once in the engine's dtype: no per-strip conversion copy later)."""
    try:
        image = np.asarray(_read_block(hdul["IMAGE"], rows, cols), dtype=np.float64)
        variance = np.asarray(_read_block(hdul["VARIANCE"], rows, cols), dtype=np.float64)
        zodi = np.asarray(_read_block(hdul["ZODI"], rows, cols), dtype=np.float64) if with_zodi else None
    except Exception as exc:
        raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc
    return image, variance, zodi


def _fit_zodi_subsample(hdul, path: Path, bad: int, src_bit: int) -> Tuple[float, bool]:
    """Zodi scale fitted on every ``ZODI_SUBSAMPLE_STEP``-th row of the whole frame."""
    every = (slice(None, None, ZODI_SUBSAMPLE_STEP), slice(None))
    try:
        s_img = np.asarray(_read_block(hdul["IMAGE"], *every), dtype=np.float64)
        s_zod = np.asarray(_read_block(hdul["ZODI"], *every), dtype=np.float64)
        s_var = np.asarray(_read_block(hdul["VARIANCE"], *every), dtype=np.float32)
        s_flg = _as_uint32(_read_block(hdul["FLAGS"], *every))
    except Exception as exc:
        raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc
    return _zodi.fit_zodi_scale(s_img, s_zod, s_var, s_flg, bad, src_bit, name=path.name)


@dataclass
class FrameSource:
    """A frame that touches the output region, with its crop, flags and zodi scale
    decided; :meth:`frames` yields its pixels as :class:`Frame` pieces (strips of
    rows for large crops, the whole crop otherwise), in row order."""

    path: Path
    header: FrameHeader
    crop: Tuple[int, int, int, int]  # (x0, x1, y0, y1), 0-based, end-exclusive
    flags: np.ndarray  # uint32, whole crop (decompressed up front so errors surface early)
    exclude_bits: int
    zodi_scale: Optional[float]
    zodi_fit_ok: bool
    zodi_source: str
    output_wcs: WCS
    strip_rows: int
    _cached: Optional[tuple] = None  # (image, variance, zodi) of the whole crop, if read

    @property
    def n_pixels(self) -> int:
        x0, x1, y0, y1 = self.crop
        return (x1 - x0) * (y1 - y0)

    def frames(self) -> "Iterator[Frame]":
        """The crop's pixels as :class:`Frame` pieces of at most ``strip_rows`` rows."""
        from .spatial import corner_map

        x0, x1, y0, y1 = self.crop
        fh = self.header
        out = self.output_wcs.celestial if self.output_wcs.naxis != 2 else self.output_wcs
        hdul = None if self._cached is not None else _open_fits(self.path)
        bits = np.uint32(int(self.exclude_bits) & 0xFFFFFFFF)
        try:
            for ya in range(y0, y1, self.strip_rows):
                yb = min(ya + self.strip_rows, y1)
                if self._cached is not None:
                    image, variance, zodi = self._cached
                    self._cached = None
                else:
                    image, variance, zodi = _read_crop_arrays(
                        hdul, self.path, slice(ya, yb), slice(x0, x1), self.zodi_scale is not None
                    )
                if self.zodi_scale is not None:
                    image -= self.zodi_scale * zodi
                del zodi
                flags = self.flags[ya - y0 : yb - y0]
                exclude = (flags & bits) != 0 if self.exclude_bits else None
                lam, dlam = fh.wave.evaluate_crop(x0, x1, ya, yb)
                corners_x, corners_y = corner_map(fh.wcs, out, x0, ya, x1 - x0, yb - ya)
                yield Frame(
                    path=self.path,
                    obsid=fh.obsid,
                    detector=fh.detector,
                    mjd=fh.mjd,
                    image=image,
                    variance=variance,
                    flags=flags,
                    exclude_mask=exclude,
                    lambda_c=lam,
                    delta_lambda=dlam,
                    corners_x=corners_x,
                    corners_y=corners_y,
                    crop=(x0, x1, ya, yb),
                    zodi_scale=self.zodi_scale,
                    zodi_fit_ok=self.zodi_fit_ok,
                    zodi_source=self.zodi_source,
                    layout=fh.layout,
                    extra={"parent_offset": fh.parent_offset, "is_cutout": fh.is_cutout},
                )
        finally:
            if hdul is not None:
                hdul.close()


def prepare_frame(
    path,
    config,
    detector: Optional[int],
    output_wcs: WCS,
    output_shape: Optional[Tuple[int, int]] = None,
    margin_pix: float = DEFAULT_CROP_MARGIN,
    strip_pixels: int = STRIP_PIXELS,
) -> Optional[FrameSource]:
    """Validate one L2 file, find its crop and zodi scale; pixels are read later by
    :meth:`FrameSource.frames`. Returns None when the frame misses the output region.

    Crops of at most ``strip_pixels`` pixels are read now (one piece); larger crops are
    read in strips of rows, and their zodi scale is fitted on a subsample of the whole
    frame. Raises :class:`FrameError` for unusable files.
    """
    path = Path(path)
    if output_shape is None:
        output_shape = (config.output_ny(), config.output_nx())
    hdul = _open_fits(path)
    try:
        fh = _validate(hdul, path, detector)
        crop = footprint_crop(fh, output_wcs, output_shape, margin_pix)
        if crop is None:
            return None
        x0, x1, y0, y1 = crop
        rows, cols = slice(y0, y1), slice(x0, x1)
        try:
            flags = _as_uint32(_read_block(hdul["FLAGS"], rows, cols))
        except Exception as exc:
            raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc
        n_pix = (x1 - x0) * (y1 - y0)
        subtract = bool(getattr(config, "subtract_zodi", True))
        cached = None
        if n_pix <= strip_pixels:
            cached = _read_crop_arrays(hdul, path, rows, cols, subtract)
        zodi_scale: Optional[float] = None
        zodi_ok = False
        source = "none"
        if subtract:
            if getattr(config, "static_zodi", False):
                zodi_scale, source = 1.0, "static"
            else:
                bad = _bits(ZODI_BAD_FLAG_NAMES, fh.flag_bits)
                src_bit = fh.flag_bits.get("SOURCE", 21)
                n_bg = 0
                if cached is not None:
                    image, variance, zodi = cached
                    n_bg = int(np.count_nonzero(_zodi.background_mask(image, zodi, variance, flags, bad, src_bit)))
                if n_bg >= _zodi.DEFAULT_MIN_PIXELS:
                    zodi_scale, zodi_ok = _zodi.fit_zodi_scale(image, zodi, variance, flags, bad, src_bit, name=path.name)
                    source = "crop" if zodi_ok else "fallback"
                else:
                    # Crop too small for a robust fit, or read later in strips: fit on
                    # every 16th row of the whole frame.
                    zodi_scale, zodi_ok = _fit_zodi_subsample(hdul, path, bad, src_bit)
                    source = "subsample" if zodi_ok else "fallback"
    finally:
        hdul.close()
    bitmask = _flags.exclude_bitmask(getattr(config, "exclude_flags", []) or [], fh.flag_bits)
    return FrameSource(
        path=path,
        header=fh,
        crop=crop,
        flags=flags,
        exclude_bits=int(bitmask),
        zodi_scale=zodi_scale,
        zodi_fit_ok=zodi_ok,
        zodi_source=source,
        output_wcs=output_wcs,
        strip_rows=max(1, int(strip_pixels) // max(1, x1 - x0)),
        _cached=cached,
    )


def read_frame(
    path,
    config,
    detector: Optional[int],
    output_wcs: WCS,
    output_shape: Optional[Tuple[int, int]] = None,
    margin_pix: float = DEFAULT_CROP_MARGIN,
) -> Optional[Frame]:
    """Read the part of one L2 file that can land in the output region, in one piece.

    Parameters
    ----------
    path : L2 FITS file (full frame or IRSA cutout, QR2 or QR3 layout)
    config : Drizzle3DConfig (uses subtract_zodi, static_zodi, exclude_flags)
    detector : expected detector 1-6 (None/0: any)
    output_wcs : celestial output WCS; ``output_shape`` (ny, nx) defaults to the config's
    margin_pix : extra crop margin in input pixels

    Returns
    -------
    Frame, or None when the frame does not touch the output region.

    Raises
    ------
    FrameError for unusable files (see :func:`open_frame`). The pipeline uses
    :func:`prepare_frame`, which reads large crops in strips.
    """
    source = prepare_frame(path, config, detector, output_wcs, output_shape, margin_pix, strip_pixels=2**62)
    if source is None:
        return None
    return next(source.frames())


__all__ = [
    "FrameError",
    "FrameHeader",
    "Frame",
    "WaveTable",
    "open_frame",
    "footprint_crop",
    "read_frame",
    "prepare_frame",
    "FrameSource",
    "wavelength_astropy",
]
