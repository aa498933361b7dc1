"""The cube file: the 0.4.1 HDUs first (new ones after them), dtypes, both 3-D WCSs on every image
extension, units and observation keywords, atomic writes; the 0.4.1 ``io`` module path."""

import os
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from spxquery.drizzle3d.accumulate import DrizzleCube
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.cubefile import load_cube, save_cube
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.spectral import build_z_grid

#: The seven HDUs of the spxquery 0.4.1 layout, first and in this order; then ours.
HDU_NAMES_041 = ["PRIMARY", "SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH"]
HDU_NAMES = HDU_NAMES_041 + ["WCS-TAB"]
IMAGES = ["SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT"]


def _cube(z_oversample=1.0, z_lambda_edges=None, seed=0):
    cfg = Drizzle3DConfig(
        center_ra=150.0, center_dec=2.0, width=2.0, height=1.5, detector=3,
        z_oversample=z_oversample, z_lambda_edges=z_lambda_edges, progress=False,
    )
    wcs = build_output_wcs(cfg)
    zgrid = build_z_grid(3, cfg.z_oversample, cfg.z_lambda_edges)
    cube = DrizzleCube.create(wcs, cfg.effective_pixscale(), zgrid, cfg, 3)
    rng = np.random.default_rng(seed)
    shape = cube.flux_weighted.shape
    w = rng.uniform(0.5, 2.0, shape)
    w[0, 0, :3] = 0.0  # empty voxels -> NaN in SCI/VARIANCE, 0 in COUNT/AND_MASK
    cube.weight_total[...] = w
    cube.flux_weighted[...] = w * rng.normal(1.0, 0.1, shape)
    cube.var_accum[...] = w**2 * 0.01
    count = rng.integers(1, 70000, shape).astype(np.uint32)  # > uint16 range
    count[w == 0] = 0
    cube.count_map[...] = count
    cube.and_mask[...] = rng.integers(0, 2**32, shape, dtype=np.uint64).astype(np.uint32)
    cube.or_mask[...] = np.uint32(0x80000001)
    cube.n_input_sc[...] = np.arange(1, zgrid.n_z + 1, dtype=np.uint32) * 1000
    cube.n_inputs = 12
    cube.n_rejected = 3
    cube.frame_log.extend(
        {"name": f"level2_2025W18_2B_{i:04d}_1D3_spx_l2b-v12-2025-164.fits", "zodi_scale": 1.0 + 0.01 * i,
         "zodi_source": "crop", "n_pixels": 100}
        for i in range(12)
    )
    return cube


def test_round_trip(tmp_path):
    cube = _cube()
    path = save_cube(cube, tmp_path / "c.fits")
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == HDU_NAMES
        assert hdul["SCI"].data.dtype == np.dtype(">f4")
    d = load_cube(path)
    sci = cube.flux
    np.testing.assert_array_equal(np.isnan(d["sci"]), np.isnan(sci))
    np.testing.assert_allclose(d["sci"], sci.astype(np.float32), equal_nan=True)
    np.testing.assert_allclose(d["variance"], cube.variance.astype(np.float32), equal_nan=True)
    assert np.isnan(d["sci"][0, 0, 0]) and d["count"][0, 0, 0] == 0 and d["and_mask"][0, 0, 0] == 0
    np.testing.assert_array_equal(d["count"], cube.count_map)
    np.testing.assert_array_equal(d["or_mask"], cube.or_mask)
    assert d["or_mask"].dtype == np.uint32 and d["and_mask"].dtype == np.uint32
    m = cube.count_map > 0
    np.testing.assert_array_equal(d["and_mask"][m], cube.and_mask[m])
    h = d["header"]
    for key, val in [("DETECTOR", 3), ("N_INPUTS", 12), ("N_REJECT", 3), ("NZ", cube.zgrid.n_z),
                     ("NX", cube.flux_weighted.shape[2]), ("NY", cube.flux_weighted.shape[1]), ("BUNIT", "MJy/sr"),
                     ("XYSHRINK", 0.8), ("KERNEL", "square")]:
        assert h[key] == val, key
    for key in ("ZSHRINK", "XYOVRSM", "ZOVRSM", "PIXSCALE", "EPIXSCLE", "LAM_MIN", "LAM_MAX", "DATE", "DRIZVER"):
        assert key in h, key
    assert h["LAM_MIN"] == pytest.approx(cube.zgrid.edges[0])
    assert h["NFRAMLOG"] == 12
    assert h["INF00012"].endswith("_0011_1D3_spx_l2b-v12-2025-164.fits")
    assert h["ZSC00011"] == pytest.approx(1.10)


