"""The frame search: every SPHEREx frame touching a region, newest version each, by detector.

One ADQL query (:mod:`.adql`) run on the TAP service (:mod:`.tap`), its rows turned into
observations and de-duplicated (:mod:`.observations`), grouped by detector, ordered by time
and capped at ``max_images`` per detector (:func:`spread_in_time`). The search circle is the
region's half-diagonal plus :data:`SEARCH_MARGIN_DEG`. Angles in degrees, times in MJD.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import requests

from ..progress import waiting
from .adql import build_adql
from .locations import data_base_url
from .observations import DrizzleObservation, deduplicate_newest, rows_to_observations
from .tap import ArchiveQueryError, run_tap_query

if TYPE_CHECKING:
    from ..config import Drizzle3DConfig

logger = logging.getLogger(__name__)

#: Extra search radius (deg) beyond the region's half-diagonal: two native pixels.
SEARCH_MARGIN_DEG = 2 * 6.15 / 3600.0


def spread_in_time(observations: list[DrizzleObservation], cap: int) -> list[DrizzleObservation]:
    """At most ``cap`` of the time-ordered ``observations``: all of them when they fit, else
    ``cap`` frames evenly spaced in time order (first and last included). Deterministic; spreads
    the frames over the survey's visits, i.e. over positions on the detector and wavelengths."""
    n = len(observations)
    if n <= cap:
        return list(observations)
    if cap == 1:
        return [observations[n // 2]]
    keep = sorted({int(round(i * (n - 1) / (cap - 1))) for i in range(cap)})
    return [observations[i] for i in keep]


def _query(tap_url: str, adql: str, mode: str, timeout: float, retries: int, backoff_base: float | None,
           session: requests.Session | None) -> Any:
    logger.debug("ADQL: %s", adql)
    return run_tap_query(tap_url, adql, mode=mode, timeout=timeout, retries=retries, backoff_base=backoff_base,
                         session=session)


def search_frames(
    tap_url: str,
    ra: float,
    dec: float,
    radius_deg: float,
    *,
    detector: int = 0,
    mjd_range: tuple[float, float] | None = None,
    max_images: int = 500,
    mode: str = "auto",
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: float | None = None,
    session: requests.Session | None = None,
    progress: bool = False,
    cloud_access: bool = False,
) -> dict[int, list[DrizzleObservation]]:
    """Frames intersecting the circle (deg), newest version each, grouped by
    detector and ordered by time; at most ``max_images`` per detector, spread in
    time (:func:`spread_in_time`; a log line says how many were left out).
    ``progress``: the elapsed time of the query on a terminal. ``cloud_access``: ask for the
    S3 keys too (a service refusing that column is asked again without it: keys then follow
    from the URLs)."""
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) or max_images < 1:
        raise ValueError(f"max_images must be an integer >= 1, got {max_images!r}")
    logger.info("querying %s: circle (%.5f, %.5f, r=%.4f deg), detector=%s, mjd_range=%s",
                tap_url, ra, dec, radius_deg, detector or "all", mjd_range)
    with waiting("TAP query", enabled=progress):
        try:
            table = _query(tap_url, build_adql(ra, dec, radius_deg, detector, mjd_range, cloud_access), mode,
                           timeout, retries, backoff_base, session)
        except ArchiveQueryError as exc:
            if not cloud_access:
                raise
            logger.warning("%s; asking again without the cloud_access column (S3 keys follow from the URLs)", exc)
            table = _query(tap_url, build_adql(ra, dec, radius_deg, detector, mjd_range), mode, timeout, retries,
                           backoff_base, session)
    observations = deduplicate_newest(rows_to_observations(table, data_base_url(tap_url), source=tap_url))
    if table.meta.get("spx_truncated"):
        raise ArchiveQueryError(
            f"TAP service {tap_url} truncated the result at {len(table)} rows even with an async job; "
            f"the frame list would be incomplete. Narrow mjd_range, choose one detector or shrink the region."
        )
    grouped: dict[int, list[DrizzleObservation]] = {}
    for obs in observations:  # in time order
        grouped.setdefault(obs.detector, []).append(obs)
    if not grouped:
        logger.warning("no SPHEREx frames intersect the region at (%.5f, %.5f) r=%.4f deg (detector=%s, mjd_range=%s)",
                       ra, dec, radius_deg, detector or "all", mjd_range)
    for det in sorted(grouped):
        found = len(grouped[det])
        grouped[det] = spread_in_time(grouped[det], int(max_images))
        if found > max_images:
            logger.warning("D%d: %d frames match; max_images=%d keeps %d spread evenly in time, %d left out "
                           "(raise max_images or narrow mjd_range to choose)", det, found, max_images,
                           len(grouped[det]), found - len(grouped[det]))
        else:
            logger.info("D%d: %d frames", det, found)
    return dict(sorted(grouped.items()))


def query_observations(
    config: Drizzle3DConfig,
    *,
    mode: str = "auto",
    backoff_base: float | None = None,
    session: requests.Session | None = None,
) -> dict[int, list[DrizzleObservation]]:
    """Frames whose footprint INTERSECTS the output region of ``config``:
    ``{detector: [DrizzleObservation, ...]}`` (time-ordered, newest processing
    per OBSID and detector; at most ``max_images`` per detector). TAP URL from
    ``config.resolved_tap_url()``; timeout/retries from ``download_timeout``/``download_retries``."""
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
        progress=config.progress,
        cloud_access=isinstance(config.data_mirror, str),
    )
