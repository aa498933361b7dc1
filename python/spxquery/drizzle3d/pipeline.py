"""High-level Drizzle3D pipeline: query -> download -> per-detector drizzle -> save.

``drizzle_detector`` drizzles a list of L2 files of one detector into a cube and
saves ``output_dir/drizzle_D{N}.fits``; ``drizzle_all_detectors`` drizzles the files of
several detectors into one cube of the spectral grid across detectors,
``output_dir/drizzle_all.fits`` (``combine_detectors``). A reader thread (:mod:`.readahead`)
prepares the files (each frame with the wavelengths :class:`.wavesources.WaveSources` chose for
it), in strips of rows ready for the engine, while this thread runs the Rust accumulation
(which releases the GIL); strips are accumulated in the order of the files, so the result is
deterministic, and the strips in flight stay within a memory budget. Unusable files (not
SPHEREx L2, truncated, missing extension, other detector, failed checks) are skipped with one
warning line naming the file and the reason and counted in ``n_rejected``; frames that do not
touch the output region are skipped silently (debug log) and not counted as rejected.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from astropy.wcs import WCS

from . import vmhints, wavesources
from .accumulate import DrizzleCube, drizzle_frame
from .archive.locations import data_base_url
from .calnames import release_of
from .config import OUTLIERS_NOT_TILED, Drizzle3DConfig
from .cubefile import save_cube
from .frames import Frame
from .grid import OutputGrid, build_output_wcs, small_region_warning
from .objectstore import TRANSFERS, ObjectLocation, as_location
from .outliers import finish_outliers, outlier_screen, record_outliers
from .preflight import OutputExistsError, output_path, preflight, run_cubes
from .productwave import frame_log_fields
from .progress import byte_bar, progress_bar
from .readahead import READY_STRIP_PIXELS, Item, ReadAhead
from .stagetimes import stage
from .tiling import effective_tile_arcmin
from .wavesources import WaveSources

logger = logging.getLogger(__name__)

ALL_DETECTORS = (1, 2, 3, 4, 5, 6)
#: Strips of fewer input pixels than this run the kernel on this thread alone: waking the pool's
#: threads costs more than they save on small crops, and the reader thread has the other core.
KERNEL_POOL_MIN_PIXELS = 65536
#: Strips of at most this many pixels (a crop cut into its strip by the reader:
#: ``readahead.READY_STRIP_PIXELS``) run the kernel on this thread alone while the reader has not
#: handed over the next strip yet: the frame side then sets the pace and keeps the other core busy;
#: once the reader is ahead (the kernel sets the pace; the last frames) or for larger strips, the
#: pool's threads (``ReadAhead.ahead``).
KERNEL_ALONE_MAX_PIXELS = READY_STRIP_PIXELS
#: Local files prepared at once (:mod:`.readahead`). One: two preparing threads share the GIL
#: (headers, WCS, crop are Python) and cost more CPU than they overlap; the reader thread and the
#: kernel on this thread keep the two cores busy (docs/performance.md, "Issue 23, fourth part").
LOCAL_FRAMES_IN_FLIGHT = 1

def output_path_for(config: Drizzle3DConfig, detector: int) -> Path:
    """``output_dir/drizzle_D{detector}.fits``; ``output_dir/drizzle_all.fits`` for detector 0
    (the cube of all detectors, ``combine_detectors``)."""
    return output_path(config, detector)


def _detectors(config: Drizzle3DConfig) -> Tuple[int, ...]:
    return ALL_DETECTORS if int(config.detector) == 0 else (int(config.detector),)


class _FrameTotals:
    """What the strips of one frame put into the cube."""

    def __init__(self, nz: int):
        self.n_pixels = 0
        self.n_contributions = 0
        self.n_strips = 0
        self.planes = np.zeros(nz, dtype=bool)

    def add(self, stats: Any) -> None:
        self.n_pixels += stats.n_pixels
        self.n_contributions += stats.n_contributions
        self.planes |= stats.planes
        self.n_strips += 1


def _kernel_threads(n_pixels: int) -> int:
    """Threads of the engine for a strip of ``n_pixels`` (0: the pool)."""
    return 1 if n_pixels < KERNEL_POOL_MIN_PIXELS else 0


def _loop_kernel_threads(n_pixels: int, reader_ahead: bool) -> int:
    """Threads of the engine for a strip of the frame loop: one while the reader is still preparing
    the next item and the strip is small (:data:`KERNEL_ALONE_MAX_PIXELS`), else
    :func:`_kernel_threads`. The bits do not depend on it."""
    if not reader_ahead and n_pixels <= KERNEL_ALONE_MAX_PIXELS:
        return 1
    return _kernel_threads(n_pixels)


def _label(detector: int) -> str:
    return f"D{int(detector)}" if int(detector) else "all"


def _log_entry(frame: Frame, n_pixels: int) -> Dict[str, Any]:
    return {"name": frame.name, "obsid": frame.obsid, "mjd": frame.mjd, "mjd_beg": frame.mjd_span[0],
            "mjd_end": frame.mjd_span[1], "zodi_scale": frame.zodi.scale, "zodi_source": frame.zodi.source,
            "crop": frame.crop, "n_pixels": n_pixels, **frame_log_fields(frame)}


def frames_in_flight(paths: List[Any], config: Drizzle3DConfig) -> int:
    """Frames the reader prepares at once: ``config.download_workers`` when any input is an object
    read in place (it waits on the network), else :data:`LOCAL_FRAMES_IN_FLIGHT` (at most the CPUs)."""
    if any(isinstance(p, ObjectLocation) for p in paths):
        return int(config.download_workers)
    return max(1, min(LOCAL_FRAMES_IN_FLIGHT, os.cpu_count() or 1))


def drizzle_frames(paths: List[Any], config: Drizzle3DConfig, grid: OutputGrid, cube: DrizzleCube,
                   done: Optional[Callable[[int], Any]] = None, report: bool = True,
                   waves: Optional[WaveSources] = None, label: Optional[str] = None) -> Dict[str, List[Any]]:
    """Drizzle the files ``paths`` onto ``grid`` (a whole grid or a tile of one) into ``cube``, in
    file order; ``done(1)`` is called after each file. Records the contributing frames in ``cube``
    (``n_inputs``, ``n_input_sc``, ``frame_log``) and returns what became of each file, by kind:
    ``frame`` (``(path, planes)``: contributed, bool ``(n_z,)`` planes), ``reject`` (``(path,
    reason)``), ``skip`` (paths not touching the grid) and ``empty`` (paths that touch it but
    landed no pixel). ``report=False`` (a tile: the run reports each frame once) logs rejected and
    empty frames at debug level only. ``waves`` gives each frame its wavelengths on the reader
    thread (default: the L2 lookup); ``label`` names the files' detector in log lines (default: the
    grid's)."""
    label = label or _label(grid.detectors[0])
    warn = logging.WARNING if report else logging.DEBUG
    outcomes: Dict[str, List[Any]] = {"frame": [], "reject": [], "skip": [], "empty": []}
    frame: Optional[Frame] = None
    totals = _FrameTotals(cube.nz)
    reader = ReadAhead(paths, config, grid, workers=frames_in_flight(paths, config), waves=waves)
    items: Iterable[Item] = reader
    screen = None
    if config.reject_outliers:  # pass 1: the robust model; the loop below is pass 2
        if grid.origin != (0, 0) or grid.shape != (config.output_ny(), config.output_nx()):  # a tile
            raise ValueError(OUTLIERS_NOT_TILED)
        screen = outlier_screen(paths, config, grid, cube, _kernel_threads, waves=waves)
        items = screen.screen(items)
    reader.start()  # the first file is prepared on the reader thread while this one faults the accumulators in
    try:
        cube.populate()
    except BaseException:
        reader.close()
        raise
    for path, kind, payload in items:
        if kind == "frame":
            frame, totals = payload, _FrameTotals(cube.nz)
            continue
        if kind == "strip":
            with stage("kernel"):
                threads = _loop_kernel_threads(payload.image.size, reader.ahead())
                totals.add(drizzle_frame(cube, *payload, record=False, threads=threads))
            del payload
            continue
        if done is not None:
            done(1)
        if kind == "reject" or (kind == "broken" and totals.n_strips == 0):
            logger.log(warn, "%s: skipping %s: %s", label, path, payload)
            outcomes["reject"].append((path, str(payload)))
        elif kind == "broken":
            logger.log(logging.ERROR if report else logging.DEBUG, "%s: %s: %s; the cube holds %d of its pixels",
                       label, path, payload, totals.n_pixels)
            outcomes["reject"].append((path, str(payload)))
        elif kind == "skip":
            logger.debug("%s: %s does not touch the output region", label, path.name)
            outcomes["skip"].append(path)
        elif kind == "end":
            assert frame is not None
            cube.record_frame(totals.n_pixels, totals.n_contributions, totals.planes)
            if totals.n_pixels > 0:
                cube.frame_log.append(_log_entry(frame, totals.n_pixels))
                if screen is not None:
                    record_outliers(cube, screen, frame)
                outcomes["frame"].append((path, totals.planes))
            else:
                outcomes["empty"].append(path)
                logger.log(warn, "%s: %s overlaps the region but landed no pixel (all flagged, non-finite or off "
                           "the grid); counted in N_EMPTY", label, path)
            frame = None
    if screen is not None:
        finish_outliers(cube, screen)
    return outcomes


