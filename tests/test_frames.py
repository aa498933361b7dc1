"""Reading SPHEREx L2 frames written by the simulator: QR2, QR3, cutouts, crops, strips, rejections."""

import dataclasses
import shutil
import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.footprint import footprint_crop
from spxquery.drizzle3d.frames import FrameError, open_frame, prepare_frame
from spxquery.drizzle3d.grid import OutputGrid, build_output_wcs
from spxquery.drizzle3d.simulate import (
    PointSource,
    SkyModel,
    Spectrum,
    build_l2_hdulist,
    make_cutout,
    make_frame_meta,
    render_frame,
    write_l2_file,
)

RA0, DEC0, PA = 150.0, 2.0, 30.0
ZODI_TRUE = 1.2


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One rendered D3 frame written in both layouts, plus a cutout and a far-away frame."""
    d = tmp_path_factory.mktemp("frames")
    meta = make_frame_meta(3, RA0, DEC0, PA, "2025W18_2B_0001_1", release="qr2", zodi_scale_true=ZODI_TRUE)
    sky = SkyModel(point_sources=[PointSource(RA0 + 0.02, DEC0 - 0.01, Spectrum(20.0))])
    arr = render_frame(meta, sky)
    out = {"meta": meta, "arrays": arr}
    out["qr2"] = write_l2_file(build_l2_hdulist(meta, arr), d / "level2_2025W18_2B_0001_1D3_spx_l2b-v12-2025-164.fits")
    meta3 = dataclasses.replace(meta, release="qr3", version="l2b-v20-2025-247")
    out["qr3"] = write_l2_file(build_l2_hdulist(meta3, arr), d / "level2_2025W18_2B_0001_1D3_spx_l2b-v20-2025-247.fits")
    with fits.open(out["qr3"]) as hdul:
        cut = make_cutout(hdul, RA0 + 0.1, DEC0 + 0.05, 0.15)
        out["cutout"] = write_l2_file(cut, d / "cutout_qr3.fits")
    # the same pixels moved 40 deg away (only CRVAL changes)
    far = d / "far.fits"
    shutil.copy(out["qr2"], far)
    with fits.open(far, mode="update") as hdul:
        hdul["IMAGE"].header["CRVAL1"] = RA0 + 40.0
    out["far"] = far
    out["dir"] = d
    return out


def wavelength_astropy(path, x, y):
    """Reference (lambda_c, delta_lambda) in um from astropy's ``W`` WCS with SIP switched off."""
    from astropy import log as alog

    with fits.open(path) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        level = alog.level
        alog.setLevel("ERROR")
        try:
            w = WCS(hdul["IMAGE"].header, fobj=hdul, key="W")
        finally:
            alog.setLevel(level)
        w.sip = None
        lam, dlam = w.pixel_to_world_values(np.asarray(x, float), np.asarray(y, float))
    return np.asarray(lam, dtype=np.float64), np.asarray(dlam, dtype=np.float64)


def wave_at(frame, x, y):
    """(lambda_c, delta_lambda) of the frame's lookup at integer pixels ``x``, ``y``."""
    ny, nx = frame.shape
    lam, dlam = frame.wave.evaluate_crop(0, nx, 0, ny)
    yi, xi = np.asarray(y, int), np.asarray(x, int)
    return lam[yi, xi], dlam[yi, xi]


def grid_of(cfg, det=3):
    return OutputGrid.for_detector(cfg, det)


def read_whole(path, cfg, det=3):
    """``(frame, strip)``: the frame prepared for ``cfg``'s grid with its crop in one strip (None: outside)."""
    frame = prepare_frame(path, cfg, grid_of(cfg, det), strip_pixels=2**62)
    if frame is None:
        return None
    strips = list(frame.strips())
    assert len(strips) == 1
    return frame, strips[0]


def _cfg(**kw):
    base = dict(center_ra=RA0 + 0.1, center_dec=DEC0 + 0.05, width=6.0, height=5.0, detector=3, progress=False)
    base.update(kw)
    return Drizzle3DConfig(**base)


# ---------------------------------------------------------------- headers


