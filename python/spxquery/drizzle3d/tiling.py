"""Tiled cubes: the output grid cut into tiles, each drizzled on its own and written as a piece.

A tile is a sub-array ``[y0:y1, x0:x1]`` of the one :class:`~.grid.OutputGrid` of a cube
(:meth:`~.grid.OutputGrid.tile`), never a new projection: frames are mapped with the whole grid's
WCS (corner maps in the grid's pixels, their exact nodes at fixed places of each frame,
:func:`.spatial.corner_map`) and the engine drizzles into the tile as a window of the grid
(``origin``), so every voxel receives the same contributions, in the same order, with the same
bits, as in a one-piece run. Per-frame quantities (zodi scale, flags, wavelengths, verdict)
depend on the frame alone (:mod:`.framesample`).

:func:`tile_plan` cuts the grid into square tiles of ``tile_arcmin`` (the last row and column
narrower); :func:`auto_tile_arcmin` chooses the side when the accumulators would not fit in memory.
:func:`drizzle_tile` is one task: it drizzles the files onto its tile, writes the tile's cube
atomically as a piece (``output_dir/tiles_D{N}/tile_{index:05d}.fits``, the seven HDUs of a cube
of the tile) and then its record (``.json`` beside it: the run's key, the tile, what became of
each frame), and returns that record (metadata only). A tile no frame contributed to has a record
and no piece (the assembly fills it as empty), so a sparse mosaic takes the disk of its data. A
tile is offered every frame, or the frames whose footprints meet it (:mod:`.tileselect`). A piece
whose record carries the run's key (:func:`run_key`: a hash of the configuration, the detector,
the tile plan and the frame list) is reused by a rerun; anything else is recomputed. Sizes:
pixels; angles: arcmin.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .config import OUTLIERS_NOT_TILED, Drizzle3DConfig
from .grid import OutputGrid
from .objectstore import TRANSFERS, ObjectLocation, as_location
from .preflight import _ADVICE as BUDGET_ADVICE
from .preflight import ACCUMULATOR_BYTES_PER_VOXEL, MEMORY_HEADROOM, RunBudgetError, available_memory, cube_shapes

logger = logging.getLogger(__name__)

#: Configuration fields that do not change a cube's voxels (where and how the run goes).
NOT_IN_KEY = ("overwrite", "progress", "scheduler", "output_dir", "download_workers", "skip_existing",
              "download_timeout", "download_retries", "download_deadline", "storage_options")
#: Smallest automatic tile side (pixels): below it the per-tile overheads dominate.
MIN_AUTO_TILE_PIXELS = 64


@dataclass(frozen=True)
class Tile:
    """Tile ``index`` (row-major): rows ``y0:y1`` and columns ``x0:x1`` of the grid (0-based,
    end-exclusive)."""

    index: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def shape(self) -> tuple:
        return (self.y1 - self.y0, self.x1 - self.x0)

    def bounds(self) -> List[int]:
        return [self.y0, self.y1, self.x0, self.x1]


def tile_side_pixels(tile_arcmin: float, pixscale_arcsec: float) -> int:
    """Tile side in output pixels: ``round(tile_arcmin * 60 / pixscale)``, at least 1."""
    return max(1, int(round(float(tile_arcmin) * 60.0 / float(pixscale_arcsec))))


def tile_plan(shape: Sequence[int], side: int) -> List[Tile]:
    """The ``(ny, nx)`` grid cut into ``side`` x ``side`` pixel tiles, row-major (the last row
    and column of tiles are narrower when ``side`` does not divide the grid)."""
    ny, nx = (int(v) for v in shape)
    side = max(1, int(side))
    tiles: List[Tile] = []
    for y0 in range(0, ny, side):
        for x0 in range(0, nx, side):
            tiles.append(Tile(len(tiles), y0, min(y0 + side, ny), x0, min(x0 + side, nx)))
    return tiles


def auto_tile_arcmin(config: Drizzle3DConfig, detectors: Sequence[int],
                     memory: Optional[int] = None) -> Optional[float]:
    """None when the largest cube's accumulators fit in the memory available (``memory``, default
    :func:`.preflight.available_memory`) beside the headroom; else the side (arcmin) of square
    tiles whose accumulators take at most a quarter of it (room for a reader, the assembly and
    other workers). Always None with ``covariance`` (never tiled: :func:`.preflight.check_budget`
    then requires the whole cube to fit)."""
    if config.covariance:
        return None
    _, nz, ny, nx = max(cube_shapes(config, detectors), key=lambda s: s[1] * s[2] * s[3])
    memory = available_memory() if memory is None else memory
    per_pixel = nz * ACCUMULATOR_BYTES_PER_VOXEL
    if memory is None or ny * nx * per_pixel + MEMORY_HEADROOM <= memory:
        return None
    room = max(0, memory - MEMORY_HEADROOM) // 4
    side = max(MIN_AUTO_TILE_PIXELS, int(np.sqrt(room / per_pixel)))
    return side * config.effective_pixscale() / 60.0


def effective_tile_arcmin(config: Drizzle3DConfig, detectors: Sequence[int],
                          memory: Optional[int] = None) -> Optional[float]:
    """``config.tile_arcmin``, else the automatic side (with a log line), else None (one piece).
    ``memory`` as in :func:`auto_tile_arcmin`. RunBudgetError when tiles would be needed with
    ``reject_outliers`` (never tiled)."""
    if config.tile_arcmin is not None:
        return float(config.tile_arcmin)
    auto = auto_tile_arcmin(config, detectors, memory)
    if auto is not None and config.reject_outliers:
        raise RunBudgetError(f"the accumulators exceed the memory available and {OUTLIERS_NOT_TILED}; {BUDGET_ADVICE}")
    if auto is not None:
        logger.info("the accumulators exceed the memory available: drizzling in tiles of %.4g' (set tile_arcmin "
                    "to choose)", auto)
    elif config.scheduler is not None:
        logger.warning("scheduler=%r is used by tiled runs only and this cube is drizzled in one piece here; set "
                       "tile_arcmin to drizzle it in tiles there", config.scheduler)
    return auto


def run_key(config: Drizzle3DConfig, detector: int, tiles: Sequence[Tile], paths: Sequence[Any],
            waves: Any = None) -> str:
    """SHA-256 of what a tile's voxels depend on: the configuration (without :data:`NOT_IN_KEY`),
    the detector, the tile plan, the frames (paths, sizes and modification times, in order; for an
    object read in place its URL and the length the archive lists) and the wavelength products
    ``waves`` (a :class:`.wavesources.WaveSources`) chose for them."""
    settings = {k: v for k, v in config.to_dict().items() if k not in NOT_IN_KEY}
    frames = []
    for p in paths:
        if isinstance(p, ObjectLocation):  # an object read in place: its URL and listed length
            frames.append([p.url, p.expected_length, None])
            continue
        try:
            st = os.stat(p)
            frames.append([str(p), st.st_size, st.st_mtime_ns])
        except OSError:
            frames.append([str(p), None, None])
    text = json.dumps({"config": settings, "detector": int(detector), "tiles": [t.bounds() for t in tiles],
                       "frames": frames, "waves": _wave_products(waves, detector)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _wave_products(waves: Any, detector: int) -> Dict[str, Optional[str]]:
    """The product file (None: the L2 lookup) chosen for each release of ``detector``'s frames."""
    if waves is None:
        return {}
    return {str(rel): None if c.product is None else str(c.product)
            for (det, rel), c in waves.choices.items() if int(det) == int(detector)}


