"""Output spatial grid: the 2-D celestial WCS of a drizzled cube."""

from __future__ import annotations

import logging

from astropy.wcs import WCS

from .config import Drizzle3DConfig

logger = logging.getLogger(__name__)


def build_output_wcs(config: Drizzle3DConfig) -> WCS:
    """2-D gnomonic (RA---TAN / DEC--TAN, ICRS) WCS of the output image.

    Pixel scale ``config.effective_pixscale() / 3600`` deg with CDELT1 < 0 (RA increases to
    the left). ``(center_ra, center_dec)`` lies at the geometric centre of the
    ``(output_ny, output_nx)`` image: 0-based pixel ``((nx-1)/2, (ny-1)/2)``, i.e. FITS
    ``CRPIX = ((nx+1)/2, (ny+1)/2)``. ``pixel_shape`` is set to ``(nx, ny)``.
    """
    nx = config.output_nx()
    ny = config.output_ny()
    scale_deg = config.effective_pixscale() / 3600.0

    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.radesys = "ICRS"
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.crval = [config.center_ra, config.center_dec]
    w.wcs.cdelt = [-scale_deg, scale_deg]
    w.wcs.set()
    w.pixel_shape = (nx, ny)

    logger.debug(
        "Output WCS: %d x %d pixels, %.4f arcsec/pixel, centre (%.6f, %.6f) deg at CRPIX (%.1f, %.1f)",
        nx, ny, config.effective_pixscale(), config.center_ra, config.center_dec,
        w.wcs.crpix[0], w.wcs.crpix[1],
    )
    return w


__all__ = ["build_output_wcs"]
