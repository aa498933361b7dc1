"""Cutouts served by the simulated archive: the IRSA request syntax and two cutout makers.

A request ``?center=<ra>,<dec>&size=<value>[deg|arcmin|arcsec]`` (degrees by default) is
answered by a function ``(path, ra_deg, dec_deg, size_deg) -> HDUList``: the simulator's
``make_cutout`` (IRSA-faithful: CRPIX, CRPIXnA and CRPIXnW shifted together) by default, or
:func:`simple_cutout` for the small frames of :mod:`.small_frames`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .adql_eval import NUMBER

_SIZE_UNITS = {"": 1.0, "deg": 1.0, "d": 1.0, "arcmin": 1 / 60.0, "arcsec": 1 / 3600.0}


class CutoutUnavailable(RuntimeError):
    """The server was asked for a cutout but has no function to make one (HTTP 501)."""


def parse_cutout_size(text: str) -> float:
    """IRSA ``size=`` value (``0.1``, ``0.1deg``, ``30arcmin``, ``90arcsec``) -> degrees."""
    m = re.fullmatch(rf"\s*({NUMBER})\s*([a-z]*)\s*", text)
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad cutout size {text!r}")
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]


def parse_cutout_request(query: dict[str, list[str]]) -> tuple[float, float, float]:
    """(ra, dec, size) in degrees from the parsed query string of a cutout request."""
    ra_s, dec_s = query["center"][0].split(",")[:2]
    return float(ra_s.rstrip("d")), float(dec_s.rstrip("d")), parse_cutout_size(query["size"][0])


def default_cutout_func() -> Callable[..., Any] | None:
    """The simulator's IRSA-style cutout maker, or None when the simulator cannot be imported."""
    try:
        from ..simulate import make_cutout
    except ImportError:
        return None
    return make_cutout


def simple_cutout(path: Path, ra: float, dec: float, size_deg: float) -> Any:
    """Square cutout (``size_deg`` side, deg) of every 2-D image HDU using the
    IMAGE WCS and astropy's Cutout2D; other HDUs copied whole. For tests that
    need cutouts of :func:`~.small_frames.write_small_frame` files."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(path) as full, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(full["IMAGE"].header)
        out = fits.HDUList([fits.PrimaryHDU(header=full[0].header.copy())])
        pos = SkyCoord(ra, dec, unit="deg")
        for hdu in full[1:]:
            if hdu.data is not None and hdu.data.ndim == 2 and hdu.data.shape == full["IMAGE"].data.shape:
                cut = Cutout2D(hdu.data, pos, size_deg * u.deg, wcs=wcs, mode="trim")
                h = hdu.header.copy()
                h.update(cut.wcs.to_header())
                out.append(fits.ImageHDU(cut.data, h, name=hdu.name))
            else:
                out.append(hdu.copy())
        return out
