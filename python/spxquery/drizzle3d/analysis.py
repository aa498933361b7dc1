"""A written cube as an object for analysis: :func:`read_cube` -> :class:`Cube`.

Units are attached (astropy Quantity): SCI in MJy/sr, VARIANCE in MJy2 / sr2, wavelengths
in um, aperture fluxes in mJy. The WCS is the exact 3-D one (alternate WCS ``W``, a ``-TAB``
spectral axis giving the plane centres exactly, :mod:`.cubewcs`), so every wavelength here
is exact. Pixels are 0-based ``(x, y)``; pixel ``j`` covers ``[j - 0.5, j + 0.5]``, so a
position maps to the pixel ``floor(p + 0.5)``.

A voxel is *bad* (masked) where nothing landed (COUNT = 0 or no finite SCI/VARIANCE) or where
every contributing input pixel carried one of the chosen flags (its AND_MASK has one of them;
default :data:`~.flags.RECOMMENDED_EXCLUDE_FLAGS`).

spectral-cube and specutils are optional: :meth:`Cube.to_spectral_cube` and
:meth:`Cube.spectrum` import them when called.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_area

from .covariance import plane_variances
from .cubewcs import exact_wcs
from .flags import RECOMMENDED_EXCLUDE_FLAGS, exclude_bitmask

logger = logging.getLogger(__name__)

SCI_UNIT = u.MJy / u.sr
VARIANCE_UNIT = SCI_UNIT**2
FLUX_UNIT = u.mJy

WavelengthLike = Union[u.Quantity, float]


def _um(value: WavelengthLike, what: str) -> float:
    """A wavelength as um: a Quantity of length, or a number taken as um."""
    if isinstance(value, u.Quantity):
        try:
            return float(value.to_value(u.um, equivalencies=u.spectral()))
        except u.UnitConversionError as exc:
            raise ValueError(f"{what} must be a wavelength (or a number in um), got {value}") from exc
    return float(value)


def _skycoord(position: Any) -> SkyCoord:
    if isinstance(position, SkyCoord):
        return position
    try:
        ra, dec = position
        return SkyCoord(ra, dec, unit="deg", frame="icrs")
    except (TypeError, ValueError) as exc:
        raise TypeError(f"position must be a SkyCoord or (ra, dec) in deg, got {position!r}") from exc


def bad_voxels(sci: np.ndarray, variance: np.ndarray, count: np.ndarray, and_mask: np.ndarray,
               flags: Sequence[Union[int, str]] = RECOMMENDED_EXCLUDE_FLAGS) -> np.ndarray:
    """True where nothing landed (COUNT = 0, SCI not finite, VARIANCE not >= 0) or every input
    pixel of the voxel had one of ``flags`` (AND_MASK)."""
    bits = np.uint32(exclude_bitmask(list(flags)))
    with np.errstate(invalid="ignore"):
        no_data = (np.asarray(count) == 0) | ~np.isfinite(sci) | ~(np.asarray(variance) >= 0)
    return no_data | ((np.asarray(and_mask, dtype=np.uint32) & bits) != 0)


def aperture_sums(sci: np.ndarray, variance: np.ndarray, bad: np.ndarray, mask: np.ndarray,
                  pixel_solid_angle_sr: float, cube: Any = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per plane: flux density [mJy] = sum over the (ny, nx) ``mask`` of SCI [MJy/sr] x the pixel
    solid angle; its variance [mJy^2]; True where an aperture pixel is ``bad`` in the plane.

    The variance is :func:`.covariance.plane_variances` of ``cube`` (a path, an analysis
    :class:`Cube` or ``load_cube``'s dict): exact with the COVARIANCE HDU, else the summed pixel
    variances x R^2 with a warning. Without ``cube``: the summed pixel variances (a lower bound,
    drizzled pixels being correlated)."""
    scale = pixel_solid_angle_sr * (1.0 * u.MJy).to_value(FLUX_UNIT)
    flux = np.nansum(np.asarray(sci, dtype=np.float64)[:, mask], axis=1) * scale
    if cube is None:
        var = np.nansum(np.asarray(variance, dtype=np.float64)[:, mask], axis=1) * scale**2
    else:
        var = plane_variances(cube, np.broadcast_to(mask, np.shape(sci)), same_plane=True) * scale**2
    return flux, var, np.any(np.asarray(bad)[:, mask], axis=1)


