"""Per-pixel wavelengths from the spectral-WCS calibration product (``CWAVE``, ``CBAND``).

The product of a detector holds the central wavelength and the bandwidth [um] of each of the
2040 x 2040 parent-detector pixels (0-based ``(y, x)``). It is a trusted archive file, read
with astropy (memory-mapped; its size is bounded by :data:`MAX_PRODUCT_BYTES`), and opened
once per run: :func:`open_product` checks it (extensions, shapes, detector, finite values in the
detector's band) and :func:`frame_wave` gives a frame a :class:`ProductWave`, which has the
lookup's ``evaluate_crop`` and reads only the crop's rows. A cutout maps to the parent pixel
``x + 1 - CRPIX1A`` (0-based ``x``; :attr:`.frames.Frame.parent_offset`).

A product that does not fit a frame (a non-integer or out-of-range cutout offset, or values
more than :data:`MATCH_TOLERANCE_UM` from the frame's own L2 lookup at five sample pixels:
another detector or a broken product) is refused for that frame with the reason; the caller
then keeps the L2 lookup.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

#: Largest product file read (the real ones are ~32 MB).
MAX_PRODUCT_BYTES = 256 * 1024 * 1024
#: The parent detector's pixel grid ``(ny, nx)``.
PRODUCT_SHAPE = (2040, 2040)
#: Largest difference [um] between the product and the frame's L2 lookup (good to ~1 nm) at the
#: sample pixels before the product is called mismatched (a wrong detector differs by > 0.1 um).
MATCH_TOLERANCE_UM = 0.01
#: Crops of at most this many pixels get their product maps read with the frame (one read, on
#: the reader thread); larger crops read them strip by strip (``frames.STRIP_PIXELS``).
PRELOAD_PIXELS = 1_000_000
#: ``WAVESRC`` values (the frame log's ``wave_source``): every frame from the product, every
#: frame from the L2 lookup, or some of each.
SOURCE_PRODUCT, SOURCE_LOOKUP, SOURCE_MIXED = "SPECTRAL_WCS", "LOOKUP", "MIXED"
#: Wavelengths [um] a product's CWAVE may hold (SPHEREx covers 0.75-5.0 um).
_CWAVE_RANGE = (0.5, 5.5)


class ProductError(Exception):
    """A spectral-WCS product that cannot be used; ``reason`` says why."""

    def __init__(self, path: Any, reason: str):
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path.name}: {reason}")


@dataclass(frozen=True, eq=False)
class _Image:
    """Where a 2-D float image of the product lies in its file (plain FITS data, big-endian)."""

    offset: int
    dtype: np.dtype
    shape: Tuple[int, int]


@dataclass(frozen=True, eq=False)
class ProductMaps:
    """A checked product: where ``CWAVE`` and ``CBAND`` [um] lie in the file. Pixels are read
    with plain file reads of whole rows (no memory map: a file cut short later gives an error,
    never a crash)."""

    path: Path
    detector: int
    cwave: _Image
    cband: _Image

    def read(self, x0: int, x1: int, y0: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
        """(CWAVE, CBAND) of parent rows y0:y1, columns x0:x1 (0-based), float64; OSError when
        the file cannot give them."""
        out = []
        with open(self.path, "rb") as fh:
            for image in (self.cwave, self.cband):
                ny, nx = image.shape
                if not (0 <= y0 <= y1 <= ny and 0 <= x0 <= x1 <= nx):
                    raise OSError(f"{self.path.name}: rows {y0}:{y1}, columns {x0}:{x1} outside {image.shape}")
                row = nx * image.dtype.itemsize
                fh.seek(image.offset + y0 * row)
                raw = fh.read((y1 - y0) * row)
                if len(raw) != (y1 - y0) * row:
                    raise OSError(f"{self.path.name}: file ends inside its pixel data")
                rows = np.frombuffer(raw, dtype=image.dtype).reshape(y1 - y0, nx)
                out.append(rows[:, x0:x1].astype(np.float64))
        return out[0], out[1]


def _image(hdul: fits.HDUList, extname: str, path: Path, size: int) -> _Image:
    if extname not in hdul:
        cut = "" if size % 2880 == 0 else f" (truncated: {size} bytes is no whole number of 2880-byte FITS blocks)"
        raise ProductError(path, f"no {extname} extension{cut}")
    hdu = hdul[extname]
    h = hdu.header
    shape = tuple(int(h.get(f"NAXIS{i}", 0)) for i in (2, 1)) if int(h.get("NAXIS", 0)) == 2 else None
    bitpix = int(h.get("BITPIX", 0))
    if shape != PRODUCT_SHAPE or bitpix not in (-32, -64):
        raise ProductError(path, f"{extname} is {shape} with BITPIX {bitpix}, expected {PRODUCT_SHAPE} floats")
    if float(h.get("BSCALE", 1.0)) != 1.0 or float(h.get("BZERO", 0.0)) != 0.0:
        raise ProductError(path, f"{extname} is scaled (BSCALE/BZERO), expected plain floats")
    info = hdu.fileinfo()
    offset = int(info["datLoc"])
    dtype = np.dtype(">f4" if bitpix == -32 else ">f8")
    if offset + PRODUCT_SHAPE[0] * PRODUCT_SHAPE[1] * dtype.itemsize > size:
        raise ProductError(path, f"truncated: {extname} ends after the file's {size} bytes")
    return _Image(offset, dtype, (PRODUCT_SHAPE[0], PRODUCT_SHAPE[1]))


def _detector_keywords(hdul: fits.HDUList) -> List[Any]:
    return [h.header["DETECTOR"] for h in hdul if "DETECTOR" in h.header]


def open_product(path: Union[str, Path], detector: int) -> ProductMaps:
    """Open and check the product at ``path`` for ``detector`` (1-6); :class:`ProductError`
    with the reason when it is missing, too large, unreadable or does not match."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ProductError(path, f"cannot be read ({exc.strerror or exc})") from None
    if size > MAX_PRODUCT_BYTES:
        raise ProductError(path, f"{size} bytes, more than the {MAX_PRODUCT_BYTES} a product may have")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", VerifyWarning)  # a cut file: the reason below says so
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                for value in _detector_keywords(hdul):
                    if str(value).strip().upper().lstrip("D") != str(int(detector)):
                        raise ProductError(path, f"DETECTOR = {value!r}, the frames are of D{int(detector)}")
                cwave, cband = (_image(hdul, name, path, size) for name in ("CWAVE", "CBAND"))
                maps = ProductMaps(path, int(detector), cwave, cband)
    except ProductError:
        raise
    except Exception as exc:  # corrupt headers: astropy raises OSError/ValueError/...
        raise ProductError(path, f"unreadable FITS file ({type(exc).__name__}: {exc})") from None
    try:
        rows = [maps.read(0, PRODUCT_SHAPE[1], y, y + 1) for y in range(0, PRODUCT_SHAPE[0], 85)]  # 24 rows
    except OSError as exc:
        raise ProductError(path, f"pixel data unreadable ({exc})") from None
    lam = np.concatenate([r[0] for r in rows])
    bw = np.concatenate([r[1] for r in rows])
    if not np.all((lam > _CWAVE_RANGE[0]) & (lam < _CWAVE_RANGE[1])):  # NaN fails too
        raise ProductError(path, f"CWAVE holds values outside {_CWAVE_RANGE[0]}-{_CWAVE_RANGE[1]} um")
    if not np.all((bw > 0) & (bw < lam)):
        raise ProductError(path, "CBAND holds values that are no bandwidths (not finite, <= 0 or > CWAVE)")
    return maps


