"""The archive's description of one frame (:class:`DrizzleObservation`), made from TAP rows.

Rows become observations with one warning per unusable row (never silently); among the
processing versions of one exposure and detector the newest is kept (version and date parsed
from the file name ``..._l2b-v<ver>-<yyyy>-<ddd>.fits``). Angles in degrees, times in MJD,
sizes in bytes, wavelengths in um (the archive states metres).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

import numpy as np

from ..textlimits import short_repr, short_text
from .adql import NON_SCIENCE_PRODUCT_TYPES
from .locations import url_file_name, valid_key
from .tap import ArchiveQueryError

logger = logging.getLogger(__name__)

_RE_DID = re.compile(r"^ivo://[^?]+/(?P<collection>[^/?]+)\?(?P<obsid>[^/]+)/D(?P<det>[1-6])$")
_RE_BAND = re.compile(r"^SPHEREx-D([1-6])$")
_RE_VERSION = re.compile(r"l2b-v(\d+)-(\d{4})-(\d{3})")


def parse_version(url_or_name: str) -> tuple[int, int, int]:
    """(version, year, day of year) from ``...l2b-v<ver>-<yyyy>-<ddd>...`` in a
    file name or URL (the last occurrence); (-1, -1, -1) when absent."""
    found = _RE_VERSION.findall(url_or_name)
    if not found:
        return (-1, -1, -1)
    v, y, d = found[-1]
    return (int(v), int(y), int(d))


@dataclass
class DrizzleObservation:
    """One archive frame (one detector, one exposure).

    ``mjd`` = mid-exposure MJD; ``download_url`` comes from the archive (never
    built from the OBSID); ``content_length`` (bytes) and ``checksum``
    (``md5:<hex>``) as the archive states them; ``version`` = processing tag
    from the file name (``l2b-v20-2025-247``); ``wavelength_min/max`` in um;
    ``poly`` = footprint corners (ra1, dec1, ...) in deg.
    """

    obs_id: str
    band: str  # "D3"
    detector: int  # 1-6
    mjd: float
    download_url: str
    content_length: int | None = None
    checksum: str | None = None
    version: str = ""
    collection: str = ""
    mjd_start: float | None = None
    mjd_end: float | None = None
    wavelength_min: float | None = None
    wavelength_max: float | None = None
    poly: tuple[float, ...] | None = None
    cloud_key: str | None = None
    """The key in the S3 copy from the archive's ``cloud_access`` column (None: not given;
    the key is then the part of the URL after ``/ibe/data/spherex/``)."""

    @property
    def file_name(self) -> str:
        """File name in the URL (distinct between processing versions)."""
        return url_file_name(self.download_url)

    def version_key(self) -> tuple[int, int, int]:
        """(version, year, day of year) of the processing; (-1, -1, -1) if unknown."""
        return parse_version(self.download_url)


#: Largest believable ``contentlength`` (bytes); a SPHEREx frame is ~70 MB.
MAX_CONTENT_LENGTH = 1 << 34
#: MJD range a frame's time bounds must lie in (as the query's ``mjd_range``).
MJD_LIMITS = (0.0, 1e6)
#: Columns without which no row is usable.
REQUIRED_COLUMNS = ("obs_publisher_did", "uri", "time_bounds_lower", "time_bounds_upper")
#: Rows skipped with a warning of their own; later ones are counted in one summary line.
MAX_ROW_WARNINGS = 20
_RE_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")
_RE_CHECKSUM = re.compile(r"^([A-Za-z0-9_]+):([0-9A-Fa-f]+)$")


class _BadRow(Exception):
    """A row's value makes the row unusable: the message names the column and the value."""


def _value(row: Any, name: str) -> Any:
    try:
        v = row[name]
    except (KeyError, IndexError, ValueError):
        return None
    if v is None or np.ma.is_masked(v):
        return None
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    return v


def _bad(name: str, v: Any, why: str) -> _BadRow:
    if isinstance(v, np.generic):
        v = v.item()  # 1e+300, not np.float64(1e+300)
    return _BadRow(f"{name}={short_repr(v)} {why}")


def _text(row: Any, name: str) -> str | None:
    v = _value(row, name)
    if v is None:
        return None
    if not isinstance(v, (str, np.str_)):
        raise _bad(name, v, "is not text")
    return str(v).strip() or None


def _real(row: Any, name: str) -> float | None:
    """A finite float (numbers written as text accepted), None when NULL (NaN is a VOTable
    float's NULL); _BadRow when not a number."""
    v = _value(row, name)
    if v is None:
        return None
    if isinstance(v, (str, np.str_)) and _RE_NUMBER.match(str(v)):
        v = float(v)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _bad(name, v, "is not a number")
    x = float(v)
    if math.isnan(x):
        return None
    if not math.isfinite(x):
        raise _bad(name, v, "is not finite")
    return x


