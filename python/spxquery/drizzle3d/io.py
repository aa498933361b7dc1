"""The spxquery 0.4.1 API module ``spxquery.drizzle3d.io``: :func:`save_cube`, :func:`load_cube`.

The cube file format lives in :mod:`.cubefile`; this module keeps the 0.4.1 import path.
"""

from .cubefile import load_cube, save_cube

__all__ = ["save_cube", "load_cube"]
