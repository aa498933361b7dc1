"""The quick-look of a tiled mosaic: a wavelength-collapsed image at reduced resolution.

Built from the pieces of a tiled run one tile (and one plane) at a time, so the cube is never
held: each binned pixel is the inverse-variance weighted mean of SCI over every voxel of its
``factor`` x ``factor`` block of output pixels and over all planes, ``sum(SCI / VAR) /
sum(1 / VAR)`` [MJy/sr], voxels with non-finite SCI or non-finite or non-positive VARIANCE left
out (as :func:`.quicklook.collapsed_image`); NaN where no voxel is usable. ``factor`` is the
smallest integer that brings the mosaic within :data:`QUICKLOOK_MAX_PIXELS` on a side. Blocks
of the last row and column are cut by the grid's edge (means over the pixels they hold).

Written as ``quicklook_D{N}.fits`` (PRIMARY: the image, float32, with the celestial WCS of the
binned grid: binned pixel ``i`` is centred on output pixel ``i * factor + (factor - 1) / 2``;
extension WEIGHT: ``sum(1 / VAR)`` [(MJy/sr)^-2]) and, when matplotlib is installed, a PNG
beside it, by a tiled run (in ``tiles_D{N}``) and by ``spxdrizzle assemble``.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from .config import Drizzle3DConfig
from .grid import OutputGrid

logger = logging.getLogger(__name__)

#: Largest side [binned pixels] of a mosaic's quick-look.
QUICKLOOK_MAX_PIXELS = 2000


def binning_factor(shape: Sequence[int], max_pixels: int = QUICKLOOK_MAX_PIXELS) -> int:
    """The smallest integer factor that brings ``(ny, nx)`` within ``max_pixels`` on a side."""
    return max(1, math.ceil(max(int(v) for v in shape) / max(1, int(max_pixels))))


def binned_wcs(wcs: WCS, factor: int) -> WCS:
    """The celestial WCS of ``wcs``'s grid binned ``factor`` x ``factor`` (pixel ``i`` of the
    binned grid covers pixels ``i * factor - 0.5`` to ``(i + 1) * factor - 0.5`` of ``wcs``)."""
    step = slice(None, None, int(factor))
    return wcs.slice((step, step)) if factor > 1 else wcs.deepcopy()


def _tile_sums(piece: Path, nz: int) -> Tuple[np.ndarray, np.ndarray]:
    """``sum(SCI / VAR)`` and ``sum(1 / VAR)`` over the planes of one piece, per pixel (float64)."""
    with fits.open(piece, memmap=False, lazy_load_hdus=True) as hdul:
        sci_hdu, var_hdu = hdul["SCI"], hdul["VARIANCE"]
        num: Optional[np.ndarray] = None
        wsum: Optional[np.ndarray] = None
        for k in range(nz):
            sci = np.asarray(sci_hdu.section[k], dtype=np.float64)
            var = np.asarray(var_hdu.section[k], dtype=np.float64)
            good = np.isfinite(sci) & np.isfinite(var) & (var > 0)
            w = np.zeros_like(var)
            np.divide(1.0, var, out=w, where=good)
            num = np.where(good, sci, 0.0) * w if num is None else num + np.where(good, sci, 0.0) * w
            wsum = w if wsum is None else wsum + w
    assert num is not None and wsum is not None
    return num, wsum


def _add_blocks(total: np.ndarray, values: np.ndarray, y0: int, x0: int, factor: int) -> None:
    """Add the pixels ``values`` (whose first pixel is ``(y0, x0)`` of the grid) into the
    ``factor``-binned array ``total``, each to its block."""
    ny, nx = values.shape
    by0, bx0 = y0 // factor, x0 // factor
    by = (np.arange(y0, y0 + ny) // factor) - by0
    bx = (np.arange(x0, x0 + nx) // factor) - bx0
    nby, nbx = int(by[-1]) + 1, int(bx[-1]) + 1
    index = (by[:, None] * nbx + bx[None, :]).ravel()
    sums = np.bincount(index, weights=values.ravel(), minlength=nby * nbx).reshape(nby, nbx)
    total[by0:by0 + nby, bx0:bx0 + nbx] += sums


def mosaic_image(grid: OutputGrid, records: Sequence[Dict[str, Any]], factor: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image [MJy/sr], weight [(MJy/sr)^-2]) of the pieces of ``records`` binned by ``factor``
    (module docs); float64, shape ``ceil((ny, nx) / factor)``."""
    shape = (math.ceil(grid.ny / factor), math.ceil(grid.nx / factor))
    num = np.zeros(shape)
    wsum = np.zeros(shape)
    for record in records:
        if record.get("piece") is None:
            continue  # an empty tile
        y0, _, x0, _ = record["tile"]
        tile_num, tile_w = _tile_sums(Path(record["piece"]), grid.nz)
        _add_blocks(num, tile_num, y0, x0, factor)
        _add_blocks(wsum, tile_w, y0, x0, factor)
    image = np.full(shape, np.nan)
    np.divide(num, wsum, out=image, where=wsum > 0)
    return image, wsum


def _write_fits(path: Path, image: np.ndarray, weight: np.ndarray, wcs: WCS, detector: int, factor: int,
                nz: int) -> Path:
    header = wcs.to_header()
    header["DETECTOR"] = (int(detector), "SPHEREx detector")
    header["BINNING"] = (int(factor), "output pixels per binned pixel, each axis")
    header["NPLANES"] = (int(nz), "planes collapsed")
    header["BUNIT"] = ("MJy/sr", "inverse-variance mean over planes, block")
    hdus = fits.HDUList([fits.PrimaryHDU(image.astype(np.float32), header=header),
                         fits.ImageHDU(weight.astype(np.float32), header=wcs.to_header(), name="WEIGHT")])
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        hdus.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_mosaic_quicklook(config: Drizzle3DConfig, detector: int, records: Sequence[Dict[str, Any]],
                           directory: Optional[Path] = None,
                           max_pixels: int = QUICKLOOK_MAX_PIXELS) -> Dict[str, Path]:
    """Write ``quicklook_D{N}.fits`` (and ``.png`` when matplotlib is installed) of the pieces of
    ``records`` into ``directory`` (default ``output_dir/tiles_D{N}``); returns ``{"fits": path,
    "png": path}`` (no ``png`` without matplotlib; nothing when no tile has a piece)."""
    from .tiling import tiles_dir

    if not any(r.get("piece") is not None for r in records):
        return {}
    grid = OutputGrid.for_detector(config, detector)
    factor = binning_factor(grid.shape, max_pixels)
    image, weight = mosaic_image(grid, records, factor)
    wcs = binned_wcs(grid.wcs, factor)
    directory = Path(directory) if directory is not None else tiles_dir(config, detector)
    out = {"fits": _write_fits(directory / f"quicklook_D{int(detector)}.fits", image, weight, wcs, detector, factor,
                               grid.nz)}
    try:
        from .quicklook import image_png

        title = f"D{int(detector)} mosaic: inverse-variance mean over {grid.nz} planes, {factor}x{factor} blocks"
        out["png"] = image_png(image, {"wcs": wcs}, out["fits"].with_suffix(".png"), title, "MJy/sr")
    except ImportError:
        logger.info("D%d: matplotlib is not installed: the mosaic quick-look is FITS only", detector)
    logger.info("D%d: mosaic quick-look (%d x %d, %dx%d blocks): %s", detector, *image.shape, factor, factor,
                ", ".join(str(p) for p in out.values()))
    return out


__all__ = ["QUICKLOOK_MAX_PIXELS", "binned_wcs", "binning_factor", "mosaic_image", "write_mosaic_quicklook"]
