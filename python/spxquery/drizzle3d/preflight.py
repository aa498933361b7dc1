"""What a run needs, checked before the first archive query: a mirror that is a directory,
no existing cube in the way (unless ``overwrite``), an output directory that is a directory
and writable, memory for the accumulators of the largest cube and disk for the cubes.

A run that cannot finish must say so at once, naming the setting and what to change, not
after the query and the downloads (a 1.2 TiB accumulator once failed with MemoryError only
then; an unwritable output directory ended with "no frame contributed"). Sizes in bytes.
"""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .config import OUTLIERS_NOT_TILED, Drizzle3DConfig
from .covariance import bytes_per_voxel as cov_bytes_per_voxel
from .covariance import stencil
from .filekind import not_a_regular_file
from .outliermodel import MODEL_BYTES_PER_VOXEL
from .spectral import build_z_grid, build_z_grid_all

logger = logging.getLogger(__name__)

#: Accumulator bytes per voxel: flux, weight and variance sums (float64), count, AND and OR masks (uint32).
ACCUMULATOR_BYTES_PER_VOXEL = 3 * 8 + 3 * 4
#: Cube file bytes per voxel: SCI and VARIANCE (float32), AND_MASK, OR_MASK and COUNT (uint32).
FILE_BYTES_PER_VOXEL = 5 * 4
#: Memory kept aside for everything else of a run (frames being read, the interpreter).
MEMORY_HEADROOM = 512 << 20

_ADVICE = ("drizzle a smaller region (width/height), use larger pixels (a smaller xy_oversample), fewer "
           "wavelength bins (z_oversample, z_lambda_edges) or one detector at a time (detector=1..6, "
           "combine_detectors false)")

_COVARIANCE_ADVICE = ", or run without covariance (its cross terms are most of the accumulators)"


class OutputExistsError(FileExistsError):
    """A cube the run would write exists and ``overwrite`` is False (the one case where
    overwriting is the advice)."""


class RunBudgetError(ValueError):
    """The run needs more memory or disk than there is; the message says how much and what to change."""


def output_path(config: Drizzle3DConfig, detector: int) -> Path:
    """``output_dir/drizzle_D{N}.fits`` of detector N (1-6); ``output_dir/drizzle_all.fits`` for
    detector 0, the cube of all detectors (``combine_detectors``)."""
    name = f"drizzle_D{int(detector)}.fits" if int(detector) else "drizzle_all.fits"
    return Path(config.output_dir) / name


def output_paths(config: Drizzle3DConfig, detectors: Sequence[int]) -> List[Path]:
    """:func:`output_path` of each detector (0: the combined cube)."""
    return [output_path(config, d) for d in detectors]


def run_cubes(config: Drizzle3DConfig) -> Tuple[int, ...]:
    """The cubes a run makes, by detector: (0,) for the one cube of ``combine_detectors``, else
    the detector (1-6) or all six."""
    if config.combine_detectors:
        return (0,)
    return (1, 2, 3, 4, 5, 6) if int(config.detector) == 0 else (int(config.detector),)


def _gib(n: float) -> str:
    return f"{n / (1 << 30):.3g} GiB"


def available_memory() -> Optional[int]:
    """Bytes this process can still allocate: the kernel's MemAvailable, bounded by the
    address-space limit (RLIMIT_AS) minus what the process maps; None when unknown."""
    found: List[int] = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        used = 0
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmSize:"):
                        used = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        found.append(max(0, soft - used))
    return min(found) if found else None


