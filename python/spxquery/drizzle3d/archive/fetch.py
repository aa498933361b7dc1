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

from ..filekind import not_a_regular_file
from ..objectstore import is_url
from ..textlimits import short_text
from .download import CHUNK_SIZE, DEFAULT_DEADLINE, DownloadFailure, DownloadReport, DownloadTask, download_files
from .locations import Cutout, cloud_location, locate_frame, source_key
from .observations import DrizzleObservation

logger = logging.getLogger(__name__)

#: Extensions every SPHEREx L2 file and IRSA cutout carries (spherex-l2.md) and the
#: pipeline needs; a download lacking one is incomplete.
REQUIRED_HDUS = ("IMAGE", "FLAGS", "VARIANCE", "WCS-WAVE")


def _identity(obs: DrizzleObservation) -> tuple[str, int]:
    return (obs.obs_id, obs.detector)


def _duplicate(obs: DrizzleObservation, first: DrizzleObservation, where: Path) -> str:
    return (f"the archive lists the same file {short_text(obs.download_url)} for {obs.obs_id}/D{obs.detector} "
            f"and {first.obs_id}/D{first.detector}; it is used once, for the first ({where})")


#: Missing mirror files named one by one in warnings; the rest are counted (and logged at debug level).
MISSING_NAMED = 3


def resolve_mirror(observations: Sequence[DrizzleObservation], data_mirror: Path) -> DownloadReport:
    """Mirror mode: locate each observation under ``data_mirror`` (no network).
    Missing files, paths that are no regular file (a directory, a FIFO, a device: named as
    such, never opened), wrong sizes, paths escaping the root and a file claimed by a second
    observation are failures. A mirror holding none of the files gets one warning with an
    example path (see :func:`mirror_has_none`); a few missing files are named, the rest counted."""
    report = DownloadReport(requested=len(observations), paths=[None] * len(observations))
    root = Path(data_mirror)
    odd = not_a_regular_file(root)
    if odd is None or not root.is_dir():
        raise FileNotFoundError(f"data_mirror {root} {odd or 'is a file'}, not a directory (the local copy of "
                                "the archive, holding qr2/, qr3/, ...)")
    owners: dict[Path, DrizzleObservation] = {}
    for i, obs in enumerate(observations):
        try:
            loc = locate_frame(obs, data_mirror=root)
        except ValueError as exc:
            report.failures.append(DownloadFailure(obs.download_url, root, str(exc)))
            logger.warning("mirror: %s", exc)
            continue
        first = owners.setdefault(loc.path, obs)
        if first is not obs and _identity(first) != _identity(obs):
            reason = _duplicate(obs, first, loc.path)
            report.failures.append(DownloadFailure(obs.download_url, loc.path, reason))
            logger.warning("mirror: %s", reason)
            continue
        odd = not_a_regular_file(loc.path)
        if odd is not None and odd.startswith("does not exist"):
            report.failures.append(DownloadFailure(obs.download_url, loc.path, MISSING_FROM_MIRROR))
            continue  # logged after the loop: once when the mirror holds none of the files
        if odd is not None:
            report.failures.append(DownloadFailure(obs.download_url, loc.path, f"mirror path {odd}"))
            logger.warning("mirror file %s %s (for %s)", loc.path, odd, obs.download_url)
            continue
        size = loc.path.stat().st_size
        if loc.expected_length is not None and size != loc.expected_length:
            reason = f"size {size} bytes != archive contentlength {loc.expected_length}"
            report.failures.append(DownloadFailure(obs.download_url, loc.path, reason))
            logger.warning("mirror file %s is incomplete: %s", loc.path, reason)
            continue
        report.paths[i] = loc.path
        report.skipped.append(loc.path)
    none = mirror_has_none(report, root)
    missing = [f for f in report.failures if f.reason == MISSING_FROM_MIRROR]
    for k, f in enumerate(missing):
        level = logging.WARNING if none is None and k < MISSING_NAMED else logging.DEBUG
        logger.log(level, "mirror file not found: %s (for %s)", f.dest, f.url)
    if none is not None:
        logger.warning("%s", none)
    elif report.failures:
        more = f" ({len(missing) - MISSING_NAMED} more missing files not named)" if len(missing) > MISSING_NAMED else ""
        logger.warning("mirror %s: %s%s", root, report.summary(), more)
    else:
        logger.info("mirror %s: %s", root, report.summary())
    return report


def resolve_cloud(observations: Sequence[DrizzleObservation], root: str,
                  storage_options: dict | None = None) -> DownloadReport:
    """Object-store mode (``data_mirror`` = ``s3://bucket[/prefix]`` or another fsspec URL): the
    object of each observation (:func:`~.locations.cloud_location`), read in place later, no
    transfer now. A frame without a key and a key claimed by a second exposure are failures;
    a missing object is found when the frame is read (reported, counted in N_REJECT)."""
    report = DownloadReport(requested=len(observations), paths=[None] * len(observations))
    owners: dict[str, DrizzleObservation] = {}
    for i, obs in enumerate(observations):
        try:
            loc = cloud_location(obs, root, storage_options)
        except ValueError as exc:
            report.failures.append(DownloadFailure(obs.download_url, Path(root), str(exc)))
            logger.warning("object store: %s", exc)
            continue
        first = owners.setdefault(loc.url, obs)
        if first is not obs and _identity(first) != _identity(obs):
            reason = _duplicate(obs, first, Path(loc.name))
            report.failures.append(DownloadFailure(obs.download_url, Path(loc.name), reason))
            logger.warning("object store: %s", reason)
            continue
        report.paths[i] = loc  # type: ignore[call-overload]  # read in place: an ObjectLocation
    logger.info("object store %s: %d of %d frames located (read in place by byte ranges)", root,
                len(report.verified), report.requested)
    return report


