"""SPHEREx L2 FLAGS bits: names, header parsing, exclusion bitmasks.

The FLAGS extension of a SPHEREx L2 file is an int32 bitmap (reinterpret as uint32).
Bit names are read from the FLAGS header when present -- QR2 writes
``HIERARCH MP_<NAME> = <bit>``, QR3 and later write ``MSKN<bit:04d> = '<NAME>'`` --
and otherwise come from :data:`DEFAULT_FLAG_BITS` (the bits documented for QR2/QR3).

Flag specifications (``exclude_flags`` of the config) are bit numbers 0-31 or names,
case-insensitive. A name ending in ``*`` is a prefix wildcard: ``"GHOST*"`` selects every
bit whose name starts with ``GHOST``.
"""

from __future__ import annotations

import logging
import numbers
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np

from .textlimits import short_repr

logger = logging.getLogger(__name__)

FlagSpec = Union[int, str]

#: Documented SPHEREx L2 flag bits {name: bit}. The names of bits 22-24 (ghosts) are not
#: firmly documented; real files carry their names in the FLAGS header, which wins.
DEFAULT_FLAG_BITS: Dict[str, int] = {
    "TRANSIENT": 0,
    "OVERFLOW": 1,
    "SUR_ERROR": 2,
    "PHANTOM": 4,
    "REFERENCE": 5,
    "NONFUNC": 6,
    "DICHROIC": 7,
    "MISSING_DATA": 9,
    "HOT": 10,
    "COLD": 11,
    "FULLSAMPLE": 12,
    "PHANMISS": 14,
    "NONLINEAR": 15,
    "PERSIST": 17,
    "OUTLIER": 19,
    "CROSSTALK": 20,
    "SOURCE": 21,
    "GHOST1": 22,
    "GHOST2": 23,
    "GHOST3": 24,
    "STREAK": 25,
    "BLOOM": 26,
    "SNOWBALL": 27,
    "HALO": 28,
    "SATELLITE_HALO": 29,
}

#: One-line explanation of each known flag (used for YAML templates and help text).
FLAG_DESCRIPTIONS: Dict[str, str] = {
    "TRANSIENT": "transient event (cosmic ray / jump) detected in the ramp",
    "OVERFLOW": "informational: ramp reached the overflow level; value recovered from early reads",
    "SUR_ERROR": "error in the on-board sample-up-the-ramp fit",
    "PHANTOM": "phantom (electronic) signal",
    "REFERENCE": "reference pixel (detector border, not light-sensitive)",
    "NONFUNC": "non-functional pixel (dead, unstable or otherwise unusable)",
    "DICHROIC": "region affected by the dichroic edge (degraded spectral response)",
    "MISSING_DATA": "no data downlinked for this pixel",
    "HOT": "hot pixel (excess dark current)",
    "COLD": "cold pixel (low response)",
    "FULLSAMPLE": "informational: full-sample (non-SUR) readout available",
    "PHANMISS": "phantom correction could not be applied",
    "NONLINEAR": "signal in the non-linear regime; linearity correction uncertain",
    "PERSIST": "persistence from an earlier bright exposure",
    "OUTLIER": "informational: statistical outlier relative to neighbours",
    "CROSSTALK": "electronic cross-talk from a bright pixel",
    "SOURCE": "informational: pixel belongs to a detected source (40-70% of pixels)",
    "GHOST1": "optical ghost of a bright source (type 1)",
    "GHOST2": "optical ghost of a bright source (type 2)",
    "GHOST3": "optical ghost of a bright source (type 3)",
    "STREAK": "satellite or other moving-object streak",
    "BLOOM": "charge blooming from a saturated source",
    "SNOWBALL": "snowball (large cosmic-ray charge deposit)",
    "HALO": "extended halo of a bright star",
    "SATELLITE_HALO": "halo around a satellite streak",
}

