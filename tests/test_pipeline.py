"""drizzle_detector on simulated fields of full-size D3 frames (QR2 and QR3 layouts):
astrometry, photometry, line centres, noise, rejected files, outputs."""

import logging
import mmap
import os
import shutil
import sys
import warnings

import numpy as np
import pytest
from astropy.io import fits

from memory_support import resident_pages
from spxquery.drizzle3d import vmhints
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.io import load_cube
from spxquery.drizzle3d.pipeline import drizzle, drizzle_detector
from spxquery.drizzle3d.simulate import centroid_offsets, emission_line_centre, normalised_residuals, truth_cube
from spxquery.drizzle3d.simulate.field import default_sky, load_truth, simulate_field
from spxquery.drizzle3d.simulate.sky import gnomonic_inverse
from spxquery.drizzle3d.spectral import build_z_grid

pytestmark = pytest.mark.slow

RA0, DEC0 = 150.0, 2.0
N_POINTINGS = 16
ZODI_TRUE = 1.1
#: Flags excluded in the science runs (the config default stays [], as in the spxquery 0.4.1 API).
EXCLUDE = ["TRANSIENT", "SUR_ERROR", "NONFUNC", "MISSING_DATA", "HOT", "COLD", "NONLINEAR", "PERSIST", "PHANMISS"]


def _sky():
    """The simulator's default sky with a large, bright extended source (so that its
    surface brightness is measured at high S/N and hardly changed by the drizzle kernel)."""
    sky = default_sky(RA0, DEC0, (3,))
    ext = sky.extended_sources[0]
    # 3.5-4 arcmin from every point source (so it does not disturb their centroids), off the empty SW corner
    ext.ra, ext.dec = (float(v) for v in gnomonic_inverse(4.0 / 60.0, -5.0 / 60.0, RA0, DEC0))
    ext.sigma_major_arcsec, ext.sigma_minor_arcsec = 45.0, 35.0
    ext.spectrum.continuum_amp = 5.0
    for line in ext.spectrum.lines:
        # FWHM ~2.4 bins: with 16 pointings a sky position gets ~1 input sample per native bin,
        # and the default narrow line (FWHM ~1.2 bins) is then centred only to ~0.3 bins by
        # sampling alone (pure numpy sampling+binning model, no reader or engine involved).
        line.amplitude = 10.0
        line.sigma_um = line.centre_um / 40.0
    return sky


@pytest.fixture(scope="module", params=["qr2", "qr3"])
def field(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"field_{request.param}")
    info = simulate_field(
        root, RA0, DEC0, detectors=(3,), n_pointings=N_POINTINGS, release=request.param, sky=_sky(),
        zodi_scale_true=ZODI_TRUE, psf_size=21, psf_zones=1,
    )
    cfg = Drizzle3DConfig(
        center_ra=RA0, center_dec=DEC0, width=12.0, height=12.0, detector=3, exclude_flags=EXCLUDE,
        output_dir=root / "out", progress=False,
    )
    wcs = build_output_wcs(cfg)
    out = drizzle_detector(info.paths, cfg, 3, wcs)
    sky, _ = load_truth(root)
    cube = load_cube(out)
    zgrid = build_z_grid(3, cfg.z_oversample, cfg.z_lambda_edges)
    truth = truth_cube(sky, wcs, zgrid, shape=cube["sci"].shape[1:])
    return {"info": info, "cfg": cfg, "wcs": wcs, "out": out, "cube": cube, "sky": sky, "truth": truth,
            "zgrid": zgrid, "release": request.param, "root": root}


def test_frames_used_and_layout(field):
    h = field["cube"]["header"]
    assert h["N_INPUTS"] == N_POINTINGS and h["N_REJECT"] == 0
    with fits.open(field["info"].paths[0]) as hdul:
        assert isinstance(hdul["FLAGS"], fits.CompImageHDU) == (field["release"] == "qr3")
        assert hdul["IMAGE"].data.shape == (2040, 2040)
    scales = [h[f"ZSC{i:05d}"] for i in range(1, N_POINTINGS + 1)]
    assert np.allclose(scales, ZODI_TRUE, rtol=0.02), scales
    wl = field["cube"]["wavelength"]
    assert wl["N_INPUT_SC"].sum() > 0 and wl["N_INPUT_SC"].max() <= N_POINTINGS


