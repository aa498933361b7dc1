"""Drizzle3D configuration: what region to drizzle, how, and where to write it.

Every field is described once, next to its declaration, by ``metadata=setting(...)``: group,
help text, unit, allowed values (:mod:`.settings` rules), the cube header keyword recording it
(or why none does) and its ``spxdrizzle run`` option (or None: config file only). Validation,
the YAML file, the command line and the cube header all follow from that description
(:mod:`.settings`).

Units: ``center_ra``/``center_dec`` in degrees (ICRS), ``width``/``height`` in arcmin,
wavelengths in um, times in MJD, pixel scales in arcsec. The first 22 fields keep the order
and defaults of the spxquery 0.4.1 API, so positional construction keeps working; the fields
after ``overwrite`` are extensions of this implementation.

Every field is validated on construction; an invalid value raises ValueError naming the
field, the value and the allowed range. Use :meth:`Drizzle3DConfig.replace` to change
fields (attribute assignment bypasses validation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import yaml

from . import calnames
from .flags import RECOMMENDED_EXCLUDE_FLAGS, parse_flag_words, validate_exclude_flags
from .settings import (
    Bool,
    Checked,
    Choice,
    Cli,
    Fits,
    Int,
    NoHeader,
    PathOrUrl,
    PathRule,
    Real,
    Url,
    described,
    groups_in_order,
    is_real,
    setting,
    validate,
)
from .spectral import validate_lambda_edges
from .textlimits import short_repr
from .yaml_limits import load_yaml_file

logger = logging.getLogger(__name__)

#: Default IRSA TAP service.
DEFAULT_TAP_URL = "https://irsa.ipac.caltech.edu/TAP"
#: Environment variable overriding the TAP service when ``tap_url`` is None.
TAP_URL_ENV = "SPXQUERY_TAP_URL"
#: Accepted values of ``kernel``.
KERNELS = ("square", "bilinear")
#: Width and height stay below this (arcmin): a tangent-plane grid ends 90 deg from its centre.
MAX_SIDE_ARCMIN = 10800.0
#: Largest ``xy_oversample`` / ``z_oversample`` (0.06" pixels; ~100x the native resolving power).
MAX_OVERSAMPLE = 100.0
#: Largest MJD of ``mjd_range`` (the year 4596).
MAX_MJD = 1e6
#: Largest cutout side IRSA's service takes (deg).
MAX_CUTOUT_DEG = 180.0

#: Setting groups in the order the YAML file lists them, with the title written above each.
GROUPS: Dict[str, str] = {
    "region": "Target sky region: centre (ICRS) and size of the output image",
    "detector": "Detector",
    "shrink": "Droplet shrink (input kernel)",
    "grid": "Output grid",
    "archive": "Query / download",
    "preprocess": "Pre-processing of each frame",
    "accumulate": "Accumulation",
    "output": "Output: where the cubes go",
    "outliers": "Outlier rejection (cosmic rays, asteroids, satellite trails)",
}


def _scheduler(name: str, value: Any) -> Optional[str]:
    """``local``, ``local:N`` (N >= 1 worker processes), ``tcp://...``/``tls://...`` or the path of
    a dask scheduler file; ValueError naming the field otherwise."""
    if value is None:
        return None
    text = str(value).strip() if isinstance(value, (str, Path)) else None
    if not text or len(text) > 4096 or any(ord(c) < 32 for c in text):
        raise ValueError(f"{name} must be \"local\", \"local:N\", \"tcp://host:port\" or a scheduler file, "
                         f"got {str(value)[:80]!r}")
    if text.startswith("local:"):
        n = text[6:]
        if not (n.isdigit() and 1 <= int(n) <= 1024):
            raise ValueError(f"{name} = {text[:80]!r}: use \"local\" or \"local:N\" with 1 <= N <= 1024 "
                             "worker processes")
    return text


def _mjd_range(name: str, value: Any) -> Tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be None or (mjd_min, mjd_max), got {short_repr(value)}")
    if not all(is_real(v) and 0.0 <= float(v) <= MAX_MJD for v in value):
        raise ValueError(f"{name} must be two MJDs in [0, {MAX_MJD:g}] (mjd_min < mjd_max), got {short_repr(value)}")
    lo, hi = float(value[0]), float(value[1])
    if not lo < hi:
        raise ValueError(f"{name} must be increasing (mjd_min < mjd_max), got ({lo}, {hi})")
    return lo, hi


def _exclude_flags(name: str, value: Any) -> List[Union[int, str]]:
    try:
        return validate_exclude_flags(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc} (got {short_repr(value)})") from None


#: Why outlier rejection and tiles exclude each other (the model and its screen see the whole grid).
OUTLIERS_NOT_TILED = ("a run with reject_outliers cannot be drizzled in tiles (tile_arcmin): the outlier model is "
                      "built over the whole grid")


def _threshold_pair(name: str, value: Any) -> Tuple[float, float]:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ValueError(f"{name} must be two numbers (detection, neighbours), got {short_repr(value)}")
    if not all(is_real(v) and 0.0 < float(v) <= 1e6 for v in value):
        raise ValueError(f"{name} must be two numbers in (0, 1e6], got {short_repr(value)}")
    first, second = float(value[0]), float(value[1])
    if first < second:
        raise ValueError(f"{name}: the detection threshold must be >= the neighbours' one, got ({first}, {second})")
    return first, second


def _pair_text(name: str) -> Any:
    """The header value of a threshold pair: ``"5 4"`` (drizzlepac's way of writing it)."""
    return lambda config: " ".join(f"{v:g}" for v in getattr(config, name))


def _lambda_edges(name: str, value: Any) -> np.ndarray:
    return validate_lambda_edges(value, name=name)


#: Most entries of ``storage_options`` (a filesystem takes a handful of keyword arguments).
MAX_STORAGE_OPTIONS = 64


def _storage_options(name: str, value: Any) -> Dict[str, Any]:
    if not isinstance(value, Mapping) or len(value) > MAX_STORAGE_OPTIONS \
            or not all(isinstance(k, str) and k.isidentifier() for k in value):
        raise ValueError(f"{name} must be None or a mapping of option names to values (at most "
                         f"{MAX_STORAGE_OPTIONS}), got {short_repr(value)}")
    return dict(value)


#: The ``--detector`` word for one cube of all six detectors (``detector=0, combine_detectors=True``).
DETECTOR_ALL = "all"


def detector_arg(text: str) -> Any:
    """``--detector`` text: an integer 0-6, or :data:`DETECTOR_ALL` (returned as is)."""
    if text.strip().lower() == DETECTOR_ALL:
        return DETECTOR_ALL
    return Int(0, 6, "0 (all six) or 1-6").parse_arg(text)


_NOT_THE_CUBE = "how the frames are found and fetched, not what the cube holds"

#: First lines of a YAML config file.
YAML_PREAMBLE = (
    "# SPHEREx Drizzle3D configuration (spxquery.drizzle3d).\n"
    "# Load with Drizzle3DConfig.from_yaml_file(path). Units: deg, arcmin, um, MJD, s.\n"
)


@dataclass(eq=False)
class Drizzle3DConfig:
    """Configuration of a SPHEREx 3-D drizzle (see the module docstring for units).

    Shrink (``xy_shrink``, ``z_shrink``) sets the input droplet size; oversample
    (``xy_oversample``, ``z_oversample``) sets the output grid resolution.
    """

    # ── spxquery 0.4.1 API fields, in its order ───────────────────────────────
    center_ra: float = field(metadata=setting(
        group="region", unit="deg", rule=Real(0.0, 360.0, hi_open=True),
        help="region centre, ICRS right ascension",
        header=Fits("RA_CEN", "[deg] output centre"), cli=Cli("--ra", "DEG")))
    center_dec: float = field(metadata=setting(
        group="region", unit="deg", rule=Real(-90.0, 90.0),
        help="region centre, ICRS declination",
        header=Fits("DEC_CEN", "[deg] output centre"), cli=Cli("--dec", "DEG")))
    width: float = field(metadata=setting(
        group="region", unit="arcmin", rule=Real(0.0, MAX_SIDE_ARCMIN, lo_open=True, hi_open=True),
        help="output image width (along RA)",
        header=NoHeader("NX x EPIXSCLE is the grid's width"), cli=Cli("--width", "ARCMIN")))
    height: float = field(metadata=setting(
        group="region", unit="arcmin", rule=Real(0.0, MAX_SIDE_ARCMIN, lo_open=True, hi_open=True),
        help="output image height (along Dec)",
        header=NoHeader("NY x EPIXSCLE is the grid's height"), cli=Cli("--height", "ARCMIN")))
    detector: int = field(default=0, metadata=setting(
        group="detector", rule=Int(0, 6, "0 (all six) or 1-6"),
        help="detector to drizzle (one cube per detector)",
        header=NoHeader("DETECTOR holds the cube's own detector"),
        cli=Cli("--detector", "N", type=lambda text: detector_arg(text),
                note=f"'{DETECTOR_ALL}' = one cube of all six (detector 0 and combine_detectors)")))
    xy_shrink: float = field(default=0.8, metadata=setting(
        group="shrink", rule=Real(0.0, 1.0, lo_open=True),
        help="linear size of each input pixel's droplet relative to the pixel",
        header=Fits("XYSHRINK", "spatial droplet shrink"), cli=Cli("--xy-shrink", "F")))
    z_shrink: Optional[float] = field(default=None, metadata=setting(
        group="shrink", rule=Real(0.0, 1.0, lo_open=True),
        help="spectral droplet size relative to the pixel's bandwidth (None: same as xy_shrink)",
        header=Fits("ZSHRINK", "spectral droplet shrink", value=lambda c: c.effective_z_shrink()),
        cli=Cli("--z-shrink", "F")))
    xy_oversample: float = field(default=1.0, metadata=setting(
        group="grid", rule=Real(0.0, MAX_OVERSAMPLE, lo_open=True),
        help="output pixels per native pixel: pixel scale = 6.15\"/xy_oversample",
        header=Fits("XYOVRSM", "spatial output oversampling"), cli=Cli("--xy-oversample", "F")))
    z_oversample: float = field(default=1.0, metadata=setting(
        group="grid", rule=Real(0.0, MAX_OVERSAMPLE, lo_open=True),
        help="1 = the 17 native channels; otherwise constant-R bins with R_eff = mean(R) x z_oversample",
        header=Fits("ZOVRSM", "spectral output oversampling"), cli=Cli("--z-oversample", "F")))
    z_lambda_edges: Optional[np.ndarray] = field(default=None, metadata=setting(
        group="grid", unit="um", rule=Checked(_lambda_edges, "list of float", "strictly increasing, > 0", numbers=True),
        help="custom wavelength bin edges (overrides z_oversample)",
        header=NoHeader("the WAVELENGTH table lists every bin")))
    mjd_range: Optional[Tuple[float, float]] = field(default=None, metadata=setting(
        group="archive", unit="MJD", rule=Checked(_mjd_range, "[float, float]", "0 <= min < max <= 1e6", numbers=True),
        help="only frames whose exposure overlaps this time interval",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--mjd-range", ("MIN", "MAX"), nargs=2, type=float, convert=tuple)))
    max_images: int = field(default=500, metadata=setting(
        group="archive", unit="frames", rule=Int(1),
        help="cap on the frames per detector; above it, frames spread evenly in time are kept (a warning "
             "says how many were left out)",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--max-images", "N")))
    download_workers: int = field(default=4, metadata=setting(
        group="archive", rule=Int(1, 64), help="parallel downloads",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--workers", "N")))
    skip_existing: bool = field(default=True, metadata=setting(
        group="archive", rule=Bool(), help="reuse already downloaded, verified files",
        header=NoHeader(_NOT_THE_CUBE)))
    data_mirror: Optional[Union[Path, str]] = field(default=None, metadata=setting(
        group="archive", rule=PathOrUrl(),
        help="root of a local archive mirror (holding qr2/, qr3/, ...): no downloads; or an object store "
             "holding the same tree (s3://nasa-irsa-spherex, any fsspec URL): frames read in place by byte ranges",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--mirror", "DIR")))
    subtract_zodi: bool = field(default=True, metadata=setting(
        group="preprocess", rule=Bool(), help="subtract the ZODI extension (zodiacal-light model)",
        header=Fits("ZODISUB", "zodi model subtracted"), cli=Cli("--no-zodi", store=False)))
    static_zodi: bool = field(default=False, metadata=setting(
        group="preprocess", rule=Bool(),
        help="subtract ZODI as is; otherwise its scale is fitted per frame (recorded as ZSCnnnnn)",
        header=Fits("ZODISTAT", "zodi scale fixed at 1.0")))
    exclude_flags: List[Union[int, str]] = field(default_factory=list, metadata=setting(
        group="preprocess", rule=Checked(_exclude_flags, "list of int/str"),
        help="FLAGS bits (0-31) or names (case-insensitive, GHOST* wildcards) whose pixels are dropped; "
             "see flags.RECOMMENDED_EXCLUDE_FLAGS",
        header=NoHeader("bit names are per file; the masks record the flags of what landed"),
        cli=Cli("--exclude-flags", "FLAG", nargs="+", convert=parse_flag_words,
                note="'recommended' = the recommended set; 'none' = keep all",
                run_default=("recommended", lambda: list(RECOMMENDED_EXCLUDE_FLAGS)))))
    ivar_max: float = field(default=1e10, metadata=setting(
        group="accumulate", unit="(MJy/sr)^-2", rule=Real(0.0, lo_open=True),
        help="cap on the inverse-variance weight",
        header=Fits("IVARMAX", "inverse-variance cap")))
    min_overlap: float = field(default=0.0, metadata=setting(
        group="accumulate", rule=Real(0.0, 1.0, hi_open=True),
        help="drop contributions whose overlap fraction f_xy x f_z is below this",
        header=Fits("MINOVRLP", "minimum f_xy*f_z")))
    output_dir: Path = field(default=Path("drizzle_output"), metadata=setting(
        group="output", rule=PathRule(), help="where drizzle_D{N}.fits (and images/) go",
        header=NoHeader("where the file is, not what it holds"), cli=Cli("--output-dir", "DIR")))
    overwrite: bool = field(default=False, metadata=setting(
        group="output", rule=Bool(), help="replace existing cubes (otherwise FileExistsError before any work)",
        header=NoHeader("how the file was written, not what it holds"), cli=Cli("--overwrite", store=True)))

    # ── extensions (not in spxquery 0.4.1) ─────────────────────────────────────
    kernel: str = field(default="square", metadata=setting(
        group="shrink", rule=Choice(KERNELS),
        help="square: exact-area drizzle of the shrunken droplet; bilinear: point kernel "
             "(like 0.4.1's, without its shift)",
        header=Fits("KERNEL", "drizzle kernel"), cli=Cli("--kernel")))
    tap_url: Optional[str] = field(default=None, metadata=setting(
        group="archive", rule=Url(),
        help=f"TAP service (None: ${TAP_URL_ENV}, else {DEFAULT_TAP_URL})",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--tap-url", "URL")))
    use_cutouts: Optional[bool] = field(default=None, metadata=setting(
        group="archive", rule=Bool(),
        help="fetch IRSA cutouts instead of full frames (None: when the cutout side is < 1 deg)",
        header=NoHeader(_NOT_THE_CUBE), cli=Cli("--cutouts", words={"auto": None, "yes": True, "no": False})))
    cutout_margin_arcmin: float = field(default=2.0, metadata=setting(
        group="archive", unit="arcmin", rule=Real(0.0, 600.0), help="margin around the region's diagonal in a cutout",
        header=NoHeader(_NOT_THE_CUBE)))
    download_timeout: float = field(default=60.0, metadata=setting(
        group="archive", unit="s", rule=Real(0.0, 86400.0, lo_open=True),
        help="timeout of each request and each socket read",
        header=NoHeader(_NOT_THE_CUBE)))
    download_retries: int = field(default=5, metadata=setting(
        group="archive", rule=Int(0, 100), help="retries per download or TAP query",
        header=NoHeader(_NOT_THE_CUBE)))
    progress: bool = field(default=True, metadata=setting(
        group="output", rule=Bool(), help="show progress bars (only on a terminal or in Jupyter)",
        header=NoHeader("how the run looked, not what the cube holds")))
    download_deadline: float = field(default=900.0, metadata=setting(
        group="archive", unit="s", rule=Real(0.0, 604800.0, lo_open=True),
        help="longest time for one file, every attempt and wait included (ends a trickling transfer)",
        header=NoHeader(_NOT_THE_CUBE)))
    tile_arcmin: Optional[float] = field(default=None, metadata=setting(
        group="output", unit="arcmin", rule=Real(0.0, 60000.0, lo_open=True),
        help="side of the square tiles the cube is drizzled in, each a sub-array of the one grid (None: one piece, "
             "or tiles chosen automatically when the accumulators exceed the memory available); same bits either way",
        header=NoHeader("how the cube was computed, not what it holds (tiled = one-piece, bit for bit)"),
        cli=Cli("--tile-arcmin", "ARCMIN")))
    scheduler: Optional[str] = field(default=None, metadata=setting(
        group="output", rule=Checked(_scheduler, "string", '"local", "local:N", "tcp://host:port" or a scheduler file'),
        help="where tiles run: None in this process one after another, \"local:N\" a dask LocalCluster of N worker "
             "processes, \"tcp://host:port\" or a scheduler file an existing dask cluster (the distributed extra)",
        header=NoHeader("how the cube was computed, not what it holds (tiled = one-piece, bit for bit)"),
        cli=Cli("--scheduler", "WHERE")))
    storage_options: Optional[Dict[str, Any]] = field(default=None, metadata=setting(
        group="archive", rule=Checked(_storage_options, "mapping", "keyword arguments of the fsspec filesystem"),
        help="options of the object store of an s3:// (fsspec) data_mirror, e.g. {anon: false} or "
             "{endpoint_url: ...}; None: anonymous, $AWS_ENDPOINT_URL honoured",
        header=NoHeader(_NOT_THE_CUBE)))

    reject_outliers: bool = field(default=False, metadata=setting(
        group="outliers", rule=Bool(),
        help="reject pixels that disagree with a robust model of the sky at their own (x, y, lambda) "
             "(cosmic rays, asteroids, satellite trails; every frame is read twice)",
        header=Fits("OUTREJ", "outlier rejection applied"), cli=Cli("--reject-outliers", store=True)))
    outlier_snr: Tuple[float, float] = field(default=(5.0, 3.0), metadata=setting(
        group="outliers", rule=Checked(_threshold_pair, "[float, float]", "first >= second > 0", numbers=True),
        help="noise thresholds (sigma of the pixel) of a detection and of its neighbours within outlier_grow",
        header=Fits("OUTSNR", "outlier noise thresholds", value=_pair_text("outlier_snr")),
        cli=Cli("--outlier-snr", ("SNR1", "SNR2"), nargs=2, type=float, convert=tuple)))
    outlier_scale: Tuple[float, float] = field(default=(1.2, 0.7), metadata=setting(
        group="outliers", rule=Checked(_threshold_pair, "[float, float]", "first >= second > 0", numbers=True),
        help="tolerance in units of the model's local range in x, y and lambda, for detections and neighbours",
        header=Fits("OUTSCALE", "outlier gradient tolerances", value=_pair_text("outlier_scale")),
        cli=Cli("--outlier-scale", ("S1", "S2"), nargs=2, type=float, convert=tuple)))
    outlier_grow: int = field(default=1, metadata=setting(
        group="outliers", unit="pixels", rule=Int(0, 10),
        help="radius (detector pixels, a square) around a detection within which the second thresholds apply",
        header=Fits("OUTGROW", "[pixels] outlier growth radius"), cli=Cli("--outlier-grow", "N")))
    outlier_min_inputs: int = field(default=4, metadata=setting(
        group="outliers", unit="frames", rule=Int(3, 1_000_000),
        help="voxels with fewer input frames are not tested (marked -1 in the REJECTED extension)",
        header=Fits("OUTMININ", "fewest frames for outlier tests"), cli=Cli("--outlier-min-inputs", "N")))
    outlier_masks: bool = field(default=False, metadata=setting(
        group="outliers", rule=Bool(),
        help="also write each input's rejection mask (output_dir/outlier_masks/<file>_outliers.fits)",
        header=NoHeader("files beside the cube, not what it holds"), cli=Cli("--outlier-masks", store=True)))
    covariance: bool = field(default=False, metadata=setting(
        group="accumulate", rule=Bool(),
        help="accumulate the covariance of neighbouring voxels (COVARIANCE HDUs; exact aperture errors "
             "with covariance.aperture_variance); costs one float64 cube per stencil offset in memory, up to ~1.8x "
             "the kernel's time per frame and a float64 COVARIANCE image (a 30' D3 cube: 331 MB); never "
             "tiled (an error with tile_arcmin; the whole cube must fit in memory)",
        header=Fits("COVAR", "covariance HDUs written"), cli=Cli("--covariance", store=True)))
    combine_detectors: bool = field(default=False, metadata=setting(
        group="detector", rule=Bool(),
        help="with detector 0: one cube of all six detectors (drizzle_all.fits, 0.75-5 um) instead of one per "
             "detector",
        header=NoHeader("DETECTOR = 0 and the WAVELENGTH table's DETECTOR column record it"),
        cli=Cli("--combine-detectors", store=True)))
    spectral_wcs: str = field(default=calnames.AUTO, metadata=setting(
        group="preprocess",
        rule=Checked(calnames.check_setting, "str",
                     "auto, lookup, a product version (cal-wcs-v<N>-<yyyy-ddd>) or a product file or directory"),
        help="per-pixel wavelengths: auto = the spectral-WCS calibration product, else the L2 lookup with a "
             "warning; lookup = the L2 WCS-WAVE table",
        header=NoHeader("WAVESRC and WVFnnnnn record the wavelengths each cube used"),
        cli=Cli("--spectral-wcs", "SOURCE")))

    # ── constants ──────────────────────────────────────────────────────────────
    BASE_PIXSCALE: float = field(default=6.15, init=False, repr=False)  # arcsec/pixel

    def __post_init__(self) -> None:
        """Validate and normalise every field (ValueError names field, value and range)."""
        validate(self)
        self._check_derived()

    def _check_derived(self) -> None:
        """Values later stages derive from several fields, checked now under the fields' names."""
        nx, ny = self.output_nx(), self.output_ny()
        if nx < 1 or ny < 1:
            raise ValueError(
                f"output grid would be {nx} x {ny} pixels (width={self.width}, height={self.height} "
                f"arcmin at {self.effective_pixscale():.4g} arcsec/pixel); enlarge width/height to at "
                f"least {self.effective_pixscale() / 60.0:.4g} arcmin or increase xy_oversample"
            )
        self._check_combinations()
        side = 2.0 * self.spatial_radius_deg() + 2.0 * self.cutout_margin_arcmin / 60.0
        if self.use_cutouts and side > MAX_CUTOUT_DEG:
            raise ValueError(
                f"use_cutouts=True asks for cutouts {side:.4g} deg wide (the region's diagonal from width="
                f"{self.width:g} and height={self.height:g} arcmin, plus 2 x cutout_margin_arcmin="
                f"{self.cutout_margin_arcmin:g}), more than the {MAX_CUTOUT_DEG:g} deg a cutout can have; "
                "shrink the region or set use_cutouts to null (auto) or false"
            )
        if self.covariance and self.tile_arcmin is not None:
            raise ValueError(
                f"covariance=True cannot be drizzled in tiles (tile_arcmin={self.tile_arcmin:g}): the cross terms "
                "of voxel pairs across a tile edge are not assembled; set tile_arcmin to null (one piece) or "
                "covariance to false"
            )

    def _check_combinations(self) -> None:
        """Settings that cannot be used together (yet), named with the way out."""
        if self.reject_outliers and self.tile_arcmin is not None:
            raise ValueError(f"reject_outliers=True and tile_arcmin={self.tile_arcmin:g} cannot be combined: "
                             f"{OUTLIERS_NOT_TILED}; set tile_arcmin to null or reject_outliers to false")
        if self.combine_detectors and int(self.detector) != 0:
            raise ValueError(
                f"combine_detectors=True makes one cube of all six detectors and needs detector=0, got "
                f"detector={self.detector}; set detector to 0 or combine_detectors to false"
            )
        if self.combine_detectors and (self.tile_arcmin is not None or self.scheduler is not None):
            raise ValueError(
                f"combine_detectors=True is drizzled in one piece: tiles are not supported for the cube of all "
                f"detectors, got tile_arcmin={self.tile_arcmin}, scheduler={self.scheduler!r}; set both to null "
                "or combine_detectors to false"
            )
        if self.combine_detectors and self.covariance:
            raise ValueError(
                "combine_detectors=True and covariance=True cannot be combined: the covariance stencil is derived "
                "from one detector's bandwidths; set covariance to false, or combine_detectors to false (one cube "
                "per detector, each with its covariance)"
            )
        if self.combine_detectors and self.reject_outliers:
            raise ValueError(
                "combine_detectors=True and reject_outliers=True cannot be combined: the outlier model is built "
                "for one detector's cube; set reject_outliers to false, or combine_detectors to false (one cube "
                "per detector, each with outlier rejection)"
            )
        if isinstance(self.data_mirror, str) and calnames.setting_kind(self.spectral_wcs) == "version":
            raise ValueError(
                f"spectral_wcs={self.spectral_wcs} names an archive product version, which is found in a local "
                f"mirror, the download cache or the archive, not in an object store (data_mirror="
                f"{self.data_mirror}); set spectral_wcs to a local product file or directory, auto (the L2 "
                "lookup, with a warning) or lookup"
            )

    # ── Derived quantities ─────────────────────────────────────────────────

    def effective_z_shrink(self) -> float:
        """Spectral droplet shrink: ``z_shrink`` if set, else ``xy_shrink``."""
        return self.z_shrink if self.z_shrink is not None else self.xy_shrink

    def effective_pixscale(self) -> float:
        """Output pixel scale [arcsec]: ``6.15 / xy_oversample``."""
        return self.BASE_PIXSCALE / self.xy_oversample

    def output_nx(self) -> int:
        """Output width [pixels]: ``floor(width * 60 / pixscale)`` (1e-9 guard against rounding)."""
        return int(self.width * 60.0 / self.effective_pixscale() + 1e-9)

    def output_ny(self) -> int:
        """Output height [pixels]: ``floor(height * 60 / pixscale)`` (1e-9 guard against rounding)."""
        return int(self.height * 60.0 / self.effective_pixscale() + 1e-9)

    def spatial_radius_deg(self) -> float:
        """Half-diagonal of the output region [deg] (radius of the archive search circle)."""
        return math.hypot(self.width, self.height) / 2.0 / 60.0

    def resolved_tap_url(self) -> str:
        """TAP service URL: ``tap_url``, else ``$SPXQUERY_TAP_URL``, else IRSA's."""
        if self.tap_url:
            return self.tap_url
        env = os.environ.get(TAP_URL_ENV, "").strip()
        return env or DEFAULT_TAP_URL

    # ── Equality / copying ─────────────────────────────────────────────────

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Drizzle3DConfig):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def replace(self, **changes: Any) -> "Drizzle3DConfig":
        """A validated copy with ``changes`` applied (unknown names raise ValueError)."""
        unknown = sorted(set(changes) - {d.name for d in described(self)})
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} field(s): {unknown}")
        return dataclasses.replace(self, **changes)

    # ── Serialisation ──────────────────────────────────────────────────────

    def to_dict(self) -> Dict[str, Any]:
        """Every init field as plain JSON/YAML types (Path -> str, arrays/tuples -> lists)."""
        out = {}
        for d in described(self):
            v = getattr(self, d.name)
            out[d.name] = None if v is None else d.setting.rule.plain(v)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> "Drizzle3DConfig":
        """Build a validated config from a mapping (as produced by :meth:`to_dict`).

        Unknown or missing required keys raise ValueError naming them. Numbers written as
        strings (YAML 1.1 reads ``1e10`` as a string) are converted for numeric fields.
        """
        if not isinstance(data, dict):
            raise ValueError(f"config must be a mapping of field names to values, got {type(data).__name__}")
        data = dict(data)
        data.pop("BASE_PIXSCALE", None)  # non-init constant written by some 0.4.1 files
        fields = described(cls)
        names = [d.name for d in fields]
        unknown = sorted(str(k)[:200] for k in data if k not in names)
        if unknown:
            shown = ", ".join(short_repr(k, 40) for k in unknown[:10]) + (f" (+{len(unknown) - 10} more)"
                                                                         if len(unknown) > 10 else "")
            raise ValueError(f"unknown config key(s): {shown}; valid keys: {', '.join(names)}")
        missing = [d.name for d in fields if d.required and d.name not in data]
        if missing:
            raise ValueError(f"missing required config key(s): {missing}")
        for d in fields:
            if d.name in data:
                data[d.name] = d.setting.rule.from_text(data[d.name])
        return cls(**data)

    # spxquery 0.4.1 API names
    def _to_dict(self) -> Dict[str, Any]:
        return self.to_dict()

    @classmethod
    def _from_dict(cls, data: Dict[str, Any]) -> "Drizzle3DConfig":
        return cls.from_dict(data)

    def to_json(self) -> str:
        """JSON text of :meth:`to_dict` (all fields, including z_lambda_edges)."""
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, json_str: str) -> "Drizzle3DConfig":
        """Config from JSON text (ValueError on invalid JSON or values)."""
        try:
            data = json.loads(json_str)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid config JSON: {exc}") from exc
        except RecursionError:
            raise ValueError("invalid config JSON: nested too deeply") from None
        return cls.from_dict(data)

    def yaml_text(self, preamble: str = YAML_PREAMBLE, blocks: Optional[Mapping[str, str]] = None) -> str:
        """The config as commented YAML: ``preamble``, then each group under its title, each
        field under a comment with its help, unit and allowed range. ``blocks`` replaces the
        YAML of the fields it names (text ending with a newline)."""
        d = self.to_dict()
        parts = [preamble]
        for group, fields in groups_in_order(self, list(GROUPS)):
            parts.append(f"\n# ── {GROUPS.get(group, group)}\n")
            for f in fields:
                parts.append(_comment(f.summary()))
                parts.append((blocks or {}).get(f.name) or _yaml_block({f.name: d[f.name]}))
        return "".join(parts)

    def to_yaml_file(self, filepath: Union[str, Path]) -> None:
        """Write :meth:`yaml_text` to ``filepath`` (creates parents)."""
        filepath = Path(filepath)
        filepath.parent.mkdir(parents=True, exist_ok=True)
        filepath.write_text(self.yaml_text(), encoding="utf-8")
        logger.debug("Wrote config to %s", filepath)

    @classmethod
    def from_yaml_file(cls, filepath: Union[str, Path]) -> "Drizzle3DConfig":
        """Read a config written by :meth:`to_yaml_file` (or by hand; ``yaml.safe_load`` only).

        FileNotFoundError if the file does not exist (or is a directory, a FIFO, a device);
        ValueError if it is larger than 1 MiB, not UTF-8, not valid YAML, nested deeper than
        32 levels or larger than 100,000 values with its aliases expanded, not a mapping, has
        unknown keys, or holds invalid values (messages name the file; :mod:`.yaml_limits`).
        """
        filepath = Path(filepath)
        data = load_yaml_file(filepath)
        if not isinstance(data, dict):
            raise ValueError(f"{filepath}: expected a YAML mapping of config fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (ValueError, TypeError) as exc:  # TypeError: defensive, unreachable after the key checks
            raise ValueError(f"{filepath}: {exc}") from exc


class _FlowListDumper(yaml.SafeDumper):
    """SafeDumper writing lists inline (``[1.0, 2.0]``) and mappings as blocks."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _comment(text: str, width: int = 100) -> str:
    """``text`` as YAML comment lines of at most ``width`` characters; the allowed range (after
    the last ``"; "``) is never split."""
    head, sep, rng = text.rpartition("; ")
    lines = textwrap.wrap(head or rng, width - 2)
    if head:
        if len(lines[-1]) + 2 + len(rng) <= width - 2:
            lines[-1] += sep + rng
        else:
            lines[-1] += ";"
            lines.append(rng)
    return "".join(f"# {ln}\n" for ln in lines)


def _yaml_block(mapping: Dict[str, Any]) -> str:
    return yaml.dump(mapping, Dumper=_FlowListDumper, default_flow_style=False, sort_keys=False, width=100)


__all__ = ["Drizzle3DConfig", "DEFAULT_TAP_URL", "DETECTOR_ALL", "TAP_URL_ENV", "KERNELS", "GROUPS"]
