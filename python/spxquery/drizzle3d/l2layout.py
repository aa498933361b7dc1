"""Where the pixels of a SPHEREx L2 file are, checked before anything reads them.

From a file's :func:`~.fitsstructure.read_structure`, :func:`l2_layout` finds the extensions by
EXTNAME (every name once; IMAGE, FLAGS, VARIANCE and ZODI required) and checks what the reader
relies on: IMAGE, VARIANCE and ZODI are 2-D floating-point images of one shape without
scaling; FLAGS is integer-typed, either a plain image (QR2) or a tile-compressed one (QR3 and
later: a BINTABLE of whole-row tiles, ``RICE_1`` or ``GZIP_1``) of the same shape. The answer,
an :class:`L2Layout`, says where each image's bytes lie (:class:`PlainImage`,
:class:`TiledImage`); :class:`LayoutError` gives the reason a file cannot be used.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from .fitsheader import HeaderError
from .fitsstructure import Hdu
from .fitstable import Column, TableError, heap_start, table_columns

#: Extensions the drizzle needs (PSF / EPSF are not read).
REQUIRED_EXTENSIONS = ("IMAGE", "FLAGS", "VARIANCE", "ZODI")
#: Tile compressions of FLAGS that can be read, by ZCMPTYPE.
CODECS = {"RICE_1": "RICE_1", "RICE_ONE": "RICE_1", "GZIP_1": "GZIP_1"}
_FLOAT_DTYPE = {-32: ">f4", -64: ">f8"}
_INT_DTYPE = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8"}


class LayoutError(ValueError):
    """A file that is not a usable SPHEREx L2 image; the message is the reason."""


@dataclass(frozen=True)
class PlainImage:
    """An uncompressed 2-D image: ``shape = (ny, nx)``, big-endian ``dtype``, data at ``offset``;
    ``bzero``: the integer offset of unsigned data (0 otherwise)."""

    name: str
    offset: int
    shape: Tuple[int, int]
    dtype: str
    bzero: int = 0

    @property
    def row_bytes(self) -> int:
        return self.shape[1] * int(self.dtype[-1])


@dataclass(frozen=True)
class TiledImage:
    """A tile-compressed 2-D integer image of whole-row tiles (``tile_rows`` rows each):
    table rows at ``rows_offset`` (``row_bytes`` each, one per tile), tile bytes in the heap
    (``heap_offset``, ``heap_bytes``) through the descriptors of ``column``
    (``COMPRESSED_DATA``); ``fallback`` columns hold tiles that were stored otherwise."""

    name: str
    shape: Tuple[int, int]
    rows_offset: int
    row_bytes: int
    tile_rows: int
    column: Column
    heap_offset: int
    heap_bytes: int
    codec: str
    blocksize: int
    bytepix: int
    dtype: str
    bzero: int = 0
    gzip_column: Optional[Column] = None
    raw_column: Optional[Column] = None

    @property
    def n_tiles(self) -> int:
        return -(-self.shape[0] // self.tile_rows)


FlagsPart = Union[PlainImage, TiledImage]


@dataclass(frozen=True)
class L2Layout:
    """The checked layout of an L2 file: ``shape = (ny, nx)`` of its images and where they are;
    ``hdus`` by name (for tables the headers point to, like ``WCS-WAVE``)."""

    shape: Tuple[int, int]
    image: PlainImage
    flags: FlagsPart
    variance: PlainImage
    zodi: PlainImage
    hdus: Dict[str, Hdu]

    @property
    def flags_compressed(self) -> bool:
        return isinstance(self.flags, TiledImage)


def _scaling(hdu: Hdu) -> Tuple[float, float]:
    h = hdu.header
    if h.lacks(("BSCALE", "BZERO")):  # the common case: one search of the header for both
        return 1.0, 0.0
    return h.get_float("BSCALE", 1.0), h.get_float("BZERO", 0.0)


def _float_image(hdu: Hdu) -> PlainImage:
    if hdu.xtension not in ("IMAGE", ""):
        raise LayoutError(f"extension {hdu.name} is a {hdu.xtension or 'primary'} HDU, not an image")
    if len(hdu.shape) != 2:
        raise LayoutError(f"{hdu.name} is {len(hdu.shape)}-D (shape {hdu.shape}), expected 2-D")
    if hdu.bitpix not in _FLOAT_DTYPE:
        raise LayoutError(f"{hdu.name} has BITPIX = {hdu.bitpix}; expected floating point (-32 or -64)")
    bscale, bzero = _scaling(hdu)
    if (bscale, bzero) != (1.0, 0.0):
        raise LayoutError(f"{hdu.name} is scaled (BSCALE = {bscale:g}, BZERO = {bzero:g}); SPHEREx L2 images are not")
    return PlainImage(hdu.name, hdu.data_offset, (hdu.shape[0], hdu.shape[1]), _FLOAT_DTYPE[hdu.bitpix])


def _unsigned_offset(name: str, bits: int, bscale: float, bzero: float) -> int:
    """The BZERO of integer FLAGS: 0, or 2**(bits-1) for unsigned data; BSCALE must be 1."""
    if bscale != 1.0 or bzero not in (0.0, float(1 << (bits - 1))) or (bits == 8 and bzero != 0.0):
        raise LayoutError(f"FLAGS is scaled (BSCALE = {bscale:g}, BZERO = {bzero:g}); flag bits cannot be scaled")
    return int(bzero)


def _plain_flags(hdu: Hdu) -> PlainImage:
    if hdu.bitpix not in _INT_DTYPE:
        raise LayoutError(f"{hdu.name} has BITPIX = {hdu.bitpix} (floating point); SPHEREx FLAGS are integers")
    if hdu.xtension not in ("IMAGE", "") or len(hdu.shape) != 2:
        raise LayoutError(f"{hdu.name} is not a 2-D image (XTENSION {hdu.xtension!r}, shape {hdu.shape})")
    bzero = _unsigned_offset(hdu.name, hdu.bitpix, *_scaling(hdu))
    return PlainImage(hdu.name, hdu.data_offset, (hdu.shape[0], hdu.shape[1]), _INT_DTYPE[hdu.bitpix], bzero)


def _zparams(hdu: Hdu) -> Dict[str, int]:
    """ZNAMEi/ZVALi pairs (upper-cased names)."""
    h = hdu.header
    out: Dict[str, int] = {}
    i = 1
    while f"ZNAME{i}" in h:
        out[h.get_str(f"ZNAME{i}").strip().upper()] = h.get_int(f"ZVAL{i}")
        i += 1
    return out


def _tiled_flags(hdu: Hdu) -> TiledImage:
    h = hdu.header
    zbitpix = h.get_int("ZBITPIX")
    if zbitpix not in _INT_DTYPE:
        raise LayoutError(f"{hdu.name} is a compressed image with ZBITPIX = {zbitpix}; SPHEREx FLAGS are integers")
    if h.get_int("ZNAXIS") != 2:
        raise LayoutError(f"{hdu.name} is a compressed {h.get_int('ZNAXIS')}-D image, expected 2-D")
    shape = (h.get_int("ZNAXIS2"), h.get_int("ZNAXIS1"))
    cmp = h.get_str("ZCMPTYPE").strip().upper()
    if cmp not in CODECS:
        raise LayoutError(f"{hdu.name} compression ZCMPTYPE = {cmp!r:.20} is not supported (only {sorted(CODECS)})")
    tile = (h.get_int("ZTILE2", 1), h.get_int("ZTILE1", shape[1]))
    if tile[1] != shape[1] or not 1 <= tile[0] <= max(shape[0], 1):
        raise LayoutError(f"{hdu.name} tiles of {tile[0]} x {tile[1]} pixels: only tiles of whole rows can be read")
    if h.get_str("ZQUANTIZ", "NONE").strip().upper() not in ("NONE", "NO_DITHER"):
        raise LayoutError(f"{hdu.name} is quantised (ZQUANTIZ); flag bits cannot be")
    try:
        cols = table_columns(hdu)
        heap_offset, heap_bytes = heap_start(hdu)
    except TableError as exc:
        raise LayoutError(str(exc)) from None
    for name in ("ZSCALE", "ZZERO"):
        if name in cols:
            raise LayoutError(f"{hdu.name} has a {name} column (scaled tiles); flag bits cannot be scaled")
    col = cols.get("COMPRESSED_DATA")
    if col is None or not col.is_descriptor or col.heap_code != "B":
        raise LayoutError(f"{hdu.name} has no COMPRESSED_DATA column of bytes (columns: {sorted(cols)[:10]})")
    params = _zparams(hdu)
    bytepix = params.get("BYTEPIX", abs(zbitpix) // 8)
    blocksize = params.get("BLOCKSIZE", 32)
    if bytepix not in (1, 2, 4) or not 1 <= blocksize <= 1 << 16:  # CFITSIO's RICE_1 has no 8-byte form
        raise LayoutError(f"{hdu.name}: BYTEPIX = {bytepix}, BLOCKSIZE = {blocksize} are not valid RICE parameters")
    n_tiles = -(-shape[0] // tile[0])
    if hdu.shape[0] != n_tiles:
        raise LayoutError(f"{hdu.name} has {hdu.shape[0]} tiles for {shape[0]} rows of {tile[0]} (expected {n_tiles})")
    bzero = _unsigned_offset(hdu.name, zbitpix, *_scaling(hdu))
    extra = {k: c for k, c in cols.items() if k in ("GZIP_COMPRESSED_DATA", "UNCOMPRESSED_DATA") and c.is_descriptor}
    return TiledImage(hdu.name, shape, hdu.data_offset, hdu.shape[1], tile[0], col, heap_offset, heap_bytes,
                      CODECS[cmp], blocksize, bytepix, _INT_DTYPE[zbitpix], bzero,
                      extra.get("GZIP_COMPRESSED_DATA"), extra.get("UNCOMPRESSED_DATA"))


def _by_name(hdus: List[Hdu]) -> Dict[str, Hdu]:
    counts = Counter(h.name for h in hdus if h.name)
    twice = sorted(n for n, c in counts.items() if c > 1)
    if twice:
        where = ", ".join(str(h.index) for h in hdus if h.name == twice[0])
        raise LayoutError(f"extension name {twice[0]} appears {counts[twice[0]]} times (HDUs {where}); "
                          "EXTNAMEs must be unique")
    return {h.name: h for h in hdus if h.name}


def l2_layout(hdus: List[Hdu]) -> L2Layout:
    """The checked layout of an L2 file from its HDUs; :class:`LayoutError` with the reason."""
    by_name = _by_name(hdus)
    if "IMAGE" not in by_name:
        raise LayoutError(f"not a SPHEREx L2 image: no IMAGE extension (extensions: {sorted(by_name)})")
    for ext in REQUIRED_EXTENSIONS:
        if ext not in by_name:
            raise LayoutError(f"missing extension {ext}")
    try:
        image = _float_image(by_name["IMAGE"])
        variance = _float_image(by_name["VARIANCE"])
        zodi = _float_image(by_name["ZODI"])
        fh = by_name["FLAGS"]
        flags: FlagsPart = _tiled_flags(fh) if fh.is_compressed_image else _plain_flags(fh)
    except HeaderError as exc:
        raise LayoutError(str(exc)) from None
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise LayoutError(f"IMAGE is empty (shape {image.shape})")
    for part in (flags, variance, zodi):
        if part.shape != image.shape:
            raise LayoutError(f"extension {part.name} has shape {part.shape}, IMAGE has {image.shape}")
    return L2Layout(image.shape, image, flags, variance, zodi, by_name)


__all__ = ["REQUIRED_EXTENSIONS", "LayoutError", "PlainImage", "TiledImage", "L2Layout", "l2_layout"]
