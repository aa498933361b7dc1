"""Drizzle3D: SPHEREx spectral images drizzled into (RA, Dec, wavelength) cubes.

A fast, exact implementation of the ``spxquery.drizzle3d`` API with a Rust core::

    from spxquery.drizzle3d import Drizzle3DConfig, drizzle
    config = Drizzle3DConfig(center_ra=186.4536, center_dec=33.5468, width=30.0, height=30.0, detector=3)
    results = drizzle(config)   # {3: Path("drizzle_output/drizzle_D3.fits")}
"""

from ._core import __version__  # the Rust extension (a broken build fails here); rust/Cargo.toml's version
from .accumulate import DrizzleCube
from .config import Drizzle3DConfig
from .pipeline import drizzle

__all__ = ["Drizzle3DConfig", "drizzle", "DrizzleCube", "__version__"]
