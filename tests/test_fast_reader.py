"""The Rust reader of plain images (``_core.read_plain_rows``, the local-file fast path of
:mod:`spxquery.drizzle3d.pixels`) gives the same bits as the ByteSource path, on the
simulator's full frames (QR2 plain FLAGS, QR3 RICE FLAGS) and IRSA cutouts, from one or
several threads; broken files are clear errors naming the extension and the row."""

import dataclasses
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d import _core, pixels
from spxquery.drizzle3d.access import ByteSource, LocalFile, open_source
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.fitsstructure import read_structure
from spxquery.drizzle3d.frames import FrameError, prepare_frame
from spxquery.drizzle3d.framesample import sample_rows
from spxquery.drizzle3d.grid import OutputGrid
from spxquery.drizzle3d.l2layout import PlainImage, l2_layout
from spxquery.drizzle3d.pixels import PixelError, read_flags, read_image
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

RA0, DEC0 = 150.0, 2.0


class ByteSourceOnly(ByteSource):
    """A local file seen only through :meth:`ByteSource.read_ranges` (what an object store
    offers): the reference the fast path is compared with."""

    def __init__(self, path):
        self._inner = LocalFile(path)
        self.name, self.size = self._inner.name, self._inner.size

    def read_ranges(self, ranges):
        return self._inner.read_ranges(ranges)

    def close(self):
        self._inner.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("fastread")
    meta = make_frame_meta(3, RA0, DEC0, 30.0, "2025W18_2B_0001_1", release="qr2", zodi_scale_true=1.2)
    arr = render_frame(meta, SkyModel(point_sources=[PointSource(RA0 + 0.02, DEC0 - 0.01, Spectrum(20.0))]))
    arr["image"][5, 7] = np.nan  # a NaN pixel must stay the same NaN
    qr2 = d / "level2_2025W18_2B_0001_1D3_spx_l2b-v12-2025-164.fits"
    out = {"qr2": write_l2_file(build_l2_hdulist(meta, arr), qr2)}
    meta3 = dataclasses.replace(meta, release="qr3", version="l2b-v20-2025-247")
    out["qr3"] = write_l2_file(build_l2_hdulist(meta3, arr), d / "level2_2025W18_2B_0001_1D3_spx_l2b-v20-2025-247.fits")
    with fits.open(out["qr3"]) as hdul:
        out["cutout"] = write_l2_file(make_cutout(hdul, RA0 + 0.1, DEC0 + 0.05, 0.15), d / "cutout_qr3.fits")
    with fits.open(out["qr2"]) as hdul:
        out["cutout_qr2"] = write_l2_file(make_cutout(hdul, RA0 - 0.1, DEC0, 0.15), d / "cutout_qr2.fits")
    return out


