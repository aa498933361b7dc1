"""FITS extensions as bytes (:mod:`.fitsbytes`) are astropy's bytes, and the bundled spectral table
read by the package's own reader is the table astropy reads."""

import io

import numpy as np
import pandas as pd
import pytest
from astropy.io import fits

from spxquery.drizzle3d import spectral
from spxquery.drizzle3d.fitsbytes import Column, bintable, image_cards, image_data, padding
from spxquery.drizzle3d.fitscards import CardText


def _astropy_extension(hdu) -> bytes:
    """The bytes astropy writes for ``hdu`` after an empty primary HDU."""
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    return buf.getvalue()[len(fits.PrimaryHDU().header.tostring()):]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.int32, np.uint32, np.int64])
@pytest.mark.parametrize("shape", [(3, 4, 5), (7,), (1, 2)])
def test_image_extension_bytes_are_astropys(dtype, shape):
    rng = np.random.default_rng(len(shape))
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    if info is None:
        a = rng.normal(size=shape).astype(dtype)
        a.flat[0] = np.nan
        a.flat[-1] = -np.inf
    else:
        a = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        a.flat[0], a.flat[-1] = info.min, info.max
    text = CardText()
    text.update(image_cards("SCI", dtype, shape))
    data = image_data(a)
    mine = text.text() + data.tobytes() + padding(data.nbytes)
    assert mine == _astropy_extension(fits.ImageHDU(a, name="SCI"))


def test_image_types_fits_cannot_hold_are_refused():
    with pytest.raises(ValueError, match="no FITS image type"):
        image_cards("X", np.complex64, (2, 2))
    with pytest.raises(ValueError, match="no FITS image type"):
        image_data(np.zeros(3, dtype=np.uint16))


@pytest.mark.parametrize("n_rows", [0, 1, 17, 102])
def test_binary_table_bytes_are_astropys(n_rows):
    rng = np.random.default_rng(n_rows)
    cols = [
        Column("INDEX", "J", np.arange(n_rows, dtype=np.int32)),
        Column("LAMBDA", "D", rng.uniform(0.7, 5.0, n_rows), "um"),
        Column("FLUX", "E", rng.normal(size=n_rows).astype(np.float32), "MJy/sr"),
        Column("DET", "I", rng.integers(1, 7, n_rows).astype(np.int16)),
        Column("BIG", "K", rng.integers(-(2**62), 2**62, n_rows)),
        Column("BYTE", "B", rng.integers(0, 256, n_rows).astype(np.uint8)),
        Column("CELL", "D", rng.normal(size=(n_rows, 3, 1)), "um", "(1,3)"),
    ]
    reference = fits.BinTableHDU.from_columns(
        [fits.Column(name=c.name, format=(f"{c.repeat}" if c.repeat != 1 else "") + c.tform, unit=c.unit or None,
                     dim=c.dim, array=c.values) for c in cols], name="TAB")
    reference.header["COMMENT"] = "a comment"
    assert bintable("TAB", cols, ["a comment"]) == _astropy_extension(reference)


def test_binary_table_columns_must_have_equal_lengths():
    with pytest.raises(ValueError, match="columns of different lengths"):
        bintable("TAB", [Column("A", "J", np.zeros(2, np.int32)), Column("B", "J", np.zeros(3, np.int32))])


def test_bundled_spectral_table_equals_astropys_reading():
    """The channel table read without astropy (a fixed cost of every run) has astropy's values, bit for bit."""
    data = fits.getdata(spectral.SPECTRAL_CHANNELS_FILE, "SPECTRAL_CHANNELS")
    expected = pd.DataFrame({
        name: np.asarray(data[name]).astype(np.int64 if name in ("DETECTOR", "SUBCHAN") else np.float64)
        for name in spectral.SPECTRAL_COLUMNS})
    pd.testing.assert_frame_equal(spectral.load_spectral_table(), expected, check_exact=True)


def test_missing_bundled_table_is_named():
    with pytest.raises(ValueError, match="no binary table with EXTNAME 'NOPE'"):
        spectral._bundled_table("NOPE", ["DETECTOR"])
    with pytest.raises(ValueError, match="lacks columns"):
        spectral._bundled_table("SPECTRAL_CHANNELS", ["DETECTOR", "NOPE"])
