"""One SPHEREx Level 2 frame (QR2, QR3+ or an IRSA cutout) from its headers to its pixels.

Conventions: 0-based pixel coordinates (pixel ``j`` covers ``[j-0.5, j+0.5]``), wavelengths
in um, surface brightness in MJy/sr, variance in (MJy/sr)^2, flags as uint32.

A :class:`Frame` is the one type from the reader to the engine:

1. :func:`open_frame` reads and validates the headers (by EXTNAME) and the small ``WCS-WAVE``
   table: the frame's header facts (:class:`FrameError` for unusable files). Bytes come from
   the data-access layer (:mod:`.access`); the FITS structure and the keywords are parsed and
   checked here (:mod:`.fitsstructure`, :mod:`.l2layout`, :mod:`.framewcs`,
   :mod:`.wavetable`) before any C library sees them.
2. :func:`prepare_frame` selects what can land on an :class:`~.grid.OutputGrid`: the
   footprint crop (:mod:`.footprint`), its flags and exclude mask (computed once), and the
   zodi scale (:mod:`.zodi`, fitted on the fixed sample before the crop is read). A frame that
   does not touch the grid costs one header read.
3. :meth:`Frame.strips` yields the crop's pixel arrays in strips of rows, as
   :class:`Strip` tuples in the argument order of ``accumulate.drizzle_frame``: only the
   rectangle is read (:mod:`.pixels`: rows of plain images, the needed tiles of compressed
   FLAGS), zodi-subtracted as it is read (:func:`~.pixels.read_image_minus`), with wavelengths
   and the corner map.

Everything computed per frame (crop excepted) depends on the frame alone, never on the grid.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterator, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from astropy.wcs import WCS

from . import flags as _flags
from . import zodi as _zodi
from .access import AccessError, ByteSource, open_source
from .fitsheader import CARD, Header, HeaderError
from .fitsstructure import StructureError, read_structure
from .fitstable import TableError
from .footprint import DEFAULT_CROP_MARGIN, footprint_crop
from .framesample import FrameSample, sample_rows, sample_verdict
from .framewcs import WcsError, celestial_wcs
from .grid import OutputGrid
from .l2layout import REQUIRED_EXTENSIONS, L2Layout, LayoutError, PlainImage, l2_layout
from .objectstore import as_location
from .pixels import PixelError, read_flags, read_image, read_image_minus, row_ranges
from .spatial import corner_map
from .stagetimes import stage
from .wavetable import WaveTable, check_wave_table, read_wave_table

logger = logging.getLogger(__name__)

#: Crops larger than this (input pixels) are read and drizzled in strips of rows of about
#: this many pixels, so that a whole frame never sits in memory at once; smaller crops are
#: read whole by :func:`prepare_frame`.
STRIP_PIXELS = 1_000_000

_DET_FROM_NAME = re.compile(r"D([1-6])_spx", re.IGNORECASE)


class FrameError(Exception):
    """A file that cannot be used as a SPHEREx L2 frame; carries ``path`` (a Path, or an
    :class:`~.objectstore.ObjectLocation`) and ``reason``."""

    def __init__(self, path: Any, reason: str):
        self.path = as_location(path)
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

    path: Any
    """The file: a :class:`~pathlib.Path`, or an :class:`~.objectstore.ObjectLocation` (read in place)."""
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
    layout: L2Layout
    """Where the file's images are (offsets, types, tiles)."""
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
    _pixels: Optional[Tuple[np.ndarray, np.ndarray]] = None
    """(zodi-subtracted image, variance) of the whole crop when read up front (small crops)."""

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
        src = None if self._pixels is not None else _open(self.path)
        try:
            for ya in range(y0, y1, self.strip_rows):
                yb = min(ya + self.strip_rows, y1)
                if self._pixels is not None:
                    image, variance = self._pixels
                    self._pixels = None  # handed over once; a second pass reads the file
                else:
                    assert src is not None
                    with stage("rows"):
                        _prefetch(src, self.layout, self.path, self.zodi.scale is not None, False,
                                  (range(ya, yb), x0, x1), False, True)
                        image, variance = _read_subtracted(src, self.layout, self.path, range(ya, yb), x0, x1,
                                                           self.zodi)
                rows = slice(ya - y0, yb - y0)
                with stage("wavelengths"):
                    lam, dlam = self.wave.evaluate_crop(x0, x1, ya, yb)
                with stage("corners"):
                    corners_x, corners_y = corner_map(self.wcs, self.grid.wcs, x0, ya, x1 - x0, yb - ya)
                exclude = None if self.exclude_mask is None else self.exclude_mask[rows]
                yield Strip(corners_x, corners_y, image, variance, self.flags[rows], lam, dlam, exclude)
        finally:
            if src is not None:
                src.close()


