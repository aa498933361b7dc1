"""Tests of the SPHEREx L2 simulator: files astropy reads as intended, cutouts, fields, truth, scoring."""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from spxquery.drizzle3d.simulate import (
    FLAG_BITS,
    EmissionLine,
    ExtendedSource,
    PointSource,
    SkyModel,
    Spectrum,
    build_l2_hdulist,
    centroid_offsets,
    default_sky,
    detector_band,
    emission_line_centre,
    frame_pixel_to_world,
    frame_world_to_pixel,
    load_index,
    load_truth,
    make_cutout,
    make_frame_meta,
    normalised_residuals,
    render_frame,
    score_cube,
    simulate_field,
    simulate_frame,
    solve_pointing,
    truth_cube,
    wave_lookup_bilinear,
    wave_table,
    write_l2_file,
)
from spxquery.drizzle3d.simulate.instrument import wcs_cards
from spxquery.drizzle3d.simulate.l2file import _wave_hdu, cutout_box
from spxquery.drizzle3d.simulate.sky import band_average, gnomonic
from spxquery.drizzle3d.spectral import build_z_grid_native, build_z_grid_oversampled, load_spectral_table

RA0, DEC0 = 150.0, 2.0
PIX_SR = (6.15 / 206264.80624709636) ** 2

pytestmark = pytest.mark.filterwarnings("ignore::astropy.wcs.FITSFixedWarning")


def _quiet_wcs(*args, **kw) -> WCS:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        lg = logging.getLogger("astropy")
        old = lg.level
        lg.setLevel(logging.ERROR)
        try:
            return WCS(*args, **kw)
        finally:
            lg.setLevel(old)


def _wave_wcs(hdul: fits.HDUList) -> WCS:
    w = _quiet_wcs(hdul["IMAGE"].header, fobj=hdul, key="W")
    w.sip = None  # astropy carries the image SIP onto alternate WCSs
    return w


def _sky() -> SkyModel:
    return default_sky(RA0, DEC0, (3,))


def _meta(release: str, det: int = 3, pa: float = 25.0, obsid: str = "2025W18_2B_0001_1", **kw):
    m = make_frame_meta(det, RA0, DEC0, pa, obsid, release=release, plan="2025W18_2B",
                        psf_fwhm_arcsec=_sky().psf_fwhm_arcsec, **kw)
    return solve_pointing(m, 1100.0, 700.0, RA0, DEC0)


@pytest.fixture(scope="module")
def full_frames(tmp_path_factory):
    """One full-size frame per release, rendered, written and reopened."""
    out = {}
    d = tmp_path_factory.mktemp("full")
    sky = _sky()
    for rel in ("qr2", "qr3"):
        meta = _meta(rel)
        t0 = time.perf_counter()
        arrays = render_frame(meta, sky)
        hdul = build_l2_hdulist(meta, arrays)
        path = write_l2_file(hdul, d / f"{rel}.fits")
        elapsed = time.perf_counter() - t0
        out[rel] = {"meta": meta, "arrays": arrays, "path": path, "hdul": fits.open(path), "elapsed": elapsed}
    yield out
    for v in out.values():
        v["hdul"].close()


# ── file structure ───────────────────────────────────────────────────────────


@pytest.mark.slow
def test_full_frame_is_fast(full_frames):
    # render + build + write of a 2040x2040 frame with the real 121x101x101 PSF cube
    assert full_frames["qr2"]["elapsed"] < 6.0
    assert full_frames["qr2"]["path"].stat().st_size > 60e6


