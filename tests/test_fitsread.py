"""The FITS reading layer of the frame reader: byte sources, the strict card parser, the HDU walk."""

import os

import numpy as np
import pytest
from astropy.io import fits
from hypothesis import given, settings
from hypothesis import strategies as st

from spxquery.drizzle3d.access import MAX_RANGE_BYTES, AccessError, LocalFile, open_source
from spxquery.drizzle3d.fitsheader import Header, HeaderError
from spxquery.drizzle3d.fitsstructure import MAX_HDUS, StructureError, read_structure


def _header(*cards: str, where: str = "TEST header") -> Header:
    return Header("".join(f"{c:<80}" for c in cards), where)


# ---------------------------------------------------------------- byte sources


def test_local_file_ranges(tmp_path):
    p = tmp_path / "bytes.bin"
    p.write_bytes(bytes(range(256)) * 40)
    with open_source(p) as src:
        assert src.size == 10240 and src.name == "bytes.bin"
        a, b = src.read_ranges([(0, 4), (300, 3)])
        assert a.tolist() == [0, 1, 2, 3] and b.tolist() == [44, 45, 46]
        assert not a.flags.writeable
        assert src.read(10240, 0).size == 0
        assert src.read_bytes(300, 3) == bytes([44, 45, 46]) == src.read(300, 3).tobytes()
        assert src.read_bytes(10240, 0) == b""
        for bad in [(10238, 3), (-1, 2), (0, -1)]:
            for read in (src.read, src.read_bytes):
                with pytest.raises(AccessError, match="asked for"):
                    read(*bad)
    for read in (src.read, src.read_bytes):
        with pytest.raises(AccessError, match="after close"):
            read(0, 1)
    src.close()  # idempotent


def test_local_file_budget_and_expected_length(tmp_path, monkeypatch):
    p = tmp_path / "b.bin"
    p.write_bytes(b"x" * 5000)
    with pytest.raises(AccessError, match="archive lists 4000"):
        LocalFile(p, expected_length=4000)
    monkeypatch.setattr("spxquery.drizzle3d.access.MAX_RANGE_BYTES", 1000)
    with LocalFile(p, expected_length=5000) as src, pytest.raises(AccessError, match="exceeds"):
        src.read(0, 2000)
    with LocalFile(p) as src, pytest.raises(AccessError, match="exceeds"):
        src.read_bytes(0, 2000)
    assert MAX_RANGE_BYTES >= 1 << 30


def test_local_file_truncated_while_open(tmp_path):
    p = tmp_path / "t.bin"
    p.write_bytes(b"y" * 8000)
    with LocalFile(p) as src:
        os.truncate(p, 3000)
        with pytest.raises(AccessError, match="ended at byte 3000"):
            src.read(2000, 4000)
        with pytest.raises(AccessError, match="ended at byte 3000 of 8000"):
            src.read_bytes(2000, 4000)


def test_local_file_refuses_what_is_not_a_regular_file(tmp_path):
    cases = {tmp_path: "a directory"}
    fifo = tmp_path / "fifo.fits"
    os.mkfifo(fifo)
    cases[fifo] = "a FIFO"
    link = tmp_path / "zero.fits"
    link.symlink_to("/dev/zero")
    cases[link] = "a device"
    cases[tmp_path / "missing.fits"] = "does not exist"
    for path, why in cases.items():
        with pytest.raises(AccessError, match=why):
            open_source(path)


# ---------------------------------------------------------------- cards


