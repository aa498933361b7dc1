"""The frame search: every SPHEREx frame touching a region, newest version each, by detector.

One ADQL query (:mod:`.adql`) run on the TAP service (:mod:`.tap`), its rows turned into
observations and de-duplicated (:mod:`.observations`), capped by ``max_images``, grouped by
detector and ordered by time. The search circle is the region's half-diagonal plus
:data:`SEARCH_MARGIN_DEG`. Angles in degrees, times in MJD.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import requests

from .adql import build_adql
from .locations import data_base_url
from .observations import DrizzleObservation, deduplicate_newest, rows_to_observations
from .tap import ArchiveQueryError, run_tap_query

if TYPE_CHECKING:
    from ..config import Drizzle3DConfig

logger = logging.getLogger(__name__)

#: Extra search radius (deg) beyond the region's half-diagonal: two native pixels.
SEARCH_MARGIN_DEG = 2 * 6.15 / 3600.0


class TooManyFramesError(ValueError):
    """More frames match than ``max_images`` allows."""

    def __init__(self, n_matched: int, max_images: int, per_detector: dict[int, int], at_least: bool = False) -> None:
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
) -> dict[int, list[DrizzleObservation]]:
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
    observations = deduplicate_newest(rows_to_observations(table, data_base_url(tap_url), source=tap_url))
    counts: dict[int, int] = {}
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
    grouped: dict[int, list[DrizzleObservation]] = {}
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
    backoff_base: float | None = None,
    session: requests.Session | None = None,
) -> dict[int, list[DrizzleObservation]]:
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