@pytest.mark.parametrize("rel", ["qr2", "qr3"])
def test_extensions_and_keywords(full_frames, rel):
    h = full_frames[rel]["hdul"]
    meta = full_frames[rel]["meta"]
    names = [x.name for x in h]
    psf = "PSF" if rel == "qr2" else "EPSF"
    assert names == ["PRIMARY", "IMAGE", "FLAGS", "VARIANCE", "ZODI", psf, "WCS-WAVE"]
    assert h[0].header["VERSION"] == meta.version
    ih = h["IMAGE"].header
    assert h["IMAGE"].data.dtype == np.dtype(">f4") and h["IMAGE"].data.shape == (2040, 2040)
    assert h["VARIANCE"].data.dtype == np.dtype(">f4") and h["ZODI"].data.dtype == np.dtype(">f4")
    assert h["FLAGS"].data.dtype.kind == "i" and h["FLAGS"].data.dtype.itemsize == 4
    assert ih["BUNIT"] == "MJy/sr" and ih["DETECTOR"] == 3 and ih["OBSID"] == meta.obsid
    assert ih["MJD-BEG"] < ih["MJD-AVG"] < ih["MJD-END"]
    assert ih["PSF_FWHM"] == pytest.approx(2.2 * 6.15)
    assert ih["CTYPE1"] == "RA---TAN-SIP" and ih["CTYPE2"] == "DEC--TAN-SIP"
    assert ih["CTYPE1W"] == ih["CTYPE2W"] == "WAVE-TAB" and ih["PS1_0W"] == "WCS-WAVE"
    assert ih["PS1_2W"] == "X" and ih["PS2_2W"] == "Y" and ih["PV1_3W"] == 1 and ih["PV2_3W"] == 2
    fh = h["FLAGS"].header
    if rel == "qr2":
        assert isinstance(h["FLAGS"], fits.ImageHDU) and not isinstance(h["FLAGS"], fits.CompImageHDU)
        assert fh["MP_HOT"] == 10 and fh["MP_SOURCE"] == 21 and fh["MP_MISSING_DATA"] == 9
        assert h["PSF"].data.shape == (121, 101, 101) and h["PSF"].header["OVERSAMP"] == 10
        assert "XCTR_0" in h["PSF"].header and "YCTR_120" in h["PSF"].header
        assert h["WCS-WAVE"].data["VALUES"][0].shape == (11, 11, 2)
    else:
        assert isinstance(h["FLAGS"], fits.CompImageHDU)
        with fits.open(full_frames[rel]["path"], disable_image_compression=True) as raw:
            zh = raw["FLAGS"].header
            assert zh["ZCMPTYPE"] == "RICE_1" and zh["ZTILE1"] == 2040 and zh["ZTILE2"] == 1
        assert fh["MSKN0010"] == "HOT" and fh["MSKN0021"] == "SOURCE" and fh["MSKN0009"] == "MISSING_DATA"
        assert isinstance(h["EPSF"], fits.BinTableHDU) and len(h["EPSF"].data) == 121
        # 9x9 plus the duplicated dichroic-edge row of D3
        assert h["WCS-WAVE"].data["VALUES"][0].shape == (10, 9, 2)


@pytest.mark.parametrize("rel", ["qr2", "qr3"])
def test_celestial_wcs_matches_intended(full_frames, rel):
    h = full_frames[rel]["hdul"]
    meta = full_frames[rel]["meta"]
    w = _quiet_wcs(h["IMAGE"].header)
    rng = np.random.default_rng(5)
    x = np.concatenate([[-0.5, 2039.5, 0, 2039, 1019.5], rng.uniform(-0.5, 2039.5, 500)])
    y = np.concatenate([[-0.5, 2039.5, 2039, 0, 1019.5], rng.uniform(-0.5, 2039.5, 500)])
    ra, dec = w.all_pix2world(x, y, 0)
    ra_t, dec_t = frame_pixel_to_world(meta, x, y)
    assert np.max(np.abs((ra - ra_t + 180) % 360 - 180) * np.cos(np.radians(dec_t))) < 1e-6
    assert np.max(np.abs(dec - dec_t)) < 1e-6
    # inverse: astropy (AP/BP + iteration) and the exact inverse
    xa, ya = w.all_world2pix(ra_t, dec_t, 0)
    assert np.max(np.hypot(xa - x, ya - y)) < 1e-3
    xb, yb = frame_world_to_pixel(meta, ra_t, dec_t)
    assert np.max(np.hypot(xb - x, yb - y)) < 1e-8
    # SIP matters: a few pixels at the corners
    w_nosip = w.deepcopy()
    w_nosip.sip = None
    xn, yn = w_nosip.wcs_world2pix(ra_t[:4], dec_t[:4], 0)
    d = np.hypot(xn - x[:4], yn - y[:4])
    assert 1.0 < d.max() < 8.0
    # the A WCS gives zero-based detector pixels
    wa = _quiet_wcs(h["IMAGE"].header, key="A")
    wa.sip = None
    px, py = wa.wcs_pix2world(x[:20], y[:20], 0)
    np.testing.assert_allclose(px, x[:20], atol=1e-9)
    np.testing.assert_allclose(py, y[:20], atol=1e-9)


