"""The spxquery 0.4.1 API module for archive access: ``DrizzleObservation``,
``query_observations``, ``download_observations`` and the helpers scripts and the
pipeline import from here.

The code lives in :mod:`spxquery.drizzle3d.archive` (one module per concern: ADQL, TAP,
observations, search, locations, fetch, download, verify, retry); this module re-exports it
under the names it has always had.
"""

from .archive.adql import build_adql
from .archive.fetch import download_observations, download_observations_report, resolve_mirror
from .archive.locations import (
    cutout_size_deg,
    cutout_url,
    data_base_url,
    local_file_name,
    mirror_path,
    resolve_cutout,
)
from .archive.observations import DrizzleObservation, deduplicate_newest, parse_version, rows_to_observations
from .archive.search import query_observations, search_frames
from .archive.tap import ArchiveQueryError, ArchiveUnreachableError, run_tap_query

__all__ = [
    "ArchiveQueryError",
    "ArchiveUnreachableError",
    "DrizzleObservation",
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
