"""Rust core of spxquery.drizzle3d (the ``_core`` extension module; source in ``rust/src``).

Every entry point takes keyword arguments only. Conventions: 0-based pixel coordinates,
output pixel ``j`` covers ``[j - 0.5, j + 0.5]``; wavelengths in um; images in MJy/sr,
variances in (MJy/sr)². Shape, type and value errors raise ``ValueError`` (``TypeError`` for
an array of the wrong dtype, ``KeyError`` for a missing accumulator) naming the array or
parameter; an internal panic raises ``RuntimeError``. Heavy work runs with the GIL released,
and results are bit-for-bit identical for any ``threads`` (0: all cores, ``RAYON_NUM_THREADS``).
"""

from collections.abc import Mapping
from typing import Any, TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt
from typing_extensions import NotRequired

__version__: str

F64Array: TypeAlias = npt.NDArray[np.float64]
U32Array: TypeAlias = npt.NDArray[np.uint32]
BoolArray: TypeAlias = npt.NDArray[np.bool_]

class CubeArrays(TypedDict):
    """A cube's accumulators, each ``(n_z, ny, nx)``, C-contiguous, written in place
    (``DrizzleCube.accumulators()``). Optional: the covariance cross terms ``cov_cross``
    (float64 ``(n_parts, n_z, ny, nx, slots)``, any strides, each offset at its place of
    :func:`covariance_places`: ``covariance.cross_terms`` pads each voxel's terms to whole cache
    lines) of the offsets ``cov_offsets`` (int64 ``(n_offsets,
    3)``, each ``(dz, dy, dx)`` positive: ``dy > 0``, or ``dy = 0`` and ``dx > 0``, or ``dy = dx
    = 0`` and ``dz > 0``); only ``accumulate_frame`` fills them (``accumulate_contributions``
    refuses such a cube), and a pixel coupling voxels beyond the offsets is a ``ValueError``."""

    flux_weighted: F64Array
    weight_total: F64Array
    var_accum: F64Array
    count_map: U32Array
    and_mask: U32Array
    or_mask: U32Array
    cov_cross: NotRequired[F64Array]
    cov_offsets: NotRequired[npt.NDArray[np.int64]]