def tiles_dir(config: Drizzle3DConfig, detector: int) -> Path:
    """``output_dir/tiles_D{detector}``: the pieces, their records and the manifest."""
    return Path(config.output_dir) / f"tiles_D{int(detector)}"


def piece_name(index: int) -> str:
    """File name of tile ``index``'s piece (its record: the same with ``.json``)."""
    return f"tile_{int(index):05d}.fits"


def piece_path(config: Drizzle3DConfig, detector: int, tile: Tile) -> Path:
    return tiles_dir(config, detector) / piece_name(tile.index)


def record_path(piece: Path) -> Path:
    return piece.with_suffix(".json")


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as JSON at ``path``, atomically (temporary file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, default=_plain)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (tuple, np.ndarray)):
        return list(value)
    return str(value)


def finished_record(piece: Path, key: str) -> Optional[Dict[str, Any]]:
    """The record of a finished tile written for run ``key``, else None (missing, unreadable,
    another run's, or its piece missing; a tile no frame contributed to has no piece)."""
    try:
        record = json.loads(record_path(piece).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    if record.get("piece") is not None and not piece.is_file():
        return None
    return record


def drizzle_tile(paths: Sequence[Any], config: Drizzle3DConfig, detector: int, tile: Tile, key: str,
                 select: Optional[Sequence[int]] = None, waves: Any = None) -> Dict[str, Any]:
    """One task: drizzle ``paths`` (paths, or object locations read in place; in this order), or
    only those of the indices ``select`` (the frames whose footprints meet the tile,
    :mod:`.tileselect`), onto ``tile`` of the detector's grid, write the piece and its record
    atomically, return the record: ``tile`` (bounds), ``piece`` (path; None when no frame
    contributed: then no piece is written and the tile is empty), ``key``, ``offered`` (frames
    offered to the tile), ``frames`` (``[path index, planes as 0/1 list, log entry]`` of the
    contributing frames), ``reject`` (``[index, reason]``), ``empty`` (indices), ``bytes_read``
    (from object stores). Reuses a finished tile of the same ``key``. ``waves``: the run's
    :class:`.wavesources.WaveSources` (None: the L2 lookup)."""
    piece = piece_path(config, detector, tile)
    done = finished_record(piece, key)
    if done is not None:
        return done
    chosen = list(range(len(paths))) if select is None else [int(i) for i in select]
    files = [as_location(paths[i]) for i in chosen]
    index = dict(zip(files, chosen))
    outcomes: Dict[str, List[Any]] = {"frame": [], "reject": [], "empty": []}
    frame_log: List[Dict[str, Any]] = []
    bytes0 = TRANSFERS.bytes
    if files:
        outcomes, frame_log = _drizzle_piece(files, config, detector, tile, piece, waves)
    bytes_read = TRANSFERS.bytes - bytes0  # this process's reads: one tile at a time per worker
    if not frame_log:
        piece.unlink(missing_ok=True)  # an empty tile: the assembly fills it (SCI NaN, COUNT 0)
    record = {
        "key": key, "tile": tile.bounds(), "index": tile.index, "piece": str(piece) if frame_log else None,
        "offered": len(files),
        "frames": [[index[p], planes.astype(int).tolist(), entry]
                   for (p, planes), entry in zip(outcomes["frame"], frame_log)],
        "reject": [[index[p], reason] for p, reason in outcomes["reject"]],
        "empty": [index[p] for p in outcomes["empty"]],
        "bytes_read": int(bytes_read),
    }
    write_json_atomic(record_path(piece), record)
    return record


def _drizzle_piece(files: List[Any], config: Drizzle3DConfig, detector: int, tile: Tile, piece: Path,
                   waves: Any = None) -> Tuple[Dict[str, List[Any]], List[Dict[str, Any]]]:
    """Drizzle ``files`` onto ``tile`` and write its piece (atomic) when a frame contributed;
    (outcomes of :func:`.pipeline.drizzle_frames`, the cube's frame log)."""
    from .accumulate import DrizzleCube
    from .cubefile import save_cube
    from .pipeline import drizzle_frames

    grid = OutputGrid.for_detector(config, detector).tile(tile.y0, tile.y1, tile.x0, tile.x1)
    tile_wcs = grid.wcs.deepcopy()
    tile_wcs.wcs.crpix = [tile_wcs.wcs.crpix[0] - tile.x0, tile_wcs.wcs.crpix[1] - tile.y0]  # header only
    cube = DrizzleCube.create(tile_wcs, grid.pixscale, grid.zgrid, config, detector, shape=grid.shape,
                              origin=grid.origin)
    outcomes = drizzle_frames(files, config, grid, cube, report=False, waves=waves)
    cube.n_rejected = len(outcomes["reject"])
    cube.n_empty = len(outcomes["empty"])
    if cube.frame_log:
        save_cube(cube, piece, overwrite=True)
    return outcomes, list(cube.frame_log)


__all__ = ["Tile", "auto_tile_arcmin", "drizzle_tile", "effective_tile_arcmin", "finished_record", "piece_name",
           "piece_path", "run_key", "tile_plan", "tile_side_pixels", "tiles_dir"]
