"""The pieces of a tiled run put together: the one cube file, and the manifest of the tiles.

:class:`TiledCube` offers what :func:`.cubefile.save_cube` reads from a cube (configuration,
grid, bookkeeping) and hands it the planes of the image extensions one at a time, each read from
the pieces (``hdu.section``: one plane of each piece at a time), so the cube file is written in
a stream without the cube ever being in memory. The bookkeeping combines the tiles' records: a
frame contributed when it did to any tile (its planes are the union), was rejected when any tile
rejected it, and landed nothing when it touched tiles but landed in none. The manifest
(``tiles_D{N}/manifest.json``) lists one row per tile: piece file (None: an empty tile), pixel range, sky range (the
corners' RA/Dec, deg) and the frames used; :func:`assemble_from_manifest` writes the cube from it
later (``spxdrizzle assemble``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from astropy.io import fits

from .config import Drizzle3DConfig
from .cubefile import IMAGE_EXTENSIONS, save_cube
from .grid import OutputGrid
from .mosaiclook import write_mosaic_quicklook
from .tiling import piece_name, record_path, tiles_dir, write_json_atomic

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class FrameOutcomes:
    """What became of each frame (by its index in the run's file list) over all tiles' records:
    ``planes`` and ``entries`` (log entry, ``n_pixels`` summed over tiles) of the frames that
    contributed to a tile, ``rejected`` (index -> the first tile's reason) and ``empty`` (touched
    tiles, landed in none, not rejected)."""

    def __init__(self, records: Sequence[Dict[str, Any]]):
        self.planes: Dict[int, np.ndarray] = {}
        self.entries: Dict[int, Dict[str, Any]] = {}
        self.rejected: Dict[int, str] = {}
        touched: set = set()
        for record in records:
            for index, bits, entry in record["frames"]:
                mine = np.asarray(bits, dtype=bool)
                self.planes[index] = self.planes[index] | mine if index in self.planes else mine
                if index in self.entries:
                    self.entries[index]["n_pixels"] += int(entry["n_pixels"])
                else:
                    self.entries[index] = dict(entry)
            for index, reason in record["reject"]:
                self.rejected.setdefault(int(index), str(reason))
            touched.update(int(i) for i in record["empty"])
        self.empty = touched - set(self.rejected) - set(self.entries)


class TiledCube:
    """A cube whose planes are read from the pieces of ``records`` (see the module docs)."""

    def __init__(self, config: Drizzle3DConfig, detector: int, records: Sequence[Dict[str, Any]]):
        grid = OutputGrid.for_detector(config, detector)
        self.config, self.detector, self.records = config, int(detector), list(records)
        self.wcs, self.pixscale, self.zgrid = grid.wcs, grid.pixscale, grid.zgrid
        self.cube_shape = grid.cube_shape
        frames = FrameOutcomes(self.records)
        self.frame_log = [frames.entries[i] for i in sorted(frames.entries)]
        self.n_inputs = len(frames.entries)
        self.n_input_sc = np.sum([frames.planes[i] for i in sorted(frames.planes)], axis=0, dtype=np.uint32) \
            if frames.planes else np.zeros(grid.nz, dtype=np.uint32)
        self.n_rejected = len(frames.rejected)
        self.n_empty = len(frames.empty)

        self._offsets = [_data_offsets(Path(r["piece"]), grid.nz, r["tile"]) if r["piece"] is not None else None
                         for r in self.records]

    def plane(self, name: str, k: int) -> np.ndarray:
        """Plane ``k`` of image extension ``name`` of the whole grid, read from the pieces (a
        tile without a piece is empty: SCI and VARIANCE NaN, masks and COUNT 0)."""
        dtype = np.dtype(dict(IMAGE_EXTENSIONS)[name])
        _, ny, nx = self.cube_shape
        out = np.full((ny, nx), np.nan if dtype == np.float32 else 0, dtype=dtype)
        for record, offsets in zip(self.records, self._offsets):
            if offsets is None:
                continue
            y0, y1, x0, x1 = record["tile"]
            n = (y1 - y0) * (x1 - x0)
            with open(record["piece"], "rb") as f:
                raw = os.pread(f.fileno(), n * 4, offsets[name] + k * n * 4)
            if len(raw) != n * 4:
                raise ValueError(f"{record['piece']}: {name} plane {k} is truncated")
            if dtype == np.uint32:  # stored as int32 with BZERO = 2**31 (cubefile._fits_bytes)
                tile = (np.frombuffer(raw, dtype=">i4").astype(np.int32).view(np.uint32) ^ np.uint32(0x80000000))
            else:
                tile = np.frombuffer(raw, dtype=dtype.newbyteorder(">"))
            out[y0:y1, x0:x1] = tile.reshape(y1 - y0, x1 - x0)
        return out


def _data_offsets(piece: Path, nz: int, bounds: Sequence[int]) -> Dict[str, int]:
    """Byte offset of the data of each image extension of a piece, after checking that each
    holds ``(nz, tile rows, tile columns)`` of its type. ValueError naming the piece otherwise."""
    y0, y1, x0, x1 = bounds
    offsets = {}
    with fits.open(piece, memmap=False) as hdul:
        for name, dtype in IMAGE_EXTENSIONS:
            if name not in hdul:
                raise ValueError(f"{piece}: no {name} extension (not a tile of this run)")
            h = hdul[name].header
            shape = tuple(h.get(f"NAXIS{i}") for i in (3, 2, 1))
            bitpix = -32 if dtype == np.float32 else 32
            if h.get("NAXIS") != 3 or shape != (nz, y1 - y0, x1 - x0) or h.get("BITPIX") != bitpix:
                raise ValueError(f"{piece}: {name} is {shape} BITPIX {h.get('BITPIX')}, expected "
                                 f"{(nz, y1 - y0, x1 - x0)} BITPIX {bitpix}")
            offsets[name] = int(hdul[name].fileinfo()["datLoc"])
    return offsets


def sky_range(grid: OutputGrid, bounds: Sequence[int]) -> List[List[float]]:
    """RA/Dec (deg) of the outer corners of the pixels ``[y0:y1, x0:x1]`` of ``grid``."""
    y0, y1, x0, x1 = bounds
    xs = np.array([x0 - 0.5, x1 - 0.5, x1 - 0.5, x0 - 0.5])
    ys = np.array([y0 - 0.5, y0 - 0.5, y1 - 0.5, y1 - 0.5])
    ra, dec = grid.wcs.wcs_pix2world(xs, ys, 0)
    return [[float(a), float(d)] for a, d in zip(ra, dec)]


def write_manifest(config: Drizzle3DConfig, detector: int, key: str, paths: Sequence[Any],
                   records: Sequence[Dict[str, Any]]) -> Path:
    """``tiles_D{N}/manifest.json`` (atomic): the run's key, configuration, frame list and one row per tile."""
    grid = OutputGrid.for_detector(config, detector)
    rows = [{"file": Path(r["piece"]).name if r["piece"] is not None else None, "pixels": r["tile"],
             "sky": sky_range(grid, r["tile"]), "frames": [str(paths[i]) for i, _, _ in r["frames"]]} for r in records]
    path = tiles_dir(config, detector) / MANIFEST
    write_json_atomic(path, {"key": key, "detector": int(detector), "config": config.to_dict(),
                             "frames": [str(p) for p in paths], "tiles": rows,
                             "records": [record_path(Path(piece_name(r["index"]))).name for r in records]})
    return path


def assemble_cube(config: Drizzle3DConfig, detector: int, records: Sequence[Dict[str, Any]],
                  out_path: Path) -> Optional[Path]:
    """Write the cube of the pieces of ``records`` to ``out_path`` (atomic, streamed plane by
    plane); None (nothing written, a warning) when no frame contributed to any tile."""
    cube = TiledCube(config, detector, records)
    logger.info("D%d: %d frames contributed, %d rejected, %d without landed pixels (%d tiles)", detector,
                cube.n_inputs, cube.n_rejected, cube.n_empty, len(records))
    if not cube.frame_log:
        logger.warning("D%d: no frame contributed to the output region; no cube written", detector)
        return None
    return save_cube(cube, out_path, overwrite=config.overwrite, progress=config.progress)


def assemble_from_manifest(manifest: Path, out_path: Optional[Path] = None, overwrite: bool = False) -> Optional[Path]:
    """The cube file of a tiled run's manifest (default path: the run's ``drizzle_D{N}.fits``
    beside the tiles directory), and the mosaic's quick-look in the tiles directory
    (:mod:`.mosaiclook`). ValueError naming the file when a piece's record is missing or
    belongs to another run."""
    manifest = Path(manifest)
    data = json.loads(manifest.read_text())
    config = Drizzle3DConfig.from_dict(data["config"]).replace(overwrite=overwrite)
    records = []
    for name in data["records"]:
        path = manifest.parent / name
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: tile record unreadable ({exc})") from None
        if record.get("key") != data["key"]:
            raise ValueError(f"{path}: tile record of another run (key {str(record.get('key'))[:12]}...)")
        if record.get("piece") is not None:
            record["piece"] = str(manifest.parent / Path(record["piece"]).name)
        records.append(record)
    detector = int(data["detector"])
    out = Path(out_path) if out_path is not None else manifest.parent.parent / f"drizzle_D{detector}.fits"
    cube = assemble_cube(config, detector, records, out)
    write_mosaic_quicklook(config, detector, records, manifest.parent)
    return cube


__all__ = ["FrameOutcomes", "TiledCube", "assemble_cube", "assemble_from_manifest", "sky_range", "write_manifest"]