def free_disk(path: Path) -> Optional[int]:
    """Free bytes on the file system that holds ``path`` (or its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def cube_shapes(config: Drizzle3DConfig, detectors: Sequence[int]) -> List[Tuple[int, int, int, int]]:
    """``(detector, n_z, ny, nx)`` of each cube the run would make (detector 0: the cube of all)."""
    ny, nx = config.output_ny(), config.output_nx()

    def n_z(d: int) -> int:
        if d == 0:
            return build_z_grid_all(config.z_oversample, config.z_lambda_edges)[0].n_z
        return build_z_grid(d, config.z_oversample, config.z_lambda_edges).n_z

    return [(int(d), n_z(int(d)), ny, nx) for d in detectors]


def check_outputs(config: Drizzle3DConfig, detectors: Sequence[int]) -> None:
    """OutputExistsError when a cube exists and ``overwrite`` is False; OSError naming
    ``output_dir`` when it is no directory, cannot be created or is not writable, or when a
    cube's path is a directory."""
    out = Path(config.output_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"output_dir {out} is a file, not a directory; choose another output_dir")
    for path in output_paths(config, detectors):
        if path.is_dir():
            raise IsADirectoryError(f"output {path} is a directory, not a cube file; move it away or choose "
                                    "another output_dir")
    existing = [p for p in output_paths(config, detectors) if p.exists()]
    if existing and not config.overwrite:
        raise OutputExistsError("Output file(s) already exist: " + ", ".join(str(p) for p in existing)
                                + " (set overwrite=True to replace them)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"output_dir {out} cannot be created: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=out, prefix=".spxdrizzle-write-test-"):
            pass
    except OSError as exc:
        raise type(exc)(exc.errno, f"output_dir {out} is not writable: {exc.strerror or exc}") from None


def bytes_per_voxel(config: Drizzle3DConfig, detector: int) -> Tuple[int, int]:
    """Accumulator and cube-file bytes per voxel of ``detector``'s cube: the fixed ones, plus
    with ``reject_outliers`` the outlier model's (the file has REJECTED, int32), plus with
    ``covariance`` the cross terms' slots (``covariance.bytes_per_voxel``: both parts, the second
    being resident only where a pixel's top-hat spans three planes) and in the file 8 bytes per
    stencil offset and the variance plane (the file holds at most those)."""
    memory, file = ACCUMULATOR_BYTES_PER_VOXEL, FILE_BYTES_PER_VOXEL
    if config.reject_outliers:
        memory, file = memory + MODEL_BYTES_PER_VOXEL, file + 4
    if config.covariance:
        zgrid = build_z_grid(int(detector), config.z_oversample, config.z_lambda_edges)
        offsets = stencil(config, zgrid.edges, int(detector))
        memory, file = memory + cov_bytes_per_voxel(offsets), file + 8 * (len(offsets) + 1)
    return memory, file


def one_piece(config: Drizzle3DConfig) -> bool:
    """True when the cube is never drizzled in tiles: outlier rejection (the model spans the
    grid) or covariance (pairs across a tile edge are not assembled)."""
    return bool(config.reject_outliers or config.covariance)


def _one_piece_refusal(config: Drizzle3DConfig, det: int, shape: Tuple[int, int, int], per_voxel: int, need: int,
                       memory: int) -> str:
    """The RunBudgetError message of a cube that cannot be tiled and does not fit."""
    nz, ny, nx = shape
    what = " and ".join(w for w, on in (("outlier rejection", config.reject_outliers),
                                        ("covariance", config.covariance)) if on)
    why = OUTLIERS_NOT_TILED if config.reject_outliers else "covariance is never tiled"
    return (f"the D{det} cube needs {_gib(need)} of accumulators ({nz} x {ny} x {nx} voxels x {per_voxel} bytes "
            f"with {what}), more than the {_gib(max(0, memory - MEMORY_HEADROOM))} of memory available for them, "
            f"and {why}; {_ADVICE}{_COVARIANCE_ADVICE if config.covariance else ''}")


