"""The astronomer's readers on real cube files of every grid: astropy (WCS, CCDData),
spectral-cube and specutils. Wavelengths are exact through the alternate WCS W and the
registered ``spxdrizzle`` format, within WAVEMAXE through the primary axis (what a reader that
knows nothing of this package sees); units parse; the masks carry SCI's WCS."""

import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.wcs import WCS

import spxquery.drizzle3d  # noqa: F401  (registers the spxdrizzle format)

spectral_cube = pytest.importorskip("spectral_cube")
specutils = pytest.importorskip("specutils")

IMAGES = ["SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT"]


def _truth(path):
    """(exact plane centres [um], WAVEMAXE [um]) of a cube file."""
    with fits.open(path) as hdul:
        return np.asarray(hdul["WAVELENGTH"].data["LAMBDA"], dtype=np.float64), float(hdul["SCI"].header["WAVEMAXE"])


def _exact(values_um, exact_um):
    """Exact to the rounding of a unit conversion (spectral-cube holds the axis in m)."""
    np.testing.assert_allclose(np.asarray(values_um), exact_um, rtol=1e-15, atol=0)


def _within(approx_um, exact_um, maxerr_um):
    err = np.max(np.abs(np.asarray(approx_um) - exact_um))
    assert err <= maxerr_um * (1 + 1e-6) + 1e-12, (err, maxerr_um)


@pytest.fixture
def cube_path(grid, drizzled_cubes):
    return drizzled_cubes.paths[grid]


def test_astropy_wcs_with_and_without_the_hdulist(cube_path):
    lam, maxerr = _truth(cube_path)
    n = lam.size
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no FITSFixedWarning: the headers need no fixing
        with fits.open(cube_path) as hdul:
            for ext in IMAGES:
                header = hdul[ext].header
                approx = WCS(header).pixel_to_world(np.zeros(n), np.zeros(n), np.arange(n))[1]
                exact = WCS(header, fobj=hdul, key="W").pixel_to_world(np.zeros(n), np.zeros(n), np.arange(n))[1]
                np.testing.assert_array_equal(exact.to_value(u.um), lam)
                _within(approx.to_value(u.um), lam, maxerr)
                assert WCS(header).to_header() == WCS(hdul["SCI"].header).to_header(), ext
    assert maxerr < (1e-9 if "constant_r" in str(cube_path) else 0.05)


def test_ccddata_reads_units_and_variance(cube_path):
    sci = CCDData.read(cube_path, hdu="SCI", hdu_uncertainty="VARIANCE", hdu_mask=None, hdu_flags=None)
    assert sci.unit == u.MJy / u.sr
    assert isinstance(sci.uncertainty, VarianceUncertainty)
    var = CCDData.read(cube_path, hdu="VARIANCE")
    assert var.unit == (u.MJy / u.sr) ** 2
    np.testing.assert_array_equal(sci.uncertainty.array, var.data)
    default = CCDData.read(cube_path)  # no arguments: the first HDU with data, SCI
    np.testing.assert_array_equal(default.data, sci.data, strict=True)
    for ext in ("AND_MASK", "COUNT"):
        assert CCDData.read(cube_path, hdu=ext, unit=u.dimensionless_unscaled).wcs.to_header() == sci.wcs.to_header()


def test_spectral_cube_read_without_arguments_is_exact(cube_path):
    lam, maxerr = _truth(cube_path)
    cube = spectral_cube.SpectralCube.read(cube_path)  # the registered format
    _exact(cube.spectral_axis.to_value(u.um), lam)
    assert cube.unit == u.MJy / u.sr
    with fits.open(cube_path) as hdul:
        count = np.array(hdul["COUNT"].data)
    assert not cube.mask.include()[count == 0].any()
    plain = spectral_cube.SpectralCube.read(cube_path, format="fits", hdu="SCI")  # without this package
    _within(plain.spectral_axis.to_value(u.um), lam, maxerr)
    variance = spectral_cube.SpectralCube.read(cube_path, format="fits", hdu="VARIANCE")
    assert variance.unit == (u.MJy / u.sr) ** 2
    for ext in ("AND_MASK", "OR_MASK", "COUNT"):
        other = spectral_cube.SpectralCube.read(cube_path, format="fits", hdu=ext)
        assert other.wcs.to_header() == plain.wcs.to_header(), ext


