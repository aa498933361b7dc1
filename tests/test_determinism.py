"""Bit-for-bit reproducibility of whole cubes: thread counts and repeated runs.

Each run is a separate process (``RAYON_NUM_THREADS`` is read once per process),
drizzling the same simulated cutout field through ``drizzle_detector``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d.simulate import simulate_field

RA0, DEC0 = 150.3, 2.1

RUNNER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from spxquery.drizzle3d.config import Drizzle3DConfig
    from spxquery.drizzle3d.grid import build_output_wcs
    from spxquery.drizzle3d.pipeline import drizzle_detector
    paths = [Path(p) for p in sys.argv[2:]]
    cfg = Drizzle3DConfig(center_ra={ra}, center_dec={dec}, width=8.0, height=8.0, detector=3,
                          xy_oversample=1.5, output_dir=Path(sys.argv[1]), progress=False,
                          exclude_flags=["HOT", "MISSING_DATA"])
    print(drizzle_detector(paths, cfg, 3, build_output_wcs(cfg)))
    """
).format(ra=RA0, dec=DEC0)


@pytest.fixture(scope="module")
def field_paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("det_field")
    info = simulate_field(root, RA0, DEC0, detectors=(3,), n_pointings=4, cutout_size_deg=0.2, seed=11)
    return [str(p) for _, p in info.current_frames()]


def run_cube(out_dir, paths, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    res = subprocess.run([sys.executable, "-c", RUNNER, str(out_dir), *paths], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr
    with fits.open(out_dir / "drizzle_D3.fits") as hdul:
        return {h.name: hashlib.sha256(np.ascontiguousarray(h.data).tobytes()).hexdigest() for h in hdul[1:]}


def test_same_cube_for_any_thread_count_and_repeated_runs(field_paths, tmp_path):
    digests = {}
    for label, threads in [("1 thread", 1), ("2 threads", 2), ("3 threads", 3), ("2 threads again", 2)]:
        digests[label] = run_cube(tmp_path / label.replace(" ", "_"), field_paths, threads)
    first = digests["1 thread"]
    assert set(first) == {"SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH", "WCS-TAB"}
    for label, d in digests.items():
        assert d == first, f"{label} differs from 1 thread"