def _content_length(row: Any) -> int | None:
    """Bytes of the file, None when NULL or 0 (unknown); _BadRow for anything but a whole
    number in [0, MAX_CONTENT_LENGTH] (text like '12abc', NaN, negative, huge, fractional)."""
    v = _value(row, "contentlength")
    if v is None:
        return None
    n: int | None = None
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
        n = int(v)
    elif isinstance(v, (float, np.floating)) and math.isfinite(float(v)) and float(v).is_integer():
        n = int(v)
    elif isinstance(v, (str, np.str_)) and str(v).strip().isdecimal() and len(str(v).strip()) <= 20:
        n = int(str(v).strip())
    if n is None:
        raise _bad("contentlength", v, "is not a whole number of bytes")
    if not 0 <= n <= MAX_CONTENT_LENGTH:
        raise _bad("contentlength", v, f"is outside [0, {MAX_CONTENT_LENGTH}] bytes")
    return n or None


def _checksum(row: Any) -> str | None:
    """``<algorithm>:<hex digest>`` with a known algorithm and a digest of its length."""
    v = _text(row, "contentchecksum")
    if v is None:
        return None
    m = _RE_CHECKSUM.match(v)
    alg = m.group(1).lower() if m else ""
    if m is None or alg not in hashlib.algorithms_guaranteed or alg.startswith("shake"):
        raise _bad("contentchecksum", v, "is not <algorithm>:<hex digest> with a known algorithm")
    if len(m.group(2)) != 2 * hashlib.new(alg).digest_size:
        raise _bad("contentchecksum", v, f"does not have the {2 * hashlib.new(alg).digest_size} hex digits of {alg}")
    return f"{alg}:{m.group(2).lower()}"


def _poly(row: Any) -> tuple[float, ...] | None:
    """Footprint corners (deg) as a flat tuple; _BadRow when not an even count of finite numbers."""
    v = _value(row, "poly")
    if v is None:
        try:
            v = row["poly"]  # an array with some NULL (NaN) corners is not NULL: it is broken
        except (KeyError, IndexError, ValueError):
            return None
        if not (isinstance(v, np.ma.MaskedArray) and v.size > 1 and not v.mask.all()):
            return None
        v = v.filled(np.nan)
    if isinstance(v, (str, np.str_)):
        return None  # a text footprint (other services): not used
    try:
        arr = np.asarray(v, dtype=float).ravel()
    except (TypeError, ValueError):
        raise _bad("poly", v, "is not a list of numbers") from None
    if arr.size < 6 or arr.size % 2 or arr.size > 2000 or not np.isfinite(arr).all():
        raise _bad("poly", v, "is not an even count (>= 6) of finite numbers")
    if (np.abs(arr[1::2]) > 90.0).any():
        raise _bad("poly", v, "has a declination outside [-90, 90] deg")
    return tuple(float(x) for x in arr)


def _cloud_key(row: Any) -> str | None:
    """The S3 key of ``cloud_access`` (JSON ``{"aws": {"bucket_name": ..., "key": ...}}``), or
    None when the column is absent, NULL or unusable (the key then follows from the URL)."""
    v = _value(row, "cloud_access")
    if not isinstance(v, (str, np.str_)) or not str(v).strip() or len(str(v)) > 4096:
        return None
    try:
        key = json.loads(str(v)).get("aws", {}).get("key")
    except (ValueError, AttributeError):
        key = None
    if not isinstance(key, str) or not valid_key(key.strip("/")):
        logger.debug("cloud_access %s has no usable aws.key; the key follows from the URL", short_repr(v))
        return None
    return key.strip("/")


def _times(row: Any) -> tuple[float, float]:
    t0, t1 = _real(row, "time_bounds_lower"), _real(row, "time_bounds_upper")
    if t0 is None or t1 is None:
        raise _BadRow(f"time_bounds_lower/upper={short_repr((t0, t1))} are missing")
    lo, hi = MJD_LIMITS
    if not (lo <= t0 <= t1 <= hi):
        raise _BadRow(f"time_bounds_lower/upper={short_repr((t0, t1))} are not an MJD interval in [{lo:g}, {hi:g}]")
    return t0, t1


