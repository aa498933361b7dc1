"""One SPHEREx Level 2 frame (QR2, QR3+ or an IRSA cutout) from its headers to its pixels.

Conventions: 0-based pixel coordinates (pixel ``j`` covers ``[j-0.5, j+0.5]``), wavelengths
in um, surface brightness in MJy/sr, variance in (MJy/sr)^2, flags as uint32.

A :class:`Frame` is the one type from the reader to the engine:

1. :func:`open_frame` reads and validates the headers (by EXTNAME) and the small ``WCS-WAVE``
   table: the frame's header facts (:class:`FrameError` for unusable files).
2. :func:`prepare_frame` selects what can land on an :class:`~.grid.OutputGrid`: the
   footprint crop (:mod:`.footprint`), its flags and exclude mask (computed once), and the
   zodi scale (:mod:`.zodi`). A frame that does not touch the grid costs one header read.
3. :meth:`Frame.strips` yields the crop's pixel arrays in strips of rows, as
   :class:`Strip` tuples in the argument order of ``accumulate.drizzle_frame``: only the
   rectangle is read (``hdu.section``: memory-mapped rows of plain images, the needed tiles of
   RICE-compressed FLAGS), zodi-subtracted, with wavelengths and the corner map.

Everything computed per frame (crop excepted) depends on the frame alone, never on the grid.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, FITSFixedWarning

from . import flags as _flags
from . import zodi as _zodi
from .footprint import DEFAULT_CROP_MARGIN, footprint_crop
from .grid import OutputGrid
from .spatial import corner_map
from .wavetable import WaveTable, read_wave_table

logger = logging.getLogger(__name__)

#: Extensions the drizzle needs (PSF / EPSF are not read).
REQUIRED_EXTENSIONS = ("IMAGE", "FLAGS", "VARIANCE", "ZODI")
#: Crops larger than this (input pixels) are read and drizzled in strips of rows of about
#: this many pixels, so that a whole frame never sits in memory at once; smaller crops are
#: read whole by :func:`prepare_frame`.
STRIP_PIXELS = 1_000_000

_DET_FROM_NAME = re.compile(r"D([1-6])_spx", re.IGNORECASE)


class FrameError(Exception):
    """A file that cannot be used as a SPHEREx L2 frame; carries ``path`` and ``reason``."""

    def __init__(self, path: Any, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


class Strip(NamedTuple):
    """The pixel arrays of rows of a frame's crop, in ``accumulate.drizzle_frame``'s order:
    ``corners_x/y`` ``(ny+1, nx+1)`` (output-grid positions of the pixel corners), then
    ``(ny, nx)`` arrays: zodi-subtracted image (MJy/sr), variance, flags (uint32), central
    wavelength and bandwidth (um), exclude mask (bool, or None when nothing is excluded)."""

    corners_x: np.ndarray
    corners_y: np.ndarray
    image: np.ndarray
    variance: np.ndarray
    flags: np.ndarray
    lambda_c: np.ndarray
    delta_lambda: np.ndarray
    exclude_mask: Optional[np.ndarray]


@dataclass(eq=False)
class Frame:
    """One L2 file: header facts (from :func:`open_frame`) and, once :func:`prepare_frame`
    selected it for an output grid, its crop, flags, exclude mask and zodi scale."""

    path: Path
    obsid: str
    detector: int
    mjd: float
    shape: Tuple[int, int]
    """``(ny, nx)`` of the file's image."""
    wcs: WCS
    """Celestial WCS (with SIP) in the file's pixel grid."""
    flag_bits: Dict[str, int]
    """The file's flag names -> bits."""
    wave: WaveTable
    flags_compressed: bool
    """FLAGS is tile-compressed (QR3 and later)."""
    parent_offset: Tuple[float, float] = (0.0, 0.0)
    """A cutout's offset: parent pixel = file pixel + offset."""
    is_cutout: bool = False
    mjd_span: Tuple[float, float] = (float("nan"), float("nan"))
    """(MJD-BEG, MJD-END) of the exposure (NaN when the header lacks them)."""
    grid: Optional[OutputGrid] = None
    crop: Tuple[int, int, int, int] = (0, 0, 0, 0)
    """``(x0, x1, y0, y1)``: 0-based, end-exclusive box of the pixels that can land on the grid."""
    flags: Optional[np.ndarray] = None
    """uint32 FLAGS of the crop."""
    exclude_mask: Optional[np.ndarray] = None
    """bool, True where a flag of ``exclude_flags`` is set (None: nothing excluded)."""
    zodi: _zodi.ZodiScale = _zodi.NOT_SUBTRACTED
    strip_rows: int = 1
    _pixels: Optional[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]] = None
    """(image, variance, zodi) of the whole crop when read up front (small crops)."""

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def n_pixels(self) -> int:
        """Input pixels in the crop."""
        x0, x1, y0, y1 = self.crop
        return (x1 - x0) * (y1 - y0)

    def strips(self) -> Iterator[Strip]:
        """The crop's pixels in strips of at most ``strip_rows`` rows, in row order."""
        if self.grid is None or self.flags is None:
            raise ValueError(f"{self.name}: strips() needs a frame from prepare_frame")
        x0, x1, y0, y1 = self.crop
        hdul = None if self._pixels is not None else _open_fits(self.path)
        try:
            for ya in range(y0, y1, self.strip_rows):
                yb = min(ya + self.strip_rows, y1)
                if self._pixels is not None:
                    image, variance, zodi = self._pixels
                    self._pixels = None  # handed over once; a second pass reads the file
                else:
                    image, variance, zodi = _read_pixels(hdul, self.path, slice(ya, yb), slice(x0, x1),
                                                         self.zodi.scale is not None)
                self.zodi.subtract(image, zodi)
                del zodi
                rows = slice(ya - y0, yb - y0)
                lam, dlam = self.wave.evaluate_crop(x0, x1, ya, yb)
                corners_x, corners_y = corner_map(self.wcs, self.grid.wcs, x0, ya, x1 - x0, yb - ya)
                exclude = None if self.exclude_mask is None else self.exclude_mask[rows]
                yield Strip(corners_x, corners_y, image, variance, self.flags[rows], lam, dlam, exclude)
        finally:
            if hdul is not None:
                hdul.close()


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