def test_count_is_uint32_beyond_uint16(tmp_path):
    cube = _cube()
    path = save_cube(cube, tmp_path / "c.fits")
    d = load_cube(path)
    assert d["count"].dtype == np.uint32
    assert d["count"].max() > 65535
    cube.count_map[0, 0, 5] = np.uint32(4_000_000_000)
    d = load_cube(save_cube(cube, tmp_path / "c2.fits"))
    assert int(d["count"][0, 0, 5]) == 4_000_000_000


def test_wavelength_table(tmp_path):
    cube = _cube()
    d = load_cube(save_cube(cube, tmp_path / "c.fits"))
    wl = d["wavelength"]
    z = cube.zgrid
    assert list(wl.names) == ["INDEX", "LAMBDA", "LAMBDA_MIN", "LAMBDA_MAX", "DLAMBDA", "NU", "DNU", "R_EFF",
                              "N_INPUT_SC", "DETECTOR"]
    np.testing.assert_array_equal(wl["DETECTOR"], 3)
    np.testing.assert_array_equal(wl["INDEX"], np.arange(z.n_z))
    np.testing.assert_allclose(wl["LAMBDA"], z.centers)
    np.testing.assert_allclose(wl["LAMBDA_MIN"], z.edges[:-1])
    np.testing.assert_allclose(wl["LAMBDA_MAX"], z.edges[1:])
    np.testing.assert_allclose(wl["DLAMBDA"], z.widths)
    np.testing.assert_allclose(wl["NU"], z.frequencies())
    np.testing.assert_allclose(wl["DNU"], z.delta_nu())
    np.testing.assert_allclose(wl["R_EFF"], z.resolving_power())
    np.testing.assert_array_equal(wl["N_INPUT_SC"], np.arange(1, z.n_z + 1) * 1000)


def _wcs_lambda_um(path, n_z, ext="SCI", key=" "):
    with fits.open(path) as hdul:
        w = WCS(hdul[ext].header, fobj=hdul, key=key)
    assert w.naxis == 3 and w.has_celestial and w.has_spectral
    k = np.arange(n_z, dtype=float)
    world = w.pixel_to_world(np.zeros(n_z), np.zeros(n_z), k)
    spec = world[1]
    return spec.to_value("um"), w


def assert_same_celestial(a, b):
    """The celestial parts of WCSs ``a`` and ``b`` are the same projection, bit for bit."""
    ca, cb = a.celestial.wcs, b.celestial.wcs
    for attr in ("ctype", "cunit", "crpix", "crval", "cdelt", "pc", "lonpole", "latpole", "radesys", "equinox"):
        va, vb = np.asarray(getattr(ca, attr)), np.asarray(getattr(cb, attr))
        numeric = va.dtype.kind == "f"
        assert np.array_equal(va, vb, equal_nan=numeric) and va.shape == vb.shape, (attr, va, vb)
    x, y = np.meshgrid(np.arange(-2.0, 40.0, 3.7), np.arange(-1.0, 30.0, 2.9))
    np.testing.assert_array_equal(a.celestial.wcs_pix2world(x, y, 0), b.celestial.wcs_pix2world(x, y, 0))


