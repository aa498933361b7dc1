"""The cube file as a format of spectral-cube and specutils: ``SpectralCube.read(path)`` and
``Spectrum.read(path)`` without arguments, once ``spxquery.drizzle3d`` is imported.

Both libraries read files through astropy's I/O registry. :func:`install` (run when
``spxquery.drizzle3d`` is imported) asks ``wrapt`` to register the format ``spxdrizzle`` with
each library when, and only if, that library is imported (before or after this package), so
neither is imported for nothing. The format claims a file only when its PRIMARY header says
``FILETYPE = 'DRIZZLED_CUBE'`` and wins over the generic FITS readers by priority.

Both readers go through :class:`.analysis.Cube`: the exact spectral axis (alternate WCS ``W``),
units, VARIANCE as ``VarianceUncertainty`` and the bad-voxel mask. Without this package,
``SpectralCube.read(path, hdu="SCI")`` reads the primary (``WAVE-LOG``) axis.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from astropy.io import fits

from .cubefile import FILETYPE

logger = logging.getLogger(__name__)

#: The format name in both libraries' registries.
FORMAT = "spxdrizzle"
#: Priorities above the generic FITS readers (0 in spectral-cube; up to 10 in specutils).
SPECTRAL_CUBE_PRIORITY = 10
SPECUTILS_PRIORITY = 20

_installed = False


def is_cube_file(origin: str, path: Any, fileobj: Any = None, *args: Any, **kwargs: Any) -> bool:
    """astropy registry identifier: ``path`` names a FITS file whose PRIMARY has our FILETYPE."""
    if origin != "read" or not isinstance(path, (str, os.PathLike)):
        return False
    try:
        p = Path(path)
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            if f.read(30) != b"SIMPLE  =                    T":
                return False
        return fits.getval(p, "FILETYPE", ext=0) == FILETYPE
    except (OSError, KeyError, ValueError):
        return False


def _path_of(source: Any) -> Path:
    """The file path of ``source``: a path, or a file object opened on one (astropy's registry
    hands readers the file it opened to identify the format)."""
    name = source if isinstance(source, (str, os.PathLike)) else getattr(source, "name", None)
    if not isinstance(name, (str, os.PathLike)) or not Path(name).is_file():
        raise TypeError(f"the {FORMAT} format reads cube files by path, got {source!r}")
    return Path(name)


def _specutils_identifier(origin: str, *args: Any, **kwargs: Any) -> bool:
    return bool(args) and is_cube_file(origin, args[0])


def read_spectral_cube(path: Any, target_cls: Any = None, use_dask: bool = False, **kwargs: Any) -> Any:
    """spectral-cube reader: :meth:`.analysis.Cube.to_spectral_cube` of ``path`` (``use_dask``:
    a ``DaskSpectralCube``; ``target_cls`` is set by spectral-cube's ``read``)."""
    from spectral_cube.io.core import normalize_cube_stokes

    from .analysis import read_cube

    _no_options(kwargs, "SpectralCube.read")
    return normalize_cube_stokes(read_cube(_path_of(path)).to_spectral_cube(use_dask=use_dask), target_cls=target_cls)


def read_spectrum(path: Any, **kwargs: Any) -> Any:
    """specutils reader: the whole cube as a 3-D ``Spectrum`` (flux (n_z, ny, nx) in MJy/sr,
    ``spectral_axis_index=0``, the exact WCS, VarianceUncertainty, the bad-voxel mask)."""
    from astropy.nddata import VarianceUncertainty
    from specutils import Spectrum

    from .analysis import read_cube

    _no_options(kwargs, "Spectrum.read")
    cube = read_cube(_path_of(path))
    return Spectrum(flux=cube.sci, wcs=cube.wcs, uncertainty=VarianceUncertainty(cube.variance), mask=cube.bad(),
                    spectral_axis_index=0, meta={"header": cube.header, "sci_header": cube.sci_header})


def _no_options(kwargs: dict, where: str) -> None:
    kwargs.pop("format", None)
    if kwargs:
        raise TypeError(f"{where}: the {FORMAT} format takes no options, got {sorted(kwargs)} "
                        f"(for the plain FITS reader pass format='fits', hdu='SCI')")


def register_spectral_cube(module: Any = None) -> None:
    """Register :data:`FORMAT` for spectral-cube's classes (idempotent)."""
    from astropy.io import registry
    from spectral_cube.spectral_cube import BaseSpectralCube

    if FORMAT in registry.get_formats(BaseSpectralCube, "Read")["Format"]:
        return
    registry.register_reader(FORMAT, BaseSpectralCube, read_spectral_cube, priority=SPECTRAL_CUBE_PRIORITY)
    registry.register_identifier(FORMAT, BaseSpectralCube, is_cube_file)


def register_specutils(module: Any = None) -> None:
    """Register :data:`FORMAT` for specutils' ``Spectrum`` (specutils >= 2; idempotent)."""
    from astropy.io import registry

    try:
        from specutils import Spectrum
        from specutils.io.registers import data_loader
    except ImportError:  # specutils < 2 has Spectrum1D, which holds one spectral axis last only
        logger.debug("specutils without Spectrum: format %s not registered", FORMAT)
        return
    if FORMAT in registry.get_formats(Spectrum, "Read")["Format"]:
        return
    data_loader(FORMAT, identifier=_specutils_identifier, dtype=Spectrum, extensions=["fits"],
                priority=SPECUTILS_PRIORITY, autogenerate_spectrumlist=False)(read_spectrum)


def install() -> None:
    """Register the format with spectral-cube and specutils when each is imported (now, if it
    already is). Called when ``spxquery.drizzle3d`` is imported."""
    global _installed
    if _installed:
        return
    import wrapt

    for name, hook in (("spectral_cube", register_spectral_cube), ("specutils", register_specutils)):
        wrapt.register_post_import_hook(_logged(hook, name), name)
    _installed = True


def _logged(hook: Any, name: str) -> Any:
    """``hook`` that logs instead of raising: a broken optional library must not break its import."""

    def run(module: Any) -> None:
        try:
            hook(module)
        except Exception as exc:  # noqa: BLE001 - any failure only means the format is not registered
            logger.warning("could not register the %s format with %s: %s: %s", FORMAT, name, type(exc).__name__, exc)

    return run


__all__ = ["FORMAT", "install", "is_cube_file", "read_spectral_cube", "read_spectrum", "register_spectral_cube",
           "register_specutils"]
