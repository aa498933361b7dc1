"""Small genuine archive frames for tests that need no simulator: a few KB each, real FITS.

:func:`write_small_frame` writes a multi-extension file with the extensions a SPHEREx L2 file
must have (PRIMARY, IMAGE with a TAN WCS, FLAGS, VARIANCE, WCS-WAVE) at the IRSA path of its
``uri`` and returns its index row. The pixel values are noise, not a sky: use
:mod:`spxquery.drizzle3d.simulate` where the content matters. Angles in degrees, MJD.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .archive_index import index_row
from .spherical import square_poly

#: Band limits (um) of the six detectors, as the small frames' index rows state them.
_BANDS_UM = {1: (0.75, 1.09), 2: (1.10, 1.62), 3: (1.63, 2.41), 4: (2.42, 3.82), 5: (3.83, 4.41), 6: (4.42, 5.00)}
_DATA_PREFIX = "ibe/data/spherex/"


def frame_uri(
    obs_id: str, detector: int, version: int = 12, date: str = "2025-164", release: str = "qr2"
) -> str:
    """IRSA-style ``uri`` of an L2 frame.

    ``ibe/data/spherex/<release>/level2/<plan>/l2b-v<ver>-<date>/<det>/<file>``
    """
    plan = "_".join(obs_id.split("_")[:2])
    tag = f"l2b-v{version}-{date}"
    return f"{_DATA_PREFIX}{release}/level2/{plan}/{tag}/{detector}/level2_{obs_id}D{detector}_spx_{tag}.fits"


def _small_hdulist(obs_id: str, detector: int, ra: float, dec: float, half_deg: float, mjd: float, tag: str,
                   npix: int, seed: int) -> Any:
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRPIX1"] = hdr["CRPIX2"] = (npix + 1) / 2.0
    hdr["CRVAL1"], hdr["CRVAL2"] = ra, dec
    scale = 2 * half_deg / npix
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = -scale, 0.0, 0.0, scale
    hdr["DETECTOR"], hdr["OBSID"] = detector, obs_id
    hdr["MJD-BEG"], hdr["MJD-END"], hdr["MJD-AVG"] = mjd, mjd + 0.001, mjd + 0.0005
    hdr["BUNIT"] = "MJy/sr"
    prim = fits.PrimaryHDU()
    prim.header["VERSION"] = tag
    return fits.HDUList([
        prim,
        fits.ImageHDU(rng.normal(1.0, 0.1, (npix, npix)).astype(np.float32), hdr, name="IMAGE"),
        fits.ImageHDU(rng.integers(0, 4, (npix, npix)).astype(np.int32), name="FLAGS"),
        fits.ImageHDU(np.full((npix, npix), 0.01, np.float32), name="VARIANCE"),
        fits.BinTableHDU.from_columns([
            fits.Column("X", "3E", array=np.array([[1.0, npix / 2.0, float(npix)]], np.float32)),
            fits.Column("Y", "3E", array=np.array([[1.0, npix / 2.0, float(npix)]], np.float32)),
            fits.Column("VALUES", "18E", array=rng.uniform(1.0, 2.0, (1, 18)).astype(np.float32)),
        ], name="WCS-WAVE"),
    ])


def write_small_frame(
    root: Path,
    obs_id: str,
    detector: int,
    *,
    ra: float,
    dec: float,
    half_deg: float = 0.05,
    mjd: float = 60800.0,
    version: int = 12,
    date: str = "2025-164",
    release: str = "qr2",
    npix: int = 48,
    producttype: str = "image",
    seed: int = 0,
) -> dict[str, Any]:
    """Write a small genuine multi-extension FITS frame (PRIMARY, IMAGE with a
    TAN WCS, FLAGS, VARIANCE, WCS-WAVE one-row table) under ``root`` and return
    its archive-index row. Not a full L2 simulation (use ``simulate`` for that)."""
    uri = frame_uri(obs_id, detector, version, date, release)
    path = Path(root) / uri[len(_DATA_PREFIX):]
    path.parent.mkdir(parents=True, exist_ok=True)
    hdul = _small_hdulist(obs_id, detector, ra, dec, half_deg, mjd, f"l2b-v{version}-{date}", npix, seed)
    hdul.writeto(path, overwrite=True)
    return index_row(path, uri, release=release, obs_id=obs_id, detector=detector, band_um=_BANDS_UM[int(detector)],
                     mjd=(mjd, mjd + 0.001), poly=square_poly(ra, dec, half_deg), producttype=producttype)


def row_path(root: Path, row: dict[str, Any]) -> Path:
    """The file of index ``row`` under the archive ``root``."""
    return Path(root) / str(row["uri"])[len(_DATA_PREFIX):]


def row_observation(row: dict[str, Any], url: str) -> Any:
    """The :class:`~spxquery.drizzle3d.archive.DrizzleObservation` the archive's search makes of
    index ``row``, fetched from ``url`` (e.g. ``server.url_for(row["uri"])``)."""
    from ..archive.observations import DrizzleObservation

    obs_id = str(row["obs_publisher_did"]).split("?")[1].split("/")[0]
    det = int(str(row["energy_bandpassname"])[-1])
    return DrizzleObservation(obs_id, f"D{det}", det, float(row["time_bounds_lower"]), url,
                              content_length=row["contentlength"], checksum=row["contentchecksum"])