def _drizzle_grid(paths_by_detector: Dict[int, List[Any]], config: Drizzle3DConfig, detector: int,
                  grid: OutputGrid, wave_sources: Optional[WaveSources]) -> Optional[Path]:
    """Drizzle the files of each detector (in detector order, each file once) onto ``grid`` and
    save cube ``detector`` (0: the cube of all detectors); None when no frame contributed."""
    with stage("setup"):
        label = _label(detector)
        out_path = output_path_for(config, detector)
        if out_path.exists() and not config.overwrite:
            raise OutputExistsError(f"Output file already exists: {out_path} (set overwrite=True to replace it)")
        if wave_sources is None:
            wave_sources = _resolve_waves(config, paths_by_detector)
        cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, config, detector, grid.plane_detector)
        n_files = sum(len(p) for p in paths_by_detector.values())
        logger.info("%s: drizzling %d files onto %d x %d x %d (nz, ny, nx)", label, n_files, *grid.cube_shape)
        counts = {"frame": 0, "reject": 0, "skip": 0, "empty": 0}
        remote = any(isinstance(p, ObjectLocation) for ps in paths_by_detector.values() for p in ps)
        bytes0 = TRANSFERS.bytes
        t0 = time.perf_counter()
    with stage("loop"), byte_bar(f"{label} read", config.progress and remote) as read_bar:
        for det in sorted(paths_by_detector):
            paths = paths_by_detector[det]
            with progress_bar(len(paths), _label(det), "frame", config.progress) as bar:
                def done(n: int) -> None:
                    bar.update(n)
                    if remote:  # objects read in place: the bytes received so far
                        read_bar.update(TRANSFERS.bytes - bytes0 - read_bar.n)

                outcomes = drizzle_frames(paths, config, grid, cube, done, waves=wave_sources, label=_label(det))
            for kind, found in outcomes.items():
                counts[kind] += len(found)
    with stage("finish"):
        vmhints.release_free_memory()  # the strips' freed memory, before the write's planes
        wave_sources.warn_refused()
        cube.n_rejected = counts["reject"]
        cube.n_empty = counts["empty"]
        logger.info(
            "%s: %d frames contributed, %d rejected, %d outside the region, %d without landed pixels (%.1f s)%s",
            label, cube.n_inputs, counts["reject"], counts["skip"], counts["empty"], time.perf_counter() - t0,
            f"; {(TRANSFERS.bytes - bytes0) / 1e6:.1f} MB read from the object store" if remote else "",
        )
    if not cube.frame_log:
        logger.warning("%s: no frame contributed to the output region; no cube written", label)
        return None
    with stage("write"):
        return save_cube(cube, out_path, overwrite=config.overwrite, progress=config.progress)