@dataclass(frozen=True, eq=False)
class ProductWave:
    """The wavelengths of one frame from a product: ``evaluate_crop`` as the L2 lookup's
    (:meth:`.wavetable.WaveTable.evaluate_crop`), reading only the rows asked for, or taking
    them from ``window`` (the crop's maps, read up front for small crops)."""

    maps: ProductMaps
    offset: Tuple[int, int]
    """parent pixel = file pixel + offset ``(dx, dy)`` (0-based)."""
    window: Optional[Tuple[Tuple[int, int, int, int], np.ndarray, np.ndarray]] = None
    """``((x0, x1, y0, y1), lambda_c, delta_lambda)`` in file pixels, or None."""

    @property
    def path(self) -> Path:
        return self.maps.path

    def evaluate_crop(self, x0: int, x1: int, y0: int, y1: int) -> Tuple[np.ndarray, np.ndarray]:
        """(lambda_c, delta_lambda) [um], float64, on rows y0:y1, columns x0:x1 of the file."""
        if self.window is not None:
            (wx0, wx1, wy0, wy1), lam, bw = self.window
            if wx0 <= x0 <= x1 <= wx1 and wy0 <= y0 <= y1 <= wy1:
                part = (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0))
                return lam[part].copy(), bw[part].copy()
        dx, dy = self.offset
        return self.maps.read(x0 + dx, x1 + dx, y0 + dy, y1 + dy)

    def preload(self, crop: Tuple[int, int, int, int]) -> "ProductWave":
        """This object with the maps of ``crop`` ``(x0, x1, y0, y1)`` read now (OSError when
        they cannot be)."""
        x0, x1, y0, y1 = crop
        lam, bw = self.evaluate_crop(x0, x1, y0, y1)
        return replace(self, window=(crop, lam, bw))


