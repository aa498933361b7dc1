"""ADQL text of the SPHEREx frame search, built from validated numbers only.

One query joins ``spherex.artifact`` and ``spherex.plane`` and keeps every science
frame whose footprint (``p.poly``) INTERSECTS a circle, optionally one detector and an
MJD window, ordered by exposure start. Nothing but checked, finite numbers and fixed
names enters the text. Angles in degrees, times in MJD.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Artifact product types that are never science frames (a NULL type is kept).
NON_SCIENCE_PRODUCT_TYPES = ("preview", "thumbnail", "calibration", "auxiliary", "info", "catalog", "noise", "weight")

#: Columns the search selects; the result rows carry them without the table prefix.
#: The artifact column with the S3 location (JSON ``{"aws": {"bucket_name", "key", "region"}}``).
CLOUD_COLUMN = "a.cloud_access"
ADQL_COLUMNS = (
    "p.obs_publisher_did",
    "p.energy_bandpassname",
    "p.energy_bounds_lower",
    "p.energy_bounds_upper",
    "p.time_bounds_lower",
    "p.time_bounds_upper",
    "p.poly",
    "a.uri",
    "a.contentlength",
    "a.contentchecksum",
    "a.producttype",
)


def format_number(name: str, value: Any, lo: float, hi: float) -> str:
    """``value`` as a finite float in [lo, hi], written as the shortest exact decimal.
    ValueError naming ``name`` otherwise (booleans and strings are refused)."""
    try:
        if isinstance(value, (bool, np.bool_, str)):
            raise TypeError(value)
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(x) or not lo <= x <= hi:
        raise ValueError(f"{name} must be finite and in [{lo}, {hi}], got {value!r}")
    return str(np.format_float_positional(x, unique=True, trim="0"))


def _detector(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= 6:
        raise ValueError(f"detector must be an integer 0 (all) or 1-6, got {value!r}")
    return int(value)


def build_adql(
    ra: float,
    dec: float,
    radius_deg: float,
    detector: int = 0,
    mjd_range: tuple[float, float] | None = None,
    cloud_access: bool = False,
) -> str:
    """ADQL for every science frame whose footprint intersects the circle
    (``ra``, ``dec``, ``radius_deg``; deg), detector 1-6 (0 = all), exposure
    overlapping ``mjd_range`` (MJD). Only validated numbers enter the text.
    ``cloud_access``: also select the artifact's ``cloud_access`` column (S3 bucket and key)."""
    ra_s = format_number("center_ra", ra, 0.0, 360.0)
    dec_s = format_number("center_dec", dec, -90.0, 90.0)
    r_s = format_number("search radius (deg)", radius_deg, 1e-9, 180.0)
    det = _detector(detector)
    where = [f"INTERSECTS(p.poly, CIRCLE('ICRS', {ra_s}, {dec_s}, {r_s})) = 1"]
    if det == 0:
        names = ", ".join(f"'SPHEREx-D{d}'" for d in range(1, 7))
        where.append(f"p.energy_bandpassname IN ({names})")
    else:
        where.append(f"p.energy_bandpassname = 'SPHEREx-D{det}'")
    if mjd_range is not None:
        if len(mjd_range) != 2:
            raise ValueError(f"mjd_range must be (mjd_min, mjd_max), got {mjd_range!r}")
        lo = format_number("mjd_range[0]", mjd_range[0], 0.0, 1e6)
        hi = format_number("mjd_range[1]", mjd_range[1], 0.0, 1e6)
        if float(lo) > float(hi):
            raise ValueError(f"mjd_range must be increasing, got {mjd_range!r}")
        where.append(f"p.time_bounds_upper >= {lo}")
        where.append(f"p.time_bounds_lower <= {hi}")
    excluded = ", ".join(f"'{t}'" for t in NON_SCIENCE_PRODUCT_TYPES)
    where.append(f"(a.producttype IS NULL OR a.producttype NOT IN ({excluded}))")
    return (
        "SELECT " + ", ".join(ADQL_COLUMNS + ((CLOUD_COLUMN,) if cloud_access else ())) + "\n"
        "FROM spherex.artifact a JOIN spherex.plane p ON a.planeid = p.planeid\n"
        "WHERE " + "\n  AND ".join(where) + "\n"
        "ORDER BY p.time_bounds_lower"
    )
