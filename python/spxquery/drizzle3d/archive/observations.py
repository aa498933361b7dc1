"""The archive's description of one frame (:class:`DrizzleObservation`), made from TAP rows.

Rows become observations with one warning per unusable row (never silently); among the
processing versions of one exposure and detector the newest is kept (version and date parsed
from the file name ``..._l2b-v<ver>-<yyyy>-<ddd>.fits``). Angles in degrees, times in MJD,
sizes in bytes, wavelengths in um (the archive states metres).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import numpy as np

from .adql import NON_SCIENCE_PRODUCT_TYPES
from .locations import url_file_name

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

    @property
    def file_name(self) -> str:
        """File name in the URL (distinct between processing versions)."""
        return url_file_name(self.download_url)

    def version_key(self) -> tuple[int, int, int]:
        """(version, year, day of year) of the processing; (-1, -1, -1) if unknown."""
        return parse_version(self.download_url)


def _value(row: Any, name: str) -> Any:
    try:
        v = row[name]
    except KeyError:
        return None
    if v is None or np.ma.is_masked(v):
        return None
    if isinstance(v, bytes):
        v = v.decode()
    return v


def _opt_float(v: Any) -> float | None:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _observation(row: Any, i: int, base_url: str) -> DrizzleObservation | None:
    """Row ``i`` as an observation, or None (with a warning) when unusable."""
    did = str(_value(row, "obs_publisher_did") or "")
    band_name = str(_value(row, "energy_bandpassname") or "")
    uri = str(_value(row, "uri") or "")
    ptype = _value(row, "producttype")
    if ptype is not None and str(ptype).lower() in NON_SCIENCE_PRODUCT_TYPES:
        logger.debug("skipping non-science artifact %s (%s)", uri, ptype)
        return None
    m = _RE_DID.match(did)
    bm = _RE_BAND.match(band_name)
    t0 = _opt_float(_value(row, "time_bounds_lower"))
    t1 = _opt_float(_value(row, "time_bounds_upper"))
    if m is None or not uri or t0 is None or t1 is None:
        logger.warning("TAP row %d skipped: unusable obs_publisher_did=%r uri=%r time=(%r, %r)", i, did, uri, t0, t1)
        return None
    det = int(m.group("det"))
    if bm is not None and int(bm.group(1)) != det:
        logger.warning("TAP row %d skipped: detector D%s in %r disagrees with %r", i, det, did, band_name)
        return None
    if not uri.lower().split("?")[0].endswith(".fits"):
        logger.warning("TAP row %d skipped: artifact %r is not a FITS file", i, uri)
        return None
    url = uri if re.match(r"^https?://", uri) else urljoin(base_url, uri.lstrip("/"))
    length = _value(row, "contentlength")
    checksum = _value(row, "contentchecksum")
    poly = _value(row, "poly")
    wl0 = _opt_float(_value(row, "energy_bounds_lower"))
    wl1 = _opt_float(_value(row, "energy_bounds_upper"))
    ver = _RE_VERSION.findall(url_file_name(url)) or _RE_VERSION.findall(url)
    return DrizzleObservation(
        obs_id=m.group("obsid"),
        band=f"D{det}",
        detector=det,
        mjd=0.5 * (t0 + t1),
        download_url=url,
        content_length=int(length) if length is not None and int(length) > 0 else None,
        checksum=str(checksum) if checksum else None,
        version=("l2b-v{}-{}-{}".format(*ver[-1]) if ver else ""),
        collection=m.group("collection"),
        mjd_start=t0,
        mjd_end=t1,
        wavelength_min=wl0 * 1e6 if wl0 is not None else None,
        wavelength_max=wl1 * 1e6 if wl1 is not None else None,
        poly=(
            tuple(float(v) for v in np.asarray(poly, dtype=float).ravel())
            if poly is not None and not isinstance(poly, str) else None
        ),
    )


def rows_to_observations(table: Any, base_url: str) -> list[DrizzleObservation]:
    """TAP rows -> observations. Rows without a usable OBSID/detector/URI/time
    are skipped with one warning each (never silently). Relative ``uri`` values
    are joined to ``base_url`` (:func:`~.locations.data_base_url`)."""
    out = [_observation(row, i, base_url) for i, row in enumerate(table)]
    return [obs for obs in out if obs is not None]


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