def test_spectral_slab_returns_the_planes_asked_for(drizzled_cubes):
    """The issue's case: on the native grid spectral_slab(1.98 um, 2.01 um) returned a plane wholly
    outside the request (linear axis). spectral-cube cuts at the planes nearest to each end; on the
    exact axis these are the planes nearest by their true centres."""
    path = drizzled_cubes.paths["native"]
    with fits.open(path) as hdul:
        tab = hdul["WAVELENGTH"].data
        lam, lo_edge, hi_edge = (np.asarray(tab[c], dtype=np.float64) for c in ("LAMBDA", "LAMBDA_MIN", "LAMBDA_MAX"))
    cube = spectral_cube.SpectralCube.read(path)
    slabs = {}
    for lo, hi in [(1.98, 2.01), (1.70, 1.90), (2.2, 2.41)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", spectral_cube.utils.SliceWarning)  # one-plane slabs
            slabs[lo, hi] = np.atleast_1d(cube.spectral_slab(lo * u.um, hi * u.um).spectral_axis.to_value(u.um))
        first, last = np.argmin(np.abs(lam - lo)), np.argmin(np.abs(lam - hi))
        _exact(slabs[lo, hi], lam[first:last + 1])
    (k,) = np.flatnonzero(np.isclose(lam, slabs[1.98, 2.01]))
    assert lo_edge[k] <= 1.98 and 2.01 <= hi_edge[k]  # the one plane whose bin holds the request


def test_specutils_read_without_arguments_is_exact(cube_path):
    lam, maxerr = _truth(cube_path)
    sp = specutils.Spectrum.read(cube_path)  # the registered format
    _exact(sp.spectral_axis.to_value(u.um), lam)
    assert sp.flux.unit == u.MJy / u.sr and sp.flux.shape == fits.getdata(cube_path, "SCI").shape
    assert isinstance(sp.uncertainty, VarianceUncertainty) and sp.uncertainty.unit == (u.MJy / u.sr) ** 2
    assert sp.mask.dtype == bool and sp.mask.any() and not sp.mask.all()
    plain = specutils.Spectrum.read(cube_path, format="wcs1d-fits", hdu="SCI", uncertainty_hdu="VARIANCE",
                                    uncertainty_type="var")  # without this package
    _within(plain.spectral_axis.to_value(u.um), lam, maxerr)
    assert plain.uncertainty.unit == (u.MJy / u.sr) ** 2


def test_registered_format_leaves_other_fits_files_alone(tmp_path, drizzled_cubes):
    """A FITS cube that is not ours is read by spectral-cube's own reader, as before."""
    path = drizzled_cubes.paths["native"]
    with fits.open(path) as hdul:
        other = fits.PrimaryHDU(np.array(hdul["SCI"].data), header=hdul["SCI"].header)
    other.header.remove("EXTNAME", ignore_missing=True)
    other.writeto(tmp_path / "other.fits")
    cube = spectral_cube.SpectralCube.read(tmp_path / "other.fits")
    lam, maxerr = _truth(path)
    _within(cube.spectral_axis.to_value(u.um), lam, maxerr)  # the primary axis: spectral-cube's reader
    with pytest.raises(TypeError, match="takes no options"):
        spectral_cube.SpectralCube.read(path, hdu="SCI", format="spxdrizzle")


def test_registration_in_either_import_order(drizzled_cubes):
    """In a fresh interpreter: spectral-cube imported before this package, specutils after it."""
    import subprocess
    import sys

    code = (
        "import sys, spectral_cube\n"
        "import spxquery.drizzle3d\n"
        "import specutils\n"
        "cube = spectral_cube.SpectralCube.read(sys.argv[1])\n"
        "sp = specutils.Spectrum.read(sys.argv[1])\n"
        "print(cube.spectral_axis.to_value('um')[0], sp.spectral_axis.to_value('um')[0])\n"
    )
    path = drizzled_cubes.paths["native"]
    res = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lam, _ = _truth(path)
    a, b = (float(v) for v in res.stdout.split())
    assert a == pytest.approx(lam[0], rel=1e-15) and b == lam[0]


def test_time_span_and_observatory_keywords(drizzled_cubes):
    """MJD-BEG/MJD-END are the contributing frames' earliest start and latest end (pipeline output)."""
    from astropy.time import Time

    from spxquery.drizzle3d.simulate import load_truth

    _, meta = load_truth(drizzled_cubes.field.root)
    frames = meta["frames"]
    path = drizzled_cubes.paths["native"]
    assert fits.getval(path, "N_INPUTS") == len(frames)
    for ext in ("PRIMARY", "SCI", "COUNT"):
        h = fits.getheader(path, ext)
        assert h["MJD-BEG"] == min(f.mjd_beg for f in frames)
        assert h["MJD-END"] == max(f.mjd_end for f in frames)
        assert Time(h["DATE-OBS"], scale="utc").mjd == pytest.approx(h["MJD-BEG"], abs=1e-8)
        assert (h["TELESCOP"], h["INSTRUME"], h["SPECSYS"]) == ("SPHEREx", "SPHEREx", "TOPOCENT")