@pytest.mark.parametrize("rel", ["qr2", "qr3"])
def test_wavelength_wcs_matches_intended(full_frames, rel):
    h = full_frames[rel]["hdul"]
    ww = _wave_wcs(h)
    t = h["WCS-WAVE"].data
    rng = np.random.default_rng(6)
    x = np.concatenate([[0, 2039, 0, 2039, 1020], rng.integers(0, 2040, 300)]).astype(float)
    y = np.concatenate([[0, 0, 2039, 2039, 1020], rng.integers(0, 2040, 300)]).astype(float)
    x[-50:] += rng.uniform(-0.4, 0.4, 50)
    lam, bw = ww.wcs_pix2world(x, y, 0)
    lam_t, bw_t = wave_lookup_bilinear(t["X"][0], t["Y"][0], t["VALUES"][0], x, y)
    assert np.max(np.abs(lam - lam_t)) < 1e-6
    assert np.max(np.abs(bw - bw_t)) < 1e-6
    # the rendered per-pixel maps are this same lookup
    xi, yi = x[:-50].astype(int), y[:-50].astype(int)
    arr = full_frames[rel]["arrays"]
    np.testing.assert_allclose(arr["lam"][yi, xi], lam[:-50], atol=1e-9)
    # physics: inside the detector band, decreasing with y, ~1% curvature along x, R ~ 40
    lo, hi = detector_band(3)
    lam_map = arr["lam"]
    assert lo - 0.05 < lam_map.min() and lam_map.max() < hi + 0.05
    assert lam_map.max() - lam_map.min() > 0.85 * (hi - lo)
    assert np.all(np.diff(lam_map[:, 1020]) < 0)
    curv = (lam_map[1020, 0] - lam_map[1020, 1020]) / lam_map[1020, 1020]
    assert 0.003 < curv < 0.03
    r = lam_map / arr["bw"]
    assert 38 < np.median(r) < 43
    # SIP left on would shift wavelengths (the astropy pitfall), so the .sip = None matters
    w_sip = _quiet_wcs(h["IMAGE"].header, fobj=h, key="W")
    if w_sip.sip is not None:
        lam_sip, _ = w_sip.all_pix2world(np.array([2039.0]), np.array([2039.0]), 0)
        assert abs(lam_sip[0] - lam[3]) > 1e-4


def test_wavelength_maps_follow_channel_map():
    """The channel whose [WL_MIN, WL_MAX] contains lambda(x, y) is the CHANNEL_MAP channel (mostly)."""
    from spxquery.drizzle3d.spectral import load_channel_map

    cmap = load_channel_map()
    tab = load_spectral_table()
    t = tab[tab["DETECTOR"] == 2].sort_values("SUBCHAN")
    tx, ty, vals = wave_table(2, "qr2")
    ys, xs = np.mgrid[100:2000:37, 0:2040:41]
    lam, _ = wave_lookup_bilinear(tx, ty, vals, xs.astype(float), ys.astype(float))
    ch = cmap[ys, xs]
    inside = (ch >= 1) & (ch <= 17)
    wc = t["WAVELENGTH"].to_numpy()
    nearest = np.argmin(np.abs(np.log(lam[..., None]) - np.log(wc)), axis=-1) + 1
    agree = np.mean(np.abs(nearest[inside] - ch[inside]) <= 0)
    assert agree > 0.9