#: Flags excluded by the recommended configuration: pixels whose values are unreliable.
#: Never includes the informational SOURCE, FULLSAMPLE, OVERFLOW and OUTLIER bits.
RECOMMENDED_EXCLUDE_FLAGS: List[str] = [
    "TRANSIENT",
    "SUR_ERROR",
    "PHANTOM",
    "REFERENCE",
    "NONFUNC",
    "DICHROIC",
    "MISSING_DATA",
    "HOT",
    "COLD",
    "PHANMISS",
    "NONLINEAR",
    "PERSIST",
    "GHOST1",
    "GHOST2",
    "GHOST3",
    "STREAK",
    "BLOOM",
    "SNOWBALL",
    "SATELLITE_HALO",
]

#: Informational flags that must not be excluded by default.
INFORMATIONAL_FLAGS: List[str] = ["SOURCE", "FULLSAMPLE", "OVERFLOW", "OUTLIER"]

_QR3_KEY = re.compile(r"^MSKN(\d{4})$")
_NAME_RE = re.compile(r"^[A-Z0-9_]+\*?$")


def _as_bit(value: Any) -> Optional[int]:
    """``value`` as an int bit number if it is an integer 0-31, else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    b = int(value)
    return b if 0 <= b <= 31 else None


def flag_bits_from_header(header: Any) -> Dict[str, int]:
    """Flag names and bits {NAME: bit} from a FLAGS header, merged over the defaults.

    Reads QR2 ``MP_<NAME> = bit`` (HIERARCH) and QR3 ``MSKN<bit:04d> = 'NAME'`` keywords of an
    :class:`astropy.io.fits.Header` (or any mapping of keyword -> value). Header entries win
    over :data:`DEFAULT_FLAG_BITS`; malformed entries are skipped with a warning. Returned
    sorted by bit, then name.
    """
    found: Dict[str, int] = {}
    items = header.items() if hasattr(header, "items") else []
    for key, value in items:
        key_u = str(key).strip().upper()
        if key_u.startswith("HIERARCH "):
            key_u = key_u[len("HIERARCH "):].strip()
        if key_u.startswith("MP_") and len(key_u) > 3:
            bit = _as_bit(value)
            if bit is None:
                logger.warning("FLAGS header %s = %r is not a bit number 0-31; ignored", key, value)
                continue
            found[key_u[3:]] = bit
            continue
        m = _QR3_KEY.match(key_u)
        if m:
            bit = int(m.group(1))
            name = str(value).strip().upper() if isinstance(value, str) else ""
            if not (0 <= bit <= 31) or not name:
                logger.warning("FLAGS header %s = %r is not a bit 0-31 with a name; ignored", key, value)
                continue
            found[name] = bit
    if not found:
        logger.debug("No flag definitions in header; using DEFAULT_FLAG_BITS")
    merged = dict(DEFAULT_FLAG_BITS)
    merged.update(found)
    return dict(sorted(merged.items(), key=lambda kv: (kv[1], kv[0])))


def normalize_flag_spec(item: Any, bits: Mapping[str, int] = DEFAULT_FLAG_BITS) -> FlagSpec:
    """Validate one flag specification: an int 0-31 (returned as int) or a known name
    or wildcard (returned upper-case). ValueError names the offending item."""
    if isinstance(item, bool):
        raise ValueError(f"flag must be a bit number 0-31 or a flag name, got {short_repr(item)}")
    if isinstance(item, numbers.Integral):
        b = int(item)
        if not 0 <= b <= 31:
            raise ValueError(f"flag bit must be in 0-31, got {b}")
        return b
    if isinstance(item, str):
        name = item.strip().upper()
        if name.isdigit():
            return normalize_flag_spec(int(name), bits)
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid flag name {short_repr(item)}")
        if name.endswith("*"):
            prefix = name[:-1]
            if not any(k.upper().startswith(prefix) for k in bits):
                raise ValueError(f"flag wildcard {short_repr(item)} matches no known flag; known: {sorted(bits)}")
            return name
        if name not in {k.upper() for k in bits}:
            raise ValueError(f"unknown flag name {short_repr(item)}; known: {sorted(bits)}")
        return name
    raise ValueError(f"flag must be a bit number 0-31 or a flag name, got {short_repr(item)} ({type(item).__name__})")


def validate_exclude_flags(
    exclude_flags: Any, bits: Mapping[str, int] = DEFAULT_FLAG_BITS
) -> List[FlagSpec]:
    """Normalise a list of flag specifications (ints 0-31 / names / wildcards) to a new list.

    A single int or string is accepted as a one-element list; None gives ``[]``.
    """
    if exclude_flags is None:
        return []
    if isinstance(exclude_flags, (str, numbers.Integral)) and not isinstance(exclude_flags, bool):
        exclude_flags = [exclude_flags]
    if isinstance(exclude_flags, Mapping) or not isinstance(exclude_flags, Iterable):
        raise ValueError("exclude_flags must be a list of bit numbers 0-31 or flag names, "
                         f"got {short_repr(exclude_flags)}")
    return [normalize_flag_spec(item, bits) for item in exclude_flags]


def exclude_bitmask(exclude_flags: Any, bits: Mapping[str, int] = DEFAULT_FLAG_BITS) -> int:
    """OR of the selected flag bits, as an int in ``[0, 2**32)`` (a uint32 mask).

    ``exclude_flags``: iterable of bit numbers 0-31 and/or names (case-insensitive,
    ``PREFIX*`` wildcards), resolved with ``bits`` (e.g. from :func:`flag_bits_from_header`).
    ValueError names an unknown name or an out-of-range bit.
    """
    upper = {str(k).upper(): int(v) for k, v in bits.items()}
    mask = 0
    for spec in validate_exclude_flags(exclude_flags, upper):
        if isinstance(spec, int):
            mask |= 1 << spec
        elif spec.endswith("*"):
            for name, b in upper.items():
                if name.startswith(spec[:-1]):
                    mask |= 1 << b
        else:
            mask |= 1 << upper[spec]
    return mask


def parse_flag_words(words: Sequence[str]) -> List[FlagSpec]:
    """Flag specifications from command-line words: bit numbers, names, ``recommended`` (the
    :data:`RECOMMENDED_EXCLUDE_FLAGS`) and ``none`` (nothing); validated later by the config."""
    out: List[FlagSpec] = []
    for w in words:
        low = w.strip().lower()
        if low == "none":
            continue
        if low == "recommended":
            out.extend(RECOMMENDED_EXCLUDE_FLAGS)
        elif w.strip().isdigit():
            out.append(int(w))
        else:
            out.append(w.strip())
    return out


def as_uint32(flags: Any) -> np.ndarray:
    """FLAGS values as native uint32: int32 (the files' type, any byte order) reinterpreted
    bit for bit, native uint32 as is (no copy), other integer types converted modulo 2**32."""
    a = np.asarray(flags)
    if a.dtype == np.uint32:
        return a
    if a.dtype.kind == "i" and a.dtype.itemsize == 4:
        return a.astype(np.int32, copy=False).view(np.uint32)
    return a.astype(np.int64).astype(np.uint32)


def describe_bits(value: int, bits: Mapping[str, int] = DEFAULT_FLAG_BITS) -> List[str]:
    """Names of the bits set in ``value`` (bit order); unnamed bits appear as ``BIT<n>``."""
    v = int(value) & 0xFFFFFFFF  # int32 FLAGS values are reinterpreted as uint32
    by_bit: Dict[int, List[str]] = {}
    for name, b in bits.items():
        by_bit.setdefault(int(b), []).append(str(name).upper())
    out: List[str] = []
    for b in range(32):
        if v & (1 << b):
            out.extend(sorted(by_bit.get(b, [f"BIT{b}"])))
    return out


__all__ = [
    "DEFAULT_FLAG_BITS",
    "FLAG_DESCRIPTIONS",
    "RECOMMENDED_EXCLUDE_FLAGS",
    "INFORMATIONAL_FLAGS",
    "flag_bits_from_header",
    "normalize_flag_spec",
    "validate_exclude_flags",
    "exclude_bitmask",
    "parse_flag_words",
    "as_uint32",
    "describe_bits",
]
