"""The structure of a FITS file: its HDUs, where each header and data part lies, by name.

:func:`read_structure` walks a :class:`~.access.ByteSource` header by header (reading only
headers: a few KB per HDU) and returns one :class:`Hdu` per extension: its EXTNAME, type,
``BITPIX``, shape, heap size, the byte offset and length of its data, and its
:class:`~.fitsheader.Header` (keywords parsed on demand). The mandatory keywords are checked
(FITS 4.0 section 4.4.1); a data part that would end beyond the file is a truncated file.
The scan of each chunk of header blocks (END card, bytes that are not header text) and the
mandatory keywords in their standard places are read by the Rust extension
(``_core.header_end``, ``_core.header_mandatory``, ``rust/src/cards.rs``: one pass each, the
same values); a header it does not read exactly as the Python reader (a keyword out of place,
malformed or unusual values) is judged here, with the same messages.
Budgets: at most :data:`MAX_HDUS` HDUs and :data:`MAX_HEADER_BLOCKS` blocks per header, so a
hostile file costs a bounded amount of reading whatever it claims. Nothing here interprets
pixel values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, List, Tuple

from . import _core
from .access import AccessError, ByteSource
from .fitsheader import BLOCK, CARD, Header, HeaderError, find_end

#: Most HDUs a file may have (a SPHEREx L2 file has 7).
MAX_HDUS = 64
#: Most 2880-byte blocks one header may span (36 cards each).
MAX_HEADER_BLOCKS = 1000
#: Blocks read at a time while looking for a header's END card.
HEADER_CHUNK_BLOCKS = 4
_BITPIX = (8, 16, 32, 64, -32, -64)
_PRINTABLE = bytes(range(32, 127))
_HEADER_END = getattr(_core, "header_end", None)
_MANDATORY = getattr(_core, "header_mandatory", None)


class StructureError(ValueError):
    """A file whose FITS structure is broken: not FITS, truncated, malformed mandatory keywords."""


@dataclass(frozen=True)
class Hdu:
    """One HDU: ``name`` is its EXTNAME upper-cased (``PRIMARY`` for the first HDU without one),
    ``xtension`` ``""`` for the primary HDU, else ``IMAGE``/``BINTABLE``/...; ``shape`` in numpy
    order (``NAXISn, ..., NAXIS1``); ``data_offset``/``data_bytes``: where the data part lies
    (without padding; for tables the heap included)."""

    index: int
    name: str
    xtension: str
    header: Header
    bitpix: int
    shape: Tuple[int, ...]
    pcount: int
    gcount: int
    header_offset: int
    data_offset: int
    data_bytes: int

    @property
    def label(self) -> str:
        """The HDU in messages: its name, or its index when it has none."""
        return self.name or f"HDU {self.index}"

    @property
    def is_compressed_image(self) -> bool:
        """A tile-compressed image (a BINTABLE with ``ZIMAGE = T``)."""
        return self.xtension == "BINTABLE" and self.header.get("ZIMAGE") is True


def _end_of(raw: bytes) -> Tuple[int, bool]:
    """``(offset of the END card or -1, whether a byte before it is not header text)`` of a
    chunk of whole header blocks."""
    if _HEADER_END is not None:
        return _HEADER_END(chunk=raw)
    end = find_end(raw.decode("latin-1"))
    return end, bool(raw[: end if end >= 0 else len(raw)].translate(None, _PRINTABLE))


def _read_header_bytes(src: ByteSource, offset: int, index: int) -> bytes:
    """The cards of the header at ``offset``, up to (not including) its END card (FITS header
    text: ASCII 32-126)."""
    parts: List[bytes] = []
    pos = offset
    blocks = 0
    while True:
        if pos >= src.size:
            raise StructureError(f"truncated file: header of HDU {index} has no END card before the end of the file")
        n_blocks = min(HEADER_CHUNK_BLOCKS, (src.size - pos) // BLOCK)
        if n_blocks == 0:
            raise StructureError(f"truncated file: header of HDU {index} ends in a partial 2880-byte block")
        raw = src.read_bytes(pos, n_blocks * BLOCK)
        if not parts and index == 0 and not raw.startswith(b"SIMPLE  = "):
            raise StructureError("not a FITS file (no SIMPLE card)")
        if not parts and index > 0 and not raw.startswith(b"XTENSION= "):
            raise StructureError(f"HDU {index} does not start with an XTENSION card (garbage after HDU {index - 1}?)")
        end, garbage = _end_of(raw)
        if garbage:
            raise StructureError(f"header of HDU {index} has no END card before bytes that are not FITS header "
                                 "text (ASCII 32-126)")
        if end >= 0:
            parts.append(raw[:end])
            return parts[0] if len(parts) == 1 else b"".join(parts)
        parts.append(raw)
        blocks += n_blocks
        if blocks >= MAX_HEADER_BLOCKS:
            raise StructureError(f"header of HDU {index} has no END card within {MAX_HEADER_BLOCKS} blocks")
        pos += n_blocks * BLOCK


def _positional(header: Header, card: int, key: str) -> Any:
    """The value of mandatory keyword ``key``, expected as card number ``card`` (FITS order);
    looked up by name when a writer put it elsewhere."""
    if card < header.n_cards and header._card(card).startswith(f"{key:<8}= "):
        return header.value_at(key, card)
    return header.get(key)


def _mandatory(header: Header, index: int, primary: bool) -> Tuple[str, int, Tuple[int, ...], int, int]:
    """``(xtension, bitpix, shape, pcount, gcount)`` from the mandatory keywords."""
    first = header._card(0)[:8].rstrip() if header.n_cards else ""
    if primary:
        if first != "SIMPLE" or header.value_at("SIMPLE", 0) is not True:
            raise StructureError("not a FITS file (no SIMPLE = T card)")
        xtension = ""
    else:
        value = header.value_at("XTENSION", 0) if first == "XTENSION" else None
        if not isinstance(value, str):
            raise StructureError(f"HDU {index} does not start with an XTENSION card (garbage after HDU {index - 1}?)")
        xtension = value.strip().upper()
    bitpix = _positional(header, 1, "BITPIX")
    if isinstance(bitpix, bool) or bitpix not in _BITPIX:
        raise StructureError(f"HDU {index}: BITPIX = {bitpix!r:.40} is not one of {_BITPIX}")
    naxis = _positional(header, 2, "NAXIS")
    if isinstance(naxis, bool) or not isinstance(naxis, int) or not 0 <= naxis <= 999:
        raise StructureError(f"HDU {index}: NAXIS = {naxis!r:.40} is not an integer 0-999")
    dims = []
    for i in range(1, naxis + 1):
        d = _positional(header, 2 + i, f"NAXIS{i}")
        if isinstance(d, bool) or not isinstance(d, int) or d < 0:
            raise StructureError(f"HDU {index}: NAXIS{i} = {d!r:.40} is not a non-negative integer")
        dims.append(d)
    pcount = 0 if primary else _positional(header, 3 + naxis, "PCOUNT")
    gcount = 1 if primary else _positional(header, 4 + naxis, "GCOUNT")
    for key, v in (("PCOUNT", pcount), ("GCOUNT", gcount)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise StructureError(f"HDU {index}: {key} = {v!r:.40} is not a non-negative integer")
    return xtension, bitpix, tuple(reversed(dims)), pcount, gcount


def _data_bytes(bitpix: int, shape: Tuple[int, ...], pcount: int, gcount: int, groups: bool) -> int:
    if not shape:
        return 0
    n = 1
    dims = shape[:-1] if groups else shape  # random groups: NAXIS1 = 0 is not an axis
    for d in dims:
        n *= d
    return abs(bitpix) // 8 * gcount * (pcount + n)


def _judged(header: Header, index: int) -> Tuple[str, int, Tuple[int, ...], int, int, Any]:
    """:func:`_mandatory` and the first EXTNAME value by the Python parser (with its messages)."""
    try:
        xtension, bitpix, shape, pcount, gcount = _mandatory(header, index, index == 0)
        card = header.find("EXTNAME")
        name = header.value_at("EXTNAME", card) if card >= 0 else None
    except HeaderError as exc:
        raise StructureError(str(exc)) from None
    return xtension, bitpix, shape, pcount, gcount, name


def read_structure(src: ByteSource) -> List[Hdu]:
    """Every HDU of the file, in order. :class:`StructureError` for a broken structure (the
    reason names the HDU), :class:`~.access.AccessError` when bytes cannot be read."""
    if src.size < BLOCK:
        raise StructureError(f"not a FITS file (only {src.size} bytes)")
    hdus: List[Hdu] = []
    offset = 0
    while offset < src.size:
        index = len(hdus)
        if index >= MAX_HDUS:
            raise StructureError(f"more than {MAX_HDUS} HDUs")
        if src.size - offset < BLOCK:
            if src.read_bytes(offset, min(8, src.size - offset)) == b"XTENSION"[: src.size - offset]:
                raise StructureError(f"truncated file: the header of HDU {index} is cut short at byte {src.size}")
            break  # a few bytes after the last HDU that do not start one: ignored, as astropy does
        raw = _read_header_bytes(src, offset, index)
        text = raw.decode("latin-1")
        where = "primary header" if index == 0 else f"header of HDU {index}"
        header = Header(text, where)
        fast = None if _MANDATORY is None else _MANDATORY(text=raw, primary=index == 0)
        if fast is not None:  # the mandatory cards read in one pass (the values _mandatory gives)
            xtension, bitpix, dims, pcount, gcount, name = fast
            xtension = "" if xtension is None else xtension.strip().upper()
            shape = tuple(reversed(dims))
        else:
            xtension, bitpix, shape, pcount, gcount, name = _judged(header, index)
        name = name.strip().upper() if isinstance(name, str) else ("PRIMARY" if index == 0 else "")
        if name:
            header.where = f"{name} header"
        header_blocks = (len(text) + CARD + BLOCK - 1) // BLOCK  # the END card included
        data_offset = offset + header_blocks * BLOCK
        groups = index == 0 and bool(shape) and shape[-1] == 0 and header.get("GROUPS") is True
        nbytes = _data_bytes(bitpix, shape, pcount, gcount, groups)
        if data_offset + nbytes > src.size:
            raise StructureError(f"truncated file: extension {name or index} needs {data_offset + nbytes} bytes, "
                                 f"file has {src.size}")
        hdus.append(Hdu(index, name, xtension, header, bitpix, shape, pcount, gcount, offset, data_offset, nbytes))
        offset = data_offset + (nbytes + BLOCK - 1) // BLOCK * BLOCK
    return hdus


__all__ = ["Hdu", "MAX_HDUS", "MAX_HEADER_BLOCKS", "StructureError", "read_structure", "AccessError"]