# --------------------------------------------------------------------------- headers

#: What the readers below raise for a file that cannot be used (the message is the reason).
_READ_ERRORS = (AccessError, StructureError, LayoutError, PixelError, HeaderError, TableError, WcsError)


def _reason(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, AccessError) else str(exc)


def _open(path: Any) -> ByteSource:
    try:
        return open_source(path)
    except AccessError as exc:
        raise FrameError(path, exc.reason) from None


def _parse_detector(header: Header, path: Any) -> int:
    val = header.get("DETECTOR")
    if val is not None:
        m = re.search(r"([1-6])", str(val))
        if m and str(val).strip().upper().lstrip("D") == m.group(1):
            return int(m.group(1))
        raise FrameError(path, f"IMAGE keyword DETECTOR = {str(val)[:20]!r} is not a SPHEREx detector 1-6")
    m = _DET_FROM_NAME.search(path.name)
    if m:
        logger.debug("%s: no DETECTOR keyword, detector taken from the file name", path.name)
        return int(m.group(1))
    raise FrameError(path, "not a SPHEREx L2 image: IMAGE header has no DETECTOR keyword")


def _mjd(header: Header) -> float:
    """MJD-AVG, else the middle of MJD-BEG/MJD-END, else NaN (metadata only: never fatal)."""
    try:
        mjd = header.get_float("MJD-AVG", None)
        if mjd is None:
            beg, end = header.get_float("MJD-BEG", None), header.get_float("MJD-END", None)
            mjd = 0.5 * (beg + end) if beg is not None and end is not None else float("nan")
    except HeaderError as exc:
        logger.debug("%s; MJD unknown", exc)
        return float("nan")
    return float(mjd)


def _mjd_span(header: Header) -> Tuple[float, float]:
    """(MJD-BEG, MJD-END), each NaN when missing or not a number (metadata only: never fatal)."""

    def value(key: str) -> float:
        try:
            return header.get_float(key, float("nan"))
        except HeaderError:
            return float("nan")

    return value("MJD-BEG"), value("MJD-END")


def _band(detector: int) -> Tuple[float, float]:
    """The detector's band (um): the lowest and highest channel edges of the channel table."""
    from .spectral import channel_band

    return channel_band(detector)


#: Cards that can define flag bits (``MP_<NAME>``, ``MSKN<bit>``, as standard or HIERARCH keywords).
_FLAG_CARD_STARTS = ("HIERARCH ", "MP_", "MSKN")
_FLAG_PREFIXES = ("MP_", "MSKN")
_FLAG_CARD_FIRSTS = "".join(sorted({p[0] for p in _FLAG_CARD_STARTS}))


def _well_formed(items: Tuple[Tuple[str, Any], ...]) -> bool:
    """True when every flag keyword is a clean definition (``MP_<NAME>`` = a bit 0-31,
    ``MSKN<bit>`` = a name): reading them logs no warning."""
    for key, value in items:
        if key.startswith("MP_"):
            if len(key) == 3 or type(value) is not int or not 0 <= value <= 31:
                return False
        elif not (len(key) == 8 and key[4:].isdigit() and int(key[4:]) <= 31 and isinstance(value, str)
                  and value.strip()):
            return False
    return True


@functools.lru_cache(maxsize=32)
def _flag_items(cards: Tuple[str, ...]) -> Tuple[Tuple[Tuple[str, Any], ...], Optional[Dict[str, int]]]:
    """The flag keywords of a FLAGS header made of ``cards`` alone (every card that can define one),
    and their flag names -> bits when they are well formed (None: read them per frame, so that each
    frame warns about its malformed ones)."""
    items = tuple(Header("".join(cards), "FLAGS header").items(_FLAG_PREFIXES))
    return items, (_flags.flag_bits_from_header(dict(items)) if _well_formed(items) else None)


