"""Decompression of FITS ``RICE_1`` tiles (the tile-compressed FLAGS of QR3 and later).

:func:`rice_decode` turns the bytes of one tile into its integer pixels (native byte order,
``bytepix`` bytes each). Malformed bytes are a ``ValueError``, never a crash or a read past
the buffer.
"""

from __future__ import annotations

import numpy as np
from astropy.io.fits.hdu.compressed._codecs import Rice1


def rice_decode(data: np.ndarray, npix: int, bytepix: int, blocksize: int) -> np.ndarray:
    """The ``npix`` integers (``int{8*bytepix}``) of one RICE_1 tile from its bytes ``data``."""
    try:
        return Rice1(blocksize=blocksize, bytepix=bytepix, tilesize=npix).decode(np.asarray(data, np.uint8))
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"RICE_1 decoding failed ({type(exc).__name__}: {exc})") from None


__all__ = ["rice_decode"]
