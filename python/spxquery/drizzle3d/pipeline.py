"""High-level Drizzle3D pipeline: query -> download -> per-detector drizzle -> save.

``drizzle_detector`` drizzles a list of L2 files of one detector into a cube and
saves ``output_dir/drizzle_D{N}.fits``; ``drizzle_all_detectors`` drizzles the files of
several detectors into one cube of the spectral grid across detectors,
``output_dir/drizzle_all.fits`` (``combine_detectors``). Files are read one ahead on a reader
thread while the previous frame is accumulated (the Rust accumulation releases
the GIL) when crops are small; large crops (e.g. whole frames for degree-sized
cubes) are read one file at a time, in strips of rows; frames are always accumulated in
the order given, so the result is deterministic. Unusable files (not SPHEREx L2, truncated, missing extension,
other detector) are skipped with one warning line naming the file and the
reason and counted in ``n_rejected``; frames that do not touch the output region
are skipped silently (debug log) and not counted as rejected.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

import numpy as np
from astropy.wcs import WCS

from . import wavesources
from .accumulate import DrizzleCube, drizzle_frame
from .archive.locations import data_base_url
from .calnames import release_of
from .config import Drizzle3DConfig
from .cubefile import save_cube
from .frames import Frame, FrameError, prepare_frame
from .grid import OutputGrid, build_output_wcs, small_region_warning
from .preflight import OutputExistsError, output_path, preflight, run_cubes
from .productwave import frame_log_fields
from .progress import progress_bar
from .wavesources import WaveSources

logger = logging.getLogger(__name__)

ALL_DETECTORS = (1, 2, 3, 4, 5, 6)

#: Largest crop (input pixels) for which the next file is read while the current
#: one is accumulated; above it (e.g. whole frames for degree-sized cubes) one frame
#: is held at a time, to keep peak memory near the cube's accumulators.
READ_AHEAD_MAX_PIXELS = 1_000_000


def output_path_for(config: Drizzle3DConfig, detector: int) -> Path:
    """``output_dir/drizzle_D{detector}.fits``; ``output_dir/drizzle_all.fits`` for detector 0
    (the cube of all detectors, ``combine_detectors``)."""
    return output_path(config, detector)


def _detectors(config: Drizzle3DConfig) -> Tuple[int, ...]:
    return ALL_DETECTORS if int(config.detector) == 0 else (int(config.detector),)


def _label(detector: int) -> str:
    return f"D{int(detector)}" if int(detector) else "all"


def _read_one(path: Path, config: Drizzle3DConfig, grid: OutputGrid, waves: WaveSources) -> Tuple[str, object]:
    """('frame', Frame) | ('skip', None) | ('reject', reason) for one file (never raises); the
    frame carries the wavelengths ``waves`` chose for it (:meth:`.wavesources.WaveSources.attach`)."""
    try:
        frame = prepare_frame(path, config, grid)
        if frame is not None:
            frame = waves.attach(frame)
    except FrameError as exc:
        return "reject", exc.reason
    except Exception as exc:  # a broken file must never stop the run
        return "reject", f"unexpected read error ({type(exc).__name__}: {exc})"
    if frame is None:
        return "skip", None
    return "frame", frame


def _read_ahead(paths: List[Path], config: Drizzle3DConfig, grid: OutputGrid,
                waves: WaveSources) -> Iterator[Tuple[Path, str, Any]]:
    """``(path, kind, payload)`` of each file in order (see :func:`_read_one`). The next file is
    read on a thread while the caller accumulates this one, unless this one's crop is large
    (e.g. whole frames for degree-sized cubes): then one frame is held at a time, to keep peak
    memory near the cube's accumulators. The caller drops the payload before asking for more."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="drizzle-reader") as pool:
        remaining = iter(paths)
        pending: Deque[Tuple[Path, Future]] = deque()

        def submit_next() -> None:
            p = next(remaining, None)
            if p is not None:
                pending.append((p, pool.submit(_read_one, p, config, grid, waves)))

        submit_next()
        while pending:
            path, fut = pending.popleft()
            kind, payload = fut.result()
            del fut  # the future would keep the frame alive
            small = kind != "frame" or payload.n_pixels <= READ_AHEAD_MAX_PIXELS
            if small:
                submit_next()
            yield path, kind, payload
            del payload
            if not small:
                submit_next()