def _boxes(shape):
    ny, nx = shape
    return [(range(0, ny), 0, nx), (range(3, ny - 2), 1, nx // 3), (range(ny // 2, ny // 2 + 7), nx // 2, nx - 1),
            (sample_rows(shape), 0, nx), (range(1, ny, 5), 2, max(3, nx // 4)), (range(ny - 1, ny), nx - 1, nx)]


@pytest.mark.parametrize("which", ["qr2", "qr3", "cutout", "cutout_qr2"])
def test_fast_reader_equals_the_byte_source_path(files, which):
    with open_source(files[which]) as fast, ByteSourceOnly(files[which]) as slow:
        assert isinstance(fast, LocalFile)
        layout = l2_layout(read_structure(fast))
        for rows, x0, x1 in _boxes(layout.shape):
            for part in (layout.image, layout.variance, layout.zodi):
                a, b = read_image(fast, part, rows, x0, x1), read_image(slow, part, rows, x0, x1)
                assert a.dtype == b.dtype == np.float64 and a.flags.c_contiguous and a.flags.writeable
                assert a.tobytes() == b.tobytes(), (part.name, rows, x0, x1)
            fa, fb = read_flags(fast, layout.flags, rows, x0, x1), read_flags(slow, layout.flags, rows, x0, x1)
            assert fa.dtype == fb.dtype == np.uint32 and np.array_equal(fa, fb)
        assert isinstance(layout.flags, PlainImage) == (which in ("qr2", "cutout_qr2"))


@pytest.mark.parametrize("which", ["qr2", "qr3", "cutout"])
def test_zodi_subtracted_while_read_equals_the_numpy_subtraction(files, which):
    """``read_image_minus`` (the Rust reader's one pass, and the path of other sources) gives the
    bits of reading IMAGE and ZODI and ``ZodiScale.subtract`` (NaN pixels included)."""
    from spxquery.drizzle3d.zodi import ZodiScale

    with open_source(files[which]) as fast, ByteSourceOnly(files[which]) as slow:
        layout = l2_layout(read_structure(fast))
        for scale in (1.2, -0.37, 0.8141592653589793):
            for rows, x0, x1 in _boxes(layout.shape):
                want = read_image(fast, layout.image, rows, x0, x1)
                ZodiScale(scale, "sample").subtract(want, read_image(fast, layout.zodi, rows, x0, x1), consume=True)
                for src in (fast, slow):
                    got = pixels.read_image_minus(src, layout.image, layout.zodi, scale, rows, x0, x1)
                    assert got.dtype == np.float64 and got.flags.c_contiguous and got.flags.writeable
                    assert got.tobytes() == want.tobytes(), (which, scale, rows, x0, x1)
        assert np.isnan(pixels.read_image_minus(fast, layout.image, layout.zodi, 1.0, range(5, 6), 7, 8)).all() \
            == (which != "cutout")
        with pytest.raises(PixelError, match="outside"):
            pixels.read_image_minus(fast, layout.image, layout.zodi, 1.0, range(0, 2), 0, layout.shape[1] + 1)
        with pytest.raises(ValueError, match="go together"):
            _core.read_plain_rows(fd=fast.fileno(), size=fast.size, name="IMAGE", offset=layout.image.offset,
                                  ny=layout.shape[0], nx=layout.shape[1], bitpix=-32, bzero=0, start=0, step=1,
                                  count=1, x0=0, x1=4, minus_name="ZODI", minus_scale=1.0)


def _strip_bytes(path, cfg, strip_pixels):
    grid = OutputGrid.for_detector(cfg, 3)
    frame = prepare_frame(path, cfg, grid, strip_pixels=strip_pixels)
    return frame.zodi, [tuple(None if a is None else a.tobytes() for a in s) for s in frame.strips()]


@pytest.mark.parametrize("strip_pixels", [1000, 2**62])  # several strips, read by strips(); the crop read up front
@pytest.mark.parametrize("which", ["qr2", "qr3", "cutout_qr2"])
def test_prepared_frames_are_bit_identical_without_the_fast_path(files, which, strip_pixels, monkeypatch):
    cfg = Drizzle3DConfig(center_ra=RA0 - 0.05, center_dec=DEC0, width=8.0, height=6.0, detector=3, progress=False,
                          subtract_zodi=True)
    zodi_fast, fast = _strip_bytes(files[which], cfg, strip_pixels)
    monkeypatch.setattr(pixels, "_PREAD", None)
    zodi_slow, slow = _strip_bytes(files[which], cfg, strip_pixels)
    assert (len(fast) > 1) == (strip_pixels == 1000) and fast == slow
    assert zodi_fast == zodi_slow and zodi_fast.scale is not None


def test_reads_from_threads_equal_one_read(files):
    with open_source(files["qr2"]) as src:
        layout = l2_layout(read_structure(src))
        boxes = _boxes(layout.shape) * 4
        one = [read_image(src, layout.image, *b).tobytes() for b in boxes]
        with ThreadPoolExecutor(4) as pool:
            many = list(pool.map(lambda b: read_image(src, layout.image, *b).tobytes(), boxes))
    assert many == one


def test_file_truncated_while_open_names_the_extension_and_row(files, tmp_path):
    p = tmp_path / "cut.fits"
    shutil.copy(files["qr2"], p)
    with open_source(p) as src:
        layout = l2_layout(read_structure(src))
        part = layout.variance
        os.truncate(p, part.offset + 100 * part.row_bytes + 17)  # VARIANCE ends inside row 100
        rows = range(90, 120)
        with pytest.raises(PixelError, match="VARIANCE: row 100: the file ended"):
            read_image(src, part, rows, 0, 50)
        with pytest.raises(PixelError, match="VARIANCE: row 100: the file ended"):
            read_image(src, part, rows, 0, part.shape[1])  # whole rows, several per read
        src.size = os.path.getsize(p)  # a source opened after the cut knows the size: refused before reading
        with pytest.raises(PixelError, match="VARIANCE: row 119 lies past the end of the file.*truncated file"):
            read_image(src, part, rows, 0, 50)


def test_truncated_frame_is_a_frame_error_naming_the_file(files, tmp_path):
    p = tmp_path / "short_rows.fits"
    data = files["qr2"].read_bytes()
    with open_source(files["qr2"]) as src:
        zodi = l2_layout(read_structure(src)).zodi
    p.write_bytes(data[:zodi.offset + 3 * zodi.row_bytes])  # ZODI's rows stop at row 3
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=6.0, height=6.0, detector=3, progress=False,
                          subtract_zodi=True)
    with pytest.raises(FrameError, match="short_rows.fits: .*truncated"):
        prepare_frame(p, cfg, OutputGrid.for_detector(cfg, 3))


def test_the_rust_reader_refuses_bad_arguments(files):
    with open_source(files["qr2"]) as src:
        part = l2_layout(read_structure(src)).image
        base = dict(fd=src.fileno(), size=src.size, name="IMAGE", offset=part.offset, ny=part.shape[0],
                    nx=part.shape[1], bitpix=-32, bzero=0, start=0, step=1, count=2, x0=0, x1=4)
        for change, why in [({"bitpix": 12}, "BITPIX = 12"), ({"bitpix": -16}, "BITPIX = -16"),
                            ({"x1": part.shape[1] + 1}, "outside"), ({"x0": 4}, "outside"), ({"step": 0}, "outside"),
                            ({"start": part.shape[0] - 1}, "outside"), ({"fd": -1}, "not open"),
                            ({"ny": 10**9, "start": 10**9 - 2}, "past the end"),  # refused before allocating
                            ({"count": 10**12}, "outside"),
                            ({"fd": 987654}, "cannot use file descriptor"),
                            ({"size": part.offset + 10}, "IMAGE: row 1 lies past the end")]:
            with pytest.raises(ValueError, match=why):
                _core.read_plain_rows(**{**base, **change})
        as_int = _core.read_plain_rows(**{**base, "bitpix": 32, "bzero": 2**31})  # the same bytes as integers
        raw = np.frombuffer(src.read(part.offset, 16), ">i4").astype(np.int64)
        assert np.array_equal(as_int[0], ((raw + 2**31) % 2**32).astype(np.uint32))
    with pytest.raises(Exception, match="read after close"):
        src.fileno()


def test_reads_into_given_arrays(files):
    """``out``: the same values written into the caller's array (returned), for both readers; an
    array of another shape, dtype or layout is refused naming the extension."""
    with open_source(files["qr2"]) as fast, ByteSourceOnly(files["qr2"]) as slow:
        layout = l2_layout(read_structure(fast))
        rows, nx = sample_rows(layout.shape), layout.shape[1]
        for src in (fast, slow):
            out = np.full((len(rows), nx), -1.0)
            got = read_image(src, layout.variance, rows, 0, nx, out=out)
            assert got is out and got.tobytes() == read_image(src, layout.variance, rows, 0, nx).tobytes()
        flags = np.zeros((len(rows), nx), np.uint32)
        assert read_flags(fast, layout.flags, rows, 0, nx, flags) is flags
        assert np.array_equal(flags, read_flags(slow, layout.flags, rows, 0, nx))
        part = layout.image
        base = dict(fd=fast.fileno(), size=fast.size, name="IMAGE", offset=part.offset, ny=part.shape[0],
                    nx=part.shape[1], bitpix=-32, bzero=0, start=0, step=1, count=2, x0=0, x1=4)
        for bad in (np.zeros((2, 5)), np.zeros((2, 4), np.float32), np.zeros((4, 2)).T, [[0.0] * 4] * 2):
            with pytest.raises(ValueError, match="IMAGE: out must be"):
                _core.read_plain_rows(**base, out=bad)


def test_a_frame_keeps_nothing_of_the_reused_sample(files):
    """The sample is read into arrays a thread reuses: a frame read whole from its sample (a small
    cutout) holds copies, unchanged when the next frame's sample is read."""
    cfg = Drizzle3DConfig(center_ra=RA0, center_dec=DEC0, width=60.0, height=60.0, detector=3, progress=False,
                          subtract_zodi=True)
    grid = OutputGrid.for_detector(cfg, 3)
    first = prepare_frame(files["cutout_qr2"], cfg, grid)
    before = (first.flags.copy(), *(a.copy() for a in first._pixels if a is not None))
    assert sample_rows(first.shape) == range(first.shape[0])  # the sample is the whole cutout
    assert first.crop == (0, first.shape[1], 0, first.shape[0])  # the crop is the whole sample
    other = prepare_frame(files["cutout"], cfg, grid)  # another cutout of the same shape: the same arrays
    assert other.shape == first.shape and not np.array_equal(other._pixels[0], before[1], equal_nan=True)
    after = (first.flags, *(a for a in first._pixels if a is not None))
    for a, b in zip(before, after):
        assert np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