@pytest.mark.parametrize("layout", ["qr2", "qr3"])
def test_open_frame_layouts(files, layout):
    fh = open_frame(files[layout], 3)
    assert fh.flags_compressed == (layout == "qr3")
    assert fh.detector == 3 and fh.shape == (2040, 2040) and not fh.is_cutout
    assert fh.obsid == "2025W18_2B_0001_1"
    assert fh.mjd == pytest.approx(files["meta"].mjd_avg)
    assert fh.flag_bits["SOURCE"] == 21 and fh.flag_bits["HOT"] == 10
    assert fh.wcs.sip is not None


def test_open_cutout(files):
    fh = open_frame(files["cutout"], 3)
    assert fh.is_cutout and fh.flags_compressed
    ny, nx = fh.shape
    assert ny < 200 and nx < 200
    x0, y0 = fh.parent_offset
    # the cutout's celestial WCS is used directly in cutout pixels
    full = open_frame(files["qr3"], 3)
    ra, dec = fh.wcs.all_pix2world([0.0, nx - 1.0], [0.0, ny - 1.0], 0)
    px, py = full.wcs.all_world2pix(ra, dec, 0)
    np.testing.assert_allclose(px, [x0, x0 + nx - 1], atol=1e-6)
    np.testing.assert_allclose(py, [y0, y0 + ny - 1], atol=1e-6)


def test_flag_names_from_header(files, tmp_path):
    # a QR3 file that names bit 30 'MYFLAG' and renames bit 21; the reader must use the header
    p = tmp_path / "named.fits"
    shutil.copy(files["qr3"], p)
    with fits.open(p, mode="update") as hdul:
        hdul["FLAGS"].header["MSKN0030"] = "MYFLAG"
    fh = open_frame(p, 3)
    assert fh.flag_bits["MYFLAG"] == 30
    p2 = tmp_path / "named_qr2.fits"
    shutil.copy(files["qr2"], p2)
    with fits.open(p2, mode="update") as hdul:
        hdul["FLAGS"].header["HIERARCH MP_SOURCE"] = 3
    assert open_frame(p2, 3).flag_bits["SOURCE"] == 3


# ---------------------------------------------------------------- wavelengths


@pytest.mark.parametrize("which", ["qr2", "qr3", "cutout"])
def test_wavelength_lookup_matches_astropy(files, which):
    fh = open_frame(files[which], 3)
    ny, nx = fh.shape
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.integers(0, nx, 3000), [0, nx - 1, 0, nx - 1]]).astype(float)
    y = np.concatenate([rng.integers(0, ny, 3000), [0, 0, ny - 1, ny - 1]]).astype(float)
    lam_ref, bw_ref = wavelength_astropy(files[which], x, y)
    lam, bw = wave_at(fh, x, y)
    assert np.max(np.abs(lam - lam_ref)) < 1e-6
    assert np.max(np.abs(bw - bw_ref)) < 1e-6
    # a crop's lookup is the same numbers as the whole frame's at those pixels
    lc, bc = fh.wave.evaluate_crop(5, 25, 7, 19)
    lr, br = wave_at(fh, np.arange(5, 25)[None, :], np.arange(7, 19)[:, None])
    np.testing.assert_array_equal(lc, lr)
    np.testing.assert_array_equal(bc, br)
    # the simulator's truth: wavelength falls with y, by ~0.78 um over D3
    if which != "cutout":
        assert lam_ref[np.argmin(y)] > lam_ref[np.argmax(y)]


def _separable_numpy(wave, x0, x1, y0, y1):
    """The numpy form the Rust lookup replaced: along x at every knot row, then along y."""
    from spxquery.drizzle3d.wavetable import _cell_index

    xs, ys = np.arange(x0, x1, dtype=np.float64), np.arange(y0, y1, dtype=np.float64)
    ix, fx = _cell_index(wave.cdelt[0] * (xs + 1.0 - wave.crpix[0]) + wave.crval[0], wave.x)
    iy, fy = _cell_index(wave.cdelt[1] * (ys + 1.0 - wave.crpix[1]) + wave.crval[1], wave.y)
    out = []
    for m in range(2):
        v = wave.values[..., m]
        along_x = (1.0 - fx) * v[:, ix] + fx * v[:, ix + 1]
        out.append(np.multiply.outer(1.0 - fy, np.ones(len(xs))) * along_x[iy] + fy[:, None] * along_x[iy + 1])
    return out