def _drizzle_frame(cube: DrizzleCube, frame: Frame) -> Dict[str, Any]:
    """Accumulate ``frame`` into ``cube`` strip by strip, count it once; its frame-log entry.

    Large crops come in strips of rows, in row order: each voxel still sums its contributions
    in input-pixel order.
    """
    n_pix, n_con, planes = 0, 0, np.zeros(cube.nz, dtype=bool)
    for strip in frame.strips():
        stats = drizzle_frame(cube, *strip, record=False)
        del strip
        n_pix += stats.n_pixels
        n_con += stats.n_contributions
        planes |= stats.planes
    cube.record_frame(n_pix, n_con, planes)
    return {"name": frame.name, "obsid": frame.obsid, "mjd": frame.mjd, "mjd_beg": frame.mjd_span[0],
            "mjd_end": frame.mjd_span[1], "zodi_scale": frame.zodi.scale,
            "zodi_source": frame.zodi.source, "crop": frame.crop, "n_pixels": n_pix, **frame_log_fields(frame)}


def _accumulate_files(cube: DrizzleCube, paths: List[Path], config: Drizzle3DConfig, grid: OutputGrid,
                      waves: WaveSources, label: str, counts: Dict[str, int]) -> None:
    """Read and drizzle ``paths`` into ``cube`` in order, counting each file's outcome in ``counts``
    (``frame``, ``reject``, ``skip``, ``empty``); rejected files get one warning line each."""
    with progress_bar(len(paths), label, "frame", config.progress) as bar:
        for path, kind, payload in _read_ahead(paths, config, grid, waves):
            bar.update(1)
            if kind == "reject":
                logger.warning("%s: skipping %s: %s", label, path, payload)
            elif kind == "skip":
                logger.debug("%s: %s does not touch the output region", label, path.name)
            else:
                entry = _drizzle_frame(cube, payload)
                if entry["n_pixels"] > 0:
                    cube.frame_log.append(entry)
                else:
                    kind = "empty"
                    logger.debug("%s: %s overlaps the region but no pixel landed", label, path.name)
            del payload
            counts[kind] = counts.get(kind, 0) + 1


def _drizzle_grid(paths_by_detector: Dict[int, List[Path]], config: Drizzle3DConfig, detector: int,
                  grid: OutputGrid, wave_sources: Optional[WaveSources]) -> Optional[Path]:
    """Drizzle the files of each detector (in detector order, each file once) onto ``grid`` and
    save cube ``detector`` (0: the cube of all detectors); None when no frame contributed."""
    label = _label(detector)
    out_path = output_path_for(config, detector)
    if out_path.exists() and not config.overwrite:
        raise OutputExistsError(f"Output file already exists: {out_path} (set overwrite=True to replace it)")
    if wave_sources is None:
        wave_sources = wavesources.resolve(
            config, {d: [release_of(p) for p in ps] for d, ps in paths_by_detector.items()})
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, config, detector, grid.plane_detector)
    n_files = sum(len(p) for p in paths_by_detector.values())
    logger.info("%s: drizzling %d files onto %d x %d x %d (nz, ny, nx)", label, n_files, *grid.cube_shape)
    counts = {"reject": 0, "skip": 0, "empty": 0}
    t0 = time.perf_counter()
    for det in sorted(paths_by_detector):
        paths = [Path(p) for p in paths_by_detector[det]]
        _accumulate_files(cube, paths, config, grid, wave_sources, _label(det) if detector == 0 else label, counts)
    wave_sources.warn_refused()
    cube.n_rejected = counts["reject"]
    logger.info(
        "%s: %d frames contributed, %d rejected, %d outside the region, %d without landed pixels (%.1f s)",
        label, cube.n_inputs, counts["reject"], counts["skip"], counts["empty"], time.perf_counter() - t0,
    )
    if not cube.frame_log:
        logger.warning("%s: no frame contributed to the output region; no cube written", label)
        return None
    return save_cube(cube, out_path, overwrite=config.overwrite, progress=config.progress)