def test_card_values():
    h = _header(
        "SIMPLE  =                    T / conforms",
        "BITPIX  =                  -32",
        "S1      = 'O''HARA   '         / quote doubled, trailing blanks dropped",
        "S2      = '  lead'",
        "F1      =            1.5D-3",
        "F2      = -.5E+2 / comment",
        "I1      = +42",
        "U1      =                      / undefined",
        "LONG    = 'abc&'",
        "CONTINUE  'def&'",
        "CONTINUE  'ghi'",
        "HIERARCH MP_HOT = 10 / bit",
        "HIERARCH L2 N_HOT = 7",
        "COMMENT = not a value",
        "BAD     = 1.2.3",
        "BADS    = 'unclosed",
        "DUP     = 1",
        "DUP     = 2",
    )
    assert h.get("SIMPLE") is True and h.get_int("BITPIX") == -32
    assert h.get("S1") == "O'HARA" and h.get("S2") == "  lead"
    assert h.get_float("F1") == 1.5e-3 and h.get_float("F2") == -50.0
    assert h.get_int("I1") == 42 and h.get_float("I1") == 42.0
    assert h.get("U1") is None and "U1" in h
    assert h.get("LONG") == "abcdefghi"
    assert h.get("MP_HOT") == 10 and h.get("L2 N_HOT") == 7
    assert "COMMENT" not in h and h.get("MISSING", "d") == "d"
    with pytest.raises(HeaderError, match="TEST header: keyword BAD has a malformed value"):
        h.get("BAD")
    with pytest.raises(HeaderError, match="keyword BADS has a malformed string"):
        h.get("BADS")
    with pytest.raises(HeaderError, match="keyword DUP appears 2 times"):
        h.get("DUP")
    with pytest.raises(HeaderError, match="keyword S1 = .O'HARA. is not a number"):
        h.get_float("S1")
    with pytest.raises(HeaderError, match="keyword F1 = '0.0015' is not an integer"):
        h.get_int("F1")
    with pytest.raises(HeaderError, match="keyword NOPE is missing"):
        h.get_str("NOPE")
    assert dict(h.items(("MP_",))) == {"MP_HOT": 10}


def test_non_finite_numbers_are_refused():
    h = _header("A       = NaN", "B       = 1E999")
    with pytest.raises(HeaderError, match="keyword A has a malformed value"):
        h.get_float("A")
    with pytest.raises(HeaderError, match="keyword B = inf is not finite"):
        h.get_float("B")


_keys = st.from_regex(r"[A-Z][A-Z0-9_]{0,7}", fullmatch=True).filter(lambda k: k not in ("COMMENT", "HISTORY",
                                                                                      "CONTINUE", "END"))
_values = st.one_of(
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_keys, _values, min_size=1, max_size=12))
def test_cards_parse_as_astropy_wrote_them(cards):
    """Property: every value astropy writes reads back as written (strings: trailing blanks dropped;
    numbers: as astropy reads its own text). astropy 8 itself misreads a string holding ``'/``
    (``'x''/y'`` reads as ``x'``), so strings are compared with the value written."""
    hdr = fits.Header()
    for k, v in cards.items():
        hdr[k] = v
    text = hdr.tostring()
    ours = Header(text[:text.rindex("END     ")] if "END     " in text else text, "h")
    back = fits.Header.fromstring(text)
    for k in cards:
        mine, theirs = ours.get(k), back[k]
        if isinstance(theirs, str):
            assert mine == cards[k].rstrip(), k
        else:
            assert type(mine) is type(theirs) and mine == theirs, (k, mine, theirs)


def _read(text: str, key: str, getter: str):
    h = Header(text, "h")
    h._read_values()  # the one-pass read now, not after the first few searches
    try:
        value = getattr(h, getter)(key)
        return type(value), value
    except HeaderError as exc:
        return "error", str(exc)


