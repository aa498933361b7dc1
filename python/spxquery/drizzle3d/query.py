"""Archive access: find SPHEREx L2 frames with IRSA TAP and fetch or locate them.

- :func:`query_observations` sends one ADQL query (``spherex.artifact`` JOIN
  ``spherex.plane``) selecting every frame whose footprint INTERSECTS the
  output region, keeps the newest processing version per (OBSID, detector),
  orders by time and groups by detector.
- :func:`download_observations` downloads (verified, resumable, parallel; see
  :mod:`spxquery.drizzle3d.download`) or resolves files in a local mirror.

Angles in degrees, times in MJD, sizes in bytes, wavelengths in um.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urljoin, urlsplit

import numpy as np
import requests

from .config import Drizzle3DConfig
from . import download as _download
from .download import (
    CHUNK_SIZE,
    DownloadFailure,
    DownloadReport,
    DownloadTask,
    backoff_delay,
    download_files,
    parse_retry_after,
)

logger = logging.getLogger(__name__)

#: Path marker after which an archive URL maps onto a mirror / S3 key.
DATA_MARKER = "/ibe/data/spherex/"
#: Side of a SPHEREx frame on the sky (deg).
FRAME_SIZE_DEG = 3.5
#: Auto rule: cutouts when the cutout side (region diagonal + 2 margins) is below this (deg).
CUTOUT_AUTO_MAX_DEG = 1.0
#: Extra search radius (deg) beyond the region's half-diagonal: two native pixels.
SEARCH_MARGIN_DEG = 2 * 6.15 / 3600.0
#: Overall wait for an async TAP job (s).
ASYNC_JOB_TIMEOUT = 900.0
#: Extensions every SPHEREx L2 file and IRSA cutout carries (spherex-l2.md) and the
#: pipeline needs; a download lacking one is incomplete.
REQUIRED_HDUS = ("IMAGE", "FLAGS", "VARIANCE", "WCS-WAVE")
#: Artifact product types that are never science frames (a NULL type is kept).
NON_SCIENCE_PRODUCT_TYPES = ("preview", "thumbnail", "calibration", "auxiliary", "info", "catalog", "noise", "weight")

_ADQL_COLUMNS = (
    "p.obs_publisher_did",
    "p.energy_bandpassname",
    "p.energy_bounds_lower",
    "p.energy_bounds_upper",
    "p.time_bounds_lower",
    "p.time_bounds_upper",
    "p.poly",
    "a.uri",
    "a.contentlength",
    "a.contentchecksum",
    "a.producttype",
)

_RE_DID = re.compile(r"^ivo://[^?]+/(?P<collection>[^/?]+)\?(?P<obsid>[^/]+)/D(?P<det>[1-6])$")
_RE_BAND = re.compile(r"^SPHEREx-D([1-6])$")
_RE_VERSION = re.compile(r"l2b-v(\d+)-(\d{4})-(\d{3})")


class ArchiveQueryError(RuntimeError):
    """The TAP service could not answer (after retries) or answered unusably."""


class TooManyFramesError(ValueError):
    """More frames match than ``max_images`` allows."""

    def __init__(self, n_matched: int, max_images: int, per_detector: Dict[int, int], at_least: bool = False) -> None:
        counts = ", ".join(f"D{d}: {n}" for d, n in sorted(per_detector.items()))
        more = "at least " if at_least else ""
        super().__init__(
            f"{more}{n_matched} frames match the region ({counts}), more than max_images={max_images}. "
            f"To proceed: raise max_images (>= {n_matched}), narrow mjd_range, choose one detector "
            f"(detector=1..6), or shrink the region (width/height)."
        )
        self.n_matched = n_matched
        self.max_images = max_images
        self.per_detector = dict(per_detector)


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
    content_length: Optional[int] = None
    checksum: Optional[str] = None
    version: str = ""
    collection: str = ""
    mjd_start: Optional[float] = None
    mjd_end: Optional[float] = None
    wavelength_min: Optional[float] = None
    wavelength_max: Optional[float] = None
    poly: Optional[Tuple[float, ...]] = None

    @property
    def file_name(self) -> str:
        """File name in the URL (distinct between processing versions)."""
        return url_file_name(self.download_url)

    def version_key(self) -> Tuple[int, int, int]:
        """(version, year, day of year) of the processing; (-1, -1, -1) if unknown."""
        return parse_version(self.download_url)


# ----------------------------------------------------------------------------
# ADQL construction (validated numbers only)
# ----------------------------------------------------------------------------


def _adql_number(name: str, value: Any, lo: float, hi: float) -> str:
    """``value`` as a finite float in [lo, hi], formatted for ADQL (shortest exact decimal)."""
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return np.format_float_positional(x, unique=True, trim="0")


def _adql_detector(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= 6:
        raise ValueError(f"detector must be an integer 0 (all) or 1-6, got {value!r}")
    return int(value)


def build_adql(
    ra: float,
    dec: float,
    radius_deg: float,
    detector: int = 0,
    mjd_range: Optional[Tuple[float, float]] = None,
) -> str:
    """ADQL for every science frame whose footprint intersects the circle
    (``ra``, ``dec``, ``radius_deg``; deg), detector 1-6 (0 = all), exposure
    overlapping ``mjd_range`` (MJD). Only validated numbers enter the text."""
    ra_s = _adql_number("center_ra", ra, 0.0, 360.0)
    dec_s = _adql_number("center_dec", dec, -90.0, 90.0)
    r_s = _adql_number("search radius (deg)", radius_deg, 1e-9, 180.0)
    det = _adql_detector(detector)
    where = [f"INTERSECTS(p.poly, CIRCLE('ICRS', {ra_s}, {dec_s}, {r_s})) = 1"]
    if det == 0:
        names = ", ".join(f"'SPHEREx-D{d}'" for d in range(1, 7))
        where.append(f"p.energy_bandpassname IN ({names})")
    else:
        where.append(f"p.energy_bandpassname = 'SPHEREx-D{det}'")
    if mjd_range is not None:
        if len(mjd_range) != 2:
            raise ValueError(f"mjd_range must be (mjd_min, mjd_max), got {mjd_range!r}")
        lo = _adql_number("mjd_range[0]", mjd_range[0], 0.0, 1e6)
        hi = _adql_number("mjd_range[1]", mjd_range[1], 0.0, 1e6)
        if float(lo) > float(hi):
            raise ValueError(f"mjd_range must be increasing, got {mjd_range!r}")
        where.append(f"p.time_bounds_upper >= {lo}")
        where.append(f"p.time_bounds_lower <= {hi}")
    excluded = ", ".join(f"'{t}'" for t in NON_SCIENCE_PRODUCT_TYPES)
    where.append(f"(a.producttype IS NULL OR a.producttype NOT IN ({excluded}))")
    return (
        "SELECT " + ", ".join(_ADQL_COLUMNS) + "\n"
        "FROM spherex.artifact a JOIN spherex.plane p ON a.planeid = p.planeid\n"
        "WHERE " + "\n  AND ".join(where) + "\n"
        "ORDER BY p.time_bounds_lower"
    )


# ----------------------------------------------------------------------------
# TAP execution with retries
# ----------------------------------------------------------------------------


class _TimeoutSession(requests.Session):
    """Session applying a default timeout (s) to requests that set none
    (pyvo's sync queries pass no timeout)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


def _describe_error(exc: BaseException) -> Tuple[str, bool, Optional[float], bool]:
    """(description, retryable, retry_after seconds, is_timeout) of a pyvo/requests error."""
    from pyvo.dal import DALFormatError, DALQueryError, DALServiceError

    cause: Optional[BaseException] = exc
    code: Optional[int] = getattr(exc, "code", None) if isinstance(exc, DALServiceError) else None
    response = None
    seen: set = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        resp = getattr(cause, "response", None)
        if resp is not None and response is None:
            response = resp
        if isinstance(cause, requests.exceptions.Timeout):
            return f"{type(cause).__name__}: {cause}", True, None, True
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            return f"{type(cause).__name__}: {cause}", True, None, False
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    if response is not None and not code:
        code = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
    if isinstance(exc, DALQueryError) and not code:
        return f"query rejected by the service: {exc}", False, None, False
    if code:
        retryable = code in (408, 425, 429) or 500 <= code < 600
        return f"HTTP {code}: {str(exc).strip()}", retryable, retry_after, False
    if isinstance(exc, DALFormatError):
        return f"unreadable response: {exc}", True, None, False
    if isinstance(exc, DALServiceError):
        return f"service error: {exc}", True, None, False
    return f"{type(exc).__name__}: {exc}", False, None, False


#: In mode "auto", this many sync timeouts in a row switch to an async job
#: (a query too slow for a sync answer will not get faster by repeating it).
SYNC_TIMEOUTS_BEFORE_ASYNC = 2


def run_tap_query(
    tap_url: str,
    adql: str,
    *,
    mode: str = "auto",
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: Optional[float] = None,
    session: Optional[requests.Session] = None,
) -> Any:
    """Run ``adql`` on the TAP service at ``tap_url``; returns an astropy Table.

    ``mode``: ``"sync"``, ``"async"`` or ``"auto"`` (sync, then async when
    sync keeps failing with retryable errors, times out
    :data:`SYNC_TIMEOUTS_BEFORE_ASYNC` times in a row, or the result is truncated).
    Retries (``retries`` extra attempts per mode) with exponential backoff on
    5xx/429/408, timeouts (``timeout`` s per HTTP exchange) and broken
    connections. Raises :class:`ArchiveQueryError` naming the URL and the last
    error. A truncated (OVERFLOW) result is never returned silently.
    """
    import pyvo
    from pyvo.dal import DALOverflowWarning

    if mode not in ("auto", "sync", "async"):
        raise ValueError(f"mode must be 'auto', 'sync' or 'async', got {mode!r}")
    base = _download.DEFAULT_BACKOFF_BASE if backoff_base is None else float(backoff_base)
    sess = session if session is not None else _TimeoutSession(timeout)
    service = pyvo.dal.TAPService(tap_url, session=sess)
    modes = ["sync", "async"] if mode == "auto" else [mode]
    history: List[str] = []
    truncated_at: Optional[int] = None
    for m in modes:
        timeouts = 0
        for attempt in range(retries + 1):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DALOverflowWarning)
                    if m == "sync":
                        result = service.run_sync(adql)
                    else:
                        result = service.run_async(adql, timeout=ASYNC_JOB_TIMEOUT)
            except Exception as exc:  # pyvo raises several DAL* types, requests a few more
                desc, retryable, retry_after, is_timeout = _describe_error(exc)
                history.append(f"{m}: {desc}")
                if not retryable:
                    raise ArchiveQueryError(f"TAP query to {tap_url} failed ({m}): {desc}") from exc
                timeouts = timeouts + 1 if is_timeout else 0
                if m == "sync" and mode == "auto" and timeouts >= SYNC_TIMEOUTS_BEFORE_ASYNC:
                    logger.warning("TAP sync query to %s timed out %d times in a row; switching to an async job",
                                   tap_url, timeouts)
                    break
                if attempt < retries:
                    delay = backoff_delay(attempt + 1, base, retry_after)
                    logger.warning("TAP %s query to %s failed (%s); retry %d/%d in %.2f s",
                                   m, tap_url, desc, attempt + 1, retries, delay)
                    time.sleep(delay)
                continue
            status = (result.query_status or "OK").upper()
            table = result.to_table()
            if status == "OVERFLOW":
                truncated_at = len(table)
                history.append(f"{m}: result truncated by the service at {len(table)} rows")
                logger.warning("TAP %s result from %s truncated at %d rows", m, tap_url, len(table))
                table.meta["spx_truncated"] = True
                if m == modes[-1]:
                    return table
                break  # try the next mode
            table.meta["spx_truncated"] = False
            if m == "async" and mode == "auto":
                logger.info("TAP async query to %s succeeded after sync failures", tap_url)
            return table
        else:
            if m != modes[-1]:
                logger.warning("TAP sync query to %s failed %d times; trying an async job", tap_url, retries + 1)
    last = history[-1] if history else "no attempt made"
    extra = f" (truncated at {truncated_at} rows)" if truncated_at is not None else ""
    raise ArchiveQueryError(
        f"TAP query to {tap_url} failed after {len(history)} attempts{extra}; last error: {last}"
    )