class EngineParams:
    """The engine's parameters for one cube, validated once (``ValueError`` naming the parameter).

    ``z_edges``: output wavelength bin edges (um), finite, strictly increasing, at least two;
    ``xy_shrink``, ``z_shrink``: droplet size relative to the input pixel / bandwidth, in (0, 1];
    ``ivar_max``: cap on the inverse variance, > 0; ``min_overlap``: smallest voxel fraction
    ``f_xy * f_z`` deposited, in [0, 1); ``kernel``: ``"square"`` or ``"bilinear"``.
    Picklable; immutable.
    """

    def __init__(
        self,
        *,
        z_edges: npt.ArrayLike,
        xy_shrink: float,
        z_shrink: float,
        ivar_max: float,
        min_overlap: float,
        kernel: str,
    ) -> None: ...
    @property
    def z_edges(self) -> F64Array:
        """A copy of the bin edges (um)."""
    @property
    def xy_shrink(self) -> float: ...
    @property
    def z_shrink(self) -> float: ...
    @property
    def ivar_max(self) -> float: ...
    @property
    def min_overlap(self) -> float: ...
    @property
    def kernel(self) -> str: ...
    @property
    def n_z(self) -> int:
        """Number of output wavelength planes."""
    def as_dict(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this object."""

def accumulate_frame(
    *,
    cube: CubeArrays | Mapping[str, np.ndarray],
    params: EngineParams,
    corners_x: F64Array,
    corners_y: F64Array,
    image: F64Array,
    variance: F64Array,
    flags: U32Array,
    lambda_c: F64Array,
    delta_lambda: F64Array,
    exclude_mask: BoolArray | None = None,
    threads: int = 0,
    origin: tuple[int, int] = (0, 0),
) -> tuple[int, int, BoolArray]:
    """Drizzle one frame (or crop, or strip of rows) into ``cube`` in place, from its corner map.

    ``origin``: the grid pixel ``(row, column)`` of the cube's first voxel, for a tile of a larger
    grid (the corner map is in the grid's pixels; each voxel gets the bits of the whole-grid run).
    ``corners_x/y``: ``(ny + 1, nx + 1)`` output positions of the input pixel corners; the
    per-pixel arrays and ``exclude_mask`` (True: skip) are ``(ny, nx)``. Returns ``(n_pixels,
    n_contributions, planes)``: input pixels that deposited, voxel updates, and ``(n_z,)`` bool,
    the planes that received anything.
    """

def accumulate_contributions(
    *,
    cube: CubeArrays | Mapping[str, np.ndarray],
    params: EngineParams,
    image: F64Array,
    variance: F64Array,
    flags: U32Array,
    lambda_c: F64Array,
    delta_lambda: F64Array,
    pixel_idx: npt.NDArray[np.int64],
    out_y: npt.NDArray[np.int32],
    out_x: npt.NDArray[np.int32],
    f_xy: F64Array,
    exclude_mask: BoolArray | None = None,
    threads: int = 0,
) -> tuple[int, int, BoolArray]:
    """Accumulate a flat contribution list (spxquery 0.4.1 API) into ``cube`` in place.

    Per-pixel arrays are 1-D (flattened row-major); contribution ``k`` sends the fraction
    ``f_xy[k]`` of pixel ``pixel_idx[k]`` to output pixel ``(out_y[k], out_x[k])``.
    ``params.xy_shrink`` and ``params.kernel`` do not enter (``f_xy`` is given). Returns what
    :func:`accumulate_frame` returns.
    """

def spatial_mapping(
    *,
    corners_x: F64Array,
    corners_y: F64Array,
    out_ny: int,
    out_nx: int,
    xy_shrink: float,
    kernel: str,
    threads: int = 0,
) -> tuple[BoolArray, npt.NDArray[np.int64], npt.NDArray[np.int32], npt.NDArray[np.int32], F64Array]:
    """The flat contribution list of a corner map (spxquery 0.4.1 API): ``(valid (ny, nx),
    pixel_idx, out_y, out_x, f_xy)``, ordered by input pixel, then output row, then column."""

def spectral_overlaps(
    *, lambda_c: float, delta_lambda: float, z_shrink: float, z_edges: F64Array
) -> tuple[npt.NDArray[np.int32], F64Array]:
    """Overlaps of the top-hat ``lambda_c ± delta_lambda * z_shrink / 2`` (um) with the bins:
    ``(z_idx, f_z)``, ``f_z`` = overlap length / top-hat width."""

def densify(*, coarse: F64Array, step: int, ny: int, nx: int) -> F64Array:
    """Dense ``(ny, nx)`` grid from a coarse one by Catmull-Rom interpolation; coarse node
    ``(a, b)`` lies at dense index ``((a - 1) * step, (b - 1) * step)``."""

def fits_ratio_plane(
    *,
    numerator: F64Array,
    weight: F64Array,
    squared: bool,
    out: npt.NDArray[np.uint32],
) -> None:
    """A SCI/VARIANCE plane of the cube file, in place: ``out[i]`` holds the big-endian bytes of
    float32 ``numerator[i] / weight[i]`` (``/ weight[i]**2`` when ``squared``) where ``weight[i] > 0``,
    NaN elsewhere (numpy's division and rounding). Contiguous 1-D arrays of one length, else
    ValueError."""

def fits_covariance_band(
    *,
    cross: F64Array,
    var: F64Array,
    weight: F64Array,
    offsets: npt.NDArray[np.int64],
    columns: npt.NDArray[np.int64],
    k: int,
    y0: int,
    out: npt.NDArray[np.uint64],
) -> None:
    """Plane ``k``, rows ``y0 .. y0 + rows`` of the COVARIANCE image, the offsets ``offsets``, in
    place: ``out`` (``(1 + n) * rows * nx``) holds the big-endian bytes of float64, offset-major;
    block 0 is ``var / weight[k]**2`` where ``weight > 0``, NaN elsewhere; block ``1 + j`` is
    ``cross[..., columns[j]] / (W_k W_{k+o})`` where that product is ``> 0`` and the partner lies
    in the cube, 0.0 elsewhere (``covariance.file_planes``'s bits). ``cross``: ``(parts, rows, nx,
    slots)``, any strides; ``var``: ``rows * nx``; ``weight``: the C-contiguous ``(nz, ny, nx)``
    weight_total; ``offsets``: ``(n, 3)`` ``(dz, dy, dx)``; ``columns``: ``n`` terms, each
    ``part * slots + slot`` (``covariance.term_columns``).
    Wrong shapes, a column beyond ``cross``'s terms or a band outside the cube: ValueError."""

def covariance_terms_used(*, cross: F64Array) -> npt.NDArray[np.bool_]:
    """Per term ``part * slots + slot`` of the cross terms ``cross`` ``(parts, nz, ny, nx, slots)``
    (any strides), whether any voxel's term is nonzero (has a bit set): the offsets the COVARIANCE
    image holds (``covariance.written_terms``). One read of the array on rayon's pool, GIL
    released (a part never written reads the zero page: no memory is allocated for it)."""

def covariance_places(*, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``(part, slot)`` (``(n, 2)``) of each covariance offset ``(dz, dy, dx)`` of ``offsets``
    (``(n, 3)``, each positive) in ``cov_cross``: part 0 for ``|dz| <= 1``, else part 1; a part's
    slots number its offsets in their order. Bad offsets: ValueError naming the offset."""

def zodi_fit_sums(
    *,
    image: F64Array,
    zodi: F64Array,
    variance: F64Array | None,
    flags: npt.NDArray[np.uint32] | None,
    reject: int,
) -> tuple[int, float, float]:
    """``(n, sum(w * I * Z), sum(w * Z * Z))`` over the pixels (contiguous 1-D, same length) whose
    image, zodi and variance are finite, variance > 0, zodi != 0 and flags carry none of the bits of
    ``reject``; ``w = 1 / variance`` (1 without a variance). The sums are numpy's pairwise sums of the
    same products, bit for bit (``rust/src/zodifit.rs``). ValueError for arrays of other lengths."""

def wave_lookup(
    *,
    values: F64Array,
    row_cell: npt.NDArray[np.int64],
    row_frac: F64Array,
    column_cell: npt.NDArray[np.int64],
    column_frac: F64Array,
) -> tuple[F64Array, F64Array]:
    """``(value 0, value 1)`` ``(rows, columns)`` of a ``(knot rows, knot columns, 2)`` table by
    separable bilinear interpolation: ``(1 - fy) * ax[iy] + fy * ax[iy + 1]`` with ``ax[k] = (1 - fx)
    * v[k, ix] + fx * v[k, ix + 1]`` (cells ``iy``/``ix``, fractions ``fy``/``fx`` per row/column).
    ValueError for a cell outside the table."""

def rice_decode_rows(
    *,
    heap: npt.NDArray[np.uint8],
    offsets: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    nx: int,
    x0: int,
    x1: int,
    bytepix: int,
    blocksize: int,
    bzero: int,
) -> U32Array:
    """Decode FITS RICE_1 tiles of whole rows of ``nx`` pixels (tile ``k`` is
    ``heap[offsets[k]:offsets[k] + lengths[k]]`` and holds ``rows[k]`` rows; ``bytepix`` 1, 2
    or 4) and return columns ``x0:x1`` of every row as a ``(sum(rows), x1 - x0)`` uint32 array:
    16-bit values sign-extended, then ``bzero`` added modulo 2**32. A malformed tile raises
    ``ValueError`` naming it; any byte string is decoded or refused, never read past."""

def read_plain_rows(
    *,
    fd: int,
    size: int,
    name: str,
    offset: int,
    ny: int,
    nx: int,
    bitpix: int,
    bzero: int,
    start: int,
    step: int,
    count: int,
    x0: int,
    x1: int,
    out: npt.NDArray[Any] | None = None,
    minus_name: str | None = None,
    minus_offset: int | None = None,
    minus_bitpix: int | None = None,
    minus_scale: float | None = None,
) -> npt.NDArray[Any]:
    """Pixels ``[rows, x0:x1]`` (rows ``start, start + step, ...``, ``count`` of them) of a plain
    ``ny x nx`` image at byte ``offset`` of the open local file ``fd`` (``size`` bytes), read by
    ``pread`` with the GIL released: BITPIX -32/-64 as float64, 8/16/32/64 as uint32
    (``value + bzero`` modulo 2**32); shape ``(count, x1 - x0)``, written into ``out`` when
    given (a C-contiguous array of that shape and dtype, returned). ValueError naming ``name``
    and the row for a file that ends early, a box outside the image or an unfit ``out`` (POSIX
    only). With ``minus_*`` (all four, a float image): the same window of the float image
    ``minus_name`` at byte ``minus_offset`` (``minus_bitpix`` -32/-64, the same ``ny x nx``) times
    ``minus_scale`` is subtracted, ``value - (other * scale)`` per pixel (numpy's ``image -=
    np.multiply(other, scale)``, bit for bit), without an array of the other image."""

def header_end(*, chunk: bytes) -> tuple[int, bool]:
    """``(offset of the END card or -1, whether a byte before it is not FITS header text)`` of a
    chunk of whole 2880-byte header blocks (an END card: card-aligned ``END``, the rest of the
    card blank as Python's ``str.strip`` sees latin-1 text)."""

def header_mandatory(*, text: bytes, primary: bool) -> tuple[str | None, int, list[int], int, int, str | None] | None:
    """``(XTENSION or None, BITPIX, [NAXIS1, ...], PCOUNT, GCOUNT, EXTNAME string or None)`` of a
    header's cards when the mandatory ones are valid, in their standard places and read exactly
    as the Python parser reads them (the first EXTNAME card, None when absent or not a string);
    None when the Python reader must judge the header."""

def header_values(*, text: str) -> tuple[dict[str, str | bool | int | float | None], list[str]]:
    """The values of the standard cards of a header's ``text`` (whole 80-character cards) in one
    pass, and the keywords left to the Python parser (repeated, malformed, long strings that may
    continue, integers beyond 64 bits); HIERARCH and comment cards are not read."""

def outlier_test(
    *,
    model: npt.NDArray[np.float32],
    steps: npt.NDArray[np.float32],
    centers: F64Array,
    corners_x: F64Array,
    corners_y: F64Array,
    image: F64Array,
    variance: F64Array,
    lambda_c: F64Array,
    exclude_mask: BoolArray | None = None,
    snr: tuple[float, float],
    scale: tuple[float, float],
    edge: float,
    max_undefined: float,
    threads: int = 0,
) -> tuple[BoolArray, BoolArray, int]:
    """Outlier rejection (issue 19): each pixel of a strip against the model blotted at its own
    (x, y, lambda). ``model``, ``steps``: ``(n_z, ny, nx)`` float32, C-contiguous (MJy/sr, NaN undefined);
    ``centers``: the ``n_z`` plane centres (um, increasing). The pixel's position is the mean of
    its four corners, its plane ``interp(lambda_c, centers, arange(n_z))``; ``m`` and ``G`` are
    the model and the steps there (:func:`blot_cube`). A pixel is tested when not excluded, its
    value and variance finite, variance > 0, its centre within ``edge`` output pixels of the outer
    voxel centres and ``m`` defined. Returns ``(core, candidate, n_tested)``: ``(ny, nx)`` bool,
    ``|d - m| > snr[i] * sqrt(variance) + scale[i] * G`` for ``i`` = 0 and 1 (``G`` taken as 0
    where ``|d - m| <= snr[1] * sqrt(variance)``, NaN as 0), and the number of pixels tested."""

def blot_cube(
    *,
    cube: npt.NDArray[np.float32],
    x: F64Array,
    y: F64Array,
    z: F64Array,
    max_undefined: float,
    threads: int = 0,
) -> npt.NDArray[np.float32]:
    """Trilinear interpolation (float32) of ``cube`` ``(n_z, ny, nx)``, C-contiguous, at output positions ``x, y``
    (pixels) and fractional planes ``z`` (1-D, equal lengths), clamped to the outer voxels; NaN
    voxels left out with the weights renormalised, NaN where they hold more than
    ``max_undefined`` of the weight."""

def model_merge(
    *,
    scratch_flux: F64Array,
    scratch_weight: F64Array,
    flux_weighted: F64Array,
    weight_total: F64Array,
    n_frames: npt.NDArray[np.uint16],
    hi_v: npt.NDArray[np.float32],
    hi_w: npt.NDArray[np.float32],
    hi2_v: npt.NDArray[np.float32],
    hi2_w: npt.NDArray[np.float32],
    boxes: npt.NDArray[np.int64],
    threads: int = 0,
) -> None:
    """Outlier rejection's model pass: merge a frame drizzled alone into ``scratch_flux`` /
    ``scratch_weight`` (its weighted flux and weight) into the robust model, in place, over
    ``boxes`` (``(n, 5)``: plane, y0, y1, x0, x1; distinct planes within the cube), and clear the
    scratch there. Per voxel: the totals ``flux_weighted``, ``weight_total`` get the frame's; its
    mean ``scratch_flux / scratch_weight`` (float32; none where the weight is 0) replaces the
    highest (``hi_v``, weight ``hi_w``), which moves to second place (``hi2_v``, ``hi2_w``), when
    it is higher, else the second when higher than that; ``n_frames`` (saturating) counts the
    frames with weight. All arrays ``(n_z, ny, nx)``, C-contiguous."""

def _panic_for_test(message: str) -> None:
    """Test hook: panics in the detached section (raises ``RuntimeError``)."""