@pytest.mark.parametrize("grid", ["native", "constant_r", "custom"])
def test_every_image_extension_has_both_wcs(tmp_path, grid):
    """Primary axis: WAVE-LOG (or WAVE when closer) within WAVEMAXE (exact for constant R); alternate W: exact plane
    centres through -TAB; both with the same celestial axes, on all five image extensions."""
    kw = {"native": {}, "constant_r": {"z_oversample": 2.0}, "custom": {"z_lambda_edges": [1.7, 1.8, 2.0, 2.05]}}
    cube = _cube(**kw[grid])
    path = save_cube(cube, tmp_path / "c.fits")
    n_z = cube.zgrid.n_z
    for ext in IMAGES:
        hdr = fits.getheader(path, ext)
        approx, w = _wcs_lambda_um(path, n_z, ext)
        exact, w_exact = _wcs_lambda_um(path, n_z, ext, key="W")
        # WAVE-LOG on the native and constant-R grids; on this custom grid a linear WAVE axis is closer
        assert hdr["CTYPE3"] == ("WAVE" if grid == "custom" else "WAVE-LOG")
        assert hdr["CTYPE3W"] == "WAVE-TAB" and hdr["SPECSYS"] == "TOPOCENT"
        np.testing.assert_array_equal(exact, cube.zgrid.centers)
        err = np.max(np.abs(approx - cube.zgrid.centers))
        assert err <= hdr["WAVEMAXE"] * (1 + 1e-6) + 1e-12
        assert hdr["WAVEMAXE"] <= err * (1 + 1e-6) + 1e-12
        assert_same_celestial(w, w_exact)
    if grid == "constant_r":
        assert hdr["WAVEMAXE"] < 1e-9
    elif grid == "native":
        assert 1e-3 < hdr["WAVEMAXE"] < 0.008  # the bound for every detector
    sky = w.celestial.pixel_to_world((cube.flux_weighted.shape[2] - 1) / 2, (cube.flux_weighted.shape[1] - 1) / 2)
    assert sky.ra.deg == pytest.approx(150.0, abs=1e-9) and sky.dec.deg == pytest.approx(2.0, abs=1e-9)


@pytest.mark.parametrize("detector", [1, 2, 3, 4, 5, 6])
def test_wave_log_fit_of_native_grids(detector):
    """The least-squares WAVE-LOG axis is within 8 nm of every native channel centre (a linear
    axis was 7-52 nm off), and no nearby WAVE-LOG axis has a smaller sum of squared log errors."""
    from spxquery.drizzle3d.cubewcs import wave_log_fit

    c = build_z_grid(detector, 1.0, None).centers
    fit = wave_log_fit(c)
    k = np.arange(c.size)

    def model(crval, cdelt):
        return crval * np.exp(cdelt * k / crval) * 1e6

    best = model(fit["CRVAL3"], fit["CDELT3"])
    assert fit["WAVEMAXE"] == pytest.approx(np.max(np.abs(best - c)))
    assert fit["WAVEMAXE"] < 0.008
    ssq = np.sum(np.log(best / c) ** 2)
    for dv, dd in [(1e-4, 0), (-1e-4, 0), (0, 1e-4), (0, -1e-4)]:
        other = model(fit["CRVAL3"] * (1 + dv), fit["CDELT3"] * (1 + dd))
        assert np.sum(np.log(other / c) ** 2) > ssq


def test_single_plane_cube_has_both_axes(tmp_path):
    cube = _cube(z_lambda_edges=[1.9, 2.0])
    path = save_cube(cube, tmp_path / "c.fits")
    exact, _ = _wcs_lambda_um(path, 1, key="W")
    approx, _ = _wcs_lambda_um(path, 1)
    assert exact[0] == 1.95 and approx[0] == pytest.approx(1.95, rel=1e-12)