# ----------------------------------------------------------------------------
# Result parsing and de-duplication
# ----------------------------------------------------------------------------


def parse_version(url_or_name: str) -> Tuple[int, int, int]:
    """(version, year, day of year) from ``...l2b-v<ver>-<yyyy>-<ddd>...`` in a
    file name or URL (the last occurrence); (-1, -1, -1) when absent."""
    found = _RE_VERSION.findall(url_or_name)
    if not found:
        return (-1, -1, -1)
    v, y, d = found[-1]
    return (int(v), int(y), int(d))


def url_file_name(url: str) -> str:
    """Last path component of ``url`` (unquoted), e.g. ``level2_..._l2b-v20-2025-247.fits``."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


def data_base_url(tap_url: str) -> str:
    """Root that archive ``uri`` values are relative to: the parent of the TAP
    endpoint (``https://irsa.ipac.caltech.edu/TAP`` -> ``https://irsa.ipac.caltech.edu/``)."""
    return urljoin(tap_url.rstrip("/") + "/", "..")


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


def _opt_float(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def rows_to_observations(table: Any, base_url: str) -> List[DrizzleObservation]:
    """TAP rows -> observations. Rows without a usable OBSID/detector/URI/time
    are skipped with one warning each (never silently)."""
    out: List[DrizzleObservation] = []
    for i, row in enumerate(table):
        did = str(_value(row, "obs_publisher_did") or "")
        band_name = str(_value(row, "energy_bandpassname") or "")
        uri = str(_value(row, "uri") or "")
        ptype = _value(row, "producttype")
        if ptype is not None and str(ptype).lower() in NON_SCIENCE_PRODUCT_TYPES:
            logger.debug("skipping non-science artifact %s (%s)", uri, ptype)
            continue
        m = _RE_DID.match(did)
        bm = _RE_BAND.match(band_name)
        t0 = _opt_float(_value(row, "time_bounds_lower"))
        t1 = _opt_float(_value(row, "time_bounds_upper"))
        if m is None or not uri or t0 is None or t1 is None:
            logger.warning("TAP row %d skipped: unusable obs_publisher_did=%r uri=%r time=(%r, %r)", i, did, uri, t0, t1)
            continue
        det = int(m.group("det"))
        if bm is not None and int(bm.group(1)) != det:
            logger.warning("TAP row %d skipped: detector D%s in %r disagrees with %r", i, det, did, band_name)
            continue
        if not uri.lower().split("?")[0].endswith(".fits"):
            logger.warning("TAP row %d skipped: artifact %r is not a FITS file", i, uri)
            continue
        url = uri if re.match(r"^https?://", uri) else urljoin(base_url, uri.lstrip("/"))
        length = _value(row, "contentlength")
        length_i = int(length) if length is not None and int(length) > 0 else None
        checksum = _value(row, "contentchecksum")
        poly = _value(row, "poly")
        poly_t = tuple(float(v) for v in np.asarray(poly, dtype=float).ravel()) if poly is not None and not isinstance(poly, str) else None
        wl0 = _opt_float(_value(row, "energy_bounds_lower"))
        wl1 = _opt_float(_value(row, "energy_bounds_upper"))
        ver = _RE_VERSION.findall(url_file_name(url)) or _RE_VERSION.findall(url)
        out.append(
            DrizzleObservation(
                obs_id=m.group("obsid"),
                band=f"D{det}",
                detector=det,
                mjd=0.5 * (t0 + t1),
                download_url=url,
                content_length=length_i,
                checksum=str(checksum) if checksum else None,
                version=("l2b-v{}-{}-{}".format(*ver[-1]) if ver else ""),
                collection=m.group("collection"),
                mjd_start=t0,
                mjd_end=t1,
                wavelength_min=wl0 * 1e6 if wl0 is not None else None,
                wavelength_max=wl1 * 1e6 if wl1 is not None else None,
                poly=poly_t,
            )
        )
    return out


def deduplicate_newest(observations: Sequence[DrizzleObservation]) -> List[DrizzleObservation]:
    """Keep the newest processing per (OBSID, detector): highest (version, date)
    parsed from the file name; ties broken by URL for determinism. Result is
    ordered by (mjd, detector, obs_id)."""
    best: Dict[Tuple[str, int], DrizzleObservation] = {}
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


# ----------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------


def search_frames(
    tap_url: str,
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    detector: int = 0,
    mjd_range: Optional[Tuple[float, float]] = None,
    max_images: int = 500,
    mode: str = "auto",
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: Optional[float] = None,
    session: Optional[requests.Session] = None,
) -> Dict[int, List[DrizzleObservation]]:
    """Frames intersecting the circle (deg), newest version each, grouped by
    detector and ordered by time. ``max_images`` caps the total number of
    frames over all detectors (:class:`TooManyFramesError`)."""
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise ValueError(f"max_images must be an integer >= 1, got {max_images!r}")
    adql = build_adql(ra, dec, radius_deg, detector, mjd_range)
    logger.info("querying %s: circle (%.5f, %.5f, r=%.4f deg), detector=%s, mjd_range=%s",
                tap_url, ra, dec, radius_deg, detector or "all", mjd_range)
    logger.debug("ADQL: %s", adql)
    table = run_tap_query(tap_url, adql, mode=mode, timeout=timeout, retries=retries,
                          backoff_base=backoff_base, session=session)
    observations = deduplicate_newest(rows_to_observations(table, data_base_url(tap_url)))
    counts: Dict[int, int] = {}
    for obs in observations:
        counts[obs.detector] = counts.get(obs.detector, 0) + 1
    truncated = bool(table.meta.get("spx_truncated"))
    if len(observations) > max_images:
        raise TooManyFramesError(len(observations), int(max_images), counts, at_least=truncated)
    if truncated:
        raise ArchiveQueryError(
            f"TAP service {tap_url} truncated the result at {len(table)} rows even with an async job; "
            f"the frame list would be incomplete. Narrow mjd_range, choose one detector or shrink the region."
        )
    grouped: Dict[int, List[DrizzleObservation]] = {}
    for obs in observations:
        grouped.setdefault(obs.detector, []).append(obs)
    if not grouped:
        logger.warning("no SPHEREx frames intersect the region at (%.5f, %.5f) r=%.4f deg (detector=%s, mjd_range=%s)",
                       ra, dec, radius_deg, detector or "all", mjd_range)
    for det in sorted(grouped):
        logger.info("D%d: %d frames", det, len(grouped[det]))
    return dict(sorted(grouped.items()))


def query_observations(
    config: Drizzle3DConfig,
    *,
    mode: str = "auto",
    backoff_base: Optional[float] = None,
    session: Optional[requests.Session] = None,
) -> Dict[int, List[DrizzleObservation]]:
    """Frames whose footprint INTERSECTS the output region of ``config``:
    ``{detector: [DrizzleObservation, ...]}`` (time-ordered, newest processing
    per OBSID and detector). TAP URL from ``config.resolved_tap_url()``;
    timeout/retries from ``download_timeout``/``download_retries``."""
    radius = config.spatial_radius_deg() + SEARCH_MARGIN_DEG
    return search_frames(
        config.resolved_tap_url(),
        config.center_ra,
        config.center_dec,
        radius,
        detector=config.detector,
        mjd_range=config.mjd_range,
        max_images=config.max_images,
        mode=mode,
        timeout=config.download_timeout,
        retries=config.download_retries,
        backoff_base=backoff_base,
        session=session,
    )


def cutout_size_deg(config: Drizzle3DConfig) -> float:
    """Side (deg) of a square cutout covering the region at any frame rotation:
    the region's diagonal plus ``cutout_margin_arcmin`` on each side."""
    return 2.0 * config.spatial_radius_deg() + 2.0 * config.cutout_margin_arcmin / 60.0


def resolve_cutout(config: Drizzle3DConfig) -> Optional[Tuple[float, float, float]]:
    """``(ra, dec, size_deg)`` when cutouts should be requested, else None.

    ``use_cutouts`` True/False forces; None (auto) turns cutouts on when the
    cutout side is below :data:`CUTOUT_AUTO_MAX_DEG` (a frame is ~3.5 deg).
    Mirror mode never uses cutouts (the mirror holds full frames).
    """
    size = cutout_size_deg(config)
    use = config.use_cutouts
    if use is None:
        use = size < CUTOUT_AUTO_MAX_DEG
    if not use:
        return None
    if size >= FRAME_SIZE_DEG:
        logger.info("cutout side %.2f deg >= frame size; cutouts still requested as configured", size)
    return (float(config.center_ra), float(config.center_dec), float(size))


def _format_cutout(cutout: Tuple[float, float, float]) -> Tuple[str, str, str]:
    if len(cutout) != 3:
        raise ValueError(f"cutout must be (ra, dec, size_deg), got {cutout!r}")
    ra = _adql_number("cutout ra", cutout[0], 0.0, 360.0)
    dec = _adql_number("cutout dec", cutout[1], -90.0, 90.0)
    size = _adql_number("cutout size (deg)", cutout[2], 1e-6, 180.0)
    return f"{float(ra):.6f}", f"{float(dec):.6f}", f"{float(size):.6f}"


def cutout_url(url: str, cutout: Tuple[float, float, float]) -> str:
    """IRSA cutout URL: ``url?center=<ra>,<dec>&size=<deg>`` (degrees)."""
    ra, dec, size = _format_cutout(cutout)
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}center={ra},{dec}&size={size}"


def local_file_name(obs: DrizzleObservation, cutout: Optional[Tuple[float, float, float]] = None) -> str:
    """Local file name: the URL's file name; cutouts get
    ``<stem>_cutout_<ra>_<dec>_<size>deg.fits`` so they never collide with full frames."""
    name = obs.file_name
    if not name or name in (".", "..") or not name.lower().endswith(".fits"):
        name = f"{obs.obs_id}D{obs.detector}.fits"
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name)
    if cutout is None:
        return name
    ra, dec, size = _format_cutout(cutout)
    return f"{name[:-5]}_cutout_{ra}_{dec}_{size}deg.fits"