def _flag_bits(header: Header) -> Dict[str, int]:
    """The flag names -> bits of a FLAGS header. Its flag keywords are read from the cards that can
    define them (the same in every frame of a release), remembered by those cards' text; a header
    with ``CONTINUE`` cards (long strings) is read whole."""
    text = header._text
    if "CONTINUE" in text:
        return _flags.flag_bits_from_header(dict(header.items(_FLAG_PREFIXES)))
    firsts = text[::CARD]  # each card's first character: only cards starting like a flag card are cut
    candidates = (text[j * CARD:(j + 1) * CARD] for j, c in enumerate(firsts) if c in _FLAG_CARD_FIRSTS)
    items, bits = _flag_items(tuple(c for c in candidates if c.startswith(_FLAG_CARD_STARTS)))
    return dict(bits) if bits is not None else _flags.flag_bits_from_header(dict(items))


def _read_header(src: ByteSource, path: Any, detectors: Optional[Sequence[int]]) -> Frame:
    """The validated header facts of an open file (``detectors``: the accepted ones, None: any)."""
    try:
        with stage("open"):
            layout = l2_layout(read_structure(src))
        with stage("headers"):
            header = layout.hdus["IMAGE"].header.read_all()  # ~100 keywords asked for: one pass
            det = _parse_detector(header, path)
            if detectors is not None and det not in detectors:
                expected = " or ".join(f"D{d}" for d in detectors)
                raise FrameError(path, f"belongs to detector D{det}, expected {expected}")
            bits = _flag_bits(layout.hdus["FLAGS"].header)
            offset = (1.0 - header.get_float("CRPIX1A"), 1.0 - header.get_float("CRPIX2A")) \
                if "CRPIX1A" in header and "CRPIX2A" in header else (0.0, 0.0)
            obsid = str(header.get("OBSID", Path(path.name).stem))[:80]
            mjd = _mjd(header)
            mjd_span = _mjd_span(header)
        with stage("wcs"):
            if "CTYPE1" not in header:
                raise FrameError(path, "not a SPHEREx L2 image: IMAGE has no celestial WCS (no CTYPE1)")
            try:
                wcs = celestial_wcs(header, layout.shape)
            except WcsError as exc:
                raise FrameError(path, f"celestial WCS: {exc}") from None
        with stage("wave"):
            try:
                wave = read_wave_table(src, layout.hdus, header)
            except ValueError as exc:
                if isinstance(exc, _READ_ERRORS) and not isinstance(exc, (HeaderError, TableError)):
                    raise
                raise FrameError(path, str(exc)) from None
            try:
                check_wave_table(wave, layout.shape, _band(det))
            except ValueError as exc:
                raise FrameError(path, str(exc)) from None
    except _READ_ERRORS as exc:
        raise FrameError(path, _reason(exc)) from None
    is_cutout = offset != (0.0, 0.0) or wave.crpix != wave.crval
    return Frame(path=path, obsid=obsid, detector=det, mjd=mjd, shape=layout.shape, wcs=wcs, flag_bits=dict(bits),
                 wave=wave, flags_compressed=layout.flags_compressed, layout=layout, parent_offset=offset,
                 is_cutout=is_cutout, mjd_span=mjd_span)


def open_frame(path: Any, detector: Optional[int] = None) -> Frame:
    """Read and validate the headers of one L2 file (no pixel data read): its header facts.

    ``detector`` (1-6) rejects frames of another detector; None/0 accepts any.
    Raises :class:`FrameError` (path + reason) for files that are not SPHEREx L2
    images, are truncated, lack an extension or belong to another detector.
    """
    path = as_location(path)
    with stage("open"):
        src = _open(path)
    with src:
        return _read_header(src, path, (detector,) if detector else None)


# --------------------------------------------------------------------------- pixels