def _integer_offset(offset: Tuple[float, float]) -> Tuple[int, int]:
    out = []
    for v in offset:
        if not np.isfinite(v) or v != round(v):
            raise ValueError(f"cutout offset {offset} (from CRPIX1A/CRPIX2A) is not a whole number of pixels")
        out.append(int(round(v)))
    return out[0], out[1]


def frame_wave(maps: ProductMaps, frame: Any) -> Union[ProductWave, str]:
    """The product's wavelengths for ``frame`` (a :class:`.frames.Frame`: ``shape``,
    ``parent_offset``, ``wave``), or the reason it does not fit that frame."""
    try:
        dx, dy = _integer_offset(frame.parent_offset)
    except ValueError as exc:
        return str(exc)
    ny, nx = frame.shape
    if dx < 0 or dy < 0 or dx + nx > PRODUCT_SHAPE[1] or dy + ny > PRODUCT_SHAPE[0]:
        return (f"the frame's pixels map to parent columns {dx}-{dx + nx - 1}, rows {dy}-{dy + ny - 1}, "
                f"outside the product's {PRODUCT_SHAPE[1]} x {PRODUCT_SHAPE[0]}")
    wave = ProductWave(maps, (dx, dy))
    try:
        if frame.crop[1] > frame.crop[0] and frame.n_pixels <= PRELOAD_PIXELS:
            wave = wave.preload(frame.crop)
        samples = _compare(wave, frame)
    except OSError as exc:
        return f"the product could not be read ({exc})"
    return wave if samples is None else samples


def _compare(wave: ProductWave, frame: Any) -> Optional[str]:
    """None when ``wave`` agrees with the frame's lookup at five pixels, else the reason."""
    ny, nx = frame.shape
    for x, y in ((0, 0), (nx - 1, 0), (0, ny - 1), (nx - 1, ny - 1), (nx // 2, ny // 2)):
        lam_p, bw_p = (float(a[0, 0]) for a in wave.evaluate_crop(x, x + 1, y, y + 1))
        lam_l, bw_l = (float(a[0, 0]) for a in frame.wave.evaluate_crop(x, x + 1, y, y + 1))
        worst = max(abs(lam_p - lam_l), abs(bw_p - bw_l))
        if not worst <= MATCH_TOLERANCE_UM:
            return (f"the product differs from the frame's L2 lookup by {1e3 * worst:.1f} nm at pixel ({x}, {y}) "
                    f"(more than {1e3 * MATCH_TOLERANCE_UM:.0f} nm: another detector or version?)")
    return None


def frame_log_fields(frame: Any) -> Dict[str, Optional[str]]:
    """The frame log's ``wave_source`` (:data:`SOURCE_PRODUCT` or :data:`SOURCE_LOOKUP`) and
    ``wave_product`` (the product's file name, or None) of a prepared frame."""
    if isinstance(frame.wave, ProductWave):
        return {"wave_source": SOURCE_PRODUCT, "wave_product": frame.wave.path.name}
    return {"wave_source": SOURCE_LOOKUP, "wave_product": None}


__all__ = ["MATCH_TOLERANCE_UM", "MAX_PRODUCT_BYTES", "PRELOAD_PIXELS", "PRODUCT_SHAPE", "SOURCE_LOOKUP",
           "SOURCE_MIXED", "SOURCE_PRODUCT", "ProductError", "ProductMaps", "ProductWave", "frame_log_fields",
           "frame_wave", "open_product"]