@pytest.mark.parametrize("dtype", ["<f8", ">f8", "<f4"])
def test_cell_index_equals_the_direct_search(dtype):
    """_cell_index (the knots' cells remembered per distinct axis) gives the direct search's cells and
    fractions bit for bit: repeated knots skipped, ends extrapolated, any knot dtype."""
    from spxquery.drizzle3d.wavetable import _cell_index

    rng = np.random.default_rng(11)
    for trial in range(20):
        knots = np.sort(np.concatenate([rng.uniform(0, 50, 8), rng.choice([5.0, 30.0], trial % 3)])).astype(dtype)
        psi = rng.uniform(-5, 55, 300)
        good = np.flatnonzero(np.diff(knots) > 0)
        j = np.clip(np.searchsorted(knots[good], psi, side="left") - 1, 0, good.size - 1)
        i = good[j]
        want = (psi - knots[i]) / (knots[i + 1] - knots[i])
        for _ in range(2):  # computed, then remembered
            got_i, got_f = _cell_index(psi, knots)
            assert np.array_equal(got_i, i) and got_f.tobytes() == want.tobytes()


@pytest.mark.parametrize("which", ["qr2", "cutout"])
def test_wavelength_lookup_bit_identical_to_numpy_form(files, which):
    """_core.wave_lookup (Rust) gives the numpy separable interpolation's numbers bit for bit, on a
    file's table and on a random table with repeated knots, crops anywhere (cubes must not change)."""
    wave = open_frame(files[which], 3).wave
    ny, nx = open_frame(files[which], 3).shape
    for box in [(0, nx, 0, ny), (3, 17, 5, 9), (nx - 4, nx, ny - 2, ny)]:
        for got, want in zip(wave.evaluate_crop(*box), _separable_numpy(wave, *box)):
            assert got.tobytes() == want.tobytes(), box
    rng = np.random.default_rng(7)
    knots_x = np.sort(np.concatenate([rng.uniform(0, 60, 9), [20.0, 20.0]]))
    knots_y = np.sort(rng.uniform(0, 40, 6))
    table = dataclasses.replace(wave, x=knots_x, y=knots_y, values=rng.uniform(0.5, 5.0, (6, 11, 2)),
                                crpix=(1.0, 1.0), crval=(1.0, 1.0), cdelt=(1.0, 1.0))
    for got, want in zip(table.evaluate_crop(0, 58, 2, 37), _separable_numpy(table, 0, 58, 2, 37)):
        assert got.tobytes() == want.tobytes()


def test_wavelength_with_sip_left_on_differs(files):
    """Guard: astropy's W WCS with the image SIP left on is wrong by far more than 1e-6 um."""
    with fits.open(files["qr2"]) as hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        w = WCS(hdul["IMAGE"].header, fobj=hdul, key="W")
        x = np.array([10.0, 2000.0]), np.array([10.0, 2000.0])
        lam_sip = w.pixel_to_world_values(*x)[0]
    lam = wave_at(open_frame(files["qr2"], 3), *x)[0]
    if w.sip is not None:
        assert np.max(np.abs(lam_sip - lam)) > 1e-4


def test_cutout_wavelength_uses_parent_table(files):
    cut = open_frame(files["cutout"], 3)
    full = open_frame(files["qr3"], 3)
    ny, nx = cut.shape
    x0, y0 = (int(v) for v in cut.parent_offset)
    np.testing.assert_array_equal(cut.wave.evaluate_crop(0, nx, 0, ny)[0],
                                  full.wave.evaluate_crop(x0, x0 + nx, y0, y0 + ny)[0])


# ---------------------------------------------------------------- crop


def _touching_pixels(fh, out_wcs, shape, box):
    """Brute force: input pixels (in ``box``) whose full droplet corners bound an area meeting the output."""
    bx0, bx1, by0, by1 = box
    xs = np.arange(bx0, bx1 + 1) - 0.5
    ys = np.arange(by0, by1 + 1) - 0.5
    cx, cy = np.meshgrid(xs, ys)
    ra, dec = fh.wcs.all_pix2world(cx, cy, 0)
    ox, oy = out_wcs.wcs_world2pix(ra, dec, 0)
    quad = lambda a: np.stack([a[:-1, :-1], a[:-1, 1:], a[1:, :-1], a[1:, 1:]])  # noqa: E731
    qx, qy = quad(ox), quad(oy)
    ny, nx = shape
    hit = (qx.max(0) >= -0.5) & (qx.min(0) <= nx - 0.5) & (qy.max(0) >= -0.5) & (qy.min(0) <= ny - 0.5)
    jj, ii = np.nonzero(hit)
    return ii + bx0, jj + by0


