"""Drizzle3D: SPHEREx spectral images drizzled into (RA, Dec, wavelength) cubes.

A fast, exact implementation of the ``spxquery.drizzle3d`` API with a Rust core.
"""

from ._core import __version__ as _core_version

__version__ = "0.1.0"
__all__ = ["__version__"]