def test_point_source_astrometry(field):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        white = np.nanmean(field["cube"]["sci"], axis=0)
    offs = centroid_offsets(white, field["wcs"], field["sky"])
    assert np.isfinite(offs).all() and len(offs) == 5
    bias = np.mean(offs, axis=0)
    assert np.hypot(*bias) < 0.05, (bias, offs)
    assert np.max(np.hypot(offs[:, 0], offs[:, 1])) < 0.15, offs


def _ext_box(field, half):
    ext = field["sky"].extended_sources[0]
    ex, ey = (int(round(float(v[0]))) for v in field["wcs"].wcs_world2pix([ext.ra], [ext.dec], 0))
    return ext, (slice(None), slice(ey - half, ey + half + 1), slice(ex - half, ex + half + 1))


def test_extended_source_continuum(field):
    ext, box = _ext_box(field, 4)
    z = field["zgrid"]
    line = ext.spectrum.lines[0]
    cont = np.abs(z.centers - line.centre_um) > 4 * line.sigma_um + z.widths
    # planes covered at this position (the band-end planes may see no frame here)
    covered = np.all(np.isfinite(field["cube"]["sci"][box]), axis=(1, 2))
    use = cont & covered
    assert use.sum() >= 4, use
    sci = field["cube"]["sci"][box][use]
    tru = field["truth"][box][use]
    ratio = sci.sum() / tru.sum()
    assert ratio == pytest.approx(1.0, abs=0.01), ratio


def test_emission_line_centre(field):
    ext, box = _ext_box(field, 2)
    z = field["zgrid"]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec = np.nanmean(field["cube"]["sci"][box], axis=(1, 2))
    line = ext.spectrum.lines[0]
    win = (0.9 * line.centre_um, 1.1 * line.centre_um)
    centre = emission_line_centre(spec, z.centers, window=win)
    width = np.interp(line.centre_um, z.centers, z.widths)
    assert abs(centre - line.centre_um) < 0.2 * width, (centre, line.centre_um, width)


def test_noise_on_empty_sky(field):
    truth = field["truth"]
    cube = field["cube"]
    empty = np.isfinite(cube["sci"]) & (np.abs(truth) < 1e-4)
    assert empty.sum() > 10000
    nr = normalised_residuals(cube["sci"], cube["variance"], truth, empty)
    assert np.std(nr) == pytest.approx(1.0, abs=0.1)
    assert abs(np.mean(nr)) < 0.1


def test_broken_and_foreign_files_skipped(field, tmp_path, caplog):
    good = field["info"].paths[:3]
    trunc = tmp_path / "truncated.fits"
    data = good[0].read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    text = tmp_path / "readme.fits"
    text.write_text("not a fits file\n" * 300)
    noflags = tmp_path / "noflags.fits"
    with fits.open(good[1]) as hdul:
        fits.HDUList([h.copy() for h in hdul if h.name != "FLAGS"]).writeto(noflags)
    foreign = tmp_path / "foreign.fits"
    shutil.copy(good[2], foreign)
    with fits.open(foreign, mode="update") as hdul:
        hdul["IMAGE"].header["DETECTOR"] = 4
    cfg = field["cfg"].replace(output_dir=tmp_path / "out")
    paths = [trunc, good[0], text, noflags, good[1], foreign, good[2]]
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.pipeline"):
        out = drizzle_detector(paths, cfg, 3, field["wcs"])
    h = load_cube(out)["header"]
    assert h["N_REJECT"] == 4 and h["N_INPUTS"] == 3
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for p, reason in [(trunc, "truncated"), (text, "not a FITS file"), (noflags, "missing extension FLAGS"),
                      (foreign, "detector D4")]:
        hits = [m for m in lines if str(p) in m]
        assert len(hits) == 1 and reason in hits[0], (p.name, lines)
    assert [h[f"INF{i:05d}"] for i in range(1, 4)] == [p.name for p in good]


