"""Covariance of drizzled voxels: the stencil, the HDUs, and exact aperture variances.

Each input pixel ``i`` spreads over several voxels, so neighbouring voxels share noise. With
``SCI_k = sum_i c_ki x_i``, ``c_ki = w_ki / W_k`` (``w_ki = min(1/sigma_i^2, ivar_max) f_xy f_z``,
``W_k = sum_i w_ki``), ``Cov(k, l) = X_kl / (W_k W_l)`` where ``X_kl = sum_i w_ki w_li sigma_i^2``.
With ``covariance=True`` the engine accumulates ``X_kl`` in the same pass as the cube
(``DrizzleCube.cov_cross``, Rust ``covariance.rs``) for ``l = k + o``, ``o`` in a stencil of
offsets ``(dz, dy, dx)`` derived from the geometry (:func:`stencil`); each pair is stored once,
at the voxel with the smaller row, then column, then plane. A pixel coupling voxels beyond the
stencil stops the run with an error (never dropped terms). The accumulator is
``(n_parts, n_z, ny, nx, slots)`` (:func:`cross_terms`): part 0 holds the offsets with
``|dz| <= 1``, part 1 (when the stencil has any) those with ``|dz| >= 2``, which only a pixel
whose top-hat spans three planes couples, so part 1's memory is touched only where one does
(never in the 30' D3 benchmark cubes); :func:`term` is offset ``n``'s ``(n_z, ny, nx)`` view.

File layout (after the other HDUs): ``COVARIANCE``, float64 ``(n_offsets, n_z, ny, nx)`` in
(MJy/sr)^2: plane ``[n, k, y, x]`` is ``Cov((k, y, x), (k + dz, y + dy, x + dx))`` for the
``n``-th row of ``COVAR-OFFSETS`` (table ``DZ, DY, DX``); row 0 is ``(0, 0, 0)``, the variance
in float64. The rows after it are the stencil's offsets (in its order) that some input pixel
coupled (:func:`written_terms`): an offset of the stencil that is not listed has covariance
exactly 0 for every voxel (a 30' D3 cube of 48 frames lists 25 of the stencil's 52, and its
file is half the size). :func:`aperture_variance` gives the exact variance of a sum or mean over any voxels.

Without covariance HDUs, :func:`aperture_variance` falls back (with a warning) to the summed
variances times ``R^2``, ``R`` the noise correction factor of Casertano et al. (2000) and
Fruchter & Hook (2002) (:func:`correction_factor`; recorded as ``COVCORR`` in every cube).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Tuple

import numpy as np
from astropy.io import fits

from . import _core, directio, vmhints

#: EXTNAME of the covariance image and of its offset table.
COVARIANCE_HDU = "COVARIANCE"
OFFSETS_HDU = "COVAR-OFFSETS"
#: PRIMARY keyword holding :func:`correction_factor`.
CORRECTION_KEY = "COVCORR"
#: Allowance for an input pixel larger than the nominal 6.15" on the sky (optical distortion).
GEOMETRY_MARGIN = 1.1
#: A pixel's resolving power is taken to lie within this many R_STD of its channel's R.
SPECTRAL_SIGMAS = 3.0


def correction_factor(config) -> float:
    """Noise correction factor ``R`` (Casertano et al. 2000; Fruchter & Hook 2002) of the run's
    geometry: the ratio of the true noise of a large aperture to the noise the summed pixel
    variances give (variances: ``R^2``). ``r = droplet side / output pixel``: ``xy_shrink x
    xy_oversample`` for the square kernel, 1 for bilinear (a point shared over one output pixel);
    ``R = r / (1 - 1/(3r))`` for ``r >= 1``, ``1 / (1 - r/3)`` for ``r <= 1``."""
    r = 1.0 if config.kernel == "bilinear" else float(config.xy_shrink) * float(config.xy_oversample)
    return r / (1.0 - 1.0 / (3.0 * r)) if r >= 1.0 else 1.0 / (1.0 - r / 3.0)


def droplet_diameter(config) -> float:
    """Largest distance (output pixels) between two points of one droplet: the diagonal of a
    square of side ``xy_shrink x xy_oversample`` output pixels x :data:`GEOMETRY_MARGIN`; for the
    bilinear kernel, that of the 2 x 2 pixels a point is shared among."""
    if config.kernel == "bilinear":
        return math.sqrt(2.0)
    return float(config.xy_shrink) * float(config.xy_oversample) * GEOMETRY_MARGIN * math.sqrt(2.0)


def spatial_offsets(config) -> List[Tuple[int, int]]:
    """The ``(dy, dx)`` of the output pixel pairs one droplet can touch: those whose nearest
    points are closer than :func:`droplet_diameter` (for bilinear: within 2 x 2 pixels)."""
    if config.kernel == "bilinear":
        return [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    d = droplet_diameter(config)
    s = int(math.floor(d)) + 1
    return [(dy, dx) for dy in range(-s, s + 1) for dx in range(-s, s + 1)
            if math.hypot(max(abs(dy) - 1, 0), max(abs(dx) - 1, 0)) < d]


def spatial_reach(config) -> int:
    """Largest row or column distance (output pixels) between two voxels one input pixel can
    touch (:func:`spatial_offsets`)."""
    return max(max(abs(dy), abs(dx)) for dy, dx in spatial_offsets(config))


def top_hat_widths(edges: np.ndarray, detector: int | None, config) -> np.ndarray:
    """Per bin of ``edges`` (um), the widest spectral top-hat (um) centred in it: ``z_shrink``
    x the largest bandwidth of the calibration, ``WL_MAX / (R - 3 R_STD)`` of the detector's
    channels (of all detectors when ``detector`` is None), interpolated at the bin's edges
    (the larger)."""
    from .spectral import load_spectral_table

    table = load_spectral_table()
    if detector is not None and int(detector) in set(table["DETECTOR"]):
        table = table[table["DETECTOR"] == int(detector)]
    edges = np.asarray(edges, dtype=np.float64)
    widths = np.zeros(edges.size - 1)
    for _, t in table.groupby("DETECTOR"):
        t = t.sort_values("WAVELENGTH")
        band = np.interp(edges, t["WAVELENGTH"], t["WL_MAX"] / (t["R"] - SPECTRAL_SIGMAS * t["R_STD"]))
        widths = np.maximum(widths, np.maximum(band[:-1], band[1:]))
    return float(config.effective_z_shrink()) * widths


def spectral_reach(edges: np.ndarray, top_hat: float | np.ndarray) -> int:
    """Largest plane distance two voxels of one top-hat can have on the bins ``edges`` (um):
    ``top_hat`` is its width (um), or per bin the widest top-hat centred there. A top-hat reaches
    from bin ``k`` to ``k + d`` (its centre in one of them) only when the bins between them are
    together narrower than it."""
    widths = np.diff(np.asarray(edges, dtype=np.float64))
    n = widths.size
    hat = np.broadcast_to(np.asarray(top_hat, dtype=np.float64), (n,))
    inner = np.concatenate([[0.0], np.cumsum(widths)])  # inner[b] - inner[a]: bins a .. b-1
    reach = 0
    for k in range(n):
        d = 1
        while k + d < n and inner[k + d] - inner[k + 1] < hat[k : k + d + 1].max():
            d += 1
        reach = max(reach, min(d - 1, n - 1 - k))
    return reach


def stencil(config, edges: np.ndarray, detector: int | None = None) -> np.ndarray:
    """The offsets ``(dz, dy, dx)`` (int64, ``(n, 3)``) whose cross terms the engine
    accumulates: every positive offset (``dy > 0``, or ``dy = 0`` and ``dx > 0``, or ``dy = dx =
    0`` and ``dz > 0``) of :func:`spatial_offsets` and planes within :func:`spectral_reach`,
    nearest first."""
    z = spectral_reach(edges, top_hat_widths(edges, detector, config))
    out = [(dz, dy, dx) for dy, dx in spatial_offsets(config) for dz in range(-z, z + 1)
           if dy > 0 or (dy == 0 and (dx > 0 or (dx == 0 and dz > 0)))]
    # Nearest first: most pixels couple only voxels one apart, whose terms (innermost in the
    # accumulator) then share two cache lines per voxel instead of spreading over all of them.
    out.sort(key=lambda o: max(abs(v) for v in o))
    return np.array(out, dtype=np.int64).reshape(-1, 3)


#: Bytes of a cache line: each voxel's cross terms start on one (:func:`cross_terms`).
CACHE_LINE = 64
#: Bytes of a transparent huge page: each part of :func:`cross_terms` starts on one, so that no
#: huge page of part 0 (the kernel's first touch, the populate) reaches into part 1.
HUGE_PAGE = 2 << 20


def padded_terms(n_offsets: int) -> int:
    """Float64 slots per voxel and part of :func:`cross_terms` for ``n_offsets`` terms: rounded up
    to whole cache lines."""
    per_line = CACHE_LINE // 8
    return -(-int(n_offsets) // per_line) * per_line


def term_places(offsets: np.ndarray) -> np.ndarray:
    """``(part, slot)`` (int64 ``(n, 2)``) of each of the stencil ``offsets`` in :func:`cross_terms`:
    part 0 for ``|dz| <= 1``, else part 1; a part's slots number its offsets in the stencil's
    order (the engine's rule, ``_core.covariance_places``)."""
    return _core.covariance_places(offsets=np.ascontiguousarray(offsets, dtype=np.int64).reshape(-1, 3))


def layout(offsets: np.ndarray) -> Tuple[int, int]:
    """``(n_parts, slots)`` of :func:`cross_terms` for the stencil ``offsets``: 1 or 2 parts of
    :func:`padded_terms` slots per voxel (one size for both parts, so that each offset's element
    step from its anchor is one constant)."""
    places = term_places(offsets)
    if len(places) == 0:
        return 1, 0
    return int(places[:, 0].max()) + 1, padded_terms(int(places[:, 1].max()) + 1)


def term_columns(offsets: np.ndarray) -> np.ndarray:
    """Per offset of the stencil ``offsets``, its term ``part * slots + slot`` (int64): what
    ``_core.fits_covariance_band`` and ``_core.covariance_terms_used`` number the terms by."""
    places = term_places(offsets)
    return places[:, 0] * layout(offsets)[1] + places[:, 1]


def cross_terms(shape3: Tuple[int, int, int], offsets: np.ndarray) -> np.ndarray:
    """Zeroed cross-term accumulator ``(n_parts, n_z, ny, nx, slots)`` float64 for the stencil
    ``offsets`` (:func:`layout`; offset ``n`` of voxel ``(k, y, x)`` at ``[part, k, y, x, slot]``,
    :func:`term_places`, :func:`term`). Each voxel's terms start on a cache line
    (:data:`CACHE_LINE`): the nearest offsets, which most input pixels update (:func:`stencil` lists
    them first), share the fewest (13 terms: two lines). Each part starts on a huge page
    (:data:`HUGE_PAGE`). Part 0's pages are faulted in on a background thread
    (:func:`.vmhints.populate_async`: the first frames' kernel then finds them ready instead of
    zeroing ~370 MB, a 30' D3 cube, itself); part 1's are left to fault where a term is written
    (a pixel whose top-hat spans three planes; none in a 30' D3 cube of the cached fields)."""
    parts, slots = layout(offsets)
    size = int(np.prod(shape3)) * slots
    step = HUGE_PAGE // 8
    part = -(-size // step) * step  # elements from one part's start to the next's
    flat = vmhints.fresh_zeros(parts * part + step)  # never cleared by calloc: part 1 stays unmapped
    start = (-flat.ctypes.data % HUGE_PAGE) // 8
    vmhints.populate_async(flat[start:start + size], stage_name="populate")
    out = flat[start:start + parts * part].reshape(parts, part)[:, :size].reshape(parts, *shape3, slots)
    assert np.shares_memory(out, flat)  # a view: the parts' strides as above
    return out


def term(cube, n: int) -> np.ndarray:
    """The ``(n_z, ny, nx)`` view of the cross terms of offset ``n`` (``cube.cov_offsets[n]``) of a
    ``DrizzleCube`` (``cube.cov_cross``'s part and slot of it, :func:`term_places`)."""
    part, slot = (int(v) for v in term_places(cube.cov_offsets)[n])
    return cube.cov_cross[part, ..., slot]


def clear_terms(cube) -> None:
    """Zero a ``DrizzleCube``'s cross terms, leaving a part of them that holds no term untouched
    (part 1 is rarely written: filling it would fault in all its pages)."""
    used = _core.covariance_terms_used(cross=cube.cov_cross).reshape(cube.cov_cross.shape[0], -1)
    for p in range(cube.cov_cross.shape[0]):
        if p == 0 or used[p].any():
            cube.cov_cross[p].fill(0.0)


def bytes_per_voxel(offsets: np.ndarray) -> int:
    """Accumulator memory of the cross terms of the stencil ``offsets`` per voxel: both parts of
    :func:`layout` (part 1 is resident only where a pixel's top-hat spans three planes; it is
    counted, so that a budget holds for any input)."""
    parts, slots = layout(offsets)
    return 8 * parts * slots


# ── normalisation ────────────────────────────────────────────────────────────


def _pair_slices(o: Tuple[int, ...], shape: Tuple[int, ...]) -> Tuple[Tuple[slice, ...], Tuple[slice, ...]]:
    """Slices of the anchors ``k`` and partners ``k + o`` that both lie in ``shape``."""
    anchor, partner = [], []
    for d, n in zip(o, shape):
        d = int(d)
        anchor.append(slice(max(0, -d), max(0, n - max(d, 0))))
        partner.append(slice(max(0, d), max(0, n + min(d, 0))))
    return tuple(anchor), tuple(partner)


def normalised(cross: np.ndarray, weight: np.ndarray, o: Tuple[int, ...]) -> np.ndarray:
    """``Cov(k, k + o) = X / (W_k W_{k+o})`` from the cross terms ``cross`` of offset ``o``;
    0 where either voxel has no weight."""
    out = np.zeros(weight.shape, dtype=np.float64)
    a, p = _pair_slices(o, weight.shape)
    w = weight[a] * weight[p]
    np.divide(cross[a], w, out=out[a], where=w > 0)
    return out


def _diagonal(var_accum: np.ndarray, weight: np.ndarray) -> np.ndarray:
    out = np.full(weight.shape, np.nan, dtype=np.float64)
    np.divide(var_accum, weight * weight, out=out, where=weight > 0)
    return out


def written_terms(cube) -> np.ndarray:
    """Indices (int64, ascending) into a ``DrizzleCube``'s ``cov_offsets`` of the offsets the file
    holds: those whose cross term is nonzero for some voxel (``_core.covariance_terms_used``: one
    read of the accumulator on both cores, GIL released). The others were coupled by no input
    pixel: their covariance is exactly 0 everywhere, and leaving them out loses nothing."""
    used = _core.covariance_terms_used(cross=cube.cov_cross)
    return np.flatnonzero(used[term_columns(cube.cov_offsets)]).astype(np.int64)


def _columns(cube, terms: np.ndarray | None) -> np.ndarray:
    """``terms``, or every term of the stencil when None."""
    return np.arange(len(cube.cov_offsets), dtype=np.int64) if terms is None else np.asarray(terms, np.int64)


def file_offsets(cube, terms: np.ndarray | None = None) -> np.ndarray:
    """The rows of ``COVAR-OFFSETS`` for a ``DrizzleCube``: ``(0, 0, 0)``, then the offsets of its
    stencil numbered ``terms`` (:func:`written_terms`; None: all of them)."""
    offsets = np.asarray(cube.cov_offsets, np.int64).reshape(-1, 3)[_columns(cube, terms)]
    return np.concatenate([np.zeros((1, 3), np.int64), offsets])


def file_planes(cube, terms: np.ndarray | None = None) -> Iterator[np.ndarray]:
    """The ``COVARIANCE`` image of a ``DrizzleCube`` plane by plane (offset-major, float64): the
    variance, then the offsets ``terms`` (as :func:`file_offsets`)."""
    shape = cube.weight_total.shape[1:]
    columns = _columns(cube, terms)
    for n, o in enumerate(file_offsets(cube, terms)):
        dz = int(o[0])
        for k in range(cube.nz):
            if n == 0:
                yield _diagonal(cube.var_accum[k], cube.weight_total[k])
                continue
            plane = np.zeros(shape, dtype=np.float64)
            if 0 <= k + dz < cube.nz:
                a, p = _pair_slices((int(o[1]), int(o[2])), shape)
                w = cube.weight_total[k][a] * cube.weight_total[k + dz][p]
                np.divide(term(cube, columns[n - 1])[k][a], w, out=plane[a], where=w > 0)
            yield plane


#: Bytes of the reusable output buffer of :func:`write_image` (a band of rows of one plane, all offsets).
WRITE_BUFFER_BYTES = 8 << 20


def write_image(f, cube, terms: np.ndarray | None = None) -> int:
    """Write the data of the ``COVARIANCE`` image (:func:`file_planes`'s bytes for ``terms``,
    big-endian, without padding) at the current position of the binary file ``f`` (a real file: ``fileno``); returns
    its byte count and leaves ``f`` at its end. Per plane and band of rows,
    ``_core.fits_covariance_band`` reads each voxel's terms once (GIL released) into one reused
    buffer of at most :data:`WRITE_BUFFER_BYTES` (or one row), and a :class:`.directio.PlacedWriter`
    places each offset's block at its offset-major position in the file (the image's blocks are
    allocated first, :func:`.vmhints.preallocate`, so the file stays contiguous although written out
    of order): for an image of at least :data:`.directio.DIRECT_MIN_BYTES` (or within a cube written
    directly, whose writer it then uses) its whole 4 KiB blocks straight to the disk (``O_DIRECT``),
    the few bytes at its ends through the page cache (an offset's blocks follow each other from band
    to band: only the ends of each offset's image). Otherwise all goes through the page cache and the
    disk write of the file's dirty pages starts after each band (:func:`.vmhints.start_writeback`).
    Either way the ``fsync`` ending the save waits for little, not for the whole ~330 MB of a 30' D3
    cube."""
    nz, ny, nx = cube.weight_total.shape
    columns = _columns(cube, terms)
    offsets = np.ascontiguousarray(file_offsets(cube, columns)[1:])
    weight = np.ascontiguousarray(cube.weight_total, dtype=np.float64)
    places = term_columns(cube.cov_offsets)[columns]
    n_off = 1 + len(offsets)
    rows = max(1, min(ny, WRITE_BUFFER_BYTES // (8 * n_off * max(nx, 1))))
    buf = np.empty(n_off * rows * nx, dtype=np.uint64)
    f.flush()  # the bytes before it reach the file; the blocks go past the buffer
    fd, start = f.fileno(), f.tell()
    plane_bytes = ny * nx * 8
    total = n_off * nz * plane_bytes
    vmhints.preallocate(fd, start, total)  # contiguous blocks although written out of order
    own = getattr(f, "placed", None) is None  # a DirectFile lends its writer (the header's tail waits in it)
    direct = total >= directio.DIRECT_MIN_BYTES
    writer = directio.PlacedWriter(fd, rows * nx * 8, direct=direct) if own else contextlib.nullcontext(f.placed)
    with writer as placed:
        for k in range(nz):
            for y0 in range(0, ny, rows):
                r = min(rows, ny - y0)
                out = buf[:n_off * r * nx]
                var = np.ascontiguousarray(cube.var_accum[k, y0:y0 + r], dtype=np.float64).reshape(-1)
                _core.fits_covariance_band(cross=cube.cov_cross[:, k, y0:y0 + r], var=var, weight=weight,
                                           offsets=offsets, columns=places, k=k, y0=y0, out=out)
                blocks = out.data.cast("B")
                step = r * nx * 8
                for n in range(n_off):
                    placed.put(blocks[n * step:(n + 1) * step], start + (n * nz + k) * plane_bytes + y0 * nx * 8)
                if not placed.direct:
                    vmhints.start_writeback(fd)  # the file so far: the HDUs before this one too
    f.seek(start + total)
    return total


def has_covariance(cube) -> bool:
    return getattr(cube, "cov_cross", None) is not None


def header_cards(cube) -> List[Tuple[str, Any, str]]:
    """PRIMARY cards: ``COVCORR`` (:func:`correction_factor`) for users of other tools."""
    return [(CORRECTION_KEY, round(correction_factor(cube.config), 6),
             "aperture noise factor R (Fruchter+Hook 2002)")]


def image_header(cube, terms: np.ndarray | None = None) -> fits.Header:
    """Header of the ``COVARIANCE`` image of the offsets ``terms`` (as :func:`file_offsets`; no data)."""
    n_off = len(file_offsets(cube, terms))
    shape = (n_off, *cube.flux_weighted.shape)
    hdu = fits.ImageHDU(np.broadcast_to(np.zeros((), np.float64), shape), name=COVARIANCE_HDU)
    hdu.header["BUNIT"] = ("MJy2 / sr2", "covariance of SCI voxel pairs")
    hdu.header["COVOFFS"] = (OFFSETS_HDU, "table of the (DZ, DY, DX) of each offset plane")
    return hdu.header


def offsets_table(cube, terms: np.ndarray | None = None) -> fits.BinTableHDU:
    """The ``COVAR-OFFSETS`` table: ``DZ, DY, DX`` of each plane of ``COVARIANCE`` (the offsets
    ``terms``, as :func:`file_offsets`)."""
    o = file_offsets(cube, terms)
    cols = [fits.Column(name=n, format="J", array=o[:, a].astype(np.int32)) for a, n in enumerate(("DZ", "DY", "DX"))]
    return fits.BinTableHDU.from_columns(cols, name=OFFSETS_HDU)


# ── aperture variances ───────────────────────────────────────────────────────

#: A cube file path, load_cube's dict, an analysis.Cube or a DrizzleCube.
CubeLike = Any


def _box(mask: np.ndarray) -> Tuple[slice, slice]:
    ys, xs = np.nonzero(mask.any(axis=0))
    if ys.size == 0:
        return slice(0, 0), slice(0, 0)
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def _terms(cube: CubeLike, ys: slice, xs: slice) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, ...]]] | None:
    """``(variance (n_z, h, w), covariance (n_off, n_z, h, w), offsets)`` over the rows ``ys``
    and columns ``xs``, row 0 of the covariance being the variance; None without covariance."""
    if hasattr(cube, "var_accum"):  # a DrizzleCube
        if not has_covariance(cube):
            return None
        w = cube.weight_total[:, ys, xs]
        offsets = [tuple(int(v) for v in o) for o in file_offsets(cube)]
        cov = np.zeros((len(offsets), *w.shape))
        cov[0] = _diagonal(cube.var_accum[:, ys, xs], w)
        for n, o in enumerate(offsets[1:], start=1):
            cov[n] = normalised(term(cube, n - 1)[:, ys, xs], w, o)
        return cov[0], cov, offsets
    if isinstance(cube, Mapping):
        if cube.get("covariance") is None:
            return None
        cov = np.asarray(cube["covariance"][:, :, ys, xs], dtype=np.float64)
        offsets = [tuple(int(v) for v in o) for o in cube["cov_offsets"]]
        return cov[0], cov, offsets
    path = _path(cube)
    with fits.open(path, memmap=True) as hdul:
        if COVARIANCE_HDU not in hdul:
            return None
        cov = np.array(hdul[COVARIANCE_HDU].section[:, :, ys, xs], dtype=np.float64)
        t = hdul[OFFSETS_HDU].data
        offsets = [(int(a), int(b), int(c)) for a, b, c in zip(t["DZ"], t["DY"], t["DX"])]
    return cov[0], cov, offsets


def _fallback(cube: CubeLike, mask: np.ndarray) -> Tuple[np.ndarray, float]:
    """Per plane, the summed variances over ``mask``, and ``R^2``."""
    if hasattr(cube, "var_accum"):
        var, r = cube.variance, correction_factor(cube.config)
    elif isinstance(cube, Mapping):
        header = cube.get("header") or {}
        var, r = np.asarray(cube["variance"], np.float64), float(header.get(CORRECTION_KEY, 1.0))
    else:
        with fits.open(_path(cube), memmap=True) as hdul:
            var = np.asarray(hdul["VARIANCE"].data, np.float64)
            r = float(hdul[0].header.get(CORRECTION_KEY, 1.0))
    return np.nansum(np.where(mask, var, np.nan), axis=(1, 2)), r * r


def plane_variances(cube: CubeLike, mask: np.ndarray, *, same_plane: bool = False) -> np.ndarray:
    """Per anchor plane ``k``, the part of ``Var(sum over mask)`` from the voxel pairs anchored in
    plane ``k`` (summing the result gives :func:`aperture_variance`). ``same_plane``: leave out
    pairs of different planes (the variance of each plane's own sum). ``mask``: bool
    ``(n_z, ny, nx)``; voxels without data are left out. Without covariance HDUs, the summed
    variances times ``R^2`` with a warning."""
    mask = np.asarray(mask, dtype=bool)
    ys, xs = _box(mask)
    terms = _terms(cube, ys, xs)
    if terms is None:
        summed, r2 = _fallback(cube, mask)
        warnings.warn(f"the cube has no {COVARIANCE_HDU} HDU (run with covariance=True): aperture variances are "
                      f"the summed voxel variances x R^2 = {r2:.4g} (Fruchter & Hook 2002), exact for no "
                      "real aperture", UserWarning, stacklevel=3)
        return summed * r2
    var, cov, offsets = terms
    sel = mask[:, ys, xs] & np.isfinite(var)
    out = np.zeros(mask.shape[0], dtype=np.float64)
    for n, o in enumerate(offsets):
        if same_plane and o[0] != 0:
            continue
        a, p = _pair_slices(o, sel.shape)
        both = sel[a] & sel[p]
        part = np.where(both, cov[n][a], 0.0).sum(axis=(1, 2))
        out[a[0]] += part if n == 0 else 2.0 * part
    return out


def aperture_variance(cube: CubeLike, mask: np.ndarray, *, mean: bool = False) -> float:
    """Exact variance ((MJy/sr)^2) of the sum (or with ``mean=True`` the mean) of SCI over the
    voxels ``mask`` (bool ``(n_z, ny, nx)``, or ``(ny, nx)`` for those pixels in every plane).

    ``cube``: a cube file's path, :func:`.cubefile.load_cube`'s dict, an ``analysis.Cube`` or a
    ``DrizzleCube``. Voxels without data (VARIANCE NaN) are left out. Uses the ``COVARIANCE``
    HDU; without it, the summed variances times ``R^2`` (:func:`correction_factor`) with a
    UserWarning."""
    mask = np.asarray(mask, dtype=bool)
    n_z = _n_planes(cube)
    if mask.ndim == 2:
        mask = np.broadcast_to(mask, (n_z, *mask.shape))
    if mask.ndim != 3 or mask.shape[0] != n_z:
        raise ValueError(f"mask must be (ny, nx) or (n_z={n_z}, ny, nx), got shape {mask.shape}")
    total = float(plane_variances(cube, mask).sum())
    if not mean:
        return total
    n = int(np.count_nonzero(mask & np.isfinite(_variance_cube(cube))))
    return total / n**2 if n else float("nan")


def _path(cube: CubeLike) -> Path:
    """The file of an ``analysis.Cube`` or a path."""
    return Path(cube.path) if hasattr(cube, "path") else Path(cube)


def _n_planes(cube: CubeLike) -> int:
    if hasattr(cube, "var_accum"):
        return int(cube.var_accum.shape[0])
    if isinstance(cube, Mapping):
        return int(np.asarray(cube["variance"]).shape[0])
    with fits.open(_path(cube), memmap=True) as hdul:
        return int(hdul["VARIANCE"].header["NAXIS3"])


def _variance_cube(cube: CubeLike) -> np.ndarray:
    if hasattr(cube, "var_accum"):
        return cube.variance
    if isinstance(cube, Mapping):
        return np.asarray(cube["variance"])
    with fits.open(_path(cube), memmap=False) as hdul:
        return np.asarray(hdul["VARIANCE"].data)


__all__ = ["COVARIANCE_HDU", "OFFSETS_HDU", "CORRECTION_KEY", "aperture_variance", "correction_factor", "stencil",
           "plane_variances", "spatial_reach", "spectral_reach", "term", "written_terms"]