_value_texts = st.one_of(
    st.from_regex(r" *[+-]?[0-9]{0,25}\.?[0-9]{0,20}([EeDd][+-]?[0-9]{0,4})? *(/.{0,10})?", fullmatch=True),
    st.from_regex(r" *'([ -&(-~]|''){0,30}'? *(/.*|x)?", fullmatch=True),
    st.sampled_from(["T", " F ", "", " / c", "nan", "1 2", "'a&'", "'a' /x", "'a'x", "1_0", "0x10", "+", "-."]),
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=70),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_value_texts, min_size=1, max_size=4), st.sampled_from(["get", "get_float", "get_int", "get_str"]))
def test_one_pass_values_equal_the_parser(values, getter):
    """Property: the one-pass read of the cards (Rust, ``_core.header_values``) gives each keyword the
    value, or the error, of the parser in Python (keywords repeated, too: ``K0`` is written twice)."""
    from spxquery.drizzle3d import fitsheader

    cards = [f"{'K%d' % (i % 3):<8}= {v[:70]:<70}" for i, v in enumerate(values + values[:1])]
    text = "".join(cards)
    fast = {k: _read(text, k, getter) for k in ("K0", "K1", "K2", "K3")}
    saved = fitsheader._VALUES
    fitsheader._VALUES = None
    try:
        slow = {k: _read(text, k, getter) for k in ("K0", "K1", "K2", "K3")}
    finally:
        fitsheader._VALUES = saved
    assert saved is not None
    for k in fast:
        assert fast[k][0] == slow[k][0] and (fast[k][1] == slow[k][1] or fast[k][1] != fast[k][1]), (k, fast, slow)
        if isinstance(fast[k][1], float):
            assert np.float64(fast[k][1]).tobytes() == np.float64(slow[k][1]).tobytes(), k


@settings(max_examples=300, deadline=None)
@given(st.lists(_value_texts, min_size=1, max_size=4), st.booleans())
def test_get_floats_equals_get_float_per_keyword(values, hierarch):
    """Property: ``Header.get_floats`` gives each keyword ``get_float``'s value, or its first error."""
    cards = [f"{'K%d' % (i % 3):<8}= {v[:70]:<70}" for i, v in enumerate(values + values[:1])]
    if hierarch:
        cards.append(f"{'HIERARCH K1 = 2.5':<80}")
    text = "".join(cards)
    keys = ["K0", "K1", "K2", "K3"]

    def read(one_pass, bulk):
        h = Header(text, "h")
        if one_pass:
            h._read_values()
        try:
            return h.get_floats(keys, 0.0) if bulk else [h.get_float(k, 0.0) for k in keys]
        except HeaderError as exc:
            return str(exc)

    assert read(True, True) == read(True, False)
    assert read(False, True) == read(False, False)  # before the one-pass read: text searches


def test_hierarch_names_are_found_by_the_first_searches():
    """A HIERARCH card named like a standard keyword (any case) is found by the first lookups (text
    searches), and counts as a repetition of that keyword."""
    h = _header("NAXIS   = 2", "HIERARCH bscale = 2.5", "COMMENT BZERO is absent")
    assert h.get_float("BSCALE", 1.0) == 2.5 and h.get_float("BZERO", 0.0) == 0.0 and "BSCALE" in h
    with pytest.raises(HeaderError, match="appears 2 times"):
        _header("BSCALE  = 1.0", "HIERARCH BSCALE = 2.5").get("BSCALE")