def test_existing_output_raises_before_work(field, tmp_path):
    cfg = field["cfg"].replace(output_dir=tmp_path)
    (tmp_path / "drizzle_D3.fits").write_bytes(b"old")
    with pytest.raises(FileExistsError, match="drizzle_D3.fits"):
        drizzle_detector([tmp_path / "does_not_exist.fits"], cfg, 3, field["wcs"])
    # drizzle() refuses before any query (no TAP service is reachable here)
    with pytest.raises(FileExistsError, match="drizzle_D3.fits"):
        drizzle(cfg.replace(tap_url="http://127.0.0.1:9/tap"))
    assert (tmp_path / "drizzle_D3.fits").read_bytes() == b"old"


def test_no_contribution_returns_none(field, tmp_path, caplog):
    cfg = field["cfg"].replace(output_dir=tmp_path, center_ra=RA0 + 30.0)
    with caplog.at_level(logging.WARNING, logger="spxquery.drizzle3d.pipeline"):
        assert drizzle_detector(field["info"].paths[:2], cfg, 3, build_output_wcs(cfg)) is None
    assert "no frame contributed" in caplog.text
    assert not (tmp_path / "drizzle_D3.fits").exists()


def test_read_ahead_keeps_order_within_any_budget(field):
    """Regression: with a budget smaller than one strip the reader thread and the kernel once
    waited for each other forever. Every budget gives the same items in file order."""
    import threading

    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.readahead import ReadAhead

    config = field["cfg"]
    grid = OutputGrid.for_detector(config, 3)
    paths = list(field["info"].paths)[:3] + [field["root"] / "missing.fits"]
    runs = []
    for budget in (1, 10**6, 10**10):
        out = []
        done = threading.Event()

        def consume(out=out, budget=budget, done=done):
            for item in ReadAhead(paths, config, grid, budget_bytes=budget):
                out.append((item.path.name, item.kind))
            done.set()

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        assert done.wait(60), f"read-ahead with a {budget}-byte budget did not finish"
        runs.append(out)
    assert runs[0] == runs[1] == runs[2]
    kinds = [k for _, k in runs[0]]
    assert kinds.count("frame") == kinds.count("end") == 3 and kinds[-1] == "reject"


def test_reader_ahead_when_a_strip_waits_or_nothing_is_left_to_read(field):
    """ReadAhead.ahead(): False while the caller holds a strip and the reader is still at work
    (here: held back by a 1-byte budget, so deterministic), True once the reader has handed over
    a strip the caller has not taken, and once it has nothing left to prepare (the frame loop
    then gives the kernel the pool)."""
    import time

    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.readahead import ReadAhead

    config = field["cfg"]
    grid = OutputGrid.for_detector(config, 3)
    reader = ReadAhead(list(field["info"].paths)[:2], config, grid, budget_bytes=1)

    def settled() -> bool:
        deadline = time.monotonic() + 30
        while not reader.ahead() and time.monotonic() < deadline:
            time.sleep(0.001)
        return reader.ahead()

    kinds, seen = [], []
    for item in reader:
        kinds.append(item.kind)
        if kinds == ["frame", "strip"]:  # the first strip: the reader waits for its bytes to leave the budget
            time.sleep(0.2)
            seen.append(("first strip", reader.ahead()))
        elif item.kind == "frame" and kinds.count("frame") == 2:  # the next strip follows the first's release
            seen.append(("second frame", settled()))
        elif item.kind == "end" and kinds.count("end") == 2:  # nothing left to prepare
            seen.append(("last end", settled()))
    assert kinds == ["frame", "strip", "end"] * 2
    assert seen == [("first strip", False), ("second frame", True), ("last end", True)]