def _download_tasks(
    observations: Sequence[DrizzleObservation], output_dir: Path, cutout: Cutout | None
) -> tuple[list[DownloadTask | None], list[DownloadFailure]]:
    """One task per observation (None for a failure). A file (URL) listed again for the same
    exposure and detector is the same task; listed for another one, it is used once, for the
    first, and the repeat is a failure; a file whose local name another file already has is
    moved to its tagged name (:func:`~.locations.local_file_name`)."""
    tasks: list[DownloadTask | None] = []
    failures: list[DownloadFailure] = []
    by_source: dict[str, tuple[DownloadTask, DrizzleObservation]] = {}
    taken: set[Path] = set()
    for obs in observations:
        loc = locate_frame(obs, output_dir=Path(output_dir), cutout=cutout)
        seen = by_source.get(source_key(loc.url))
        if seen is not None:
            if _identity(seen[1]) == _identity(obs):
                tasks.append(seen[0])
                continue
            reason = _duplicate(obs, seen[1], seen[0].dest)
            failures.append(DownloadFailure(loc.url, seen[0].dest, reason))
            logger.warning("download: %s", reason)
            tasks.append(None)
            continue
        if loc.path in taken:  # two files, one name: name this one apart
            loc = locate_frame(obs, output_dir=Path(output_dir), cutout=cutout, tagged=True)
        task = DownloadTask(loc.url, loc.path, loc.expected_length, loc.checksum, REQUIRED_HDUS)
        by_source[source_key(loc.url)] = (task, obs)
        taken.add(loc.path)
        tasks.append(task)
    return tasks, failures


#: ``DownloadFailure.reason`` of a file absent from the mirror.
MISSING_FROM_MIRROR = "missing from mirror"


def mirror_has_none(report: DownloadReport, root: Path) -> str | None:
    """The message for a mirror that holds none of the requested files (with one example path),
    or None when it holds some (or nothing was requested)."""
    if report.requested == 0 or report.verified:
        return None
    absent = [f for f in report.failures if f.reason == MISSING_FROM_MIRROR]
    if len(absent) != report.requested:
        return None
    return (f"data_mirror {root} holds none of the {report.requested} files the archive lists for the region "
            f"(looked for e.g. {absent[0].dest}); data_mirror must be the directory that holds the archive "
            f"tree (qr2/, qr3/, ... as in the URLs after /ibe/data/spherex/)")


def download_observations_report(
    observations: Sequence[DrizzleObservation],
    output_dir: Path,
    max_workers: int = 4,
    skip_existing: bool = True,
    data_mirror: Path | str | None = None,
    *,
    cutout: Cutout | None = None,
    timeout: float = 60.0,
    retries: int = 5,
    progress: bool = True,
    session: requests.Session | None = None,
    backoff_base: float | None = None,
    chunk_size: int = CHUNK_SIZE,
    deadline: float = DEFAULT_DEADLINE,
    storage_options: dict | None = None,
) -> DownloadReport:
    """Like :func:`download_observations` but returns the full :class:`~.download.DownloadReport`.
    ``data_mirror`` an object-store URL (``s3://...``): ``paths`` are the frames'
    :class:`~..objectstore.ObjectLocation` s (with ``storage_options``), read in place later."""
    if isinstance(data_mirror, str) and is_url(data_mirror):
        if cutout is not None:
            logger.info("object-store mode reads the rows of full frames that the region needs; cutout request ignored")
        return resolve_cloud(observations, data_mirror, storage_options)
    if data_mirror is not None:
        if cutout is not None:
            logger.info("mirror mode reads full frames; cutout request ignored")
        return resolve_mirror(observations, Path(data_mirror))
    planned, failures = _download_tasks(observations, Path(output_dir), cutout)
    todo = [t for t in planned if t is not None]
    done = download_files(
        todo,
        max_workers=max_workers,
        skip_existing=skip_existing,
        timeout=timeout,
        retries=retries,
        backoff_base=backoff_base,
        progress=progress,
        session=session,
        chunk_size=chunk_size,
        deadline=deadline,
    )
    if not failures:
        return done
    done_paths = iter(done.paths)
    report = DownloadReport(
        requested=len(observations), paths=[next(done_paths) if t is not None else None for t in planned],
        downloaded=done.downloaded, skipped=done.skipped, failures=failures + done.failures,
        bytes_received=done.bytes_received, retries=done.retries, resumed=done.resumed,
    )
    logger.warning("download: %s", report.summary())
    return report


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
    deadline: float = DEFAULT_DEADLINE,
) -> list[Path]:
    """Verified local files for ``observations``, in input order (failures are
    left out, logged per file and summarised in one warning).

    Download mode: ``output_dir/images/D{N}/<file name from URL>`` (cutouts:
    ``<stem>_cutout_<ra>_<dec>_<size>deg.fits``; ``cutout`` = (ra, dec,
    size_deg), see :func:`~.locations.resolve_cutout`). Mirror mode (``data_mirror``):
    ``data_mirror / <URL part after /ibe/data/spherex/>``, no network. ``timeout`` (s)
    bounds each socket operation, ``deadline`` (s) each file as a whole.
    """
    report = download_observations_report(
        observations, output_dir, max_workers, skip_existing, data_mirror,
        cutout=cutout, timeout=timeout, retries=retries, progress=progress,
        session=session, backoff_base=backoff_base, deadline=deadline,
    )
    return report.verified
