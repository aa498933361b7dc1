"""Header text written without astropy Card objects (:mod:`.fitscards`): the same characters as
astropy's ``str(Card(...))`` and ``Header.__setitem__`` order, whatever the values."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d.fitscards import CardText, card_image

KEYWORDS = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=8).filter(
    lambda k: k not in ("COMMENT", "HISTORY", "END", "CONTINUE"))
PRINTABLE = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=90)
VALUES = st.one_of(
    PRINTABLE, st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.floats(min_value=-1e-3, max_value=1e-3),
)


def _astropy(keyword, value, comment):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(fits.Card(keyword, value, comment))


@settings(max_examples=1500, deadline=None)
@given(KEYWORDS, VALUES, PRINTABLE)
def test_card_image_is_astropys(keyword, value, comment):
    assert card_image(keyword, value, comment) == _astropy(keyword, value, comment)


@pytest.mark.parametrize("keyword,value,comment", [
    ("INF00001", "level2_2026W01_1A_00000_1D3_spx_l2b-v12-2025-164_cutout.fits", "input file"),  # comment cut
    ("NAME", "x" * 75, "long: CONTINUE cards"), ("ZSC00001", 0.9812345678901234, "zodi scale (sample)"),
    ("CDELT1", -0.0017083333333333334, ""), ("BIG", 1.0e300, "c"), ("SMALL", 5e-324, "c"), ("NEG0", -0.0, ""),
    ("NPINT", np.int64(7), "np"), ("NPF", np.float64(0.1), "np"), ("NPB", np.bool_(True), "np"),
    ("QUOTE", "it's", "q"), ("EMPTY", "", "e"), ("RVKC", "AXIS.1: 2", ""), ("F32", np.float32(0.1), "f32"),
    ("lower", 1, "keyword upper-cased"), ("LONGKEYWORDNAME", 3, "HIERARCH"),
])
def test_card_image_edge_cases(keyword, value, comment):
    assert card_image(keyword, value, comment) == _astropy(keyword, value, comment)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "caf\u00e9"])
def test_values_astropy_refuses_are_refused_alike(value):
    with pytest.raises(ValueError):
        _astropy("KEY", value, "")
    with pytest.raises(ValueError):
        card_image("KEY", value, "")


def test_card_text_follows_header_setitem():
    cards = [("A", 1, "one"), ("B", "two", ""), ("COMMENT", "first note", ""), ("A", 3.5, "again: keeps its place"),
             ("C", True, "c"), ("COMMENT", "second note " * 10, ""), ("D", "d", "")]
    header = fits.Header()
    text = CardText()
    for keyword, value, comment in cards:
        header[keyword] = (value, comment)
        text.set(keyword, value, comment)
    assert text.text() == header.tostring().encode("ascii")
    assert text.keywords() == ["A", "B", "C", "D"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["A", "B", "CRVAL1", "X-1"]),
                          st.one_of(VALUES, st.sampled_from([0.0, -0.0, 1, 1.0, True, np.float64(1.0), np.int64(1)])),
                          st.sampled_from(["", "c"])), max_size=12))
def test_card_text_with_a_shared_memo_is_the_same_text(cards):
    """Headers sharing a memo of card images (the cube's extensions) give the text of headers
    without one, whatever was formatted before: -0.0 vs 0.0, 1 vs 1.0 vs True keep their own."""
    memo: dict = {}
    for half in (cards[::2], cards, cards[::-1]):
        plain, shared = CardText(), CardText(memo)
        plain.update(half)
        shared.update(half)
        assert shared.text() == plain.text()