def _cards_by_search(text, prefix):
    """The card-aligned occurrences of ``prefix``, found by ``str.find`` one by one (the reference)."""
    out, pos = [], text.find(prefix)
    while pos >= 0:
        if pos % 80 == 0:
            out.append(pos // 80)
        pos = text.find(prefix, pos + 1)
    return out


@settings(max_examples=400, deadline=None)
@given(st.lists(st.text(alphabet="AB= H", max_size=12), max_size=12), st.text(alphabet="AB= ", min_size=1, max_size=10),
       st.integers(0, 79))
def test_cards_starting_equals_a_search_of_every_occurrence(pieces, prefix, shift):
    """Property: the cards found by ``_cards_starting`` (a regex over the text) are exactly those whose
    text starts with the prefix, also for prefixes whose matches overlap (``'A=A='``, ``'= = '``) and
    occurrences straddling cards."""
    from spxquery.drizzle3d.fitsheader import _cards_starting

    body = (" " * shift + "".join(p.ljust(13, " ") for p in pieces) + prefix * 3)
    text = body.ljust(-(-len(body) // 80) * 80 + 80)
    assert _cards_starting(text, prefix) == _cards_by_search(text, prefix)
    for probe in (f"{'A=':<8}= ", "HIERARCH ", prefix):
        cards = "".join(f"{probe + 'x':<80}" if i % 3 else f"{' ' * (i % 9) + probe:<80}" for i in range(7))
        assert _cards_starting(cards, probe) == _cards_by_search(cards, probe)


_mandatory_cards = st.lists(st.one_of(
    st.sampled_from(["SIMPLE  =                    T", "SIMPLE  = F", "XTENSION= 'IMAGE   '",
                     "XTENSION= 'BINTABLE' / t", "XTENSION= 5", "BITPIX  =                  -32", "BITPIX  = 16",
                     "BITPIX  = 17", "BITPIX  = T",
                     "NAXIS   =                    2", "NAXIS   = 1", "NAXIS   = 0", "NAXIS   = 1000", "NAXIS   = 2.0",
                     "NAXIS1  =                 2040", "NAXIS1  = 0", "NAXIS2  = +7", "NAXIS2  = -3", "NAXIS1 = 5",
                     "NAXIS3  = 99999999999999999999", "PCOUNT  =                    0", "PCOUNT  = 12", "GCOUNT  = 1",
                     "GCOUNT  = 1.", "EXTNAME = 'IMAGE'", "EXTNAME = 'x  ' / n", "EXTNAME = 7", "EXTNAME = 'open",
                     "EXTNAME = 'a&'", "EXTNAME =", "HIERARCH EXTNAME = 'H'", "HIERARCH MP_X = 1", "COMMENT x",
                     "GROUPS  = T", "CONTINUE  'b'"]),
    st.builds(lambda k, v: f"{k:<8}= {v}", st.sampled_from(["BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "PCOUNT", "GCOUNT",
                                                            "EXTNAME", "SIMPLE", "XTENSION"]), _value_texts),
), max_size=9)


def _final(values, index):
    xtension, bitpix, shape, pcount, gcount, name = values
    name = name.strip().upper() if isinstance(name, str) else ("PRIMARY" if index == 0 else "")
    return xtension, bitpix, shape, pcount, gcount, name


@settings(max_examples=700, deadline=None)
@given(_mandatory_cards, st.booleans(), st.booleans())
def test_mandatory_cards_read_in_one_pass_equal_the_parser(extra, primary, valid_start):
    """Property: when the Rust reader of the mandatory cards (``_core.header_mandatory``) answers,
    the Python reader (``fitsstructure._judged``) accepts the header with the same values; any
    header it declines (None) is judged by the Python reader, so messages stay its own."""
    from spxquery.drizzle3d import _core
    from spxquery.drizzle3d.fitsstructure import _judged

    start = (["SIMPLE  =                    T"] if primary else ["XTENSION= 'IMAGE   '"]) + \
        ["BITPIX  =                  -32", "NAXIS   =                    2", "NAXIS1  =                 2040",
         "NAXIS2  =                   40"] + ([] if primary else ["PCOUNT  =                    0", "GCOUNT  = 1"])
    cards = start + extra if valid_start else extra
    text = "".join(f"{c[:80]:<80}" for c in cards)
    text = "".join(c if " " <= c <= "~" else "?" for c in text)  # header text (the END scan checked it)
    index = 0 if primary else 3
    fast = _core.header_mandatory(text=text.encode("latin-1"), primary=primary)
    try:
        slow = _final(_judged(Header(text, "h"), index), index)
    except StructureError as exc:
        slow = ("error", str(exc))
    if fast is not None:
        xtension, bitpix, dims, pcount, gcount, name = fast
        mine = _final(("" if xtension is None else xtension.strip().upper(), bitpix, tuple(reversed(dims)), pcount,
                       gcount, name), index)
        assert mine == slow, (cards, mine, slow)
    if valid_start and not extra:
        assert fast is not None


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.builds(lambda pad: "END" + pad, st.text(st.sampled_from(" \t\n\x0b\x0c\r\x1c\x1f\x85\xa0x\x00"), max_size=77)),
    st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=80),
    st.sampled_from(["SIMPLE  = T", "EXTEND  = T", "COMMENT END", "  END"]),
), max_size=40))
def test_end_scan_equals_the_python_scan(cards):
    """Property: the Rust scan of a chunk (``_core.header_end``) finds the END card and bytes that are
    not header text as the Python scan does (``find_end`` on latin-1 text, ASCII 32-126 before it)."""
    from spxquery.drizzle3d import _core, fitsstructure

    raw = "".join(f"{c[:80]:<80}" for c in cards).encode("latin-1")
    raw += b" " * (-len(raw) % 2880)
    saved = fitsstructure._HEADER_END
    fitsstructure._HEADER_END = None
    try:
        slow = fitsstructure._end_of(raw)
    finally:
        fitsstructure._HEADER_END = saved
    assert _core.header_end(chunk=raw) == slow and fitsstructure._end_of(raw) == slow