@pytest.mark.parametrize("det", [3, 4])
def test_qr3_irregular_wave_grid_read_by_astropy(det, tmp_path):
    meta = make_frame_meta(det, RA0, DEC0, 0.0, "2025W30_1C_0001_1", release="qr3")
    _, ty, _ = wave_table(det, "qr3")
    assert ty.size == 10 and np.sum(np.diff(ty) == 0) == 1  # one duplicated edge row
    h = fits.Header()
    h["NAXIS"], h["NAXIS1"], h["NAXIS2"] = 2, 2040, 2040
    for k, v, c in wcs_cards(meta):
        h[k] = (v, c)
    hdul = fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(header=h, name="IMAGE"), _wave_hdu(meta)])
    hdul.writeto(tmp_path / "w.fits")
    with fits.open(tmp_path / "w.fits") as hd:
        ww = _wave_wcs(hd)
        y = np.array([0, 0.3, 1, 250.7, 1000, 2038.6, 2039])
        x = np.array([0, 17, 2039, 1020, 333.3, 5, 2039])
        lam, bw = ww.wcs_pix2world(x, y, 0)
        t = hd["WCS-WAVE"].data
        lam_t, bw_t = wave_lookup_bilinear(t["X"][0], t["Y"][0], t["VALUES"][0], x, y)
    np.testing.assert_allclose(lam, lam_t, atol=1e-6)
    np.testing.assert_allclose(bw, bw_t, atol=1e-6)


# ── flags, noise, zodi ───────────────────────────────────────────────────────


@pytest.mark.parametrize("rel", ["qr2", "qr3"])
def test_flags_decompress_to_intended_bits(full_frames, rel):
    arr = full_frames[rel]["arrays"]
    h = full_frames[rel]["hdul"]
    flags = np.asarray(h["FLAGS"].data)
    np.testing.assert_array_equal(flags, arr["flags"])
    img = np.asarray(h["IMAGE"].data)
    hot = (flags & (1 << FLAG_BITS["HOT"])) != 0
    miss = (flags & (1 << FLAG_BITS["MISSING_DATA"])) != 0
    src = (flags & (1 << FLAG_BITS["SOURCE"])) != 0
    nonfunc = (flags & (1 << FLAG_BITS["NONFUNC"])) != 0
    assert 0.0005 < hot.mean() < 0.002 and np.all(img[hot & ~miss & ~nonfunc] > 1e3)
    assert np.all(img[nonfunc & ~miss] == 0)
    assert miss.sum() == 16 * 40 and np.all(np.isnan(img[miss]))
    assert np.isfinite(img[~miss]).all()
    assert nonfunc.sum() == 2040
    assert 0 < (flags & (1 << FLAG_BITS["TRANSIENT"]) != 0).sum() <= 200
    # SOURCE marks where the noiseless sky is bright, e.g. at the point source on the centre
    centre = frame_world_to_pixel(full_frames[rel]["meta"], np.array([RA0]), np.array([DEC0]))
    x, y = (round(float(v[0])) for v in centre)
    assert src[y, x] and not src[5, 5]
    assert h["IMAGE"].header["L2 N_HOT"] == hot.sum()


def test_noise_and_zodi_model(full_frames):
    arr = full_frames["qr2"]["arrays"]
    meta = full_frames["qr2"]["meta"]
    h = full_frames["qr2"]["hdul"]
    flags = arr["flags"]
    clean = flags == 0
    img = np.asarray(h["IMAGE"].data, dtype=np.float64)
    zodi = np.asarray(h["ZODI"].data, dtype=np.float64)
    var = np.asarray(h["VARIANCE"].data, dtype=np.float64)
    resid = (img - arr["sky"] - meta.zodi_scale_true * zodi)[clean] / np.sqrt(var[clean])
    assert abs(np.std(resid) - 1.0) < 0.01 and abs(np.mean(resid)) < 0.01
    sig = np.sqrt(np.nanmedian(var))
    assert 0.05 < sig < 0.2
    assert 0.1 < np.median(zodi) < 1.0
    # smooth: zodi varies along y (wavelength) and has a gentle gradient along x
    assert abs(zodi[1020, 0] / zodi[1020, 2039] - 1) > 0.01