def _read_pixels(src: ByteSource, layout: L2Layout, path: Any, rows: range, x0: int, x1: int,
                 with_zodi: bool, out: Optional[Sequence[np.ndarray]] = None
                 ) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(image, variance, zodi or None) of one block, float64 as the engine takes them
    (read once in the engine's dtype: no per-strip conversion copy later); into the arrays
    ``out`` (image, variance, zodi) when given."""
    o = out or (None, None, None)
    try:
        image = read_image(src, layout.image, rows, x0, x1, out=o[0])
        variance = read_image(src, layout.variance, rows, x0, x1, out=o[1])
        zodi = read_image(src, layout.zodi, rows, x0, x1, out=o[2]) if with_zodi else None
    except _READ_ERRORS as exc:
        raise FrameError(path, f"pixel data unreadable ({_reason(exc)})") from None
    return image, variance, zodi


def _read_subtracted(src: ByteSource, layout: L2Layout, path: Any, rows: range, x0: int, x1: int,
                     zodi: _zodi.ZodiScale) -> Tuple[np.ndarray, np.ndarray]:
    """(image - scale * ZODI, variance) of one block, float64 (the image alone when ``zodi`` has no
    scale): the ZODI pixels are subtracted as they are read (:func:`~.pixels.read_image_minus`),
    the same bits as reading them and :meth:`~.zodi.ZodiScale.subtract`."""
    try:
        if zodi.scale is None:
            image = read_image(src, layout.image, rows, x0, x1)
        else:
            image = read_image_minus(src, layout.image, layout.zodi, zodi.scale, rows, x0, x1)
        variance = read_image(src, layout.variance, rows, x0, x1)
    except _READ_ERRORS as exc:
        raise FrameError(path, f"pixel data unreadable ({_reason(exc)})") from None
    return image, variance


def _read_flags(src: ByteSource, layout: L2Layout, path: Any, rows: range, x0: int, x1: int,
                out: Optional[np.ndarray] = None) -> np.ndarray:
    try:
        return read_flags(src, layout.flags, rows, x0, x1, out)
    except _READ_ERRORS as exc:
        raise FrameError(path, f"pixel data unreadable ({_reason(exc)})") from None


def _prefetch(src: ByteSource, layout: L2Layout, path: Any, with_zodi: bool, sample: bool,
              region: Optional[Tuple[range, int, int]], region_flags: bool, region_pixels: bool) -> None:
    """Announce to ``src`` the plain-image ranges read next: the fixed sample's rows of IMAGE,
    VARIANCE, ZODI (when subtracted) and plain FLAGS (``sample``), and of the region
    ``(rows, x0, x1)`` its plain FLAGS and/or its pixels. Exactly the ranges the reads ask for
    (:func:`~.pixels.row_ranges`), so the pixels are the same; an object store fetches them in
    one batch (tile-compressed FLAGS are read on their own). Nothing for a source whose
    prefetch does nothing (a local file)."""
    if type(src).prefetch is ByteSource.prefetch:
        return
    images = [layout.image, layout.variance] + ([layout.zodi] if with_zodi else [])
    plain_flags = [layout.flags] if isinstance(layout.flags, PlainImage) else []
    ranges = []
    if sample:
        for part in images + plain_flags:
            ranges += row_ranges(part, sample_rows(layout.shape), 0, layout.shape[1])
    if region is not None:
        for part in (plain_flags if region_flags else []) + (images if region_pixels else []):
            ranges += row_ranges(part, *region)
    try:
        src.prefetch(ranges)
    except _READ_ERRORS as exc:
        raise FrameError(path, f"pixel data unreadable ({_reason(exc)})") from None


_scratch = threading.local()


def _sample_buffers(shape: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """This thread's arrays for a sample of ``shape`` (image, variance, zodi: float64; flags:
    uint32), reused from frame to frame: the sample is read into memory already mapped, not into
    fresh pages (~2 MB a frame). Only the last shape's arrays are kept. A sample read into them
    lives until the thread's next sample: :func:`prepare_frame` keeps nothing of it but copies."""
    held = getattr(_scratch, "sample", None)
    if held is None or held[0].shape != shape:
        held = (np.empty(shape), np.empty(shape), np.empty(shape), np.empty(shape, dtype=np.uint32))
        _scratch.sample = held
    return held


def _read_sample(src: ByteSource, layout: L2Layout, path: Any, with_zodi: bool) -> FrameSample:
    """The frame's fixed sample (:mod:`.framesample`, in this thread's reused arrays: valid until
    its next sample); FrameError when its verdict rejects it."""
    rows = sample_rows(layout.shape)
    nx = layout.shape[1]
    buffers = _sample_buffers((len(rows), nx))
    image, variance, zodi = _read_pixels(src, layout, path, rows, 0, nx, with_zodi, buffers[:3])
    sample = FrameSample(rows, image, zodi, variance, _read_flags(src, layout, path, rows, 0, nx, buffers[3]))
    reason = sample_verdict(sample)
    if reason:
        raise FrameError(path, reason)
    return sample


