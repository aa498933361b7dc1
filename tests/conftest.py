"""Shared fixtures: real cube files, drizzled by the pipeline from simulated SPHEREx cutouts."""

import warnings
from types import SimpleNamespace

import pytest

from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.flags import RECOMMENDED_EXCLUDE_FLAGS
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.simulate import load_truth, simulate_field

#: The three kinds of spectral grid: the native channels, constant R, custom edges.
GRIDS = {
    "native": {},
    "constant_r": {"z_oversample": 2.0},
    "custom": {"z_lambda_edges": [1.70, 1.80, 1.90, 1.95, 2.00, 2.10, 2.30]},
}


@pytest.fixture(scope="session")
def drizzled_cubes(tmp_path_factory):
    """One D3 cube file per grid of :data:`GRIDS` (6' x 6' around (150, +2) from six simulated
    12' cutouts): ``paths`` {grid: Path}, ``configs`` {grid: Drizzle3DConfig}, ``sky`` (the
    simulated truth), ``field`` (the simulated archive)."""
    root = tmp_path_factory.mktemp("drizzled_cubes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        field = simulate_field(root / "archive", 150.0, 2.0, detectors=(3,), n_pointings=6,
                               cutout_size_deg=12.0 / 60.0, seed=7, psf_size=21, psf_zones=1)
        paths, configs = {}, {}
        for grid, kw in GRIDS.items():
            cfg = Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=6.0, height=6.0, detector=3,
                                  exclude_flags=list(RECOMMENDED_EXCLUDE_FLAGS), output_dir=root / grid,
                                  progress=False, **kw)
            paths[grid] = drizzle_detector(field.paths, cfg, 3, build_output_wcs(cfg))
            configs[grid] = cfg
    sky, _ = load_truth(field.root)
    return SimpleNamespace(paths=paths, configs=configs, sky=sky, field=field)


@pytest.fixture(params=sorted(GRIDS))
def grid(request):
    """Each kind of spectral grid of :data:`GRIDS` in turn."""
    return request.param