# ---------------------------------------------------------------- structure


@pytest.fixture(scope="module")
def mef(tmp_path_factory):
    """A small multi-extension file with an image, a compressed image and a table."""
    p = tmp_path_factory.mktemp("mef") / "mef.fits"
    hdul = fits.HDUList([
        fits.PrimaryHDU(),
        fits.ImageHDU(np.arange(35, dtype=np.float32).reshape(5, 7), name="IMAGE"),
        fits.CompImageHDU(np.arange(35, dtype=np.int32).reshape(5, 7), name="FLAGS", compression_type="RICE_1",
                          tile_shape=(1, 7)),
        fits.BinTableHDU.from_columns([fits.Column("X", "3E", array=np.ones((2, 3), np.float32))], name="TAB"),
    ])
    hdul.writeto(p)
    return p


def test_structure_matches_astropy(mef):
    with open_source(mef) as src:
        hdus = read_structure(src)
    with fits.open(mef, disable_image_compression=True) as ref:
        assert [h.name for h in hdus] == ["PRIMARY", "IMAGE", "FLAGS", "TAB"]
        for ours, theirs in zip(hdus, ref):
            info = theirs.fileinfo()
            assert ours.header_offset == info["hdrLoc"] and ours.data_offset == info["datLoc"]
            assert ours.data_bytes <= info["datSpan"] < ours.data_bytes + 2880
    assert hdus[1].shape == (5, 7) and hdus[1].bitpix == -32
    assert hdus[2].is_compressed_image and hdus[2].pcount > 0
    assert hdus[3].xtension == "BINTABLE" and hdus[3].shape == (2, 12)


def test_structure_rejections(mef, tmp_path):
    data = mef.read_bytes()
    cases = {
        "truncated": (data[: len(data) - 3000], "truncated file"),
        "garbage": (b"NOTFITS" + data[7:], "not a FITS file"),
        "short": (data[:2000], "only 2000 bytes"),
        "no_end": (data[:2880].replace(b"END" + b" " * 77, b" " * 80) + b" " * 2880 * 3, "no END card"),
        "bitpix": (data.replace(b"BITPIX  =                  -32", b"BITPIX  =                  -31", 1),
                   "BITPIX = -31"),
        "naxis": (data.replace(b"NAXIS1  =                    7", b"NAXIS1  =                   -7", 1),
                  "NAXIS1 = -7"),
    }
    for name, (blob, why) in cases.items():
        p = tmp_path / f"{name}.fits"
        p.write_bytes(blob)
        with open_source(p) as src, pytest.raises(StructureError, match=why):
            read_structure(src)


def test_structure_budgets(tmp_path):
    p = tmp_path / "many.fits"
    fits.HDUList([fits.PrimaryHDU()] + [fits.ImageHDU(name=f"E{i}") for i in range(MAX_HDUS + 1)]).writeto(p)
    with open_source(p) as src, pytest.raises(StructureError, match=f"more than {MAX_HDUS} HDUs"):
        read_structure(src)
    # a header that never ends costs a bounded read
    blob = b"SIMPLE  =                    T" + b" " * 50 + b"COMMENT " * 10 * 36 * 1200
    p.write_bytes(blob[: len(blob) // 2880 * 2880])
    with open_source(p) as src, pytest.raises(StructureError, match="no END card within"):
        read_structure(src)