def _observation(row: Any, base_url: str) -> DrizzleObservation | None:
    """One row as an observation; None for a non-science artifact; _BadRow when unusable."""
    ptype = _value(row, "producttype")
    if ptype is not None and str(ptype).lower() in NON_SCIENCE_PRODUCT_TYPES:
        logger.debug("skipping non-science artifact %s (%s)", short_repr(_value(row, "uri")), short_repr(ptype))
        return None
    did = _text(row, "obs_publisher_did") or ""
    uri = _text(row, "uri") or ""
    m = _RE_DID.match(did)
    if m is None:
        raise _bad("obs_publisher_did", did, "is not ivo://.../<collection>?<OBSID>/D<1-6>")
    band_name = _text(row, "energy_bandpassname") or ""
    bm = _RE_BAND.match(band_name)
    det = int(m.group("det"))
    if bm is not None and int(bm.group(1)) != det:
        raise _bad("energy_bandpassname", band_name, f"disagrees with detector D{det} of {short_repr(did)}")
    if not uri.lower().split("?")[0].endswith(".fits"):
        raise _bad("uri", uri, "is not a FITS file")
    url = uri if re.match(r"^https?://", uri, re.IGNORECASE) else urljoin(base_url, uri.lstrip("/"))
    if urlsplit(url).scheme.lower() not in ("http", "https"):
        raise _bad("uri", uri, "is not an http(s) location")
    t0, t1 = _times(row)
    length, checksum, poly = _content_length(row), _checksum(row), _poly(row)
    wl0, wl1 = _real(row, "energy_bounds_lower"), _real(row, "energy_bounds_upper")
    ver = _RE_VERSION.findall(url_file_name(url)) or _RE_VERSION.findall(url)
    return DrizzleObservation(
        obs_id=m.group("obsid"),
        band=f"D{det}",
        detector=det,
        mjd=0.5 * (t0 + t1),
        download_url=url,
        content_length=length,
        checksum=checksum,
        version=("l2b-v{}-{}-{}".format(*ver[-1]) if ver else ""),
        collection=m.group("collection"),
        mjd_start=t0,
        mjd_end=t1,
        wavelength_min=wl0 * 1e6 if wl0 is not None else None,
        cloud_key=_cloud_key(row),
        wavelength_max=wl1 * 1e6 if wl1 is not None else None,
        poly=poly,
    )


def _check_columns(table: Any, source: str) -> None:
    """ArchiveQueryError when the answer lacks a column every row needs; one warning per
    missing optional column."""
    names = getattr(table, "colnames", None)
    if names is None:
        return
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing and len(table):
        raise ArchiveQueryError(
            f"the TAP answer of {source} lacks column(s) {', '.join(missing)} (it has "
            f"{short_text(', '.join(names))}); no frame can be located. Is tap_url an IRSA-like TAP service?"
        )
    for col in ("contentlength", "contentchecksum"):
        if col not in names and len(table):
            logger.warning("the TAP answer of %s has no %s column: files are checked by their FITS "
                           "structure only", source, col)


def rows_to_observations(table: Any, base_url: str, source: str = "the archive") -> list[DrizzleObservation]:
    """TAP rows -> observations. A row with an unusable value (OBSID/detector, URI, times,
    a contentlength like '12abc', NaN, negative or huge, a malformed checksum or footprint)
    is skipped with a warning naming the row, the column and the value (the first
    :data:`MAX_ROW_WARNINGS`, then one count). Relative ``uri`` values are joined to
    ``base_url`` (:func:`~.locations.data_base_url`). ArchiveQueryError when a column every
    row needs is missing."""
    _check_columns(table, source)
    out: list[DrizzleObservation] = []
    skipped = 0
    for i, row in enumerate(table):
        try:
            obs = _observation(row, base_url)
        except _BadRow as exc:
            skipped += 1
            if skipped <= MAX_ROW_WARNINGS:
                logger.warning("TAP row %d skipped: %s", i, exc)
            continue
        if obs is not None:
            out.append(obs)
    if skipped > MAX_ROW_WARNINGS:
        logger.warning("%d TAP rows skipped in all (%d not shown above)", skipped, skipped - MAX_ROW_WARNINGS)
    return out


def deduplicate_newest(observations: Sequence[DrizzleObservation]) -> list[DrizzleObservation]:
    """Keep the newest processing per (OBSID, detector): highest (version, date)
    parsed from the file name; ties broken by URL for determinism. Result is
    ordered by (mjd, detector, obs_id)."""
    best: dict[tuple[str, int], DrizzleObservation] = {}
    dropped = 0
    for obs in observations:
        key = (obs.obs_id, obs.detector)
        cur = best.get(key)
        if cur is None:
            best[key] = obs
            continue
        dropped += 1
        if (obs.version_key(), obs.download_url) > (cur.version_key(), cur.download_url):
            best[key] = obs
    if dropped:
        logger.info("dropped %d older processing versions / duplicate rows", dropped)
    for obs in best.values():
        if obs.version_key() == (-1, -1, -1):
            logger.warning("no processing version in %s; kept as the only/first copy", obs.download_url)
    return sorted(best.values(), key=lambda o: (o.mjd, o.detector, o.obs_id))