def _hdu_shape(hdu) -> Tuple[int, ...]:
    h = hdu.header
    n = int(h.get("NAXIS", 0))
    return tuple(int(h[f"NAXIS{i}"]) for i in range(n, 0, -1))


def _check_structure(hdul: fits.HDUList, path: Path) -> Tuple[int, int]:
    """Every extension complete, the required ones present with one 2-D shape: ``(ny, nx)``."""
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
    shape = _hdu_shape(hdul["IMAGE"])
    if len(shape) != 2:
        raise FrameError(path, f"IMAGE is {len(shape)}-D (shape {shape}), expected 2-D")
    for ext in REQUIRED_EXTENSIONS[1:]:
        s = _hdu_shape(hdul[ext])
        if s != shape:
            raise FrameError(path, f"extension {ext} has shape {s}, IMAGE has {shape}")
    return shape[0], shape[1]


def _celestial_wcs(header: fits.Header, path: Path) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, naxis=2)
        except Exception as exc:
            raise FrameError(path, f"invalid celestial WCS ({type(exc).__name__}: {exc})") from exc
    if not wcs.has_celestial or wcs.naxis != 2:
        raise FrameError(path, "not a SPHEREx L2 image: IMAGE has no celestial WCS")
    return wcs


def _mjd(header: fits.Header) -> float:
    """MJD-AVG, else the middle of MJD-BEG/MJD-END, else NaN."""
    mjd = header.get("MJD-AVG")
    if mjd is None:
        beg, end = header.get("MJD-BEG"), header.get("MJD-END")
        mjd = 0.5 * (float(beg) + float(end)) if beg is not None and end is not None else float("nan")
    return float(mjd)


def _mjd_span(header: fits.Header) -> Tuple[float, float]:
    """(MJD-BEG, MJD-END), each NaN when missing or not a number."""

    def value(key: str) -> float:
        try:
            return float(header.get(key, float("nan")))
        except (TypeError, ValueError):
            return float("nan")

    return value("MJD-BEG"), value("MJD-END")


def _read_header(hdul: fits.HDUList, path: Path, detectors: Optional[Sequence[int]]) -> Frame:
    """The validated header facts of an open file (``detectors``: the accepted ones, None: any)."""
    shape = _check_structure(hdul, path)
    header = hdul["IMAGE"].header
    det = _parse_detector(header, path)
    if detectors is not None and det not in detectors:
        expected = " or ".join(f"D{d}" for d in detectors)
        raise FrameError(path, f"belongs to detector D{det}, expected {expected}")
    wcs = _celestial_wcs(header, path)
    try:
        wave = read_wave_table(hdul, header)
    except ValueError as exc:
        raise FrameError(path, str(exc)) from None
    flags_hdu = hdul["FLAGS"]
    try:
        bits = _flags.flag_bits_from_header(flags_hdu.header)
    except Exception as exc:
        raise FrameError(path, f"FLAGS header unreadable ({type(exc).__name__}: {exc})") from exc
    crpix_a = (header.get("CRPIX1A"), header.get("CRPIX2A"))
    if crpix_a[0] is not None and crpix_a[1] is not None:
        offset = (1.0 - float(crpix_a[0]), 1.0 - float(crpix_a[1]))
    else:
        offset = (0.0, 0.0)
    is_cutout = offset != (0.0, 0.0) or abs(wave.crpix[0] - wave.crval[0]) > 0 or abs(wave.crpix[1] - wave.crval[1]) > 0
    return Frame(path=path, obsid=str(header.get("OBSID", path.stem)), detector=det, mjd=_mjd(header), shape=shape,
                 wcs=wcs, flag_bits=dict(bits), wave=wave, flags_compressed=isinstance(flags_hdu, fits.CompImageHDU),
                 parent_offset=offset, is_cutout=is_cutout, mjd_span=_mjd_span(header))