def mirror_path(data_mirror: Path, url: str) -> Path:
    """Local path of ``url`` in a mirror: ``data_mirror`` / the part of the URL
    path after ``/ibe/data/spherex/``. ValueError when the URL has no such part
    or the path would leave the mirror root."""
    root = Path(data_mirror).resolve()
    path = unquote(urlsplit(url).path)
    idx = path.find(DATA_MARKER)
    if idx < 0:
        raise ValueError(f"URL {url!r} has no {DATA_MARKER!r} part; cannot map it into the mirror {root}")
    rel = path[idx + len(DATA_MARKER):]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or any(p == ".." for p in parts):
        raise ValueError(f"URL {url!r} maps outside the mirror root {root}")
    local = (root / Path(*parts)).resolve()
    if not local.is_relative_to(root):
        raise ValueError(f"URL {url!r} maps to {local}, outside the mirror root {root}")
    return local


def resolve_mirror(
    observations: Sequence[DrizzleObservation], data_mirror: Path
) -> DownloadReport:
    """Mirror mode: locate each observation under ``data_mirror`` (no network).
    Missing files, wrong sizes and paths escaping the root are failures."""
    report = DownloadReport(requested=len(observations), paths=[None] * len(observations))
    root = Path(data_mirror)
    if not root.is_dir():
        raise FileNotFoundError(f"data_mirror {root} is not a directory")
    for i, obs in enumerate(observations):
        try:
            local = mirror_path(root, obs.download_url)
        except ValueError as exc:
            report.failures.append(DownloadFailure(obs.download_url, root, str(exc)))
            logger.warning("mirror: %s", exc)
            continue
        if not local.is_file():
            report.failures.append(DownloadFailure(obs.download_url, local, "missing from mirror"))
            logger.warning("mirror file not found: %s (for %s)", local, obs.download_url)
            continue
        size = local.stat().st_size
        if obs.content_length is not None and size != obs.content_length:
            reason = f"size {size} bytes != archive contentlength {obs.content_length}"
            report.failures.append(DownloadFailure(obs.download_url, local, reason))
            logger.warning("mirror file %s is incomplete: %s", local, reason)
            continue
        report.paths[i] = local
        report.skipped.append(local)
    if report.failures:
        logger.warning("mirror %s: %s", root, report.summary())
    else:
        logger.info("mirror %s: %s", root, report.summary())
    return report