def drizzle_detector(
    fits_paths: Iterable[Path],
    config: Drizzle3DConfig,
    detector: int,
    output_wcs: WCS,
    *,
    wave_sources: Optional[WaveSources] = None,
) -> Optional[Path]:
    """Drizzle the L2 files ``fits_paths`` of one ``detector`` (1-6) onto ``output_wcs``.

    Writes ``output_dir/drizzle_D{detector}.fits`` and returns its path, or returns
    None (with a warning, nothing written) when no frame contributed. Raises
    FileExistsError before any work when the output exists and ``config.overwrite``
    is False. ``wave_sources``: where each frame's wavelengths come from (:mod:`.wavesources`;
    None: ``config.spectral_wcs`` resolved here, without network: the mirror, the download
    cache or the given path).
    """
    detector = int(detector)
    if detector not in ALL_DETECTORS:
        raise ValueError(f"detector must be 1-6 for drizzle_detector, got {detector}")
    grid = OutputGrid.for_detector(config, detector, output_wcs)
    return _drizzle_grid({detector: list(fits_paths)}, config, detector, grid, wave_sources)


def drizzle_all_detectors(
    paths_by_detector: Mapping[int, Iterable[Path]],
    config: Drizzle3DConfig,
    output_wcs: WCS,
    *,
    wave_sources: Optional[WaveSources] = None,
) -> Optional[Path]:
    """Drizzle the L2 files of several detectors (``{detector: paths}``) into one cube of the
    spectral grid across detectors (:meth:`.grid.OutputGrid.all_detectors`), on ``output_wcs``.

    Each detector's files are read once, detector after detector (files of a detector whose
    pixels cannot reach the grid's wavelengths are left out). Writes
    ``output_dir/drizzle_all.fits`` and returns its path, or None when no frame contributed.
    ValueError unless ``config`` has ``detector=0`` and ``combine_detectors=True``.
    ``wave_sources`` as in :func:`drizzle_detector`.
    """
    if int(config.detector) != 0 or not config.combine_detectors:
        raise ValueError("drizzle_all_detectors needs a config with detector=0 and combine_detectors=True, got "
                         f"detector={config.detector}, combine_detectors={config.combine_detectors}")
    grid = OutputGrid.all_detectors(config, output_wcs)
    paths: Dict[int, List[Path]] = {}
    for det, files in sorted(paths_by_detector.items()):
        files = [Path(p) for p in files]
        if int(det) not in grid.input_detectors:
            if files:
                logger.info("D%d: %d files left out: its pixels cannot reach %.4f-%.4f um", int(det), len(files),
                            grid.zgrid.edges[0], grid.zgrid.edges[-1])
            continue
        paths[int(det)] = files
    return _drizzle_grid(paths, config, 0, grid, wave_sources)