def _exclude_bits(exclude_flags: Any, flag_bits: Dict[str, int]) -> int:
    """:func:`.flags.exclude_bitmask` of the config's ``exclude_flags`` for a file's flag names,
    remembered per (specifications, names -> bits): the frames of a run share both."""
    specs = exclude_flags or []
    if not isinstance(specs, (list, tuple)):  # one name or bit, or anything else: resolved (or refused) here
        return _flags.exclude_bitmask(specs, flag_bits)
    try:
        key = (tuple((type(s), s) for s in specs), tuple(flag_bits.items()))
        hash(key)
    except TypeError:  # specifications that cannot be remembered: resolved (and refused) here
        return _flags.exclude_bitmask(specs, flag_bits)
    return _exclude_bits_of(key)


@functools.lru_cache(maxsize=64)
def _exclude_bits_of(key: Tuple[Tuple[Tuple[type, Any], ...], Tuple[Tuple[str, int], ...]]) -> int:
    return _flags.exclude_bitmask([s for _, s in key[0]], dict(key[1]))


def _crop_of(a: np.ndarray, crop: Tuple[int, int, int, int]) -> np.ndarray:
    """The crop ``(x0, x1, y0, y1)`` of a whole-frame array, as a new contiguous array (always a
    copy: the sample's arrays are reused)."""
    x0, x1, y0, y1 = crop
    return np.array(a[y0:y1, x0:x1], order="C", copy=True)


def prepare_frame(
    path: Any,
    config: Any,
    grid: OutputGrid,
    margin_pix: float = DEFAULT_CROP_MARGIN,
    strip_pixels: int = STRIP_PIXELS,
) -> Optional[Frame]:
    """Validate one L2 file and select what can land on ``grid``: crop, flags, exclude mask,
    zodi scale. Returns None when the frame misses the grid.

    ``config`` gives ``exclude_flags``, ``subtract_zodi`` and ``static_zodi`` (the zodi scale is
    fitted on the frame's fixed sample: the same for any grid). Crops of at
    most ``strip_pixels`` pixels are read now (one strip later); larger crops are read in
    strips of rows by :meth:`Frame.strips`. Frames of a detector without planes in ``grid``
    are rejected. Raises :class:`FrameError` for unusable files.
    """
    path = as_location(path)
    with stage("open"):
        src = _open(path)
    with src:
        frame = _read_header(src, path, grid.input_detectors)
        with stage("crop"):
            crop = footprint_crop(frame, grid, margin_pix, str(config.kernel))
        if crop is None:
            return None
        x0, x1, y0, y1 = crop
        with_zodi = bool(config.subtract_zodi)
        whole = sample_rows(frame.shape) == range(0, frame.shape[0])  # the sample holds every pixel
        rows = range(y0, y1)
        small = (x1 - x0) * (y1 - y0) <= strip_pixels
        with stage("sample"):
            _prefetch(src, frame.layout, path, with_zodi, True, None if whole else (rows, x0, x1), True, small)
            sample = _read_sample(src, frame.layout, path, with_zodi)
        with stage("zodi"):  # the scale first: the crop's ZODI pixels are subtracted as they are read
            fit_on = None if sample.zodi is None else _zodi.ZodiPixels(sample.image, sample.zodi, sample.variance,
                                                                      sample.flags)
            zodi = _zodi.frame_scale(config, frame.flag_bits, fit_on, name=path.name)
        with stage("flags"):
            flags = _crop_of(sample.flags, crop) if whole else _read_flags(src, frame.layout, path, rows, x0, x1)
        pixels = None
        if small:
            with stage("rows"):
                if whole:
                    image = _crop_of(sample.image, crop)
                    zodi.subtract(image, None if sample.zodi is None else _crop_of(sample.zodi, crop), consume=True)
                    pixels = (image, _crop_of(sample.variance, crop))
                else:
                    pixels = _read_subtracted(src, frame.layout, path, rows, x0, x1, zodi)
    with stage("flags"):
        bits = _exclude_bits(config.exclude_flags, frame.flag_bits)
        exclude = (flags & np.uint32(bits)) != 0 if bits else None
    return replace(frame, grid=grid, crop=crop, flags=flags, exclude_mask=exclude, zodi=zodi,
                   strip_rows=max(1, int(strip_pixels) // max(1, x1 - x0)), _pixels=pixels)


__all__ = ["FrameError", "Frame", "Strip", "open_frame", "prepare_frame", "STRIP_PIXELS", "REQUIRED_EXTENSIONS"]