def test_noise_scale_and_zodi_scale_true(tmp_path):
    sky = SkyModel(psf_fwhm_arcsec=13.53)
    m = _meta("qr2", zodi_scale_true=1.03, noise_scale=1.18)
    arr = render_frame(m, sky)
    clean = arr["flags"] == 0
    resid = (arr["image"] - 1.03 * arr["zodi"])[clean] / np.sqrt(arr["variance"][clean])
    assert abs(np.std(resid) - 1.18) < 0.02
    assert abs(np.mean(resid)) < 0.01


def test_deterministic_and_seed_dependent(tmp_path):
    sky = _sky()
    cut = (RA0, DEC0, 0.1)
    paths = []
    for i, seed in enumerate([0, 0, 1]):
        m = _meta("qr3", seed=seed)
        p = tmp_path / f"f{i}.fits"
        simulate_frame(p, m, sky, cutout=cut, psf_size=11, psf_zones=2)
        paths.append(p)
    md5 = [hashlib.md5(p.read_bytes()).hexdigest() for p in paths]
    assert md5[0] == md5[1]
    with fits.open(paths[0]) as a, fits.open(paths[2]) as b:
        assert a["IMAGE"].data.tobytes() != b["IMAGE"].data.tobytes()
        np.testing.assert_array_equal(a["ZODI"].data, b["ZODI"].data)


# ── cutouts ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("rel", ["qr2", "qr3"])
def test_cutout_equals_full_frame_region(full_frames, rel, tmp_path):
    full = full_frames[rel]["hdul"]
    meta = full_frames[rel]["meta"]
    ra, dec = frame_pixel_to_world(meta, np.array([60.0]), np.array([1500.0]))  # near the left edge: clipped
    cut = make_cutout(full_frames[rel]["path"], float(ra[0]), float(dec[0]), 0.25)
    cut.writeto(tmp_path / "c.fits")
    x0, x1, y0, y1 = cutout_box(full["IMAGE"].header, (2040, 2040), float(ra[0]), float(dec[0]), 0.25)
    assert x0 == 0 and x1 < 2040 and y1 - y0 == 2 * math.ceil(0.125 / (6.15 / 3600)) + 1
    with fits.open(tmp_path / "c.fits") as c:
        assert [h.name for h in c] == [h.name for h in full]
        assert type(c["FLAGS"]) is type(full["FLAGS"])
        for name in ("IMAGE", "FLAGS", "VARIANCE", "ZODI"):
            np.testing.assert_array_equal(c[name].data, full[name].data[y0:y1, x0:x1])
            assert c[name].header["NAXIS1"] == x1 - x0 and c[name].header["NAXIS2"] == y1 - y0
        psf = "PSF" if rel == "qr2" else "EPSF"
        assert c[psf].data.shape == full[psf].data.shape
        ch = c["IMAGE"].header
        fh = full["IMAGE"].header
        for ax, off in (("1", x0), ("2", y0)):
            for suf in ("", "A", "W"):
                assert ch[f"CRPIX{ax}{suf}"] == fh[f"CRPIX{ax}{suf}"] - off
        ny, nx = y1 - y0, x1 - x0
        rng = np.random.default_rng(3)
        cx = np.concatenate([[0, nx - 1], rng.uniform(-0.5, nx - 0.5, 100)])
        cy = np.concatenate([[0, ny - 1], rng.uniform(-0.5, ny - 0.5, 100)])
        wc, wf = _quiet_wcs(ch), _quiet_wcs(fh)
        rc, dc = wc.all_pix2world(cx, cy, 0)
        rf, df = wf.all_pix2world(cx + x0, cy + y0, 0)
        assert np.max(np.abs(rc - rf)) < 1e-9 and np.max(np.abs(dc - df)) < 1e-9
        lc, bc = _wave_wcs(c).wcs_pix2world(cx, cy, 0)
        lf, bf = _wave_wcs(full).wcs_pix2world(cx + x0, cy + y0, 0)
        np.testing.assert_allclose(lc, lf, atol=1e-9)
        np.testing.assert_allclose(bc, bf, atol=1e-9)
        wa = _quiet_wcs(ch, key="A")
        wa.sip = None
        px, py = wa.wcs_pix2world(cx, cy, 0)
        np.testing.assert_allclose(px, cx + x0, atol=1e-9)
        np.testing.assert_allclose(py, cy + y0, atol=1e-9)
        # parent pixel = x + 1 - CRPIX1A
        np.testing.assert_allclose(cx + 1 - ch["CRPIX1A"], cx + x0)