def test_units_masks_and_observation_keywords(tmp_path):
    """VARIANCE's BUNIT parses (astropy, CCDData); TELESCOP/INSTRUME, the inputs' time span and
    DATE-OBS in PRIMARY and every image extension, consistent for wcslib (no fix-up warnings)."""
    import warnings

    from astropy import units as u
    from astropy.nddata import CCDData, VarianceUncertainty
    from astropy.time import Time

    cube = _cube()
    for i, entry in enumerate(cube.frame_log):
        entry.update(mjd_beg=60800.0 + i, mjd_end=60800.001 + i, mjd=60800.0005 + i)
    cube.frame_log[3].update(mjd_beg=float("nan"), mjd_end=float("nan"))  # falls back on the mid-time
    path = save_cube(cube, tmp_path / "c.fits")
    assert u.Unit(fits.getheader(path, "VARIANCE")["BUNIT"]) == (u.MJy / u.sr) ** 2
    for ext in ["PRIMARY"] + IMAGES:
        h = fits.getheader(path, ext)
        assert h["TELESCOP"] == "SPHEREx" and h["INSTRUME"] == "SPHEREx", ext
        assert h["MJD-BEG"] == 60800.0 and h["MJD-END"] == pytest.approx(60811.001), ext
        assert Time(h["DATE-OBS"], scale="utc").mjd == pytest.approx(h["MJD-BEG"], abs=1e-9)
        assert h["SPECSYS"] == "TOPOCENT"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with fits.open(path) as hdul:
            for ext in IMAGES:
                WCS(hdul[ext].header)
                WCS(hdul[ext].header, fobj=hdul, key="W")
        ccd = CCDData.read(path, hdu="SCI", hdu_uncertainty="VARIANCE", hdu_mask=None, hdu_flags=None)
    assert ccd.unit == u.MJy / u.sr
    assert isinstance(ccd.uncertainty, VarianceUncertainty)
    np.testing.assert_allclose(ccd.uncertainty.array, cube.variance.astype(np.float32), equal_nan=True)
    var = CCDData.read(path, hdu="VARIANCE")
    assert var.unit == (u.MJy / u.sr) ** 2


def test_no_times_without_frame_times(tmp_path):
    cube = _cube()
    path = save_cube(cube, tmp_path / "c.fits")
    h = fits.getheader(path, "SCI")
    assert "MJD-BEG" not in h and "DATE-OBS" not in h and h["TELESCOP"] == "SPHEREx"