def _wide_cube(config):
    """A cube of a 60' D3 grid: each float64 accumulator 46 MB, beyond the C allocator's heap (fresh
    memory, no page mapped until touched)."""
    from spxquery.drizzle3d.accumulate import DrizzleCube
    from spxquery.drizzle3d.grid import OutputGrid

    config = config.replace(width=60.0, height=60.0)
    grid = OutputGrid.for_detector(config, 3)
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, config, 3)
    assert cube.flux_weighted.nbytes > 40 << 20
    return config, grid, cube


def _pages(a):
    return -(-a.nbytes // mmap.PAGESIZE)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap, madvise")
def test_populate_maps_the_accumulators_without_changing_them(field):
    """``DrizzleCube.populate``: every page of the accumulators mapped (writable: no zero page left
    for the engine's first read, then a copy-on-write fault per page), values unchanged."""
    _, _, cube = _wide_cube(field["cfg"])
    floats = (cube.flux_weighted, cube.weight_total, cube.var_accum)
    assert all(resident_pages(a) < _pages(a) // 2 for a in floats)  # fresh: not mapped yet
    cube.weight_total[3, 100:110, 200:300] = 2.5
    cube.or_mask[-1, -1, -5:] = 7
    if not vmhints.populate(np.zeros(1 << 20)):
        pytest.skip("madvise(MADV_POPULATE_WRITE) refused (kernel before 5.14?)")
    cube.populate()
    assert all(resident_pages(a) >= _pages(a) - 1 for a in floats)  # (its first page may be shared)
    assert np.count_nonzero(cube.weight_total) == 1000 and np.all(cube.weight_total[3, 100:110, 200:300] == 2.5)
    assert np.count_nonzero(cube.or_mask) == 5 and not cube.flux_weighted.any()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/pagemap, madvise")
def test_the_frame_loop_populates_the_accumulators_before_its_first_frame(field, tmp_path):
    """Regression (issue 23, eighth part): the frame loop maps the accumulators' pages while the
    reader thread prepares the first frame, not the engine page by page (each page read first as
    the zero page, then copied on write, with a TLB shootdown of the other CPU). Here no frame is
    usable, so any mapped page is the populate's."""
    from spxquery.drizzle3d.pipeline import drizzle_frames

    if not vmhints.populate(np.zeros(1 << 20)):
        pytest.skip("madvise(MADV_POPULATE_WRITE) refused (kernel before 5.14?)")
    config, grid, cube = _wide_cube(field["cfg"])
    text = tmp_path / "readme.fits"
    text.write_text("not a fits file\n" * 300)
    floats = (cube.flux_weighted, cube.weight_total, cube.var_accum)
    assert all(resident_pages(a) < _pages(a) // 2 for a in floats)
    outcomes = drizzle_frames([text], config, grid, cube, report=False)
    assert [p for p, _ in outcomes["reject"]] == [text]
    assert all(resident_pages(a) >= _pages(a) - 1 for a in floats)
    assert not any(a.any() for a in floats)


def test_read_ahead_started_early_hands_over_the_same_items(field, tmp_path):
    """``ReadAhead.start``: the reader thread runs before the caller iterates (twice: no second
    thread); the items are those of a reader started by iterating. A reader started and closed
    without iterating stops its thread."""
    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.readahead import ReadAhead

    config = field["cfg"]
    grid = OutputGrid.for_detector(config, 3)
    paths = list(field["info"].paths)[:2] + [tmp_path / "missing.fits"]
    plain = [(i.path.name, i.kind) for i in ReadAhead(paths, config, grid)]
    early = ReadAhead(paths, config, grid)
    early.start()
    early.start()
    assert [(i.path.name, i.kind) for i in early] == plain
    assert [k for _, k in plain].count("frame") == 2 and plain[-1][1] == "reject"
    dropped = ReadAhead(paths, config, grid, budget_bytes=1)
    dropped.start()
    dropped.close()
    assert not dropped._thread.is_alive()


def test_loop_kernel_threads_one_while_the_frame_side_sets_the_pace():
    """The frame loop's kernel runs on one thread for a small strip while the reader is preparing
    the next (the reader has the other core), on the pool once the reader is ahead or for large strips."""
    from spxquery.drizzle3d.pipeline import KERNEL_ALONE_MAX_PIXELS, KERNEL_POOL_MIN_PIXELS, _loop_kernel_threads

    assert KERNEL_POOL_MIN_PIXELS < KERNEL_ALONE_MAX_PIXELS
    assert _loop_kernel_threads(KERNEL_ALONE_MAX_PIXELS, reader_ahead=False) == 1
    assert _loop_kernel_threads(KERNEL_ALONE_MAX_PIXELS, reader_ahead=True) == 0
    assert _loop_kernel_threads(KERNEL_ALONE_MAX_PIXELS + 1, reader_ahead=False) == 0
    assert _loop_kernel_threads(KERNEL_POOL_MIN_PIXELS - 1, reader_ahead=True) == 1


def test_frames_prepared_two_at_a_time_are_handed_over_like_one_at_a_time(field, monkeypatch):
    """ReadAhead with two workers (local files: pipeline.frames_in_flight) cuts small crops into
    their strips in the workers; the items, their order, the strips' bytes and the report of a
    frame whose strip fails are those of one worker."""
    from spxquery.drizzle3d import frames as frames_mod
    from spxquery.drizzle3d.grid import OutputGrid
    from spxquery.drizzle3d.pipeline import LOCAL_FRAMES_IN_FLIGHT, frames_in_flight
    from spxquery.drizzle3d.readahead import READY_STRIP_PIXELS, ReadAhead

    config = field["cfg"]
    grid = OutputGrid.for_detector(config, 3)
    paths = list(field["info"].paths)[:4] + [field["root"] / "missing.fits"]
    assert frames_in_flight(paths, config) == min(LOCAL_FRAMES_IN_FLIGHT, os.cpu_count() or 1) == 1
    broken = paths[1].name
    real_corner_map = frames_mod.corner_map

    def failing_corner_map(input_wcs, *args, **kwargs):  # the strip of one frame fails
        if failing_corner_map.name in str(getattr(input_wcs, "_test_name", "")):
            raise RuntimeError("corner map failed")
        return real_corner_map(input_wcs, *args, **kwargs)

    failing_corner_map.name = broken
    real_prepare = frames_mod.prepare_frame

    def named_prepare(path, *args, **kwargs):
        frame = real_prepare(path, *args, **kwargs)
        if frame is not None:
            frame.wcs._test_name = frame.name
        return frame

    monkeypatch.setattr(frames_mod, "corner_map", failing_corner_map)
    monkeypatch.setattr("spxquery.drizzle3d.readahead.prepare_frame", named_prepare)
    runs = []
    for workers, ready in ((1, 0), (1, READY_STRIP_PIXELS), (2, READY_STRIP_PIXELS)):  # 0: strips when handed over
        monkeypatch.setattr("spxquery.drizzle3d.readahead.READY_STRIP_PIXELS", ready)
        out = []
        for item in ReadAhead(paths, config, grid, workers=workers):
            payload = b"".join(a.tobytes() for a in item.payload if a is not None) if item.kind == "strip" \
                else item.payload if item.kind in ("reject", "broken") else None
            out.append((item.path.name, item.kind, payload))
        runs.append(out)
    assert runs[0] == runs[1] == runs[2]
    kinds = [(name, kind) for name, kind, _ in runs[0]]
    assert (broken, "broken") in kinds and kinds[-1] == ("missing.fits", "reject")
    assert sum(k == "strip" for _, k in kinds) >= 3
    assert all(f.n_pixels <= READY_STRIP_PIXELS for f in (real_prepare(p, config, grid) for p in paths[:2]) if f)
