"""Golden regression test: cubes stay identical, bit for bit, across refactors and speed-ups.

The digests below were recorded with the code of main at 6e5b4ce (before the architecture
rework of issue 15); the four cases with a fitted zodi scale were re-recorded when the scale
became a property of the frame alone (issue 23: fitted on the frame's fixed sample of rows
instead of on the crop or a decimated subsample), the static-zodi case is unchanged. All five
were re-recorded when the corner maps' exactly evaluated nodes moved to multiples of 16 in each
frame's own pixels instead of starting at the crop's or strip's first corner (issue 20: a corner
gets the same bits in every crop, strip and tile; the interpolated positions moved by far less
than the 1e-3 pixel interpolation error). Each case
drizzles simulated frames (QR2 cutouts, QR3 full frames; square and bilinear kernels;
whole-crop reads and crops read in strips of rows; fitted and static zodi) and hashes every
data array of the cube file (SCI, VARIANCE, AND_MASK, OR_MASK, COUNT, the WAVELENGTH table's
columns of the 0.4.1 layout) and the inputs' bookkeeping keywords. A change of any bit fails.
Columns added since (DETECTOR) are checked on their own.

The input frames are hashed too, so that a change of the simulator is reported as such rather
than as an engine regression. If a change is meant to alter a cube (a fixed defect), re-record
only that case's digest and say why in the commit.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import Drizzle3DConfig
from spxquery.drizzle3d.cubefile import WAVELENGTH_COLUMNS_041
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.simulate import simulate_field

RA, DEC = 150.0, 2.0

#: Input data digests per field (IMAGE, FLAGS, VARIANCE, ZODI pixels and the WCS-WAVE table).
INPUT_DIGESTS = {
    "qr2_cutouts": "5f3b81f89ecc621fdb70c57b54507e477617f5e790bc0955e9f11fb0fac78251",
    "qr3_full": "4c004e57dd3e8812462d2c74bd9e4d84726261ab5561dabea1be831dc5ad8bf8",
}

#: (field, config overrides) -> digest of the cube's arrays and bookkeeping keywords.
CASES = {
    "qr2_cutouts_square": (
        "qr2_cutouts",
        dict(width=8.0, height=8.0, exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS)),
        "b8f1a80a8a2e140fdc035f57396cc73e53179953ba674f8ba86f77e8e2c64899",
    ),
    "qr2_cutouts_bilinear_oversampled": (
        "qr2_cutouts",
        dict(width=6.0, height=7.0, kernel="bilinear", xy_oversample=2.0, z_oversample=2.0, xy_shrink=0.6,
             exclude_flags=["HOT", "NONFUNC"]),
        "e522ca4919ace0936f21a2b147ca6602c84e9fa9ba26273c33851c767073e911",
    ),
    # 110' at 24.6"/pixel: each frame's crop exceeds 1 M pixels and is read in strips of rows.
    "qr3_full_square_strips": (
        "qr3_full",
        dict(width=110.0, height=110.0, xy_oversample=0.25, exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS)),
        "2b8f39b185c56e703b1612da03f55c72ea61ddc6a08c6b2d4952ad653e8a8ee0",
    ),
    "qr3_full_bilinear_crop_static_zodi": (
        "qr3_full",
        dict(width=20.0, height=16.0, kernel="bilinear", static_zodi=True, min_overlap=0.05,
             z_lambda_edges=[1.7, 1.8, 1.9, 1.95, 2.0, 2.1, 2.3]),
        "b05e55bc5c01240c132b7ff07d454dd8ad5c63e5e0963f9227d5268ecf15ab0b",
    ),
    "qr3_full_square_crop_fitted_zodi": (
        "qr3_full",
        dict(width=30.0, height=30.0, z_shrink=0.5, ivar_max=50.0, exclude_flags=["HOT"]),
        "db8c7eee8b0fc7a768c99deafa6c9c484ab1b850059f64777afb259d9fb1e6fc",
    ),
}


def _field(root: Path, name: str):
    if name == "qr2_cutouts":
        return simulate_field(root, RA, DEC, detectors=(3,), n_pointings=6, release="qr2", seed=12,
                              cutout_size_deg=0.2)
    return simulate_field(root, RA, DEC, detectors=(3,), n_pointings=3, release="qr3", seed=11)


@pytest.fixture(scope="module")
def fields(tmp_path_factory):
    out = {}
    for name in INPUT_DIGESTS:
        info = _field(tmp_path_factory.mktemp(name), name)
        out[name] = list(info.paths)
    return out


def _update(h, arr) -> None:
    a = np.ascontiguousarray(arr)
    h.update(str(a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype).encode())
    h.update(str(a.shape).encode())
    h.update(a.astype(a.dtype.newbyteorder("<")).tobytes())


def input_digest(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with fits.open(p) as hdul:
            for ext in ("IMAGE", "FLAGS", "VARIANCE", "ZODI"):
                _update(h, hdul[ext].data)
            _update(h, np.asarray(hdul["WCS-WAVE"].data[0]["VALUES"]))
    return h.hexdigest()


def cube_digest(path: Path) -> str:
    h = hashlib.sha256()
    with fits.open(path) as hdul:
        for ext in ("SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT"):
            _update(h, hdul[ext].data)
        tab = hdul["WAVELENGTH"].data
        for col in WAVELENGTH_COLUMNS_041:  # the columns recorded at 6e5b4ce; newer ones are checked apart
            _update(h, np.asarray(tab[col]))
        prim = hdul[0].header
        keys = ["N_INPUTS", "N_REJECT", "NFRAMLOG", "NZ", "NX", "NY", "LAM_MIN", "LAM_MAX"]
        keys += sorted(k for k in prim if k.startswith(("INF", "ZSC")))
        for k in keys:
            h.update(f"{k}={prim[k]!r};".encode())
    return h.hexdigest()


@pytest.mark.parametrize("field_name", sorted(INPUT_DIGESTS))
def test_simulated_inputs_are_unchanged(fields, field_name):
    got = input_digest(fields[field_name])
    assert got == INPUT_DIGESTS[field_name], (
        f"the simulator's output for the golden field {field_name!r} changed ({got}); the cube digests "
        "below are only meaningful for the recorded inputs"
    )


@pytest.mark.parametrize("case", sorted(CASES))
def test_cube_is_bit_identical_to_the_recorded_one(fields, tmp_path, case):
    field_name, overrides, digest = CASES[case]
    config = Drizzle3DConfig(center_ra=RA, center_dec=DEC, detector=3, output_dir=tmp_path, progress=False,
                             **overrides)
    out = drizzle_detector(fields[field_name], config, 3, build_output_wcs(config))
    assert out is not None
    got = cube_digest(out)
    assert got == digest, f"{case}: cube digest {got} differs from the recorded {digest}"
    with fits.open(out) as hdul:  # the columns added after the recording: DETECTOR of each plane
        tab = hdul["WAVELENGTH"].data
        assert list(tab.columns.names) == [*WAVELENGTH_COLUMNS_041, "DETECTOR"]
        assert np.all(tab["DETECTOR"] == 3)