def open_frame(path: Any, detector: Optional[int] = None) -> Frame:
    """Read and validate the headers of one L2 file (no pixel data read): its header facts.

    ``detector`` (1-6) rejects frames of another detector; None/0 accepts any.
    Raises :class:`FrameError` (path + reason) for files that are not SPHEREx L2
    images, are truncated, lack an extension or belong to another detector.
    """
    path = Path(path)
    hdul = _open_fits(path)
    try:
        return _read_header(hdul, path, (detector,) if detector else None)
    finally:
        hdul.close()


# --------------------------------------------------------------------------- pixels


def _read_block(hdu, rows: slice, cols: slice) -> np.ndarray:
    """Pixels ``[rows, cols]`` of an image HDU, reading only what is needed: a slice of
    the memory map for plain images, only the needed tiles (``.section``) for
    tile-compressed ones. (``.section`` on a plain image reads row by row.)"""
    if isinstance(hdu, fits.CompImageHDU):
        return hdu.section[rows, cols]
    return np.array(hdu.data[rows, cols])


def _read_pixels(hdul: fits.HDUList, path: Path, rows: slice, cols: slice,
                 with_zodi: bool) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(image, variance, zodi or None) of one block, float64 as the engine takes them
    (read once in the engine's dtype: no per-strip conversion copy later)."""
    try:
        image = np.asarray(_read_block(hdul["IMAGE"], rows, cols), dtype=np.float64)
        variance = np.asarray(_read_block(hdul["VARIANCE"], rows, cols), dtype=np.float64)
        zodi = np.asarray(_read_block(hdul["ZODI"], rows, cols), dtype=np.float64) if with_zodi else None
    except Exception as exc:
        raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc
    return image, variance, zodi


def _read_flags(hdul: fits.HDUList, path: Path, rows: slice, cols: slice) -> np.ndarray:
    try:
        return _flags.as_uint32(_read_block(hdul["FLAGS"], rows, cols))
    except Exception as exc:
        raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc


def _subsample_reader(hdul: fits.HDUList, path: Path) -> Any:
    """``read(step)``: every ``step``-th row of the whole frame as :class:`.zodi.ZodiPixels`."""

    def read(step: int) -> _zodi.ZodiPixels:
        every = (slice(None, None, step), slice(None))
        try:
            return _zodi.ZodiPixels(
                image=np.asarray(_read_block(hdul["IMAGE"], *every), dtype=np.float64),
                zodi=np.asarray(_read_block(hdul["ZODI"], *every), dtype=np.float64),
                variance=np.asarray(_read_block(hdul["VARIANCE"], *every), dtype=np.float32),
                flags=_flags.as_uint32(_read_block(hdul["FLAGS"], *every)),
            )
        except Exception as exc:
            raise FrameError(path, f"pixel data unreadable ({type(exc).__name__}: {exc})") from exc

    return read


def prepare_frame(
    path: Any,
    config: Any,
    grid: OutputGrid,
    margin_pix: float = DEFAULT_CROP_MARGIN,
    strip_pixels: int = STRIP_PIXELS,
) -> Optional[Frame]:
    """Validate one L2 file and select what can land on ``grid``: crop, flags, exclude mask,
    zodi scale. Returns None when the frame misses the grid.

    ``config`` gives ``exclude_flags``, ``subtract_zodi`` and ``static_zodi``. Crops of at
    most ``strip_pixels`` pixels are read now (one strip later); larger crops are read in
    strips of rows by :meth:`Frame.strips`. Frames of a detector without planes in ``grid``
    are rejected. Raises :class:`FrameError` for unusable files.
    """
    path = Path(path)
    hdul = _open_fits(path)
    try:
        frame = _read_header(hdul, path, grid.input_detectors)
        crop = footprint_crop(frame, grid, margin_pix)
        if crop is None:
            return None
        x0, x1, y0, y1 = crop
        rows, cols = slice(y0, y1), slice(x0, x1)
        flags = _read_flags(hdul, path, rows, cols)
        pixels = None
        if (x1 - x0) * (y1 - y0) <= strip_pixels:
            pixels = _read_pixels(hdul, path, rows, cols, bool(config.subtract_zodi))
        crop_fit = None
        if pixels is not None and pixels[2] is not None:
            crop_fit = _zodi.ZodiPixels(image=pixels[0], zodi=pixels[2], variance=pixels[1], flags=flags)
        zodi = _zodi.frame_scale(config, frame.flag_bits, crop_fit, _subsample_reader(hdul, path), name=path.name)
    finally:
        hdul.close()
    bits = _flags.exclude_bitmask(config.exclude_flags or [], frame.flag_bits)
    exclude = (flags & np.uint32(bits)) != 0 if bits else None
    return replace(frame, grid=grid, crop=crop, flags=flags, exclude_mask=exclude, zodi=zodi,
                   strip_rows=max(1, int(strip_pixels) // max(1, x1 - x0)), _pixels=pixels)


__all__ = ["FrameError", "Frame", "Strip", "open_frame", "prepare_frame", "STRIP_PIXELS", "REQUIRED_EXTENSIONS"]