def download_observations_report(
    observations: Sequence[DrizzleObservation],
    output_dir: Path,
    max_workers: int = 4,
    skip_existing: bool = True,
    data_mirror: Optional[Path] = None,
    *,
    cutout: Optional[Tuple[float, float, float]] = None,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: Optional[requests.Session] = None,
    backoff_base: Optional[float] = None,
    chunk_size: int = CHUNK_SIZE,
) -> DownloadReport:
    """Like :func:`download_observations` but returns the full :class:`DownloadReport`."""
    if data_mirror is not None:
        if cutout is not None:
            logger.info("mirror mode reads full frames; cutout request ignored")
        return resolve_mirror(observations, Path(data_mirror))
    output_dir = Path(output_dir)
    tasks = []
    for obs in observations:
        dest = output_dir / "images" / f"D{obs.detector}" / local_file_name(obs, cutout)
        if cutout is None:
            tasks.append(DownloadTask(obs.download_url, dest, obs.content_length, obs.checksum, REQUIRED_HDUS))
        else:
            tasks.append(DownloadTask(cutout_url(obs.download_url, cutout), dest, required_hdus=REQUIRED_HDUS))
    return download_files(
        tasks,
        max_workers=max_workers,
        skip_existing=skip_existing,
        timeout=timeout,
        retries=retries,
        backoff_base=backoff_base,
        progress=progress,
        session=session,
        chunk_size=chunk_size,
    )


