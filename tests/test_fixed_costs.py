"""The fixed costs of a run (issue 23): the run's first frame handed over in strips of rows, so
that the kernel starts sooner (not a bit of the cube changes); no tqdm bar built off a terminal."""

import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import progress, readahead
from spxquery.drizzle3d.accumulate import DrizzleCube, drizzle_frame
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.frames import Strip, prepare_frame
from spxquery.drizzle3d.grid import OutputGrid, build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector
from spxquery.drizzle3d.readahead import ReadAhead
from spxquery.drizzle3d.simulate.field import simulate_field

RA0, DEC0 = 150.0, 2.0


@pytest.fixture(scope="module")
def two_frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("first_frame")
    info = simulate_field(root, RA0, DEC0, detectors=(3,), n_pointings=2, release="qr2", psf_size=21, psf_zones=1)
    return root, list(info.paths)


def _cfg(root, **kw):
    kw = {"center_ra": RA0, "center_dec": DEC0, "width": 8.0, "height": 8.0, "detector": 3,
          "output_dir": root / "out", "progress": False, "overwrite": True, **kw}
    return Drizzle3DConfig(**kw)


def _cut(strip: Strip, a: int, b: int) -> Strip:
    """Rows ``a:b`` of a strip (its corner map: rows ``a:b+1``)."""
    return Strip(strip.corners_x[a:b + 1], strip.corners_y[a:b + 1],
                 *(None if x is None else x[a:b] for x in strip[2:]))


def _accumulated(cfg, grid, strips, threads):
    cube = DrizzleCube.create(grid.wcs, grid.pixscale, grid.zgrid, cfg, 3, grid.plane_detector)
    for s in strips:
        drizzle_frame(cube, *s, threads=threads, record=False)
    return {k: v.tobytes() for k, v in cube.accumulators().items()}