def test_file_exists_and_overwrite(tmp_path):
    path = tmp_path / "c.fits"
    save_cube(_cube(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="c.fits"):
        save_cube(_cube(seed=2), path)
    assert path.read_bytes() == before
    save_cube(_cube(seed=2), path, overwrite=True)
    assert path.read_bytes() != before
    assert [p.name for p in tmp_path.iterdir()] == ["c.fits"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_replaced_cube_is_released_after_the_rename(tmp_path):
    """Overwriting holds the old cube open across the rename and closes it on a background thread
    (its blocks are freed there, not in os.replace): once that thread ends, no descriptor of the
    replaced file is left, and the path holds the new cube."""
    import threading

    path = tmp_path / "c.fits"
    save_cube(_cube(seed=1), path)
    save_cube(_cube(seed=2), path, overwrite=True)
    closers = [t for t in threading.enumerate() if t.name == "drizzle-free-replaced-cube"]
    for t in closers:
        t.join(10)
    held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")]
    assert not [h for h in held if "c.fits" in h], held
    fresh = save_cube(_cube(seed=2), tmp_path / "d.fits")
    assert load_cube(path)["count"].tobytes() == load_cube(fresh)["count"].tobytes()


def test_atomic_failure_leaves_existing_file(tmp_path):
    path = tmp_path / "c.fits"
    save_cube(_cube(seed=1), path)
    before = path.read_bytes()
    bad = _cube(seed=2)
    bad.n_input_sc = None  # the WAVELENGTH table cannot be built -> the write fails
    with pytest.raises(ValueError, match="n_input_sc"):
        save_cube(bad, path, overwrite=True)
    assert path.read_bytes() == before
    bad = _cube(seed=3)
    bad.flux_weighted = bad.flux_weighted[:, :, :-1]  # inconsistent shapes fail inside writeto/flux
    with pytest.raises(ValueError):
        save_cube(bad, path, overwrite=True)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["c.fits"]


def test_load_cube_data_outlives_file(tmp_path):
    path = save_cube(_cube(), tmp_path / "c.fits")
    d = load_cube(path)
    os.remove(path)
    assert np.isfinite(d["sci"][1]).all() and d["wavelength"]["LAMBDA"].size == d["sci"].shape[0]


def test_streamed_file_is_valid_fits_and_matches_astropy_writer(tmp_path):
    """save_cube streams planes by hand; the result must verify as FITS and equal the
    same cube written by astropy from build_hdulist."""
    from astropy.io import fits

    from spxquery.drizzle3d.cubefile import build_hdulist

    cube = _cube(seed=3)
    cube.count_map[0, 0, 0] = 2**32 - 1
    streamed = save_cube(cube, tmp_path / "streamed.fits")
    reference = tmp_path / "astropy.fits"
    build_hdulist(cube).writeto(reference)
    with fits.open(streamed) as a, fits.open(reference) as b:
        a.verify("exception")
        assert [h.name for h in a] == HDU_NAMES == [h.name for h in b]
        for ha, hb in zip(a[1:], b[1:]):
            assert ha.data.dtype == hb.data.dtype, ha.name
            np.testing.assert_array_equal(ha.data, hb.data, err_msg=ha.name)
            assert ha.header.tostring() == hb.header.tostring(), ha.name
        assert a["COUNT"].data[0, 0, 0] == 2**32 - 1


def test_saved_cube_has_normal_file_permissions(tmp_path):
    import os
    import stat

    umask = os.umask(0o022)
    try:
        path = save_cube(_cube(), tmp_path / "perm.fits")
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_io_module_keeps_the_041_names():
    """``spxquery.drizzle3d.io`` (spxquery 0.4.1 API) re-exports the cube file's writer and reader."""
    from spxquery.drizzle3d import cubefile, io

    assert io.save_cube is cubefile.save_cube and io.load_cube is cubefile.load_cube
    assert set(io.__all__) == {"save_cube", "load_cube"}


def _masked_date(data: bytes) -> bytes:
    """The file with the PRIMARY DATE card (the time of writing) blanked."""
    at = data.index(b"DATE    = '")
    return data[:at] + b" " * 80 + data[at + 80:]


@pytest.mark.parametrize("n_log,outliers", [(12, False), (700, True)])
def test_streamed_file_equals_astropy_file_byte_for_byte(tmp_path, n_log, outliers):
    """The headers written as text (:mod:`.fitscards`) are astropy's: the whole file equals the one
    astropy writes from build_hdulist (all but the DATE card), with long input names (comments cut)
    and hundreds of INF/ZSC/ORJ cards."""
    from spxquery.drizzle3d.cubefile import build_hdulist

    cube = _cube(seed=5)
    cube.frame_log[:] = [
        {"name": f"level2_2026W01_1A_{i:05d}_1D3_spx_l2b-v12-2025-164_cutout.fits", "zodi_scale": 0.9 + 1e-4 * i,
         "zodi_source": "sample", "mjd": 61000.0 + i / 7.0, "n_outliers": i % 5, "n_tested": 1000 + i}
        for i in range(n_log)]
    if outliers:
        cube.reject_count = np.arange(cube.flux_weighted.size, dtype=np.int32).reshape(cube.flux_weighted.shape) - 1
    streamed = save_cube(cube, tmp_path / "streamed.fits").read_bytes()
    reference = tmp_path / "astropy.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Card is too long, comment will be truncated."
        build_hdulist(cube).writeto(reference)
    assert _masked_date(streamed) == _masked_date(reference.read_bytes())


def test_planes_written_in_one_pass_are_numpys_bit_for_bit():
    """SCI and VARIANCE as save_cube writes them (Rust, one pass) are the numpy form's bytes
    (build_hdulist's planes), also for overflow to inf, subnormals, NaN/inf numerators, -0.0,
    negative, zero and NaN weights."""
    from spxquery.drizzle3d.cubefile import _plane, _ratio_plane

    cube = _cube(seed=7)
    rng = np.random.default_rng(7)
    shape = cube.weight_total.shape
    specials = np.array([1e300, -1e300, 1e-310, -0.0, 0.0, np.nan, np.inf, -np.inf, 3.4e38, 1.5e-45])
    for arr in (cube.flux_weighted, cube.var_accum, cube.weight_total):
        pick = rng.random(shape) < 0.2
        arr[pick] = rng.choice(specials, size=int(pick.sum()))
    cube.weight_total[rng.random(shape) < 0.05] = -1.0
    with np.errstate(all="ignore"):
        for name in ("SCI", "VARIANCE"):
            for k in range(shape[0]):
                expected = _plane(cube, name, k).astype(">f4").tobytes()
                assert _ratio_plane(cube, name, k).tobytes() == expected, (name, k)


@pytest.mark.skipif(not os.uname().sysname == "Linux", reason="sync_file_range is a Linux call")
def test_save_cube_starts_the_disk_write_while_it_formats(tmp_path, monkeypatch):
    """A small cube's bytes (below ``directio.DIRECT_MIN_BYTES``) go through the page cache and start
    going to the disk step by step while the rest is formatted (``vmhints.WritebackFile``), not
    all at the final fsync; the file is the same (astropy's bytes)."""
    from spxquery.drizzle3d import vmhints
    from spxquery.drizzle3d.cubefile import build_hdulist

    calls, steps = [], []
    real, real_step = vmhints.start_writeback, vmhints.WritebackFile.start

    def spy(fd, offset=0, nbytes=0):
        calls.append((offset, nbytes))
        return real(fd, offset, nbytes)

    def step(self):
        steps.append(self.tell())
        return real_step(self)

    monkeypatch.setattr(vmhints, "start_writeback", spy)
    monkeypatch.setattr(vmhints.WritebackFile, "start", step)
    monkeypatch.setattr(vmhints, "WRITEBACK_STEP_BYTES", 4096)
    cube = _cube(seed=6)
    path = save_cube(cube, tmp_path / "c.fits")
    size = path.stat().st_size
    assert len(steps) >= size // (2 * 4096) >= 5  # handed over step by step, not only at the fsync
    # the thread started them (ranges waiting together in one call): contiguous, the whole file but its last step
    assert calls[0][0] == 0 and all(o + n == nxt for (o, n), (nxt, _) in zip(calls, calls[1:]))
    assert calls[-1][0] + calls[-1][1] > size - 4096
    reference = tmp_path / "astropy.fits"
    build_hdulist(cube).writeto(reference)
    assert _masked_date(path.read_bytes()) == _masked_date(reference.read_bytes())


def test_save_cube_sends_whole_blocks_past_the_page_cache_with_astropys_bytes(tmp_path, monkeypatch):
    """A large cube (here: the threshold lowered to 0), where O_DIRECT works, goes through a
    ``directio.DirectFile``: all but a few blocks at its ends past the page cache, the bytes
    astropy writes."""
    from spxquery.drizzle3d import directio
    from spxquery.drizzle3d.cubefile import build_hdulist

    if not directio.supported(tmp_path):
        pytest.skip("no O_DIRECT here")
    monkeypatch.setattr(directio, "DIRECT_MIN_BYTES", 0)
    files = []
    real = directio.DirectFile
    monkeypatch.setattr(directio, "DirectFile", lambda *a, **kw: files.append(real(*a, **kw)) or files[-1])
    cube = _cube(seed=6)
    path = save_cube(cube, tmp_path / "c.fits")
    (out,) = files
    size = path.stat().st_size
    assert out.placed.direct_bytes + out.placed.cached_bytes == size
    assert out.placed.cached_bytes < 2 * directio.ALIGN  # one run from the start: its two ends
    reference = tmp_path / "astropy.fits"
    build_hdulist(cube).writeto(reference)
    assert _masked_date(path.read_bytes()) == _masked_date(reference.read_bytes())


def test_frame_times_and_zodi_scales_that_are_missing_or_not_finite_are_left_out():
    """observation_cards / the PRIMARY's ZSC cards take only finite values, of any numeric type
    (Python floats, numpy scalars); None, text, NaN and inf are skipped or fall back on the mid-time."""
    from spxquery.drizzle3d.cubefile import _primary_cards, observation_cards

    cube = _cube(seed=7)
    cube.frame_log[:] = [
        {"name": "a.fits", "mjd": None, "zodi_scale": None},
        {"name": "b.fits", "mjd": "n/a", "zodi_scale": np.float32("nan")},
        {"name": "c.fits", "mjd": np.float64(60900.5), "mjd_beg": float("inf"), "mjd_end": None,
         "zodi_scale": np.float32(1.5)},
        {"name": "d.fits", "mjd_beg": 60901.25, "mjd_end": np.float32(60902.0), "zodi_scale": float("-inf")},
    ]
    cards = {k: v for k, v, _ in observation_cards(cube)}
    assert cards["MJD-BEG"] == 60900.5 and cards["MJD-END"] == 60902.0
    assert cards["DATE-OBS"] == cards["DATE-BEG"] == "2025-08-13T12:00:00.000000"
    zodi = {k: v for k, v, _ in _primary_cards(cube) if k.startswith("ZSC")}
    assert zodi == {"ZSC00003": 1.5}
