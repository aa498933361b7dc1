"""High-level Drizzle3D pipeline: query -> download -> per-detector drizzle -> save.

``drizzle_detector`` drizzles a list of L2 files of one detector into a cube and
saves ``output_dir/drizzle_D{N}.fits``. A reader thread (:mod:`.readahead`) prepares the
files, in strips of rows ready for the engine, while this thread runs the Rust accumulation
(which releases the GIL); strips are accumulated in the order of the files, so the result is
deterministic, and the strips in flight stay within a memory budget. Unusable files (not
SPHEREx L2, truncated, missing extension, other detector, failed checks) are skipped with one
warning line naming the file and the reason and counted in ``n_rejected``; frames that do not
touch the output region are skipped silently (debug log) and not counted as rejected.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from astropy.wcs import WCS

from .accumulate import DrizzleCube, drizzle_frame
from .config import OUTLIERS_NOT_TILED, Drizzle3DConfig
from .cubefile import save_cube
from .frames import Frame
from .grid import OutputGrid, build_output_wcs, small_region_warning
from .objectstore import TRANSFERS, ObjectLocation, as_location
from .outliers import finish_outliers, outlier_screen, record_outliers
from .preflight import OutputExistsError, preflight
from .progress import progress_bar
from .readahead import Item, ReadAhead
from .stagetimes import stage
from .tiling import effective_tile_arcmin

logger = logging.getLogger(__name__)

ALL_DETECTORS = (1, 2, 3, 4, 5, 6)
#: Strips of fewer input pixels than this run the kernel on this thread alone: waking the pool's
#: threads costs more than they save on small crops, and the reader thread has the other core.
KERNEL_POOL_MIN_PIXELS = 65536

def output_path_for(config: Drizzle3DConfig, detector: int) -> Path:
    """``output_dir/drizzle_D{detector}.fits``."""
    return Path(config.output_dir) / f"drizzle_D{int(detector)}.fits"


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


def _log_entry(frame: Frame, n_pixels: int) -> Dict[str, Any]:
    return {"name": frame.name, "obsid": frame.obsid, "mjd": frame.mjd, "mjd_beg": frame.mjd_span[0],
            "mjd_end": frame.mjd_span[1], "zodi_scale": frame.zodi.scale, "zodi_source": frame.zodi.source,
            "crop": frame.crop, "n_pixels": n_pixels}


def frames_in_flight(paths: List[Any], config: Drizzle3DConfig) -> int:
    """Frames the reader prepares at once: ``config.download_workers`` when any input is an object
    read in place (it waits on the network), else 1."""
    return int(config.download_workers) if any(isinstance(p, ObjectLocation) for p in paths) else 1


def drizzle_frames(paths: List[Any], config: Drizzle3DConfig, grid: OutputGrid, cube: DrizzleCube,
                   done: Optional[Callable[[int], Any]] = None, report: bool = True) -> Dict[str, List[Any]]:
    """Drizzle the files ``paths`` onto ``grid`` (a whole grid or a tile of one) into ``cube``, in
    file order; ``done(1)`` is called after each file. Records the contributing frames in ``cube``
    (``n_inputs``, ``n_input_sc``, ``frame_log``) and returns what became of each file, by kind:
    ``frame`` (``(path, planes)``: contributed, bool ``(n_z,)`` planes), ``reject`` (``(path,
    reason)``), ``skip`` (paths not touching the grid) and ``empty`` (paths that touch it but
    landed no pixel). ``report=False`` (a tile: the run reports each frame once) logs rejected and
    empty frames at debug level only."""
    detector = grid.detectors[0]
    warn = logging.WARNING if report else logging.DEBUG
    outcomes: Dict[str, List[Any]] = {"frame": [], "reject": [], "skip": [], "empty": []}
    frame: Optional[Frame] = None
    totals = _FrameTotals(cube.nz)
    items: Iterable[Item] = ReadAhead(paths, config, grid, workers=frames_in_flight(paths, config))
    screen = None
    if config.reject_outliers:  # pass 1: the robust model; the loop below is pass 2
        if grid.origin != (0, 0) or grid.shape != (config.output_ny(), config.output_nx()):  # a tile
            raise ValueError(OUTLIERS_NOT_TILED)
        screen = outlier_screen(paths, config, grid, cube, _kernel_threads)
        items = screen.screen(items)
    for path, kind, payload in items:
        if kind == "frame":
            frame, totals = payload, _FrameTotals(cube.nz)
            continue
        if kind == "strip":
            with stage("kernel"):
                totals.add(drizzle_frame(cube, *payload, record=False, threads=_kernel_threads(payload.image.size)))
            del payload
            continue
        if done is not None:
            done(1)
        if kind == "reject" or (kind == "broken" and totals.n_strips == 0):
            logger.log(warn, "D%d: skipping %s: %s", detector, path, payload)
            outcomes["reject"].append((path, str(payload)))
        elif kind == "broken":
            logger.log(logging.ERROR if report else logging.DEBUG, "D%d: %s: %s; the cube holds %d of its pixels",
                       detector, path, payload, totals.n_pixels)
            outcomes["reject"].append((path, str(payload)))
        elif kind == "skip":
            logger.debug("D%d: %s does not touch the output region", detector, path.name)
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
                logger.log(warn, "D%d: %s overlaps the region but landed no pixel (all flagged, non-finite or off "
                           "the grid); counted in N_EMPTY", detector, path)
            frame = None
    if screen is not None:
        finish_outliers(cube, screen)
    return outcomes


def drizzle_detector(
    fits_paths: Iterable[Any],
    config: Drizzle3DConfig,
    detector: int,
    output_wcs: WCS,
) -> Optional[Path]:
    """Drizzle the L2 files ``fits_paths`` of one ``detector`` (1-6) onto ``output_wcs``.
    A file is a path, or an object read in place (an :class:`~.objectstore.ObjectLocation`
    or a URL such as ``s3://bucket/key``: then ``config.download_workers`` frames are in flight).

    Writes ``output_dir/drizzle_D{detector}.fits`` and returns its path, or returns
    None (with a warning, nothing written) when no frame contributed. Raises
    FileExistsError before any work when the output exists and ``config.overwrite``
    is False.
    """
    detector = int(detector)
    if detector not in ALL_DETECTORS:
        raise ValueError(f"detector must be 1-6 for drizzle_detector, got {detector}")
    out_path = output_path_for(config, detector)
    if out_path.exists() and not config.overwrite:
        raise OutputExistsError(f"Output file already exists: {out_path} (set overwrite=True to replace it)")

    paths: List[Any] = [as_location(p) for p in fits_paths]
    remote = any(isinstance(p, ObjectLocation) for p in paths)
    grid = OutputGrid.for_detector(config, detector, output_wcs)
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, config, detector)
    logger.info("D%d: drizzling %d files onto %d x %d x %d (nz, ny, nx)", detector, len(paths), *grid.cube_shape)

    bytes0 = TRANSFERS.bytes
    t0 = time.perf_counter()
    with progress_bar(len(paths), f"D{detector}", "frame", config.progress) as bar:
        def done(n: int) -> None:
            bar.update(n)
            if remote:  # objects read in place: the bytes received so far
                bar.set_postfix_str(f"{(TRANSFERS.bytes - bytes0) / 1e6:.1f} MB read", refresh=False)

        outcomes = drizzle_frames(paths, config, grid, cube, done)
    counts = {kind: len(v) for kind, v in outcomes.items()}
    cube.n_rejected = counts["reject"]
    cube.n_empty = counts["empty"]
    logger.info(
        "D%d: %d frames contributed, %d rejected, %d outside the region, %d without landed pixels (%.1f s)%s",
        detector, cube.n_inputs, counts["reject"], counts["skip"], counts["empty"], time.perf_counter() - t0,
        f"; {(TRANSFERS.bytes - bytes0) / 1e6:.1f} MB read from the object store" if remote else "",
    )
    if not cube.frame_log:
        logger.warning("D%d: no frame contributed to the output region; no cube written", detector)
        return None
    with stage("write"):
        return save_cube(cube, out_path, overwrite=config.overwrite, progress=config.progress)


def drizzle_tiled(fits_paths: Iterable[Any], config: Drizzle3DConfig, detector: int, tile_arcmin: float,
                  footprints: Optional[Sequence[Optional[Sequence[float]]]] = None,
                  assemble: bool = True) -> Optional[Path]:
    """:func:`drizzle_detector` in square tiles of ``tile_arcmin`` (:mod:`.tiling`), run where
    ``config.scheduler`` says (:mod:`.executor`) and assembled into the same cube file, bit for bit
    (:mod:`.assemble`); the pieces, ``manifest.json`` and the quick-look of the mosaic
    (:mod:`.mosaiclook`) stay in ``output_dir/tiles_D{N}``. ``footprints`` (one per file, in the
    same order: the archive's ``poly``, RA1, Dec1, ... deg, or None) offer each tile only the
    frames whose footprints meet it (:mod:`.tileselect`); without them every tile tests every
    frame's header. ``assemble=False`` leaves the tiles and the manifest (``spxdrizzle assemble``
    writes the cube later) and returns None. A rerun of the same configuration and frames reuses
    the pieces already written; ``overwrite`` restarts. Files are paths or objects read in place
    (as for :func:`drizzle_detector`); each tile reads the objects it needs itself."""
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
    grid = OutputGrid.for_detector(config, detector)
    tiles = tile_plan(grid.shape, tile_side_pixels(tile_arcmin, grid.pixscale))
    key = run_key(config, detector, tiles, paths)
    if config.overwrite:
        for old in tiles_dir(config, detector).glob("tile_*.json"):
            old.unlink()
    logger.info("D%d: drizzling %d files onto %d x %d x %d (nz, ny, nx) in %d tiles of %.4g'", detector, len(paths),
                *grid.cube_shape, len(tiles), tile_arcmin)
    selections = _tile_selections(grid, tiles, paths, footprints, detector)
    records = run_tiles(paths, config, detector, tiles, key, config.scheduler, selections)
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


def drizzle(config: Drizzle3DConfig) -> Dict[int, Path]:
    """Top-level entry point: query -> download -> drizzle -> save, per detector.

    ``config.detector`` 0 processes all six detectors. Returns ``{detector: output path}``
    for the cubes written. Before any query (:func:`~.preflight.preflight`): OutputExistsError
    (a FileExistsError) when an output of a requested detector exists and ``config.overwrite``
    is False; OSError naming ``output_dir`` when it is no directory or not writable;
    RunBudgetError (a ValueError) when the accumulators or the cube files would not fit in
    memory or on disk. FileNotFoundError (naming an example path) when ``data_mirror`` holds none
    of the frames of any detector. Warns when the region is only a few pixels wide (:func:`.grid.small_region_warning`).
    """
    from .query import download_observations_report, query_observations, resolve_cutout

    detectors = _detectors(config)
    preflight(config, detectors)  # outputs, memory, disk: before the first query

    logger.info(
        "Drizzle3D: centre (%.6f, %.6f) deg, %.2f' x %.2f', detector %s",
        config.center_ra, config.center_dec, config.width, config.height,
        "all" if int(config.detector) == 0 else f"D{config.detector}",
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
    for det in detectors:
        observations = obs_by_det.get(det, [])
        if not observations:
            logger.warning("D%d: no observations found", det)
            continue
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
        fits_paths = report.verified
        footprints = [o.poly for o, p in zip(observations, report.paths) if p is not None] \
            if len(report.paths) == len(observations) else None
        if not fits_paths:
            none = _mirror_has_none(report, config)
            if none is not None:
                mirror_has_none.append(f"D{det}: {none}")
            logger.warning("D%d: no files available, skipping", det)
            continue
        tile_arcmin = effective_tile_arcmin(config, (det,))
        if tile_arcmin is None:
            out = drizzle_detector(fits_paths, config, det, output_wcs)
        else:
            out = drizzle_tiled(fits_paths, config, det, tile_arcmin, footprints)
        if out is not None:
            results[det] = out
    if not results and mirror_has_none and len(mirror_has_none) == sum(1 for d in detectors if obs_by_det.get(d)):
        raise FileNotFoundError(mirror_has_none[0])
    logger.info("Drizzle3D complete: %d cube(s) written", len(results))
    return results


def _mirror_has_none(report: Any, config: Drizzle3DConfig) -> Optional[str]:
    """The message of a mirror holding none of a detector's files (mirror mode only)."""
    if config.data_mirror is None or isinstance(config.data_mirror, str):
        return None  # an object store: missing objects are reported as each frame is read
    from .archive.fetch import mirror_has_none

    return mirror_has_none(report, Path(config.data_mirror))


__all__ = ["drizzle", "drizzle_detector", "drizzle_frames", "drizzle_tiled", "output_path_for"]