@pytest.mark.parametrize(
    "dra,ddec,w,h,xyo",
    [(0.1, 0.05, 6.0, 5.0, 1.0), (0.0, 0.0, 20.0, 12.0, 2.0), (1.62, 1.0, 30.0, 30.0, 1.0)],
    ids=["small", "oversampled", "frame-corner"],
)
def test_crop_contains_every_touching_pixel(files, dra, ddec, w, h, xyo):
    fh = open_frame(files["qr2"], 3)
    cfg = _cfg(center_ra=RA0 + dra, center_dec=DEC0 + ddec, width=w, height=h, xy_oversample=xyo)
    out = build_output_wcs(cfg)
    shape = (cfg.output_ny(), cfg.output_nx())
    crop = footprint_crop(fh, grid_of(cfg))
    assert crop is not None
    x0, x1, y0, y1 = crop
    search = (max(x0 - 30, 0), min(x1 + 30, 2040) - 1, max(y0 - 30, 0), min(y1 + 30, 2040) - 1)
    ii, jj = _touching_pixels(fh, out, shape, search)
    assert ii.size > 0
    assert ii.min() >= x0 and ii.max() < x1 and jj.min() >= y0 and jj.max() < y1
    # and the crop is tight: at most a few pixels of slack on each side (unless clipped)
    slack = [ii.min() - x0, x1 - 1 - ii.max(), jj.min() - y0, y1 - 1 - jj.max()]
    assert max(slack) <= 4, slack


def test_crop_full_frame_when_region_contains_frame(files):
    fh = open_frame(files["qr2"], 3)
    cfg = _cfg(center_ra=RA0, center_dec=DEC0, width=300.0, height=300.0)
    assert footprint_crop(fh, grid_of(cfg)) == (0, 2040, 0, 2040)


def test_crop_none_when_disjoint(files):
    fh = open_frame(files["qr2"], 3)
    for dra, ddec in [(40.0, 0.0), (0.0, 2.6), (180.0, -60.0)]:
        cfg = _cfg(center_ra=RA0 + dra, center_dec=DEC0 + ddec, width=10.0, height=10.0)
        assert footprint_crop(fh, grid_of(cfg)) is None