# ── fields, mirror tree, index, truth ────────────────────────────────────────


@pytest.fixture(scope="module")
def small_field(tmp_path_factory):
    root = tmp_path_factory.mktemp("field")
    info = simulate_field(root, RA0, DEC0, detectors=(3,), n_pointings=6, release="qr2", cutout_size_deg=0.25,
                          include_reprocessed_duplicates=True, psf_size=15, psf_zones=3, seed=4)
    return info


def _inside(poly: list[float], ra: float, dec: float) -> bool:
    xi, eta = gnomonic(np.array(poly[0::2]), np.array(poly[1::2]), ra, dec)
    inside = False
    n = len(xi)
    for i in range(n):
        x1, y1, x2, y2 = xi[i], eta[i], xi[(i + 1) % n], eta[(i + 1) % n]
        if (y1 > 0) != (y2 > 0) and 0 < x1 + (0 - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def test_field_tree_and_index(small_field):
    info = small_field
    rows = load_index(info.root)
    assert len(rows) == 6 + 2 and len(info.frames) == 8
    pat = re.compile(r"^ibe/data/spherex/qr2/level2/2025W18_2B/(l2b-v\d+-\d{4}-\d{3})/3/"
                     r"level2_(2025W18_2B_\d{4}_\d)D3_spx_\1\.fits$")
    keys = {"obs_publisher_did", "energy_bandpassname", "energy_bounds_lower", "energy_bounds_upper",
            "time_bounds_lower", "time_bounds_upper", "poly", "uri", "contentlength", "contentchecksum",
            "producttype", "collection", "cloud_access"}
    for row in rows:
        assert set(row) == keys
        m = pat.match(row["uri"])
        assert m, row["uri"]
        assert json.loads(row["cloud_access"])["aws"]["key"] == row["uri"].removeprefix("ibe/data/spherex/")
        path = info.root / row["uri"][len("ibe/data/spherex/"):]
        data = path.read_bytes()
        assert row["contentlength"] == len(data)
        assert row["contentchecksum"] == "md5:" + hashlib.md5(data).hexdigest()
        assert row["obs_publisher_did"] == f"ivo://irsa.ipac/spherex_qr2?{m.group(2)}/D3"
        assert row["energy_bandpassname"] == "SPHEREx-D3" and row["collection"] == "spherex_qr2"
        assert row["energy_bounds_lower"] == pytest.approx(1.636e-6, rel=1e-5)
        assert row["energy_bounds_upper"] == pytest.approx(2.44e-6, rel=1e-5)
        assert row["time_bounds_lower"] < row["time_bounds_upper"]
        assert _inside(row["poly"], RA0, DEC0) and not _inside(row["poly"], RA0, DEC0 + 0.5)
        with fits.open(path) as h:
            assert h["IMAGE"].header["OBSID"] == m.group(2)
            w = _quiet_wcs(h["IMAGE"].header)
            ny, nx = h["IMAGE"].data.shape
            corners = w.all_pix2world([-0.5, nx - 0.5, nx - 0.5, -0.5], [-0.5, -0.5, ny - 0.5, ny - 0.5], 0)
            np.testing.assert_allclose(np.ravel(np.column_stack(corners)), row["poly"], atol=1e-8)
    dids = [r["obs_publisher_did"] for r in rows]
    versions = {r["obs_publisher_did"]: set() for r in rows}
    for r in rows:
        versions[r["obs_publisher_did"]].add(pat.match(r["uri"]).group(1))
    assert len(set(dids)) == 6 and sum(len(v) == 2 for v in versions.values()) == 2


def test_field_covers_centre_at_many_wavelengths(small_field):
    info = small_field
    lams, pas = [], []
    for meta, path in info.current_frames():
        with fits.open(path) as h:
            x, y = (float(v) for v in _quiet_wcs(h["IMAGE"].header).all_world2pix(RA0, DEC0, 0))
            assert 0 <= x < h["IMAGE"].data.shape[1] and 0 <= y < h["IMAGE"].data.shape[0]
            lam, _ = _wave_wcs(h).wcs_pix2world(np.array([x]), np.array([y]), 0)
            lams.append(float(lam[0]))
            pas.append(meta.pa_deg)
            # truth meta (cutout-shifted) reproduces the file's WCS
            r, d = frame_pixel_to_world(meta, np.array([x]), np.array([y]))
            assert abs(r[0] - RA0) < 1e-8 and abs(d[0] - DEC0) < 1e-8
    lo, hi = detector_band(3)
    assert max(lams) - min(lams) > 0.7 * (hi - lo)
    d = np.sort(np.abs(((np.array(pas) - pas[0]) + 180) % 360 - 180))
    assert d.min() < 5 and d.max() > 175


def test_truth_roundtrip(small_field):
    sky, truth = load_truth(small_field.root)
    assert sky.to_dict() == small_field.sky.to_dict()
    assert len(truth["frames"]) == len(small_field.frames)
    assert truth["frames"][0].to_dict() == small_field.frames[0].to_dict()
    assert truth["field"]["release"] == "qr2" and "scattered_amp" in truth["zodi"]
    assert sum(bool(f.extra["superseded"]) for f in truth["frames"]) == 2
    with pytest.raises(FileNotFoundError):
        load_truth(small_field.root / "nope")


# ── sky model and scoring ────────────────────────────────────────────────────


def test_band_average_is_exact():
    spec = Spectrum(0.7, -1.3, [EmissionLine(2.0, 0.02, 1.5), EmissionLine(2.1, 0.01, 0.4)])
    for a, b in [(1.9, 2.05), (1.99, 2.0), (2.0, 2.0), (1.6, 2.4)]:
        if a == b:
            assert band_average(spec, a, b) == pytest.approx(spec.value(a))
            continue
        x = np.linspace(a, b, 200001)
        assert band_average(spec, a, b) == pytest.approx(np.trapezoid(spec.value(x), x) / (b - a), rel=1e-8)
    spec_log = Spectrum(2.0, -1.0)
    assert band_average(spec_log, 1.0, 2.0) == pytest.approx(2.0 * math.log(2.0))


def test_sky_json_roundtrip():
    sky = _sky()
    again = SkyModel.from_json(sky.to_json())
    assert again.to_dict() == sky.to_dict()
    assert isinstance(again.extended_sources[0].spectrum.lines[0], EmissionLine)


def test_flux_conservation_frame_and_truth():
    sky = SkyModel(point_sources=[PointSource(RA0, DEC0, Spectrum(30.0, 0.0))],
                   extended_sources=[ExtendedSource(RA0 + 0.05, DEC0, 40.0, 20.0, 30.0, Spectrum(0.5, 0.0))],
                   psf_fwhm_arcsec=13.53)
    m = _meta("qr2")
    arr = render_frame(m, sky)
    ps_only = SkyModel(point_sources=sky.point_sources, psf_fwhm_arcsec=13.53)
    img_ps = render_frame(m, ps_only)["sky"]
    # local pixel solid angle (SIP changes the area by ~0.1%)
    xs, ys = frame_world_to_pixel(m, np.array([RA0, RA0 + 0.05]), np.array([DEC0, DEC0]))
    omega = []
    for x, y in zip(xs, ys):
        r, d = frame_pixel_to_world(m, np.array([x - 0.5, x + 0.5, x - 0.5]), np.array([y - 0.5, y - 0.5, y + 0.5]))
        xi, eta = gnomonic(r, d, r[0], d[0])
        omega.append(abs(xi[1] * eta[2] - xi[2] * eta[1]) * (math.pi / 180) ** 2)
    assert img_ps.sum() * omega[0] / 1e-9 == pytest.approx(30.0, rel=1e-5)
    ext_flux = 0.5 * 2 * math.pi * 40.0 * 20.0 * (math.pi / 648000) ** 2
    assert (arr["sky"] - img_ps).sum() * omega[1] == pytest.approx(ext_flux, rel=1e-4)
    # truth, with and without PSF, conserves flux on an output grid too
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [31, 31]
    w.wcs.cdelt = [-3.075 / 3600, 3.075 / 3600]
    w.array_shape = (61, 61)
    for psf in (True, False):
        tc = truth_cube(ps_only, w, np.array([1.0, 1.1]), psf=psf)
        assert tc.sum() * (3.075 / 206264.80624709636) ** 2 / 1e-9 == pytest.approx(30.0, rel=1e-4)


def test_frame_matches_truth_on_extended_source():
    """Pixel values of the noiseless frame equal the truth at the pixel's position and band."""
    ext = ExtendedSource(RA0, DEC0, 60.0, 45.0, 10.0, Spectrum(0.5, -1.0, [EmissionLine(2.0, 0.03, 1.0)]))
    sky = SkyModel(extended_sources=[ext], psf_fwhm_arcsec=13.53)
    m = _meta("qr2", pa=0.0)
    arr = render_frame(m, sky)
    xc, yc = (round(float(v[0])) for v in frame_world_to_pixel(m, np.array([RA0]), np.array([DEC0])))
    ys, xs = np.mgrid[yc - 3:yc + 4, xc - 3:xc + 4]
    ra, dec = frame_pixel_to_world(m, xs.astype(float), ys.astype(float))
    lam, bw = arr["lam"][ys, xs], arr["bw"][ys, xs]
    tru = sky.mean_surface_brightness(ra, dec, lam - bw / 2, lam + bw / 2, 6.15 / 3600)
    np.testing.assert_allclose(arr["sky"][ys, xs], tru, rtol=2e-3)


def test_truth_cube_scores_perfectly():
    sky = _sky()
    n = 121
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [RA0, DEC0]
    w.wcs.crpix = [(n + 1) / 2] * 2
    w.wcs.cdelt = [-6.15 / 3600 / 1.5, 6.15 / 3600 / 1.5]
    w.array_shape = (n, n)
    for zg in (build_z_grid_native(3), build_z_grid_oversampled(3, 2.0)):
        tc = truth_cube(sky, w, zg)
        assert tc.shape == (zg.n_z, n, n) and tc.max() > 1.0
        var = np.full_like(tc, 0.01)
        s = score_cube(tc, var, tc, sky=sky, output_wcs=w, wavelengths=zg.centers)
        assert s["median_rel_error"] == 0 and s["residual_std"] == 0 and s["coverage"] == 1.0
        assert s["n_signal"] > 100 and s["n_empty"] > 1000
        assert np.isfinite(s["centroid_offsets"]).all() and s["max_centroid_offset"] < 1e-3
        assert len(s["line_centre_errors"]) == 1 and s["max_line_centre_error"] < 1e-3
        assert np.all(normalised_residuals(tc, var, tc) == 0)
    # the scores detect errors: a shifted and rescaled cube
    bad = np.roll(tc, 1, axis=2) * 1.1
    s = score_cube(bad, var, tc, sky=sky, output_wcs=w, wavelengths=zg.centers)
    assert 0.9 < s["max_centroid_offset"] < 1.1
    offs = centroid_offsets(np.nanmean(bad, axis=0), w, sky)
    np.testing.assert_allclose(offs[:, 0], 1.0, atol=1e-3)
    assert s["median_rel_error"] > 0.05
    noisy = tc + np.random.default_rng(1).normal(0, 0.1, tc.shape)
    s = score_cube(noisy, np.full_like(tc, 0.01), tc)
    assert s["residual_std"] == pytest.approx(1.0, abs=0.02)


def test_emission_line_centre_on_sampled_spectrum():
    lam = np.linspace(1.65, 2.4, 60)
    spec = Spectrum(0.4, -0.8, [EmissionLine(2.0312, 0.025, 0.7)])
    assert emission_line_centre(spec.value(lam), lam) == pytest.approx(2.0312, abs=2e-4)
    assert math.isnan(emission_line_centre(np.zeros(3), lam[:3]))
