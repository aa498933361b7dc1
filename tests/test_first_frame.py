"""The fixed costs of a run (issue 23): the first frame handed over in strips of rows, the
accumulators faulted in while the caller waits. Neither may change a bit of the cube."""

import mmap
import resource

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import readahead, vmhints
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
    cfg = _cfg(root, width=16.0, height=16.0)
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
    """drizzle_detector end to end: the first frame in strips of one row, of ~32k pixels, or whole,
    writes the same image extensions (SCI, VARIANCE, masks, counts), bit for bit."""
    root, paths = two_frames
    cubes = []
    for first in (2**40, readahead.FIRST_FRAME_STRIP_PIXELS, 200):
        monkeypatch.setattr(readahead, "FIRST_FRAME_STRIP_PIXELS", first)
        cfg = _cfg(root, width=16.0, height=16.0, output_dir=root / f"out{first}")  # crop > 32k pixels
        out = drizzle_detector(paths, cfg, 3, build_output_wcs(cfg))
        with fits.open(out) as hdul:
            cubes.append({h.name: h.data.tobytes() for h in hdul if h.is_image and h.data is not None})
    assert len(cubes[0]) >= 5 and cubes[0] == cubes[1] == cubes[2]


def test_populate_steps_fault_pages_in_without_changing_them():
    """Each step faults in at most a step of pages, stops at ``max_bytes``; contents stay zero and
    writing the populated pages afterwards takes no page fault."""
    # fresh private pages, as np.zeros of large arrays gets them (it may also reuse the heap's)
    maps = [mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS) for _ in range(2)]
    a, b = (np.frombuffer(m, dtype=np.uint8) for m in maps)
    done = list(vmhints.populate_steps([a, b], max_bytes=6 << 20, step_bytes=1 << 20))
    if not done:
        pytest.skip("madvise(MADV_POPULATE_WRITE) not available here")
    assert done == sorted(done) and done[-1] <= 6 << 20 and len(done) >= 6
    assert all(d2 - d1 <= 1 << 20 for d1, d2 in zip([0] + done, done))
    assert not a[:4096].any() and not b[-4096:].any()  # one page each (reading maps the zero page)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    a[4096:-4096:4096] = 1  # pages populated: no fault
    populated = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    b[(3 << 20):-4096:4096] = 1  # past max_bytes: first touch faults
    fresh = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    assert populated < 16 and fresh > 100
    assert np.count_nonzero(a) == 1022 and np.count_nonzero(b) == 255 and np.flatnonzero(b)[0] == 3 << 20
    del a, b
    for m in maps:
        m.close()


def test_waiting_steps_stop_at_the_first_strip(two_frames):
    """``while_waiting`` steps run on the caller's thread only before the first strip is taken."""
    root, paths = two_frames
    cfg = _cfg(root)
    grid = OutputGrid.for_detector(cfg, 3, build_output_wcs(cfg))
    seen = {"strips": 0, "steps_after": 0, "steps": 0}

    def steps():
        while True:
            seen["steps"] += 1
            seen["steps_after"] += seen["strips"] > 0
            yield seen["steps"]

    for item in ReadAhead(paths, cfg, grid, while_waiting=steps()):
        seen["strips"] += item.kind == "strip"
    assert seen["strips"] >= 2 and seen["steps"] >= 1 and seen["steps_after"] == 0