@pytest.mark.parametrize("covariance", [False, True])
def test_strips_of_a_frame_in_row_order_give_the_cube_bit_for_bit(two_frames, covariance):
    """One frame drizzled as one strip or cut into strips of rows (in row order) at any rows, on one
    thread or the pool: every accumulator (the covariance cross terms included) bit for bit."""
    root, paths = two_frames
    cfg = _cfg(root, exclude_flags=["HOT", "NONFUNC"], covariance=covariance, width=6.0, height=6.0)
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    (whole,) = prepare_frame(paths[0], cfg, grid).strips()
    ny = whole.image.shape[0]
    rng = np.random.default_rng(23)
    cuts = [[0, ny], [0, 1, ny], [0, ny - 1, ny], [0, ny // 2, ny], list(range(0, ny, 37)) + [ny],
            [0, *sorted(rng.choice(np.arange(1, ny), 6, replace=False)), ny]]
    reference = _accumulated(cfg, grid, [whole], threads=1)
    assert np.frombuffer(reference["weight_total"]).any()
    for threads in (1, 0):
        for c in cuts:
            got = _accumulated(cfg, grid, [_cut(whole, a, b) for a, b in zip(c, c[1:])], threads)
            assert got == reference, (threads, c)


def _items(paths, cfg, grid, **kw):
    out = []
    for item in ReadAhead(paths, cfg, grid, **kw):
        payload = [None if a is None else a.copy() for a in item.payload] if item.kind == "strip" else None
        out.append((item.path.name, item.kind, payload))
    return out


def test_first_frame_comes_in_strips_of_the_same_pixels(two_frames, monkeypatch):
    """The run's first frame is handed over in several strips (row order), the next as one; the
    strips hold the pixels of the one strip a reader without the rule hands over."""
    root, paths = two_frames
    cfg = _cfg(root, width=20.0, height=20.0)
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    x0, x1, y0, y1 = prepare_frame(paths[0], cfg, grid).crop
    assert (x1 - x0) * (y1 - y0) > readahead.FIRST_FRAME_STRIP_PIXELS
    rows = readahead.FIRST_FRAME_STRIP_PIXELS // (x1 - x0)
    items = _items(paths, cfg, grid)
    monkeypatch.setattr(readahead, "FIRST_FRAME_STRIP_PIXELS", 2**40)
    plain = _items(paths, cfg, grid)
    kinds = [(name, kind) for name, kind, _ in items]
    first, second = paths[0].name, paths[1].name
    assert kinds.count((first, "strip")) == -(-(y1 - y0) // rows) >= 2
    assert kinds.count((second, "strip")) == 1
    assert [k for k in kinds if k[1] != "strip"] == [(first, "frame"), (first, "end"), (second, "frame"),
                                                      (second, "end")]
    assert [(n, k) for n, k, _ in plain] == [(first, "frame"), (first, "strip"), (first, "end"), (second, "frame"),
                                            (second, "strip"), (second, "end")]
    strips = [p for n, k, p in items if (n, k) == (first, "strip")]
    (one,) = [p for n, k, p in plain if (n, k) == (first, "strip")]
    for i, name in enumerate(Strip._fields):
        if name.startswith("corners"):
            joined = np.concatenate([s[i][:-1] for s in strips] + [strips[-1][i][-1:]])
        else:
            joined = None if one[i] is None else np.concatenate([s[i] for s in strips])
        np.testing.assert_array_equal(joined, one[i], name)
    assert [p for n, k, p in items if n == second and k == "strip"][0][2].tobytes() == \
        [p for n, k, p in plain if n == second and k == "strip"][0][2].tobytes()


def test_cube_file_is_the_same_whatever_the_first_frame_strips(two_frames, monkeypatch):
    """drizzle_detector end to end: the first frame in strips of one row, of the default size, or
    whole, writes the same image extensions (SCI, VARIANCE, masks, counts), bit for bit."""
    root, paths = two_frames
    cubes = []
    for first in (2**40, readahead.FIRST_FRAME_STRIP_PIXELS, 200):
        monkeypatch.setattr(readahead, "FIRST_FRAME_STRIP_PIXELS", first)
        cfg = _cfg(root, width=20.0, height=20.0, output_dir=root / f"out{first}")  # crop: 2 strips
        out = drizzle_detector(paths, cfg, 3, build_output_wcs(cfg))
        with fits.open(out) as hdul:
            cubes.append({h.name: h.data.tobytes() for h in hdul if h.is_image and h.data is not None})
    assert len(cubes[0]) >= 5 and cubes[0] == cubes[1] == cubes[2]


def test_hidden_bars_count_without_tqdm(tmp_path):
    """Off a terminal a bar is a HiddenBar (counts, draws nothing); a fresh process's run then builds
    no tqdm, hence no multiprocessing lock (~2 ms of imports and a semaphore per process)."""
    bar = progress.progress_bar(10, "x", enabled=True)  # pytest captures stderr: not watched
    assert isinstance(bar, progress.HiddenBar) and bar.disable
    with bar:
        bar.update(3)
        bar.update()
        bar.total = (bar.total or 0) + 5
        bar.set_postfix_str("ok")
        bar.refresh()
    assert (bar.n, bar.total) == (4, 15)
    code = ("import sys; from spxquery.drizzle3d.progress import byte_bar, progress_bar\n"
            "with progress_bar(3, 'f', 'frame', True) as b, byte_bar('r', True) as r: b.update(1); r.update(9)\n"
            "print('multiprocessing.synchronize' in sys.modules, type(b).__name__, r.n)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "HiddenBar", "9"]


def test_run_setup_builds_no_pandas_table():
    """The grid of a native run and the frames' band check read the channel table's columns: no
    DataFrame is built (pandas' first operations cost ~3 ms of a fresh process's setup)."""
    code = ("from spxquery.drizzle3d import spectral\n"
            "from spxquery.drizzle3d.config import Drizzle3DConfig\n"
            "from spxquery.drizzle3d.grid import OutputGrid\n"
            "cfg = Drizzle3DConfig(center_ra=150, center_dec=2, width=6, height=6, detector=3)\n"
            "g = OutputGrid.for_detector(cfg, 3)\n"
            "print(spectral.channel_band(3), g.zgrid.n_z, spectral._read_spectral_table.cache_info().currsize)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-2:] == ["17", "0"]