def download_observations(
    observations: Sequence[DrizzleObservation],
    output_dir: Path,
    max_workers: int = 4,
    skip_existing: bool = True,
    data_mirror: Optional[Path] = None,
    *,
    cutout: Optional[Tuple[float, float, float]] = None,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: Optional[requests.Session] = None,
    backoff_base: Optional[float] = None,
) -> List[Path]:
    """Verified local files for ``observations``, in input order (failures are
    left out, logged per file and summarised in one warning).

    Download mode: ``output_dir/images/D{N}/<file name from URL>`` (cutouts:
    ``<stem>_cutout_<ra>_<dec>_<size>deg.fits``; ``cutout`` = (ra, dec,
    size_deg), see :func:`resolve_cutout`). Mirror mode (``data_mirror``):
    ``data_mirror / <URL part after /ibe/data/spherex/>``, no network.
    """
    report = download_observations_report(
        observations, output_dir, max_workers, skip_existing, data_mirror,
        cutout=cutout, timeout=timeout, retries=retries, progress=progress,
        session=session, backoff_base=backoff_base,
    )
    return report.verified


__all__ = [
    "ArchiveQueryError",
    "DrizzleObservation",
    "TooManyFramesError",
    "build_adql",
    "cutout_size_deg",
    "cutout_url",
    "data_base_url",
    "deduplicate_newest",
    "download_observations",
    "download_observations_report",
    "local_file_name",
    "mirror_path",
    "parse_version",
    "query_observations",
    "resolve_cutout",
    "resolve_mirror",
    "rows_to_observations",
    "run_tap_query",
    "search_frames",
]
