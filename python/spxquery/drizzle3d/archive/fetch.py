"""Verified local files for a list of observations: download them, or find them in a mirror.

Each observation is located once (:func:`~.locations.locate_frame`). Download mode hands the
locations to the transfer engine (:mod:`.download`: parallel, resumable, verified); mirror
mode checks that each file exists with the archive's size, with no network. Either way the
outcome is one :class:`~.download.DownloadReport` in input order: a missing or broken frame
is reported, counted and left out, never fatal for the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import requests

from .download import CHUNK_SIZE, DownloadFailure, DownloadReport, DownloadTask, download_files
from .locations import Cutout, locate_frame
from .observations import DrizzleObservation

logger = logging.getLogger(__name__)

#: Extensions every SPHEREx L2 file and IRSA cutout carries (spherex-l2.md) and the
#: pipeline needs; a download lacking one is incomplete.
REQUIRED_HDUS = ("IMAGE", "FLAGS", "VARIANCE", "WCS-WAVE")


def resolve_mirror(observations: Sequence[DrizzleObservation], data_mirror: Path) -> DownloadReport:
    """Mirror mode: locate each observation under ``data_mirror`` (no network).
    Missing files, wrong sizes and paths escaping the root are failures."""
    report = DownloadReport(requested=len(observations), paths=[None] * len(observations))
    root = Path(data_mirror)
    if not root.is_dir():
        raise FileNotFoundError(f"data_mirror {root} is not a directory")
    for i, obs in enumerate(observations):
        try:
            loc = locate_frame(obs, data_mirror=root)
        except ValueError as exc:
            report.failures.append(DownloadFailure(obs.download_url, root, str(exc)))
            logger.warning("mirror: %s", exc)
            continue
        if not loc.path.is_file():
            report.failures.append(DownloadFailure(obs.download_url, loc.path, "missing from mirror"))
            logger.warning("mirror file not found: %s (for %s)", loc.path, obs.download_url)
            continue
        size = loc.path.stat().st_size
        if loc.expected_length is not None and size != loc.expected_length:
            reason = f"size {size} bytes != archive contentlength {loc.expected_length}"
            report.failures.append(DownloadFailure(obs.download_url, loc.path, reason))
            logger.warning("mirror file %s is incomplete: %s", loc.path, reason)
            continue
        report.paths[i] = loc.path
        report.skipped.append(loc.path)
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
    data_mirror: Path | None = None,
    *,
    cutout: Cutout | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: requests.Session | None = None,
    backoff_base: float | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> DownloadReport:
    """Like :func:`download_observations` but returns the full :class:`~.download.DownloadReport`."""
    if data_mirror is not None:
        if cutout is not None:
            logger.info("mirror mode reads full frames; cutout request ignored")
        return resolve_mirror(observations, Path(data_mirror))
    tasks = []
    for obs in observations:
        loc = locate_frame(obs, output_dir=Path(output_dir), cutout=cutout)
        tasks.append(DownloadTask(loc.url, loc.path, loc.expected_length, loc.checksum, REQUIRED_HDUS))
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
    data_mirror: Path | None = None,
    *,
    cutout: Cutout | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: requests.Session | None = None,
    backoff_base: float | None = None,
) -> list[Path]:
    """Verified local files for ``observations``, in input order (failures are
    left out, logged per file and summarised in one warning).

    Download mode: ``output_dir/images/D{N}/<file name from URL>`` (cutouts:
    ``<stem>_cutout_<ra>_<dec>_<size>deg.fits``; ``cutout`` = (ra, dec,
    size_deg), see :func:`~.locations.resolve_cutout`). Mirror mode (``data_mirror``):
    ``data_mirror / <URL part after /ibe/data/spherex/>``, no network.
    """
    report = download_observations_report(
        observations, output_dir, max_workers, skip_existing, data_mirror,
        cutout=cutout, timeout=timeout, retries=retries, progress=progress,
        session=session, backoff_base=backoff_base,
    )
    return report.verified