def _resolve_waves(config: Drizzle3DConfig, paths_by_detector: Mapping[int, Iterable[Any]]) -> WaveSources:
    """``config.spectral_wcs`` resolved for local files (no archive requests)."""
    return wavesources.resolve(config, {d: [release_of(p) for p in ps] for d, ps in paths_by_detector.items()})


def drizzle_detector(
    fits_paths: Iterable[Any],
    config: Drizzle3DConfig,
    detector: int,
    output_wcs: WCS,
    *,
    wave_sources: Optional[WaveSources] = None,
) -> Optional[Path]:
    """Drizzle the L2 files ``fits_paths`` of one ``detector`` (1-6) onto ``output_wcs``.
    A file is a path, or an object read in place (an :class:`~.objectstore.ObjectLocation`
    or a URL such as ``s3://bucket/key``: then ``config.download_workers`` frames are in flight).

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
    with stage("setup"):
        grid = OutputGrid.for_detector(config, detector, output_wcs)
        locations = [as_location(p) for p in fits_paths]
    return _drizzle_grid({detector: locations}, config, detector, grid, wave_sources)


def drizzle_tiled(fits_paths: Iterable[Any], config: Drizzle3DConfig, detector: int, tile_arcmin: float,
                  footprints: Optional[Sequence[Optional[Sequence[float]]]] = None, assemble: bool = True, *,
                  wave_sources: Optional[WaveSources] = None) -> Optional[Path]:
    """:func:`drizzle_detector` in square tiles of ``tile_arcmin`` (:mod:`.tiling`), run where
    ``config.scheduler`` says (:mod:`.executor`) and assembled into the same cube file, bit for bit
    (:mod:`.assemble`); the pieces, ``manifest.json`` and the quick-look of the mosaic
    (:mod:`.mosaiclook`) stay in ``output_dir/tiles_D{N}``. ``footprints`` (one per file, in the
    same order: the archive's ``poly``, RA1, Dec1, ... deg, or None) offer each tile only the
    frames whose footprints meet it (:mod:`.tileselect`); without them every tile tests every
    frame's header. ``assemble=False`` leaves the tiles and the manifest (``spxdrizzle assemble``
    writes the cube later) and returns None. A rerun of the same configuration and frames reuses
    the pieces already written; ``overwrite`` restarts. Files are paths or objects read in place
    (as for :func:`drizzle_detector`); each tile reads the objects it needs itself, with the
    locations' ``storage_options``. ``wave_sources`` as in :func:`drizzle_detector` (sent to the
    tiles; each reopens the products)."""
    from .assemble import assemble_cube, write_manifest
    from .executor import run_tiles
    from .mosaiclook import write_mosaic_quicklook
    from .tiling import run_key, tile_plan, tile_side_pixels, tiles_dir

    detector = int(detector)
    if config.reject_outliers:
        raise ValueError(OUTLIERS_NOT_TILED)
    out_path = output_path_for(config, detector)
    if assemble and out_path.exists() and not config.overwrite:
        raise OutputExistsError(f"Output file already exists: {out_path} (set overwrite=True to replace it)")
    paths: List[Any] = [as_location(p) for p in fits_paths]
    if wave_sources is None:
        wave_sources = _resolve_waves(config, {detector: paths})
    grid = OutputGrid.for_detector(config, detector)
    tiles = tile_plan(grid.shape, tile_side_pixels(tile_arcmin, grid.pixscale))
    key = run_key(config, detector, tiles, paths, wave_sources)
    if config.overwrite:
        for old in tiles_dir(config, detector).glob("tile_*.json"):
            old.unlink()
    logger.info("D%d: drizzling %d files onto %d x %d x %d (nz, ny, nx) in %d tiles of %.4g'", detector, len(paths),
                *grid.cube_shape, len(tiles), tile_arcmin)
    selections = _tile_selections(grid, tiles, paths, footprints, detector)
    records = run_tiles(paths, config, detector, tiles, key, config.scheduler, selections, waves=wave_sources)
    write_manifest(config, detector, key, paths, records)
    report_frames(detector, paths, records)
    write_mosaic_quicklook(config, detector, records)
    if not assemble:
        return None
    with stage("write"):
        return assemble_cube(config, detector, records, out_path)


def _tile_selections(grid: OutputGrid, tiles: Sequence[Any], paths: List[Any],
                     footprints: Optional[Sequence[Optional[Sequence[float]]]],
                     detector: int) -> Optional[List[List[int]]]:
    """The frames each tile is offered (:func:`.tileselect.frames_by_tile`), None without footprints."""
    from .tileselect import frames_by_tile

    if footprints is None:
        return None
    if len(footprints) != len(paths):
        raise ValueError(f"footprints: {len(footprints)} given for {len(paths)} files (one per file, or None)")
    selections = frames_by_tile(grid, [t.bounds() for t in tiles], footprints)
    used = set().union(*map(set, selections)) if selections else set()
    logger.info("D%d: footprints offer %d frame-tile pairs; %d of %d frames meet no tile and are not read",
                detector, sum(len(s) for s in selections), len(paths) - len(used), len(paths))
    return selections


def report_frames(detector: int, paths: List[Any], records: List[Dict[str, Any]]) -> None:
    """One warning per file the tiles rejected (with the first tile's reason) and per frame that
    touched tiles but landed in none (the tiles themselves log these at debug level)."""
    from .assemble import FrameOutcomes

    frames = FrameOutcomes(records)
    for index in sorted(frames.rejected):
        logger.warning("D%d: skipping %s: %s", detector, paths[index], frames.rejected[index])
    for index in sorted(frames.empty):
        logger.warning("D%d: %s overlaps the region but landed no pixel (all flagged, non-finite or off the grid); "
                       "counted in N_EMPTY", detector, paths[index])


def drizzle_all_detectors(
    paths_by_detector: Mapping[int, Iterable[Any]],
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
    paths: Dict[int, List[Any]] = {}
    for det, files in sorted(paths_by_detector.items()):
        files = [as_location(p) for p in files]
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
    files: Dict[int, List[Any]] = {}
    releases: Dict[Any, str] = {}
    polys: Dict[Any, Any] = {}  # each file's footprint from the query (poly), for the tiles
    for det in detectors:
        fits_paths = _files(det, obs_by_det.get(det, []), config, cutout, mirror_has_none, releases, polys)
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
            tile_arcmin = effective_tile_arcmin(config, (det,))
            if tile_arcmin is None:
                out = drizzle_detector(fits_paths, config, det, output_wcs, wave_sources=sources)
            else:
                footprints = [polys.get(as_location(p)) for p in fits_paths]
                out = drizzle_tiled(fits_paths, config, det, tile_arcmin, footprints, wave_sources=sources)
            if out is not None:
                results[det] = out
    if not results and mirror_has_none and len(mirror_has_none) == sum(1 for d in detectors if obs_by_det.get(d)):
        raise FileNotFoundError(mirror_has_none[0])
    logger.info("Drizzle3D complete: %d cube(s) written", len(results))
    return results


def _files(det: int, observations: List[Any], config: Drizzle3DConfig, cutout: Any,
           mirror_has_none: List[str], releases: Dict[Any, str], polys: Dict[Any, Any]) -> List[Any]:
    """The verified files of one detector's observations (downloaded, found in the mirror, or
    objects read in place from an object store); a mirror holding none of them adds its message
    to ``mirror_has_none``; the release of each file (from its archive URL) goes into
    ``releases``, its footprint (the query's ``poly``) into ``polys``."""
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
        storage_options=config.storage_options,
    )
    fits_paths = list(report.verified)
    for obs, path in zip(observations, report.paths):
        rel = release_of(obs.download_url)
        if path is not None and rel:
            releases[as_location(path)] = rel
        if path is not None and obs.poly is not None:
            polys[as_location(path)] = obs.poly
    if not fits_paths:
        none = _mirror_has_none(report, config)
        if none is not None:
            mirror_has_none.append(f"D{det}: {none}")
        logger.warning("D%d: no files available, skipping", det)
    return fits_paths


def _mirror_has_none(report: Any, config: Drizzle3DConfig) -> Optional[str]:
    """The message of a mirror holding none of a detector's files (mirror mode only)."""
    if config.data_mirror is None or isinstance(config.data_mirror, str):
        return None  # an object store: missing objects are reported as each frame is read
    from .archive.fetch import mirror_has_none

    return mirror_has_none(report, Path(config.data_mirror))


__all__ = ["drizzle", "drizzle_all_detectors", "drizzle_detector", "drizzle_frames", "drizzle_tiled",
           "output_path_for"]
