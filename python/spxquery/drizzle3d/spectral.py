"""Spectral (Z) axis: the SPHEREx channel table and wavelength-bin grids.

Wavelengths are in micrometres (um), frequencies in Hz. A :class:`ZGrid` holds
``n_z + 1`` strictly increasing bin edges; bin ``k`` covers ``[edges[k], edges[k+1])``.

The channel table comes from the bundled SPHEREx calibration product
``spectral_channels_spx_cal-sch-v1-2026-106.fits`` (HDU ``SPECTRAL_CHANNELS``:
102 rows = 6 detectors x 17 sub-channels; HDU ``CHANNEL_MAP``: 2040x2040 uint8
sub-channel index per pixel, 1-17 on the detector, 0 or 18 outside).
Table values are float32 in the file; they are converted to float64 without
rounding, so grid edges compare exactly equal to the table columns.
"""

from __future__ import annotations

import functools
import logging
import math
import numbers
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import pandas as pd
from astropy.io import fits

from . import libmath
from ._data import SPECTRAL_CHANNELS_FILE
from .fitsbytes import TFORMS
from .textlimits import short_repr

logger = logging.getLogger(__name__)

#: Speed of light [m/s].
_C_SI = 299792458.0

#: Columns of the SPECTRAL_CHANNELS table, in order.
SPECTRAL_COLUMNS = ("DETECTOR", "SUBCHAN", "WAVELENGTH", "WL_MIN", "WL_MAX", "R", "R_STD", "BANDWIDTH")

#: Valid single-detector numbers.
DETECTORS = (1, 2, 3, 4, 5, 6)

ArrayLike = Union[np.ndarray, Sequence[float]]


@dataclass
class ZGrid:
    """Spectral bin grid of one cube.

    Attributes
    ----------
    edges : np.ndarray
        ``(n_z + 1,)`` bin edges [um], strictly increasing.
    centers : np.ndarray
        ``(n_z,)`` bin centres [um] (arithmetic midpoints of the edges for the built-in grids).
    widths : np.ndarray
        ``(n_z,)`` bin widths [um] (``np.diff(edges)``).
    """

    edges: np.ndarray
    centers: np.ndarray
    widths: np.ndarray

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.centers = np.asarray(self.centers, dtype=np.float64)
        self.widths = np.asarray(self.widths, dtype=np.float64)
        n = self.edges.size - 1
        if self.edges.ndim != 1 or n < 1:
            raise ValueError(f"ZGrid.edges must be 1-D with >= 2 values, got shape {self.edges.shape}")
        if self.centers.shape != (n,) or self.widths.shape != (n,):
            raise ValueError(
                f"ZGrid: centers {self.centers.shape} and widths {self.widths.shape} "
                f"must both have shape ({n},) for {n + 1} edges"
            )

    @classmethod
    def from_edges(cls, edges: ArrayLike) -> "ZGrid":
        """Build a grid from validated edges [um]; centres = midpoints, widths = diffs."""
        e = validate_lambda_edges(edges)
        return cls(edges=e, centers=0.5 * (e[:-1] + e[1:]), widths=np.diff(e))

    @property
    def n_z(self) -> int:
        """Number of spectral bins."""
        return int(self.centers.size)

    def frequencies(self) -> np.ndarray:
        """Frequency of each bin centre [Hz] (``c / centers``)."""
        return _C_SI / (self.centers * 1e-6)

    def delta_nu(self) -> np.ndarray:
        """Frequency width of each bin [Hz], positive: ``c/edges[k] - c/edges[k+1]``."""
        nu_hi = _C_SI / (self.edges[:-1] * 1e-6)  # shorter wavelength -> higher frequency
        nu_lo = _C_SI / (self.edges[1:] * 1e-6)
        return nu_hi - nu_lo

    def resolving_power(self) -> np.ndarray:
        """Resolving power of each bin, ``centers / widths`` (dimensionless)."""
        return self.centers / self.widths

    def is_log_uniform(self, rtol: float = 1e-9) -> bool:
        """True when the edges are geometric (equal ``ln`` steps) to relative tolerance ``rtol``.

        Such a grid can be written exactly as a FITS ``WAVE-LOG`` axis.
        """
        e = self.edges
        if e.size < 2 or not np.all(e > 0):
            return False
        steps = np.diff(libmath.log(e))
        if steps.size == 1:
            return bool(steps[0] > 0)
        ref = float(np.mean(steps))
        return bool(ref > 0 and np.all(np.abs(steps - ref) <= rtol * ref))


