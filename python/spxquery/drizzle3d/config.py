"""Drizzle3D configuration: what region to drizzle, how, and where to write it.

Units: ``center_ra``/``center_dec`` in degrees (ICRS), ``width``/``height`` in arcmin,
wavelengths in um, times in MJD, pixel scales in arcsec. The first 22 fields keep the
order and defaults of spxquery 0.4.1, so positional construction keeps working; the
fields after ``overwrite`` are extensions of this implementation.

Every field is validated on construction; an invalid value raises ValueError naming the
field, the value and the allowed range. Use :meth:`Drizzle3DConfig.replace` to change
fields (attribute assignment bypasses validation).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import yaml

from .flags import validate_exclude_flags
from .spectral import validate_lambda_edges

logger = logging.getLogger(__name__)

#: Default IRSA TAP service.
DEFAULT_TAP_URL = "https://irsa.ipac.caltech.edu/TAP"
#: Environment variable overriding the TAP service when ``tap_url`` is None.
TAP_URL_ENV = "SPXQUERY_TAP_URL"
#: Accepted values of ``kernel``.
KERNELS = ("square", "bilinear")

# Field groups, in the order they are written to YAML, with the header of each group.
_GROUPS: List[Tuple[str, List[str]]] = [
    (
        "Target sky region: centre (ICRS, deg; RA in [0, 360), Dec in [-90, 90]) and size of\n"
        "the output image (arcmin, > 0).",
        ["center_ra", "center_dec", "width", "height"],
    ),
    (
        "Detector: 0 = all six (D1-D6, one cube each), 1-6 = that detector only.",
        ["detector"],
    ),
    (
        "Droplet shrink (input kernel): linear size of each input pixel's droplet relative to\n"
        "the pixel, in (0, 1]. z_shrink = spectral shrink (null = same as xy_shrink).\n"
        "kernel: 'square' (exact-area drizzle) or 'bilinear' (point kernel).",
        ["xy_shrink", "z_shrink", "kernel"],
    ),
    (
        "Output grid: xy_oversample > 0 (1.0 = native 6.15 arcsec/pixel, 2.0 = 3.075);\n"
        "z_oversample > 0 (1.0 = the 17 native channels, 2.0 = constant-R bins twice as\n"
        "narrow); z_lambda_edges = custom wavelength bin edges in um (overrides z_oversample).",
        ["xy_oversample", "z_oversample", "z_lambda_edges"],
    ),
    (
        "Query / download: mjd_range [min, max] or null; max_images >= 1 (frames matched,\n"
        "all detectors together); download_workers >= 1 (parallel downloads); skip_existing reuses verified\n"
        "files; data_mirror = local copy of the archive (directory holding qr2/, qr3/, ...) or\n"
        "null to download; tap_url = TAP service (null = $SPXQUERY_TAP_URL or IRSA);\n"
        "use_cutouts: true/false/null (null = auto, cutouts when the region is much smaller\n"
        "than a frame); cutout_margin_arcmin >= 0; download_timeout > 0 s; download_retries >= 0.",
        [
            "mjd_range",
            "max_images",
            "download_workers",
            "skip_existing",
            "data_mirror",
            "tap_url",
            "use_cutouts",
            "cutout_margin_arcmin",
            "download_timeout",
            "download_retries",
        ],
    ),
    (
        "Pre-processing: subtract_zodi subtracts the ZODI extension; static_zodi uses it as is\n"
        "(otherwise its scale is fitted per frame); exclude_flags = FLAGS bits (0-31) or names\n"
        "(e.g. HOT, NONFUNC, GHOST*) whose pixels are dropped.",
        ["subtract_zodi", "static_zodi", "exclude_flags"],
    ),
    (
        "Accumulation: ivar_max > 0 caps the inverse-variance weight; min_overlap in [0, 1)\n"
        "drops contributions whose overlap fraction f_xy * f_z is below it.",
        ["ivar_max", "min_overlap"],
    ),
    (
        "Output: output_dir receives drizzle_D{N}.fits; overwrite replaces existing cubes;\n"
        "progress shows progress bars.",
        ["output_dir", "overwrite", "progress"],
    ),
]


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _real(name: str, value: Any, rule: str) -> float:
    if not _is_real(value):
        raise ValueError(f"{name} must be a number ({rule}), got {value!r}")
    v = float(value)
    if math.isnan(v):
        raise ValueError(f"{name} must be a number ({rule}), got NaN")
    return v


def _finite(name: str, value: Any, rule: str) -> float:
    v = _real(name, value, rule)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite ({rule}), got {v}")
    return v


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _path(name: str, value: Any) -> Path:
    if isinstance(value, (str, os.PathLike)) and str(value).strip() != "":
        return Path(value)
    raise ValueError(f"{name} must be a non-empty path, got {value!r}")


@dataclass(eq=False)
class Drizzle3DConfig:
    """Configuration of a SPHEREx 3-D drizzle (see the module docstring for units).

    Shrink (``xy_shrink``, ``z_shrink``) sets the input droplet size; oversample
    (``xy_oversample``, ``z_oversample``) sets the output grid resolution.
    """

    # ── Target sky region ──────────────────────────────────────────────────
    center_ra: float  # deg, [0, 360)
    center_dec: float  # deg, [-90, 90]
    width: float  # arcmin, > 0
    height: float  # arcmin, > 0

    # ── Detector selection ─────────────────────────────────────────────────
    detector: int = 0  # 0 = all detectors D1-D6; 1-6 = one

    # ── Droplet shrink ─────────────────────────────────────────────────────
    xy_shrink: float = 0.8  # (0, 1]
    z_shrink: Optional[float] = None  # (0, 1]; None = xy_shrink

    # ── Output grid ────────────────────────────────────────────────────────
    xy_oversample: float = 1.0  # 1.0 -> 6.15"/pix
    z_oversample: float = 1.0  # 1.0 -> 17 native channels
    z_lambda_edges: Optional[np.ndarray] = None  # custom bin edges [um]

    # ── Query / download ───────────────────────────────────────────────────
    mjd_range: Optional[Tuple[float, float]] = None  # (mjd_min, mjd_max)
    max_images: int = 500  # cap on matched frames, all requested detectors together
    download_workers: int = 4
    skip_existing: bool = True
    data_mirror: Optional[Path] = None  # local mirror root (holds qr2/, qr3/, ...)

    # ── Pre-processing ─────────────────────────────────────────────────────
    subtract_zodi: bool = True
    static_zodi: bool = False
    exclude_flags: List[Union[int, str]] = field(default_factory=list)

    # ── Accumulation ───────────────────────────────────────────────────────
    ivar_max: float = 1e10
    min_overlap: float = 0.0

    # ── Output ─────────────────────────────────────────────────────────────
    output_dir: Path = Path("drizzle_output")
    overwrite: bool = False

    # ── Extensions (not in spxquery 0.4.1) ─────────────────────────────────
    kernel: str = "square"  # "square" (exact-area drizzle) or "bilinear" (point kernel)
    tap_url: Optional[str] = None  # None -> $SPXQUERY_TAP_URL -> IRSA
    use_cutouts: Optional[bool] = None  # None = auto
    cutout_margin_arcmin: float = 2.0
    download_timeout: float = 60.0  # s
    download_retries: int = 5
    progress: bool = True

    # ── Constants ──────────────────────────────────────────────────────────
    BASE_PIXSCALE: float = field(default=6.15, init=False, repr=False)  # arcsec/pixel

    def __post_init__(self) -> None:
        """Validate and normalise every field (ValueError names field, value and range)."""
        self.center_ra = _finite("center_ra", self.center_ra, "deg in [0, 360)")
        if not 0.0 <= self.center_ra < 360.0:
            raise ValueError(f"center_ra must be in [0, 360) deg, got {self.center_ra}")
        self.center_dec = _finite("center_dec", self.center_dec, "deg in [-90, 90]")
        if not -90.0 <= self.center_dec <= 90.0:
            raise ValueError(f"center_dec must be in [-90, 90] deg, got {self.center_dec}")
        for name in ("width", "height"):
            v = _finite(name, getattr(self, name), "arcmin > 0")
            if not v > 0:
                raise ValueError(f"{name} must be > 0 arcmin, got {v}")
            setattr(self, name, v)

        if not _is_int(self.detector) or not 0 <= int(self.detector) <= 6:
            raise ValueError(f"detector must be an integer 0 (all) or 1-6, got {self.detector!r}")
        self.detector = int(self.detector)

        self.xy_shrink = _finite("xy_shrink", self.xy_shrink, "in (0, 1]")
        if not 0.0 < self.xy_shrink <= 1.0:
            raise ValueError(f"xy_shrink must be in (0, 1], got {self.xy_shrink}")
        if self.z_shrink is not None:
            self.z_shrink = _finite("z_shrink", self.z_shrink, "None or in (0, 1]")
            if not 0.0 < self.z_shrink <= 1.0:
                raise ValueError(f"z_shrink must be None or in (0, 1], got {self.z_shrink}")

        for name in ("xy_oversample", "z_oversample"):
            v = _finite(name, getattr(self, name), "> 0")
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
            setattr(self, name, v)
        if self.z_lambda_edges is not None:
            self.z_lambda_edges = validate_lambda_edges(self.z_lambda_edges, name="z_lambda_edges")

        if self.mjd_range is not None:
            mr = self.mjd_range
            if isinstance(mr, (str, bytes)) or not hasattr(mr, "__len__") or len(mr) != 2:
                raise ValueError(f"mjd_range must be None or (mjd_min, mjd_max), got {mr!r}")
            lo = _finite("mjd_range", mr[0], "two finite MJDs, min < max")
            hi = _finite("mjd_range", mr[1], "two finite MJDs, min < max")
            if not lo < hi:
                raise ValueError(f"mjd_range must be increasing (mjd_min < mjd_max), got ({lo}, {hi})")
            self.mjd_range = (lo, hi)

        for name in ("max_images", "download_workers"):
            v = getattr(self, name)
            if not _is_int(v) or int(v) < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
            setattr(self, name, int(v))

        for name in ("skip_existing", "subtract_zodi", "static_zodi", "overwrite", "progress"):
            setattr(self, name, _bool(name, getattr(self, name)))

        if self.data_mirror is not None:
            self.data_mirror = _path("data_mirror", self.data_mirror)
        self.output_dir = _path("output_dir", self.output_dir)

        try:
            self.exclude_flags = validate_exclude_flags(self.exclude_flags)
        except ValueError as exc:
            raise ValueError(f"exclude_flags: {exc} (got {self.exclude_flags!r})") from None

        self.ivar_max = _finite("ivar_max", self.ivar_max, "> 0")
        if not self.ivar_max > 0:
            raise ValueError(f"ivar_max must be > 0, got {self.ivar_max}")
        self.min_overlap = _finite("min_overlap", self.min_overlap, "in [0, 1)")
        if not 0.0 <= self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in [0, 1), got {self.min_overlap}")

        if not isinstance(self.kernel, str) or self.kernel.strip().lower() not in KERNELS:
            raise ValueError(f"kernel must be one of {list(KERNELS)}, got {self.kernel!r}")
        self.kernel = self.kernel.strip().lower()

        if self.tap_url is not None:
            if not isinstance(self.tap_url, str) or not self.tap_url.strip().lower().startswith(
                ("http://", "https://")
            ):
                raise ValueError(f"tap_url must be None or an http(s) URL, got {self.tap_url!r}")
            self.tap_url = self.tap_url.strip()
        if self.use_cutouts is not None:
            self.use_cutouts = _bool("use_cutouts", self.use_cutouts)
        self.cutout_margin_arcmin = _finite("cutout_margin_arcmin", self.cutout_margin_arcmin, "arcmin >= 0")
        if not self.cutout_margin_arcmin >= 0:
            raise ValueError(f"cutout_margin_arcmin must be >= 0 arcmin, got {self.cutout_margin_arcmin}")
        self.download_timeout = _finite("download_timeout", self.download_timeout, "seconds > 0")
        if not self.download_timeout > 0:
            raise ValueError(f"download_timeout must be > 0 seconds, got {self.download_timeout}")
        if not _is_int(self.download_retries) or int(self.download_retries) < 0:
            raise ValueError(f"download_retries must be an integer >= 0, got {self.download_retries!r}")
        self.download_retries = int(self.download_retries)

        nx, ny = self.output_nx(), self.output_ny()
        if nx < 1 or ny < 1:
            raise ValueError(
                f"output grid would be {nx} x {ny} pixels (width={self.width}, height={self.height} "
                f"arcmin at {self.effective_pixscale():.4g} arcsec/pixel); enlarge width/height to at "
                f"least {self.effective_pixscale() / 60.0:.4g} arcmin or increase xy_oversample"
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
        unknown = sorted(set(changes) - set(_init_field_names()))
        if unknown:
            raise ValueError(f"unknown Drizzle3DConfig field(s): {unknown}")
        return dataclasses.replace(self, **changes)

    # ── Serialisation ──────────────────────────────────────────────────────

    def to_dict(self) -> Dict[str, Any]:
        """Every init field as plain JSON/YAML types (Path -> str, arrays/tuples -> lists)."""
        d: Dict[str, Any] = {}
        for name in _init_field_names():
            v = getattr(self, name)
            if isinstance(v, Path):
                v = str(v)
            elif isinstance(v, np.ndarray):
                v = [float(x) for x in v]
            elif name == "mjd_range" and v is not None:
                v = [float(v[0]), float(v[1])]
            elif name == "exclude_flags":
                v = list(v)
            d[name] = v
        return d

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
        names = _init_field_names()
        unknown = sorted(str(k) for k in data if k not in names)
        if unknown:
            raise ValueError(f"unknown config key(s): {unknown}; valid keys: {list(names)}")
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"missing required config key(s): {missing}")
        for key in _FLOAT_FIELDS:
            if isinstance(data.get(key), str):
                data[key] = _str_to_float(key, data[key])
        if isinstance(data.get("z_lambda_edges"), list):
            data["z_lambda_edges"] = [_str_to_float("z_lambda_edges", x) if isinstance(x, str) else x
                                      for x in data["z_lambda_edges"]]
        if isinstance(data.get("mjd_range"), list):
            data["mjd_range"] = tuple(_str_to_float("mjd_range", x) if isinstance(x, str) else x
                                      for x in data["mjd_range"])
        return cls(**data)

    # 0.4.1 names
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
        return cls.from_dict(data)

    def to_yaml_file(self, filepath: Union[str, Path]) -> None:
        """Write the config as YAML with a commented header per field group (creates parents)."""
        filepath = Path(filepath)
        filepath.parent.mkdir(parents=True, exist_ok=True)
        d = self.to_dict()
        parts = [
            "# SPHEREx Drizzle3D configuration (spxquery.drizzle3d).\n"
            "# Load with Drizzle3DConfig.from_yaml_file(path). Units: deg, arcmin, um, MJD, s.\n"
        ]
        written = set()
        for header, keys in _GROUPS:
            parts.append("\n" + "".join(f"# {line}\n" for line in header.split("\n")))
            chunk = {k: d[k] for k in keys}
            written.update(keys)
            parts.append(_yaml_block(chunk))
        rest = {k: v for k, v in d.items() if k not in written}
        if rest:
            parts.append("\n# Other settings\n" + _yaml_block(rest))
        filepath.write_text("".join(parts), encoding="utf-8")
        logger.debug("Wrote config to %s", filepath)

    @classmethod
    def from_yaml_file(cls, filepath: Union[str, Path]) -> "Drizzle3DConfig":
        """Read a config written by :meth:`to_yaml_file` (or by hand; ``yaml.safe_load`` only).

        FileNotFoundError if the file does not exist; ValueError if it is not valid YAML, not
        a mapping, has unknown keys, or holds invalid values (messages name the file).
        """
        filepath = Path(filepath)
        if not filepath.is_file():
            raise FileNotFoundError(f"Config file not found: {filepath}")
        try:
            with open(filepath, "r", encoding="utf-8") as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as exc:
            raise ValueError(f"{filepath}: invalid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{filepath}: expected a YAML mapping of config fields, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"{filepath}: {exc}") from exc
        except TypeError as exc:  # defensive: should be unreachable after key checks
            raise ValueError(f"{filepath}: {exc}") from exc


class _FlowListDumper(yaml.SafeDumper):
    """SafeDumper writing lists inline (``[1.0, 2.0]``) and mappings as blocks."""


_FlowListDumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def _yaml_block(mapping: Dict[str, Any]) -> str:
    return yaml.dump(mapping, Dumper=_FlowListDumper, default_flow_style=False, sort_keys=False, width=100)


_FLOAT_FIELDS = (
    "center_ra", "center_dec", "width", "height", "xy_shrink", "z_shrink", "xy_oversample",
    "z_oversample", "ivar_max", "min_overlap", "cutout_margin_arcmin", "download_timeout",
)


def _str_to_float(name: str, s: str) -> Any:
    try:
        return float(s)
    except ValueError:
        return s  # let field validation report it with the field's rule


def _init_field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Drizzle3DConfig) if f.init)


__all__ = ["Drizzle3DConfig", "DEFAULT_TAP_URL", "TAP_URL_ENV", "KERNELS"]