def test_far_frame_reads_no_pixel_data(files, tmp_path):
    """A frame outside the region must not decode any pixel: corrupt its compressed FLAGS
    heap; reading far away still works (returns None), reading a touching region fails."""
    p = tmp_path / "corrupt.fits"
    shutil.copy(files["qr3"], p)
    with fits.open(p) as hdul:
        info = hdul.fileinfo(hdul.index_of("FLAGS"))
        start, span = info["datLoc"], info["datSpan"]
    with open(p, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\xff" * span)
    far_cfg = _cfg(center_ra=RA0 + 40.0)
    assert read_whole(p, far_cfg) is None
    near_cfg = _cfg()
    with pytest.raises(FrameError, match="corrupt.fits.*unreadable"):
        read_whole(p, near_cfg)


# ---------------------------------------------------------------- data


@pytest.mark.parametrize("layout", ["qr2", "qr3"])
def test_prepared_crop_matches_full_read(files, layout):
    cfg = _cfg(static_zodi=True)
    out = build_output_wcs(cfg)
    frame, fr = read_whole(files[layout], cfg)
    assert frame.flags_compressed == (layout == "qr3")
    x0, x1, y0, y1 = frame.crop
    arr = files["arrays"]
    sl = (slice(y0, y1), slice(x0, x1))
    np.testing.assert_allclose(fr.image, arr["image"][sl].astype(np.float64) - arr["zodi"][sl], rtol=0, atol=1e-5,
                               equal_nan=True)
    np.testing.assert_array_equal(fr.variance, arr["variance"][sl])
    assert fr.flags.dtype == np.uint32
    np.testing.assert_array_equal(fr.flags, arr["flags"][sl].view(np.uint32))
    assert frame.zodi.scale == 1.0 and frame.zodi.source == "static" and not frame.zodi.fitted
    lam_ref, bw_ref = wavelength_astropy(files[layout], *np.meshgrid(np.arange(x0, x1), np.arange(y0, y1)))
    assert np.max(np.abs(fr.lambda_c - lam_ref)) < 1e-6 and np.max(np.abs(fr.delta_lambda - bw_ref)) < 1e-6
    # corner map: output-grid positions of the input pixel corners, checked with astropy
    assert fr.corners_x.shape == (y1 - y0 + 1, x1 - x0 + 1)
    fh = open_frame(files[layout], 3)
    jj = np.array([0, y1 - y0, (y1 - y0) // 2])
    ii = np.array([0, x1 - x0, (x1 - x0) // 3])
    ra, dec = fh.wcs.all_pix2world(x0 + ii - 0.5, y0 + jj - 0.5, 0)
    ox, oy = out.wcs_world2pix(ra, dec, 0)
    np.testing.assert_allclose(fr.corners_x[jj, ii], ox, atol=1e-3)
    np.testing.assert_allclose(fr.corners_y[jj, ii], oy, atol=1e-3)
    assert fr.exclude_mask is None  # default exclude_flags = []


def test_qr2_qr3_cutout_read_identically(files):
    cfg = _cfg(width=4.0, height=4.0)
    frs = {k: read_whole(files[k], cfg) for k in ("qr2", "qr3", "cutout")}
    (fa, a), (fb, b), (fc, c) = frs["qr2"], frs["qr3"], frs["cutout"]
    assert fa.crop == fb.crop
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.flags, b.flags)
    # the cutout crop covers the same parent pixels
    cx0, cy0 = (int(v) for v in fc.parent_offset)
    x0, x1, y0, y1 = fc.crop
    assert (x0 + cx0, x1 + cx0, y0 + cy0, y1 + cy0) == fa.crop
    np.testing.assert_array_equal(c.variance, a.variance)
    np.testing.assert_array_equal(c.flags, a.flags)
    np.testing.assert_allclose(c.lambda_c, b.lambda_c, atol=1e-12)  # same (QR3) table as the cutout's parent
    assert np.max(np.abs(a.lambda_c - b.lambda_c)) < 1e-3  # QR2 11x11 vs QR3 9x9 grid: ~1 nm apart
    np.testing.assert_allclose(c.corners_x, a.corners_x, atol=1e-6)
    np.testing.assert_allclose(c.corners_y, a.corners_y, atol=1e-6)


def test_zodi_scale_recovered(files):
    cfg = _cfg()
    frame, _ = read_whole(files["qr3"], cfg)
    assert frame.zodi.fitted and frame.zodi.source == "sample"
    assert frame.zodi.scale == pytest.approx(ZODI_TRUE, rel=0.03)
    frame, fr = read_whole(files["qr3"], _cfg(subtract_zodi=False))
    assert frame.zodi.scale is None and frame.zodi.source == "none"


@pytest.mark.parametrize("layout", ["qr2", "qr3", "cutout"])
def test_zodi_scale_depends_on_the_frame_alone(files, layout):
    """The scale is fitted on the frame's own fixed sample: the same bits for any region, size,
    oversampling or strip size (what makes tiled runs equal one-piece runs)."""
    regions = [dict(), dict(width=0.5, height=0.5), dict(width=12.0, height=10.0, xy_oversample=2.0),
               dict(center_ra=RA0 + 0.12, center_dec=DEC0 + 0.03, width=3.0, height=7.0)]
    scales = set()
    for kw in regions:
        for strip_pixels in (2**62, 5000):
            cfg = _cfg(**kw)
            frame = prepare_frame(files[layout], cfg, grid_of(cfg), strip_pixels=strip_pixels)
            assert frame is not None and frame.zodi.source == "sample"
            scales.add(frame.zodi.scale)
    assert len(scales) == 1 and next(iter(scales)) == pytest.approx(ZODI_TRUE, rel=0.03)


def test_exclude_flags_by_name_and_number(files, tmp_path):
    p = tmp_path / "named.fits"
    shutil.copy(files["qr3"], p)
    with fits.open(p, mode="update") as hdul:
        hdul["FLAGS"].header["MSKN0010"] = "HOTPIX"  # the file calls bit 10 'HOTPIX'
    for spec in (["HOTPIX"], [10]):
        cfg = _cfg(exclude_flags=spec) if spec == [10] else _cfg()
        if spec == ["HOTPIX"]:
            cfg.exclude_flags = spec  # a name only this file defines: resolved with the file's own bits
        frame, fr = read_whole(p, cfg)
        hot = (fr.flags & np.uint32(1 << 10)) != 0
        assert hot.any()
        np.testing.assert_array_equal(fr.exclude_mask, hot)


@pytest.mark.parametrize("layout", ["qr2", "qr3"])
def test_strips_are_the_whole_crop_in_row_order(files, layout):
    """A crop read in strips of rows gives the same pixels as one read; the flags and the exclude
    mask are decided once for the whole crop and only sliced per strip."""
    cfg = _cfg(width=12.0, height=10.0, exclude_flags=["HOT", "NONFUNC"])
    grid = grid_of(cfg)
    whole = prepare_frame(files[layout], cfg, grid, strip_pixels=2**62)
    small = prepare_frame(files[layout], cfg, grid, strip_pixels=5000)
    assert small.crop == whole.crop and small.zodi == whole.zodi and whole.zodi.source == "sample"
    x0, x1, y0, y1 = whole.crop
    assert small.exclude_mask.shape == (y1 - y0, x1 - x0) and small.exclude_mask.any()
    bits = (1 << small.flag_bits["HOT"]) | (1 << small.flag_bits["NONFUNC"])
    np.testing.assert_array_equal(small.exclude_mask, (small.flags & np.uint32(bits)) != 0)
    pieces = list(small.strips())
    assert len(pieces) > 3 and all(p.image.shape[0] <= small.strip_rows for p in pieces)
    assert all(np.shares_memory(p.exclude_mask, small.exclude_mask) for p in pieces)
    (one,) = list(whole.strips())
    for name in ("variance", "flags", "lambda_c", "delta_lambda", "exclude_mask"):
        np.testing.assert_array_equal(np.concatenate([getattr(p, name) for p in pieces]), getattr(one, name), name)
    # the same zodi scale (fitted on the frame's sample), hence the same image bits
    np.testing.assert_array_equal(np.concatenate([p.image for p in pieces]), one.image)
    cx = np.concatenate([p.corners_x[:-1] for p in pieces] + [pieces[-1].corners_x[-1:]])
    np.testing.assert_allclose(cx, one.corners_x, atol=2e-3)


def test_frame_of_another_detector_or_not_prepared(files):
    cfg = _cfg()
    with pytest.raises(FrameError, match="belongs to detector D3, expected D4"):
        prepare_frame(files["qr2"], cfg, grid_of(cfg, 4))
    with pytest.raises(ValueError, match="prepare_frame"):
        next(open_frame(files["qr2"]).strips())


# ---------------------------------------------------------------- rejections


def _write_without(src, dst, extname):
    with fits.open(src) as hdul:
        keep = [h.copy() for h in hdul if h.name != extname]
        fits.HDUList(keep).writeto(dst)
    return dst


def test_rejections(files, tmp_path):
    cases = {}
    trunc = tmp_path / "truncated.fits"
    data = files["qr2"].read_bytes()
    trunc.write_bytes(data[: len(data) // 2])
    cases[trunc] = "truncated"
    text = tmp_path / "notes.fits"
    text.write_text("this is not a FITS file\n" * 200)
    cases[text] = "not a FITS file"
    cases[_write_without(files["qr2"], tmp_path / "noflags.fits", "FLAGS")] = "missing extension FLAGS"
    cases[_write_without(files["qr3"], tmp_path / "nowave.fits", "WCS-WAVE")] = "missing extension WCS-WAVE"
    other = tmp_path / "other.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 4)), name="SCI")]).writeto(other)
    cases[other] = "not a SPHEREx L2 image"
    cases[files["qr2"]] = "belongs to detector D3, expected D4"
    for path, reason in cases.items():
        det = 4 if path == files["qr2"] else 3
        with pytest.raises(FrameError) as ei:
            open_frame(path, det)
        assert reason in ei.value.reason, (path.name, ei.value.reason)
        assert ei.value.path == path and path.name in str(ei.value)
        cfg = _cfg()
        with pytest.raises(FrameError):
            read_whole(path, cfg, det)


# ---------------------------------------------------------------- what frames of a detector share


def test_equal_wave_tables_are_read_once_and_checked_per_frame(files, tmp_path):
    """Frames whose WCS-WAVE tables are byte-identical share one read-only table; a different table is
    read on its own; the coverage check still judges each frame's own CRPIX/CRVAL/CDELT."""
    a, b = open_frame(files["qr2"], 3), open_frame(files["far"], 3)
    assert a.wave.values is b.wave.values and not a.wave.values.flags.writeable
    changed = tmp_path / "other_table.fits"
    shutil.copy(files["qr2"], changed)
    with fits.open(changed, mode="update") as hdul:
        hdul["WCS-WAVE"].data["VALUES"][0][0, 0, 0] *= 1.001
    c = open_frame(changed, 3)
    assert c.wave.values is not a.wave.values
    assert c.wave.values[0, 0, 0] == pytest.approx(a.wave.values[0, 0, 0] * 1.001)
    assert np.array_equal(c.wave.values.ravel()[1:], a.wave.values.ravel()[1:])
    moved = tmp_path / "off_table.fits"
    shutil.copy(files["qr2"], moved)
    with fits.open(moved, mode="update") as hdul:
        hdul["IMAGE"].header["CRPIX1W"] = -5000.0  # the same table, the pixels mapped off it
    for _ in range(2):  # the verdict remembered for the table is this frame's, each time
        with pytest.raises(FrameError, match="map to X"):
            open_frame(moved, 3)
    assert open_frame(files["qr2"], 3).wave.values is a.wave.values


def test_flag_bits_follow_each_frames_flag_cards(files, tmp_path):
    """Flag names are remembered by the cards that define them: frames that differ elsewhere share
    them, a changed, added or repeated flag card gives that frame its own."""
    base = open_frame(files["qr2"], 3).flag_bits
    assert open_frame(files["far"], 3).flag_bits == base
    cases = {"HIERARCH MP_SOURCE": 3, "HIERARCH MP_NEWFLAG": 30}
    for key, bit in cases.items():
        p = tmp_path / f"{key.split('_')[-1]}.fits"
        shutil.copy(files["qr2"], p)
        with fits.open(p, mode="update") as hdul:
            hdul["FLAGS"].header[key] = bit
        assert open_frame(p, 3).flag_bits[key.split("MP_")[1]] == bit
        assert open_frame(files["qr2"], 3).flag_bits == base
    long = tmp_path / "long.fits"
    shutil.copy(files["qr3"], long)
    with fits.open(long, mode="update") as hdul:
        hdul["FLAGS"].header["MSKN0030"] = "MY" * 40  # a long string: CONTINUE cards
    assert open_frame(long, 3).flag_bits["MY" * 40] == 30


@pytest.mark.parametrize("where", ["first row", "last row", "nowhere"])
def test_sample_verdict_finds_a_finite_positive_value_in_any_row(where):
    """The verdict looks at the first sampled row first, then at every row: the same answer."""
    from spxquery.drizzle3d.framesample import FrameSample, sample_verdict

    bad = np.array([[np.nan, -1.0, 0.0, np.inf]] * 3)
    arrays = {}
    for name in ("image", "variance", "zodi"):
        a = bad.copy()
        if where != "nowhere":
            a[0 if where == "first row" else -1, 1] = 2.0
        arrays[name] = a
    sample = FrameSample(range(3), arrays["image"], arrays["zodi"], arrays["variance"], np.zeros((3, 4), np.uint32))
    assert sample_verdict(sample) == (None if where != "nowhere" else "IMAGE has no positive pixel (12 sampled)")
    arrays["image"][:] = 1.0
    if where == "nowhere":
        assert "VARIANCE has no finite positive value" in sample_verdict(sample)


def test_a_malformed_flag_card_warns_for_every_frame(files, tmp_path, caplog):
    bad = tmp_path / "badflag.fits"
    shutil.copy(files["qr2"], bad)
    with fits.open(bad, mode="update") as hdul:
        hdul["FLAGS"].header["HIERARCH MP_WRONG"] = 40
    for n in (1, 2):
        with caplog.at_level("WARNING", logger="spxquery.drizzle3d.flags"):
            bits = open_frame(bad, 3).flag_bits
        assert "WRONG" not in bits and bits == open_frame(files["qr2"], 3).flag_bits
        assert sum("MP_WRONG" in r.getMessage() for r in caplog.records) == n