def pixel_solid_angle(celestial_wcs: WCS, position: Optional[Any] = None) -> u.Quantity:
    """Solid angle of one pixel [sr] at ``position`` (default: the tangent point). For a gnomonic
    (TAN) projection: the tangent-plane area x cos^3 of the distance from the tangent point."""
    area = proj_plane_pixel_area(celestial_wcs) * u.deg**2
    if position is not None and celestial_wcs.wcs.ctype[0].endswith("-TAN"):
        tangent = SkyCoord(*celestial_wcs.wcs.crval, unit="deg", frame="icrs")
        area = area * np.cos(_skycoord(position).separation(tangent).rad) ** 3
    return area.to(u.sr)


@dataclass(frozen=True)
class Aperture:
    """A circular aperture on the cube's image: ``mask`` (ny, nx) bool, True for the pixels whose
    centre lies within ``radius`` of ``center``. ``pixel_solid_angle`` converts MJy/sr to MJy.
    (:func:`.covariance.aperture_variance` gives the exact variance over ``mask``.)"""

    center: SkyCoord
    radius: u.Quantity
    mask: np.ndarray
    pixel_solid_angle: u.Quantity

    @property
    def n_pixels(self) -> int:
        return int(self.mask.sum())


class Cube:
    """A drizzled cube file (read by :func:`read_cube`). Extensions are read on first use."""

    def __init__(self, path: Union[str, Path]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"cube file not found: {self.path}")
        with fits.open(self.path, memmap=False) as hdul:
            names = [h.name for h in hdul]
            for name in ("SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH"):
                if name not in names:
                    raise ValueError(f"{self.path} is not a drizzled cube: it has no {name} extension (has {names})")
            self.header: fits.Header = hdul[0].header.copy()
            self.sci_header: fits.Header = hdul["SCI"].header.copy()
            self.table = hdul["WAVELENGTH"].data.copy()
            self.wcs: WCS = exact_wcs(self.sci_header, hdul)
        self.wcs_approx = WCS(self.sci_header)
        self.celestial_wcs: WCS = self.wcs.celestial
        self.wavelength = np.asarray(self.table["LAMBDA"], dtype=np.float64) * u.um
        self.bin_edges = np.append(self.table["LAMBDA_MIN"], self.table["LAMBDA_MAX"][-1]).astype(np.float64) * u.um
        if "DETECTOR" in self.table.columns.names:
            self.plane_detector = np.asarray(self.table["DETECTOR"], dtype=np.int64)
        else:  # a cube written before the column existed: one detector
            self.plane_detector = np.full(len(self.table), int(self.header.get("DETECTOR", 0)), dtype=np.int64)
        """(n_z,) detector (1-6) each plane comes from (the WAVELENGTH table's DETECTOR column)."""

    def __repr__(self) -> str:
        n_z, ny, nx = self.shape
        lam = self.wavelength.to_value(u.um)
        band = self.header.get("BAND_NM", f"D{self.header.get('DETECTOR')}")
        return (f"<Cube {self.path.name}: {band}, {n_z} planes {lam[0]:.4f}-{lam[-1]:.4f} um, "
                f"{ny} x {nx} pixels of {self.header.get('EPIXSCLE', float('nan')):.4g} arcsec>")

    # ── data (read on first use) ──────────────────────────────────────────────
    def _read(self, name: str) -> np.ndarray:
        with fits.open(self.path, memmap=False) as hdul:
            return np.array(hdul[name].data)

    @functools.cached_property
    def sci(self) -> u.Quantity:
        """(n_z, ny, nx) surface brightness [MJy/sr], NaN where nothing landed."""
        return self._read("SCI") * SCI_UNIT

    @functools.cached_property
    def variance(self) -> u.Quantity:
        """(n_z, ny, nx) variance of SCI [MJy2 / sr2]."""
        return self._read("VARIANCE") * VARIANCE_UNIT

    @functools.cached_property
    def and_mask(self) -> np.ndarray:
        return self._read("AND_MASK")

    @functools.cached_property
    def or_mask(self) -> np.ndarray:
        return self._read("OR_MASK")

    @functools.cached_property
    def count(self) -> np.ndarray:
        """(n_z, ny, nx) input pixels that contributed to each voxel."""
        return self._read("COUNT")

    @property
    def shape(self) -> Tuple[int, int, int]:
        """(n_z, ny, nx)."""
        return int(self.sci_header["NAXIS3"]), int(self.sci_header["NAXIS2"]), int(self.sci_header["NAXIS1"])

    @property
    def spectral_axis_error(self) -> u.Quantity:
        """Largest error of the primary (header-only) spectral axis, ``WAVEMAXE`` [um]."""
        return float(self.sci_header.get("WAVEMAXE", np.nan)) * u.um

    def bad(self, flags: Sequence[Union[int, str]] = RECOMMENDED_EXCLUDE_FLAGS) -> np.ndarray:
        """(n_z, ny, nx) bool: no data, or every contributing input pixel had one of ``flags``."""
        return bad_voxels(self.sci.value, self.variance.value, self.count, self.and_mask, flags)

    # ── positions ──────────────────────────────────────────────────────────────
    def pixel(self, position: Any) -> Tuple[int, int]:
        """0-based (x, y) of the pixel containing ``position`` (SkyCoord or (ra, dec) deg);
        ValueError when it lies outside the image."""
        c = _skycoord(position)
        x, y = self.celestial_wcs.world_to_pixel(c)
        ix, iy = int(np.floor(float(x) + 0.5)), int(np.floor(float(y) + 0.5))
        _, ny, nx = self.shape
        if not (0 <= ix < nx and 0 <= iy < ny):
            raise ValueError(f"{c.to_string('decimal')} is outside the cube's image (pixel x={float(x):.1f}, "
                             f"y={float(y):.1f}; image 0..{nx - 1} x 0..{ny - 1})")
        return ix, iy

    def pixel_solid_angle(self, position: Optional[Any] = None) -> u.Quantity:
        """Solid angle of one pixel [sr] at ``position`` (default: the tangent point). For the
        gnomonic (TAN) projection of the cube it is the tangent-plane area x cos^3 of the
        distance from the tangent point."""
        return pixel_solid_angle(self.celestial_wcs, position)

    def aperture(self, position: Any, radius: u.Quantity) -> Aperture:
        """The circular :class:`Aperture` of ``radius`` (an angle) around ``position``."""
        c = _skycoord(position)
        r = u.Quantity(radius)
        if not r.unit.is_equivalent(u.deg) or not r.value > 0:
            raise ValueError(f"radius must be a positive angle (e.g. 10 * u.arcsec), got {radius!r}")
        x0, y0 = self.pixel(c)  # the centre must be on the image
        _, ny, nx = self.shape
        reach = int(np.ceil((r / (self.pixel_solid_angle(c) ** 0.5)).to_value(u.one))) + 2  # pixels
        ya, yb, xa, xb = max(0, y0 - reach), min(ny, y0 + reach + 1), max(0, x0 - reach), min(nx, x0 + reach + 1)
        yy, xx = np.mgrid[ya:yb, xa:xb]
        mask = np.zeros((ny, nx), dtype=bool)
        mask[ya:yb, xa:xb] = self.celestial_wcs.pixel_to_world(xx, yy).separation(c) <= r
        if not mask.any():
            mask[y0, x0] = True  # a radius below half a pixel: the pixel itself
        return Aperture(center=c, radius=r.to(u.arcsec), mask=mask, pixel_solid_angle=self.pixel_solid_angle(c))

    # ── products ───────────────────────────────────────────────────────────────
    def spectrum(self, position: Any, radius: Optional[u.Quantity] = None,
                 flags: Sequence[Union[int, str]] = RECOMMENDED_EXCLUDE_FLAGS) -> Any:
        """specutils ``Spectrum`` (``Spectrum1D`` on specutils < 2) at ``position``, on the exact
        plane centres, with ``VarianceUncertainty`` and a mask (True = bad, :meth:`bad`).

        Without ``radius``: the pixel containing ``position``, in MJy/sr. With ``radius`` (an
        angle): the sum over the :meth:`aperture` times the pixel solid angle, in mJy; its
        variance is exact when the cube has the COVARIANCE HDU (``covariance=True``:
        :func:`.covariance.plane_variances`, the covariance of drizzled pixels included), else
        the summed pixel variances x R^2 (``COVCORR``, Fruchter & Hook 2002) with a warning; a
        plane is masked when any aperture pixel is bad in it.
        """
        spectrum_cls = _specutils_spectrum()
        c = _skycoord(position)
        bad = self.bad(flags)
        meta: Dict[str, Any] = {"position": c, "header": self.header}
        mask: np.ndarray
        if radius is None:
            x, y = self.pixel(c)
            flux, var, mask = self.sci[:, y, x], self.variance[:, y, x], bad[:, y, x]
            meta.update(pixel=(x, y))
        else:
            ap = self.aperture(c, radius)
            f, v, mask = aperture_sums(self.sci.value, self.variance.value, bad, ap.mask,
                                       ap.pixel_solid_angle.to_value(u.sr), cube=self)
            flux, var = f * FLUX_UNIT, v * FLUX_UNIT**2
            meta.update(aperture=ap, n_pixels=ap.n_pixels)
        return spectrum_cls(flux=flux, spectral_axis=self.wavelength, uncertainty=VarianceUncertainty(var),
                            mask=np.asarray(mask, dtype=bool), meta=meta)

    def plane_index(self, wavelength: WavelengthLike) -> int:
        """Index of the plane whose bin [LAMBDA_MIN, LAMBDA_MAX) holds ``wavelength`` (the last
        bin includes its upper edge); ValueError naming the cube's range otherwise."""
        lam = _um(wavelength, "wavelength")
        edges = self.bin_edges.to_value(u.um)
        k = int(np.searchsorted(edges, lam, side="right")) - 1
        if lam == edges[-1]:
            k = len(edges) - 2
        if not 0 <= k < len(edges) - 1:
            raise ValueError(f"wavelength {lam} um is outside the cube's range {edges[0]:.4f}-{edges[-1]:.4f} um")
        return k

    def plane(self, wavelength: WavelengthLike,
              flags: Sequence[Union[int, str]] = RECOMMENDED_EXCLUDE_FLAGS) -> CCDData:
        """The plane holding ``wavelength`` (um or a Quantity) as CCDData [MJy/sr] with its
        variance, bad-voxel mask and celestial WCS; ``meta`` has the plane index and bin."""
        k = self.plane_index(wavelength)
        lo, hi = self.bin_edges[k], self.bin_edges[k + 1]
        meta = {"plane": k, "wavelength": self.wavelength[k], "bin": (lo, hi)}
        return CCDData(self.sci.value[k], unit=SCI_UNIT, uncertainty=VarianceUncertainty(self.variance.value[k]),
                       mask=self.bad(flags)[k], wcs=self.celestial_wcs, meta=meta)

    def image(self, wavelength_range: Optional[Tuple[WavelengthLike, WavelengthLike]] = None,
              flags: Sequence[Union[int, str]] = RECOMMENDED_EXCLUDE_FLAGS) -> CCDData:
        """Inverse-variance weighted mean of the planes whose centre lies in ``wavelength_range``
        (um or Quantities, inclusive; None: all) as CCDData [MJy/sr]; variance 1 / sum(1/var);
        bad voxels are left out and pixels without any good voxel are masked (NaN)."""
        lam = self.wavelength.to_value(u.um)
        if wavelength_range is None:
            planes = np.arange(lam.size)
        else:
            lo, hi = sorted(_um(value, "wavelength_range") for value in wavelength_range)
            planes = np.flatnonzero((lam >= lo) & (lam <= hi))
            if planes.size == 0:
                raise ValueError(f"no plane centre lies in {lo}-{hi} um; the centres run {lam[0]:.4f}-{lam[-1]:.4f} um")
        good = ~self.bad(flags)[planes]
        var = self.variance.value[planes].astype(np.float64)
        w = np.zeros(var.shape)
        np.divide(1.0, var, out=w, where=good & (var > 0))
        wsum = w.sum(axis=0)
        num = (np.where(w > 0, self.sci.value[planes], 0.0) * w).sum(axis=0)
        covered = wsum > 0
        mean = np.full(wsum.shape, np.nan)
        out_var = np.full(wsum.shape, np.nan)
        np.divide(num, wsum, out=mean, where=covered)
        np.divide(1.0, wsum, out=out_var, where=covered)
        meta = {"planes": planes.tolist(),
                "wavelength_range": (self.bin_edges[planes[0]], self.bin_edges[planes[-1] + 1])}
        return CCDData(mean, unit=SCI_UNIT, uncertainty=VarianceUncertainty(out_var), mask=~covered,
                       wcs=self.celestial_wcs, meta=meta)

    def to_spectral_cube(self, use_dask: bool = False) -> Any:
        """A ``spectral_cube.SpectralCube`` (``DaskSpectralCube`` with ``use_dask``) of SCI on
        the exact WCS, bad voxels (:meth:`bad`) masked."""
        try:
            import spectral_cube
        except ImportError as exc:
            raise ImportError("to_spectral_cube() needs spectral-cube: pip install spectral-cube") from exc
        cls = spectral_cube.DaskSpectralCube if use_dask else spectral_cube.SpectralCube
        mask = spectral_cube.BooleanArrayMask(~self.bad(), wcs=self.wcs)
        return cls(data=self.sci, wcs=self.wcs, mask=mask, meta={"BUNIT": str(SCI_UNIT)}, header=self.sci_header)


def _specutils_spectrum() -> Any:
    try:
        import specutils
    except ImportError as exc:
        raise ImportError("spectrum() needs specutils: pip install specutils") from exc
    return getattr(specutils, "Spectrum", None) or specutils.Spectrum1D


def read_cube(path: Union[str, Path]) -> Cube:
    """Open the cube file ``path`` for analysis (see :class:`Cube`)."""
    return Cube(path)


__all__ = ["Cube", "Aperture", "read_cube", "bad_voxels", "aperture_sums", "pixel_solid_angle", "SCI_UNIT",
           "VARIANCE_UNIT", "FLUX_UNIT"]