def check_budget(config: Drizzle3DConfig, detectors: Sequence[int], *, memory: Optional[int] = None,
                 disk: Optional[int] = None) -> None:
    """RunBudgetError when the accumulators of the largest cube do not fit in the memory
    available (``memory``, default :func:`available_memory`) or the cubes do not fit on the
    output disk (``disk``, default :func:`free_disk`). Cubes are made one detector at a time.
    Accumulators beyond the memory are fine when the cube can be drizzled in tiles
    (:mod:`.tiling`): then the tiles of ``tile_arcmin`` must fit, or, when it is None, tiles of the
    smallest automatic size. With ``reject_outliers`` or ``covariance`` the cube is never tiled:
    the accumulators (with the outlier model, with the covariance cross terms) must fit in one piece."""
    from .tiling import MIN_AUTO_TILE_PIXELS, tile_side_pixels

    shapes = cube_shapes(config, detectors)
    per_voxel = {d: bytes_per_voxel(config, d) for d, *_ in shapes}
    det, nz, ny, nx = max(shapes, key=lambda s: s[1] * s[2] * s[3] * per_voxel[s[0]][0])
    need = nz * ny * nx * per_voxel[det][0]
    memory = available_memory() if memory is None else memory
    if memory is not None and det == 0 and need + MEMORY_HEADROOM > memory:  # the combined cube: no tiles
        raise RunBudgetError(
            f"the combined cube needs {_gib(need)} of accumulators ({nz} x {ny} x {nx} voxels x "
            f"{per_voxel[det][0]} bytes), more than the {_gib(max(0, memory - MEMORY_HEADROOM))} of memory "
            f"available for them (a cube of all detectors is drizzled in one piece); {_ADVICE}"
        )
    explicit = config.tile_arcmin is not None
    if memory is not None and not one_piece(config) and (explicit or need + MEMORY_HEADROOM > memory):
        side = MIN_AUTO_TILE_PIXELS if config.tile_arcmin is None else \
            tile_side_pixels(config.tile_arcmin, config.effective_pixscale())
        tile_need = nz * min(side, ny) * min(side, nx) * ACCUMULATOR_BYTES_PER_VOXEL
        if tile_need + MEMORY_HEADROOM > memory:
            what = (f"tiles of tile_arcmin={config.tile_arcmin:g}' need {_gib(tile_need)} of accumulators each "
                    f"({nz} x {min(side, ny)} x {min(side, nx)} voxels"
                    if explicit else f"the D{det} cube needs {_gib(need)} of accumulators ({nz} x {ny} x {nx} voxels")
            raise RunBudgetError(
                f"{what} x {ACCUMULATOR_BYTES_PER_VOXEL} bytes), more than the "
                f"{_gib(max(0, memory - MEMORY_HEADROOM))} of memory available for them even in tiles; use smaller "
                f"tiles (tile_arcmin), or {_ADVICE}")
        if not explicit:
            logger.info("the D%d cube needs %s of accumulators, more than the memory available: it will be "
                        "drizzled in tiles", det, _gib(need))
    elif memory is not None and need + MEMORY_HEADROOM > memory:
        raise RunBudgetError(_one_piece_refusal(config, det, (nz, ny, nx), per_voxel[det][0], need, memory))
    files = sum(n * y * x * per_voxel[d][1] for d, n, y, x in shapes)
    disk = free_disk(Path(config.output_dir)) if disk is None else disk
    if disk is not None and files > disk:
        raise RunBudgetError(
            f"the cube file(s) need {_gib(files)} in output_dir {config.output_dir}, which has {_gib(disk)} free; "
            f"free some space, choose another output_dir, or {_ADVICE}"
        )
    logger.debug("budget: largest accumulators %s (D%d), cube files %s", _gib(need), det, _gib(files))


def check_inputs(config: Drizzle3DConfig) -> None:
    """NotADirectoryError / FileNotFoundError naming ``data_mirror`` when it is set and is not
    an existing directory (a file, a FIFO, a device are named as such). An object-store URL
    (``s3://...``) is checked when its objects are read (a missing one is reported and skipped)."""
    if config.data_mirror is None or isinstance(config.data_mirror, str):
        return
    root = Path(config.data_mirror)
    odd = not_a_regular_file(root)
    if odd is None:
        raise NotADirectoryError(f"data_mirror {root} is a file, not a directory (the local copy of the archive, "
                                 "holding qr2/, qr3/, ...)")
    if not root.is_dir():
        raise FileNotFoundError(f"data_mirror {root} {odd}; it must be the directory holding qr2/, qr3/, ...")


def preflight(config: Drizzle3DConfig, detectors: Sequence[int]) -> None:
    """Everything :func:`check_inputs`, :func:`check_outputs` and :func:`check_budget` check,
    in that order (the free disk is measured in the output directory itself)."""
    check_inputs(config)
    check_outputs(config, detectors)
    check_budget(config, detectors)


__all__ = ["OutputExistsError", "RunBudgetError", "available_memory", "check_budget", "check_outputs",
           "check_inputs", "cube_shapes", "free_disk", "output_path", "output_paths", "preflight", "run_cubes"]