def drizzle(config: Drizzle3DConfig) -> Dict[int, Path]:
    """Top-level entry point: query -> download -> drizzle -> save, per detector.

    ``config.detector`` 0 processes all six detectors: one cube each, or with
    ``combine_detectors`` one cube of all, ``output_dir/drizzle_all.fits``, returned as
    ``{0: path}``. Returns ``{detector: output path}`` for the cubes written. Before any query
    (:func:`~.preflight.preflight`): OutputExistsError (a FileExistsError) when an output of a
    requested detector exists and ``config.overwrite`` is False; OSError naming ``output_dir``
    when it is no directory or not writable; RunBudgetError (a ValueError) when the accumulators
    or the cube files would not fit in memory or on disk. FileNotFoundError (naming an example
    path) when ``data_mirror`` holds none of the frames of any detector. Warns when the region is
    only a few pixels wide (:func:`.grid.small_region_warning`).
    """
    from .query import query_observations, resolve_cutout

    detectors = _detectors(config)
    preflight(config, run_cubes(config))  # outputs, memory, disk: before the first query

    logger.info(
        "Drizzle3D: centre (%.6f, %.6f) deg, %.2f' x %.2f', detector %s%s",
        config.center_ra, config.center_dec, config.width, config.height,
        "all" if int(config.detector) == 0 else f"D{config.detector}",
        " (one cube)" if config.combine_detectors else "",
    )
    small = small_region_warning(config)
    if small is not None:
        logger.warning("%s", small)
    output_wcs = build_output_wcs(config)
    obs_by_det = query_observations(config)
    if not obs_by_det:
        logger.warning("No observations found for the target region")
        return {}
    cutout = resolve_cutout(config)

    results: Dict[int, Path] = {}
    mirror_has_none: List[str] = []
    files: Dict[int, List[Path]] = {}
    releases: Dict[Path, str] = {}
    for det in detectors:
        fits_paths = _files(det, obs_by_det.get(det, []), config, cutout, mirror_has_none, releases)
        if fits_paths:
            files[det] = fits_paths
    sources = wavesources.resolve(
        config, {d: [releases.get(p) or release_of(p) for p in ps] for d, ps in files.items()},
        base_url=data_base_url(config.resolved_tap_url()), network=config.data_mirror is None, releases=releases)
    if config.combine_detectors and files:
        out = drizzle_all_detectors(files, config, output_wcs, wave_sources=sources)
        if out is not None:
            results[0] = out
    elif files:
        for det, fits_paths in files.items():
            out = drizzle_detector(fits_paths, config, det, output_wcs, wave_sources=sources)
            if out is not None:
                results[det] = out
    if not results and mirror_has_none and len(mirror_has_none) == sum(1 for d in detectors if obs_by_det.get(d)):
        raise FileNotFoundError(mirror_has_none[0])
    logger.info("Drizzle3D complete: %d cube(s) written", len(results))
    return results


def _files(det: int, observations: List[Any], config: Drizzle3DConfig, cutout: Any,
           mirror_has_none: List[str], releases: Dict[Path, str]) -> List[Path]:
    """The verified local files of one detector's observations (downloaded, or found in the
    mirror); a mirror holding none of them adds its message to ``mirror_has_none``; the release
    of each file (from its archive URL) goes into ``releases``."""
    from .query import download_observations_report

    if not observations:
        logger.warning("D%d: no observations found", det)
        return []
    logger.info("D%d: %d observations", det, len(observations))
    report = download_observations_report(
        observations,
        output_dir=config.output_dir,
        max_workers=config.download_workers,
        skip_existing=config.skip_existing,
        data_mirror=config.data_mirror,
        cutout=cutout,
        timeout=config.download_timeout,
        retries=config.download_retries,
        progress=config.progress,
        deadline=config.download_deadline,
    )
    fits_paths = list(report.verified)
    for obs, path in zip(observations, report.paths):
        rel = release_of(obs.download_url)
        if path is not None and rel:
            releases[Path(path)] = rel
    if not fits_paths:
        none = _mirror_has_none(report, config)
        if none is not None:
            mirror_has_none.append(f"D{det}: {none}")
        logger.warning("D%d: no files available, skipping", det)
    return fits_paths


def _mirror_has_none(report: Any, config: Drizzle3DConfig) -> Optional[str]:
    """The message of a mirror holding none of a detector's files (mirror mode only)."""
    if config.data_mirror is None:
        return None
    from .archive.fetch import mirror_has_none

    return mirror_has_none(report, Path(config.data_mirror))


__all__ = ["drizzle", "drizzle_all_detectors", "drizzle_detector", "output_path_for"]