# ── Channel table ────────────────────────────────────────────────────────────


def _bundled_hdu_data(extname: str):
    """Data of extension ``extname`` of the bundled calibration file, loaded into memory."""
    path = SPECTRAL_CHANNELS_FILE
    if not path.exists():
        raise FileNotFoundError(f"Bundled spectral channels file not found: {path}")
    with fits.open(path, memmap=False) as hdul:
        try:
            return hdul[extname].data
        except KeyError as exc:
            raise ValueError(f"{path}: no HDU with EXTNAME '{extname}'") from exc


def _bundled_table(extname: str, names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Columns ``names`` of the binary table ``extname`` of the bundled calibration file (numbers
    as stored, native byte order), read with the package's own FITS reader: astropy's
    ``fits.open`` took ~9 ms of every run's setup for this 102-row table."""
    from .access import LocalFile
    from .fitsstructure import read_structure
    from .fitstable import table_columns

    path = SPECTRAL_CHANNELS_FILE
    if not path.exists():
        raise FileNotFoundError(f"Bundled spectral channels file not found: {path}")
    with LocalFile(path) as src:
        tab = next((h for h in read_structure(src) if h.name == extname and h.xtension == "BINTABLE"), None)
        if tab is None:
            raise ValueError(f"{path}: no binary table with EXTNAME '{extname}'")
        cols = table_columns(tab)
        n_rows, row_bytes = tab.shape
        rows = src.read(tab.data_offset, n_rows * row_bytes).reshape(n_rows, row_bytes)
    missing = [c for c in names if c not in cols]
    if missing:
        raise ValueError(f"{path}: {extname} lacks columns {missing}")
    out = {}
    for name in names:
        col = cols[name]
        n = list(cols).index(name) + 1
        scaled = [k for k in (f"TSCAL{n}", f"TZERO{n}") if k in tab.header]
        if col.repeat != 1 or scaled or col.code not in TFORMS:
            raise ValueError(f"{path}: {extname} column {name} is not a plain scalar column ({scaled or col.repeat})")
        cells = np.ascontiguousarray(rows[:, col.offset:col.offset + col.width])
        out[name] = cells.view(TFORMS[col.code]).reshape(n_rows)
    return out


@functools.lru_cache(maxsize=1)
def _spectral_columns() -> Dict[str, np.ndarray]:
    """The SPECTRAL_CHANNELS columns as :func:`load_spectral_table` types them (read-only arrays)."""
    data = _bundled_table("SPECTRAL_CHANNELS", SPECTRAL_COLUMNS)
    columns = {}
    for name in SPECTRAL_COLUMNS:
        col = data[name]
        columns[name] = col.astype(np.int64) if name in ("DETECTOR", "SUBCHAN") else col.astype(np.float64)
        columns[name].setflags(write=False)
    return columns


@functools.lru_cache(maxsize=1)
def _read_spectral_table() -> pd.DataFrame:
    df = pd.DataFrame({name: col.copy() for name, col in _spectral_columns().items()})
    logger.debug("Loaded spectral table: %d rows", len(df))
    return df


def _detector_channels(detector: int, names: Sequence[str]) -> Tuple[np.ndarray, ...]:
    """Columns ``names`` of the channels of ``detector`` in :func:`detector_spectral_table`'s
    order (stable sort by WAVELENGTH), read from the columns without pandas: a run's setup and
    its first frame do not pay for pandas' first operations (~3 ms in a fresh process)."""
    det = _check_detector(detector)
    cols = _spectral_columns()
    rows = np.flatnonzero(cols["DETECTOR"] == det)
    if rows.size == 0:
        raise ValueError(f"No spectral channels for detector {det} in {SPECTRAL_CHANNELS_FILE}")
    rows = rows[np.argsort(cols["WAVELENGTH"][rows], kind="stable")]
    return tuple(cols[name][rows] for name in names)


def load_spectral_table() -> pd.DataFrame:
    """The SPECTRAL_CHANNELS table (102 rows).

    Columns: DETECTOR, SUBCHAN (int64); WAVELENGTH, WL_MIN, WL_MAX [um], R, R_STD,
    BANDWIDTH [um] (float64). Read once and cached; each call returns a copy.
    """
    return _read_spectral_table().copy()


@functools.lru_cache(maxsize=1)
def _read_channel_map() -> np.ndarray:
    arr = np.array(_bundled_hdu_data("CHANNEL_MAP"), dtype=np.uint8, copy=True)
    arr.setflags(write=False)
    logger.debug("Loaded channel map: shape %s", arr.shape)
    return arr


def load_channel_map() -> np.ndarray:
    """The 2040x2040 uint8 sub-channel map (1-17 on the detector, 0/18 outside).

    Indexed ``[y, x]`` with 0-based pixels. Cached; the returned array is read-only.
    """
    return _read_channel_map()


def _check_detector(detector: object) -> int:
    if isinstance(detector, (bool, np.bool_)) or not isinstance(detector, numbers.Integral):
        raise ValueError(f"detector must be an integer 1-6, got {short_repr(detector)}")
    det = int(detector)
    if det not in DETECTORS:
        raise ValueError(f"detector must be 1-6, got {det}")
    return det


def detector_spectral_table(detector: int) -> pd.DataFrame:
    """The 17 channels of one detector (1-6), sorted by WAVELENGTH, index reset."""
    columns = _detector_channels(detector, SPECTRAL_COLUMNS)
    return pd.DataFrame({name: col.copy() for name, col in zip(SPECTRAL_COLUMNS, columns)})


@functools.lru_cache(maxsize=8)
def channel_band(detector: int) -> Tuple[float, float]:
    """The detector's band (um): the lowest WL_MIN and the highest WL_MAX of its channels (the
    values of :func:`detector_spectral_table`, read from the table's columns without pandas
    operations: a frame reader's first frame does not pay for their first use)."""
    wl_min, wl_max = _detector_channels(detector, ("WL_MIN", "WL_MAX"))
    return float(wl_min.min()), float(wl_max.max())


# ── Grid builders ────────────────────────────────────────────────────────────


def validate_lambda_edges(edges: object, name: str = "z_lambda_edges") -> np.ndarray:
    """Check wavelength bin edges [um] and return them as a new float64 array.

    Rules (each failure raises ValueError naming the rule and the offending value):
    1-D, at least 2 values, all finite, all > 0, strictly increasing.
    """
    try:
        arr = np.array(edges, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D sequence of numbers [um], got {short_repr(edges)}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got an array of shape {arr.shape}")
    if arr.size < 2:
        raise ValueError(f"{name} must have at least 2 values (1 bin), got {arr.size}: {arr.tolist()}")
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be finite, got {arr[i]} at index {i}")
    bad = np.flatnonzero(arr <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{name} must be > 0 um, got {arr[i]} at index {i}")
    bad = np.flatnonzero(np.diff(arr) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{name} must be strictly increasing, got {name}[{i}]={arr[i]} >= {name}[{i + 1}]={arr[i + 1]}"
        )
    return arr


def _native_edges(wl_min: np.ndarray, wl_max: np.ndarray, wl_c: np.ndarray) -> np.ndarray:
    """Edges of the native grid from channel columns sorted by wavelength.

    Contract: ``edges = [WL_MIN[0], ..., WL_MIN[n-1], WL_MAX[n-1]]``. The SPHEREx table's
    neighbouring channels overlap by ~1 nm (``WL_MAX[k] > WL_MIN[k+1]``); the boundary
    between channels k and k+1 is then WL_MIN[k+1], so bins tile the band without overlap.
    If a boundary is not strictly above the previous edge (a channel nested in or sharing a
    WL_MIN with its neighbour), that boundary is replaced by the midpoint of the two channel
    centres; if the edges are still not strictly increasing, ValueError is raised rather than
    producing zero- or negative-width bins.
    """
    n = wl_c.size
    edges = np.concatenate([wl_min, wl_max[-1:]]).astype(np.float64)
    fixed = []
    for k in range(1, n):
        if not edges[k] > edges[k - 1]:
            edges[k] = 0.5 * (wl_c[k - 1] + wl_c[k])
            fixed.append(k)
    if fixed:
        logger.warning(
            "Native spectral edges not strictly increasing at channel boundaries %s; "
            "using the midpoint of neighbouring channel centres there",
            fixed,
        )
    return validate_lambda_edges(edges, name="native spectral edges")


def build_z_grid_native(detector: int) -> ZGrid:
    """The 17 native channels of a detector as bins [um].

    Edges = WL_MIN of each channel (sorted by wavelength) plus the last channel's WL_MAX
    (see :func:`_native_edges` for how overlapping/non-monotonic channels are handled).
    Centres are midpoints of the edges, widths their differences.
    """
    wl_min, wl_max, wavelength = _detector_channels(detector, ("WL_MIN", "WL_MAX", "WAVELENGTH"))
    return ZGrid.from_edges(_native_edges(wl_min, wl_max, wavelength))


def oversampled_n_bins(lam_min: float, lam_max: float, r_eff: float) -> int:
    """Number of constant-R bins spanning [lam_min, lam_max]: ``round(ln(max/min)/ln(1+1/R_eff))``, >= 1."""
    n = int(round(math.log(lam_max / lam_min) / math.log1p(1.0 / r_eff)))
    return max(1, n)


def build_z_grid_oversampled(detector: int, z_oversample: float) -> ZGrid:
    """Constant-resolving-power (log-spaced) grid spanning the detector's band.

    ``R_eff = mean(R) * z_oversample``: ``z_oversample = 2`` gives about twice as many
    bins, each half as wide as the mean native channel. The span is exactly
    ``[WL_MIN of the bluest channel, WL_MAX of the reddest channel]`` [um], divided into
    ``n = round(ln(max/min) / ln(1 + 1/R_eff))`` (at least 1) bins with equal log steps,
    so the realised step ``ln(edges[k+1]/edges[k])`` differs from ``ln(1 + 1/R_eff)``
    only by the rounding of ``n``.
    """
    zo = float(z_oversample)
    if not math.isfinite(zo) or zo <= 0:
        raise ValueError(f"z_oversample must be a finite number > 0, got {short_repr(z_oversample)}")
    det = detector_spectral_table(detector)
    r_mean = float(det["R"].mean())
    r_eff = r_mean * zo
    lam_min = float(det["WL_MIN"].iloc[0])
    lam_max = float(det["WL_MAX"].iloc[-1])
    n = oversampled_n_bins(lam_min, lam_max, r_eff)
    edges = libmath.geomspace(lam_min, lam_max, n + 1)  # (not np.geomspace: the same bits on every CPU)
    logger.debug(
        "D%d oversampled grid: mean R=%.2f, R_eff=%.2f, %d bins over [%.6f, %.6f] um",
        int(detector), r_mean, r_eff, n, lam_min, lam_max,
    )
    return ZGrid.from_edges(edges)


def build_z_grid_custom(lambda_edges: ArrayLike) -> ZGrid:
    """Grid from user edges [um]: 1-D, >= 2 values, finite, > 0, strictly increasing (else ValueError)."""
    return ZGrid.from_edges(lambda_edges)


def build_z_grid(
    detector: int,
    z_oversample: float = 1.0,
    z_lambda_edges: Optional[ArrayLike] = None,
) -> ZGrid:
    """Choose the grid: custom edges if given, else native when ``z_oversample == 1``, else oversampled."""
    if z_lambda_edges is not None:
        grid = build_z_grid_custom(z_lambda_edges)
        logger.info("D%s: custom Z grid (%d bins)", detector, grid.n_z)
        return grid
    if float(z_oversample) != 1.0:
        grid = build_z_grid_oversampled(detector, z_oversample)
        logger.info("D%s: oversampled Z grid (%d bins, R_eff = mean(R) x %g)", detector, grid.n_z, z_oversample)
        return grid
    grid = build_z_grid_native(detector)
    logger.info("D%s: native Z grid (%d bins)", detector, grid.n_z)
    return grid


# ── Grids across detectors (one cube of the whole 0.75-5 um spectrum) ────────
#
# Neighbouring detectors overlap by 8-19 nm (D1 ends at 1.116 um, D2 starts at 1.099 um, ...).
# Their bins are joined the way neighbouring channels of one detector are: the boundary is the
# first edge of the redder detector, so the bluer detector's bins stop there. The bins tile
# the whole range (no gap, no wavelength in two bins), and no input pixel is counted twice:
# its top-hat is shared between the bins it overlaps, whichever detector they belong to.


def detector_boundaries() -> np.ndarray:
    """``(5,)`` wavelengths [um] where D2...D6 begin in a cube of several detectors: the WL_MIN
    of each detector's bluest channel. A plane whose centre lies in
    ``[boundaries[d-2], boundaries[d-1])`` belongs to detector ``d`` (D1 below the first,
    D6 from the last on)."""
    return np.array([float(detector_spectral_table(d)["WL_MIN"].iloc[0]) for d in DETECTORS[1:]])


def plane_detectors(centers: ArrayLike) -> np.ndarray:
    """Detector (1-6, int64) of planes centred at ``centers`` [um] (see :func:`detector_boundaries`)."""
    c = np.asarray(centers, dtype=np.float64)
    return np.searchsorted(detector_boundaries(), c, side="right").astype(np.int64) + 1


def detectors_reaching(lam_min: float, lam_max: float) -> Tuple[int, ...]:
    """Detectors whose pixels can put light into ``[lam_min, lam_max]`` um: those whose channel
    span, widened by one channel bandwidth on each side (a pixel's top-hat reaches half a
    bandwidth beyond its centre), overlaps it."""
    out = []
    for d in DETECTORS:
        t = detector_spectral_table(d)
        lo = float(t["WL_MIN"].iloc[0]) - float(t["BANDWIDTH"].iloc[0])
        hi = float(t["WL_MAX"].iloc[-1]) + float(t["BANDWIDTH"].iloc[-1])
        if lo < lam_max and hi > lam_min:
            out.append(d)
    return tuple(out)


def join_detector_edges(parts: Sequence[Tuple[int, np.ndarray]], merge_remnant: bool = False
                        ) -> Tuple[np.ndarray, np.ndarray]:
    """``(edges, plane_detector)`` of the per-detector bin edges ``parts`` = ``[(detector,
    edges), ...]`` (in wavelength order) joined into one grid.

    Each detector's bins stop at the first edge ``b`` of the next detector: edges at or above
    ``b`` are dropped and the last bin kept ends at ``b`` (a gap, never met in the bundled
    table, is closed by widening the bluer detector's last bin to ``b``). With ``merge_remnant``
    a last bin narrower than half the bin it was cut from is merged into the bin before it,
    so no sliver plane is left. Planes keep the detector they come from.
    """
    edges: list = []
    dets: list = []
    for i, (det, e) in enumerate(parts):
        e = np.asarray(e, dtype=np.float64)
        if i + 1 < len(parts):
            b = float(parts[i + 1][1][0])
            keep = e[e < b]
            if keep.size == 0:
                raise ValueError(f"D{det}'s bins start at or after the next detector's first edge {b} um")
            m = keep.size - 1
            own_next = e[m + 1] if m + 1 < e.size else b
            if merge_remnant and m >= 1 and (b - keep[m]) < 0.5 * (own_next - keep[m]):
                keep = keep[:-1]
        else:
            keep = e
        n_bins = keep.size if i + 1 < len(parts) else keep.size - 1
        edges.extend(keep.tolist())
        dets.extend([int(det)] * n_bins)
    return validate_lambda_edges(edges, name="joined spectral edges"), np.asarray(dets, dtype=np.int64)


def build_z_grid_native_all() -> Tuple[ZGrid, np.ndarray]:
    """The 102 native channels of all six detectors as one grid, and the detector of each plane.

    Edges are derived as for one detector (:func:`_native_edges`) from all channels sorted by
    wavelength: each bin starts at its channel's WL_MIN and ends at the next channel's WL_MIN,
    across detector boundaries too, so the last channel of D1...D5 ends where the next
    detector's first channel begins (e.g. D1's reddest plane is 1.086-1.099 um rather than
    1.086-1.116 um in a D1 cube); every other plane has the edges of its detector's own cube.
    """
    t = _read_spectral_table().sort_values("WAVELENGTH", kind="stable")
    edges = _native_edges(t["WL_MIN"].to_numpy(np.float64), t["WL_MAX"].to_numpy(np.float64),
                          t["WAVELENGTH"].to_numpy(np.float64))
    return ZGrid.from_edges(edges), t["DETECTOR"].to_numpy(np.int64)


def build_z_grid_oversampled_all(z_oversample: float) -> Tuple[ZGrid, np.ndarray]:
    """Constant resolving power within each detector's range (``R_eff = mean(R_det) *
    z_oversample``, the single-detector grid of :func:`build_z_grid_oversampled`), joined across
    the detectors by :func:`join_detector_edges` with remnants merged; and the plane detectors.
    D5 and D6 keep their higher resolution."""
    parts = [(d, build_z_grid_oversampled(d, z_oversample).edges) for d in DETECTORS]
    edges, dets = join_detector_edges(parts, merge_remnant=True)
    return ZGrid.from_edges(edges), dets


def build_z_grid_all(z_oversample: float = 1.0, z_lambda_edges: Optional[ArrayLike] = None
                     ) -> Tuple[ZGrid, np.ndarray]:
    """The grid of a cube of all detectors and the detector of each plane: custom edges if given
    (planes assigned by :func:`plane_detectors`), else native when ``z_oversample == 1``, else
    oversampled."""
    if z_lambda_edges is not None:
        grid = build_z_grid_custom(z_lambda_edges)
        return grid, plane_detectors(grid.centers)
    if float(z_oversample) != 1.0:
        return build_z_grid_oversampled_all(z_oversample)
    return build_z_grid_native_all()


__all__ = [
    "ZGrid",
    "SPECTRAL_COLUMNS",
    "DETECTORS",
    "load_spectral_table",
    "load_channel_map",
    "detector_spectral_table",
    "channel_band",
    "validate_lambda_edges",
    "oversampled_n_bins",
    "build_z_grid_native",
    "build_z_grid_oversampled",
    "build_z_grid_custom",
    "build_z_grid",
    "build_z_grid_all",
    "build_z_grid_native_all",
    "build_z_grid_oversampled_all",
    "detector_boundaries",
    "detectors_reaching",
    "join_detector_edges",
    "plane_detectors",
]
