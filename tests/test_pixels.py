"""Pixels read by rows through the data-access layer equal astropy's, for every image layout;
broken compressed tiles are errors, never crashes."""

import numpy as np
import pytest
from astropy.io import fits

from spxquery.drizzle3d.access import open_source
from spxquery.drizzle3d.fitsstructure import read_structure
from spxquery.drizzle3d.l2layout import LayoutError, PlainImage, TiledImage, _plain_flags, _tiled_flags
from spxquery.drizzle3d.pixels import PixelError, read_flags, read_image

NY, NX = 23, 37


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """One file holding every FLAGS layout the reader supports, and the values written."""
    rng = np.random.default_rng(8)
    i32 = rng.integers(-(2**31), 2**31, (NY, NX), dtype=np.int64).astype(np.int32)
    u32 = i32.view(np.uint32)
    f64 = rng.normal(size=(NY, NX))
    i16 = rng.integers(-(2**15), 2**15, (NY, NX)).astype(np.int16)
    hdus = [
        fits.PrimaryHDU(),
        fits.ImageHDU(f64.astype(np.float32), name="F32"),
        fits.ImageHDU(f64, name="F64"),
        fits.ImageHDU(i32, name="I32"),
        fits.ImageHDU(u32, name="U32"),
        fits.ImageHDU(i16, name="I16"),
        fits.CompImageHDU(i32, name="RICE", compression_type="RICE_1", tile_shape=(1, NX)),
        fits.CompImageHDU(i32, name="RICE3", compression_type="RICE_1", tile_shape=(3, NX)),
        fits.CompImageHDU(u32, name="RICEU", compression_type="RICE_1", tile_shape=(1, NX)),
        fits.CompImageHDU(i32, name="GZIP", compression_type="GZIP_1", tile_shape=(2, NX)),
        fits.CompImageHDU(i16, name="RICE16", compression_type="RICE_1", tile_shape=(1, NX)),
    ]
    path = tmp_path_factory.mktemp("pix") / "layouts.fits"
    fits.HDUList(hdus).writeto(path)
    with open_source(path) as src:
        by_name = {h.name: h for h in read_structure(src)}
    truth = {"F32": f64.astype(np.float32), "F64": f64, "I32": u32, "U32": u32, "I16": i16, "RICE": u32,
             "RICE3": u32, "RICEU": u32, "GZIP": u32, "RICE16": i16}
    return path, by_name, truth


def _part(hdu):
    if hdu.is_compressed_image:
        return _tiled_flags(hdu)
    if hdu.bitpix < 0:
        return PlainImage(hdu.name, hdu.data_offset, hdu.shape, {-32: ">f4", -64: ">f8"}[hdu.bitpix])
    return _plain_flags(hdu)


BOXES = [(range(0, NY), 0, NX), (range(5, 17), 3, 30), (range(0, NY, 4), 0, NX), (range(2, 21, 3), 11, 12),
         (range(22, 23), 36, 37)]


@pytest.mark.parametrize("name", ["F32", "F64"])
def test_float_images(layouts, name):
    path, hdus, truth = layouts
    with open_source(path) as src:
        for rows, x0, x1 in BOXES:
            got = read_image(src, _part(hdus[name]), rows, x0, x1)
            assert got.dtype == np.float64
            np.testing.assert_array_equal(got, truth[name][rows.start:rows.stop:rows.step, x0:x1])


@pytest.mark.parametrize("name", ["I32", "U32", "I16", "RICE", "RICE3", "RICEU", "GZIP", "RICE16"])
def test_flags_in_every_layout(layouts, name):
    path, hdus, truth = layouts
    part = _part(hdus[name])
    assert isinstance(part, TiledImage) == name.startswith(("RICE", "GZIP"))
    expect = truth[name].astype(np.int64).astype(np.uint32)  # what flags.as_uint32 makes of the values
    with open_source(path) as src:
        for rows, x0, x1 in BOXES:
            got = read_flags(src, part, rows, x0, x1)
            assert got.dtype == np.uint32
            np.testing.assert_array_equal(got, expect[rows.start:rows.stop:rows.step, x0:x1])


def test_boxes_outside_the_image_are_refused(layouts):
    path, hdus, _ = layouts
    with open_source(path) as src:
        for rows, x0, x1 in [(range(0, NY + 1), 0, 5), (range(0, 3), 5, 5), (range(0, 3), 0, NX + 1)]:
            with pytest.raises(PixelError, match="outside"):
                read_flags(src, _part(hdus["RICE"]), rows, x0, x1)


def _corrupt(path, tmp_path, name, edit):
    """A copy of ``path`` with the bytes of HDU ``name``'s heap or table rows changed by ``edit``."""
    out = tmp_path / f"{name}-{edit.__name__}.fits"
    data = bytearray(path.read_bytes())
    with open_source(path) as src:
        hdu = {h.name: h for h in read_structure(src)}[name]
    edit(data, hdu)
    out.write_bytes(bytes(data))
    return out


def heap_noise(data, hdu):
    start = hdu.data_offset + hdu.shape[0] * hdu.shape[1]
    rng = np.random.default_rng(1)
    data[start:start + hdu.pcount] = rng.integers(0, 256, hdu.pcount, dtype=np.uint8).tobytes()


def heap_zeros(data, hdu):
    start = hdu.data_offset + hdu.shape[0] * hdu.shape[1]
    data[start:start + hdu.pcount] = bytes(hdu.pcount)


def descriptor_outside(data, hdu):
    data[hdu.data_offset + 4:hdu.data_offset + 8] = (10**9).to_bytes(4, "big")


def descriptor_negative(data, hdu):
    data[hdu.data_offset:hdu.data_offset + 4] = (2**32 - 5).to_bytes(4, "big")


@pytest.mark.parametrize("name,edit", [(n, e) for n in ("RICE", "GZIP")
                                       for e in (heap_noise, heap_zeros, descriptor_outside, descriptor_negative)
                                       if (n, e) != ("RICE", heap_zeros)])  # zero bytes are a valid RICE tile of zeros
def test_broken_tiles_are_errors(layouts, tmp_path, name, edit):
    path, _, _ = layouts
    bad = _corrupt(path, tmp_path, name, edit)
    with open_source(bad) as src:
        part = _part({h.name: h for h in read_structure(src)}[name])
        with pytest.raises(PixelError, match=name):
            read_flags(src, part, range(0, NY), 0, NX)


def test_unsupported_flag_layouts_are_refused(tmp_path):
    p = tmp_path / "f.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((4, 4), np.float32), name="FLAGS"),
                  fits.CompImageHDU(np.zeros((4, 4), np.int32), name="HC", compression_type="HCOMPRESS_1"),
                  fits.CompImageHDU(np.zeros((4, 4), np.int32), name="SQ", compression_type="RICE_1",
                                    tile_shape=(2, 2))]).writeto(p)
    with open_source(p) as src:
        hdus = {h.name: h for h in read_structure(src)}
    with pytest.raises(LayoutError, match="BITPIX = -32 .floating point.; SPHEREx FLAGS are integers"):
        _plain_flags(hdus["FLAGS"])
    with pytest.raises(LayoutError, match="HCOMPRESS_1.* is not supported"):
        _tiled_flags(hdus["HC"])
    with pytest.raises(LayoutError, match="only tiles of whole rows"):
        _tiled_flags(hdus["SQ"])
