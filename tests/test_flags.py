"""Flag bits: defaults, QR2/QR3 header parsing, exclusion masks, descriptions."""

import warnings

import numpy as np
import pytest
from astropy.io import fits
from astropy.io.fits.verify import VerifyWarning

from spxquery.drizzle3d.flags import (
    DEFAULT_FLAG_BITS,
    FLAG_DESCRIPTIONS,
    INFORMATIONAL_FLAGS,
    RECOMMENDED_EXCLUDE_FLAGS,
    describe_bits,
    exclude_bitmask,
    flag_bits_from_header,
    validate_exclude_flags,
)

DOCUMENTED = {
    0: "TRANSIENT", 1: "OVERFLOW", 2: "SUR_ERROR", 4: "PHANTOM", 5: "REFERENCE", 6: "NONFUNC",
    7: "DICHROIC", 9: "MISSING_DATA", 10: "HOT", 11: "COLD", 12: "FULLSAMPLE", 14: "PHANMISS",
    15: "NONLINEAR", 17: "PERSIST", 19: "OUTLIER", 20: "CROSSTALK", 21: "SOURCE", 25: "STREAK",
    26: "BLOOM", 27: "SNOWBALL", 28: "HALO", 29: "SATELLITE_HALO",
}


def test_default_bits_documented():
    for bit, name in DOCUMENTED.items():
        assert DEFAULT_FLAG_BITS[name] == bit
    ghosts = {n: b for n, b in DEFAULT_FLAG_BITS.items() if n.startswith("GHOST")}
    assert sorted(ghosts.values()) == [22, 23, 24]
    assert len(set(DEFAULT_FLAG_BITS.values())) == len(DEFAULT_FLAG_BITS)
    assert set(FLAG_DESCRIPTIONS) == set(DEFAULT_FLAG_BITS)
    assert all(isinstance(v, str) and v and "\n" not in v for v in FLAG_DESCRIPTIONS.values())


def test_recommended_excludes_no_informational():
    assert set(RECOMMENDED_EXCLUDE_FLAGS) <= set(DEFAULT_FLAG_BITS)
    for name in ("SOURCE", "FULLSAMPLE", "OVERFLOW", "OUTLIER"):
        assert name not in RECOMMENDED_EXCLUDE_FLAGS
        assert name in INFORMATIONAL_FLAGS
    for name in ("TRANSIENT", "NONFUNC", "MISSING_DATA", "HOT", "COLD", "PERSIST", "NONLINEAR"):
        assert name in RECOMMENDED_EXCLUDE_FLAGS
    mask = exclude_bitmask(RECOMMENDED_EXCLUDE_FLAGS)
    assert not mask & (1 << 21)


def _qr2_header():
    h = fits.Header()
    h["EXTNAME"] = "FLAGS"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerifyWarning)  # astropy notes the HIERARCH conversion
        h["HIERARCH MP_TRANSIENT"] = 0
        h["HIERARCH MP_OVERFLOW"] = 1
        h["HIERARCH MP_MISSING_DATA"] = 9
        h["HIERARCH MP_SOURCE"] = 21
        h["HIERARCH MP_NEWTHING"] = 30
        h["HIERARCH MP_HOT"] = 13  # header disagrees with the default bit 10: header wins
        h["HIERARCH MP_BROKEN"] = "x"  # malformed: ignored
    return h


def _qr3_header():
    h = fits.Header()
    h["EXTNAME"] = "FLAGS"
    h["MSKN0000"] = "TRANSIENT"
    h["MSKN0009"] = "MISSING_DATA"
    h["MSKN0022"] = "GHOST_A"
    h["MSKN0023"] = "GHOST_B"
    h["MSKN0031"] = "lastbit"
    h["MSKN0040"] = "OUT_OF_RANGE"  # ignored
    return h


def test_qr2_header_parsing():
    h = _qr2_header()
    # survives a FITS round trip (HIERARCH cards)
    h = fits.Header.fromstring(h.tostring())
    bits = flag_bits_from_header(h)
    assert bits["NEWTHING"] == 30
    assert bits["HOT"] == 13
    assert bits["MISSING_DATA"] == 9
    assert bits["COLD"] == 11  # default kept
    assert "BROKEN" not in bits
    assert list(bits.values()) == sorted(bits.values())
    assert exclude_bitmask(["hot", "newthing"], bits) == (1 << 13) | (1 << 30)
    assert exclude_bitmask(["HOT"]) == 1 << 10  # defaults unaffected


def test_qr3_header_parsing():
    h = fits.Header.fromstring(_qr3_header().tostring())
    bits = flag_bits_from_header(h)
    assert bits["GHOST_A"] == 22 and bits["GHOST_B"] == 23
    assert bits["LASTBIT"] == 31
    assert "OUT_OF_RANGE" not in bits
    assert bits["TRANSIENT"] == 0
    assert exclude_bitmask(["ghost_a", "LASTBIT"], bits) == (1 << 22) | (1 << 31)
    # wildcard picks up the header names and the default ghost names (same bits here)
    assert exclude_bitmask(["GHOST*"], bits) == (1 << 22) | (1 << 23) | (1 << 24)


def test_header_without_definitions_gives_defaults():
    h = fits.Header()
    h["EXTNAME"] = "FLAGS"
    h["BITPIX"] = 32
    assert flag_bits_from_header(h) == dict(sorted(DEFAULT_FLAG_BITS.items(), key=lambda kv: (kv[1], kv[0])))
    assert flag_bits_from_header({}) == flag_bits_from_header(h)


def test_exclude_bitmask_mixing_names_and_ints():
    m = exclude_bitmask([0, "hot", "Cold", np.int64(31), "9", "SATELLITE_HALO"])
    assert m == (1 << 0) | (1 << 10) | (1 << 11) | (1 << 31) | (1 << 9) | (1 << 29)
    assert 0 <= m < 2**32
    assert np.uint32(m) == m  # fits a uint32
    assert exclude_bitmask([]) == 0
    assert exclude_bitmask(None) == 0
    assert exclude_bitmask("HOT") == 1 << 10
    assert exclude_bitmask(5) == 1 << 5
    assert exclude_bitmask(["HOT", "hot", 10]) == 1 << 10
    assert exclude_bitmask(["GHOST*"]) == (1 << 22) | (1 << 23) | (1 << 24)
    # the mask selects exactly the flagged pixels
    flags = np.array([0, 1 << 10, 1 << 21, (1 << 21) | (1 << 11), -(2**31)], dtype=np.int32)
    bad = (flags.view(np.uint32) & np.uint32(exclude_bitmask(["HOT", "COLD", 31]))) != 0
    assert bad.tolist() == [False, True, False, True, True]


@pytest.mark.parametrize(
    "spec, pattern",
    [
        (["NOPE"], "NOPE"),
        ([32], "32"),
        ([-1], "-1"),
        ([1.0], "1.0"),
        ([True], "True"),
        (["NOPE*"], "NOPE"),
        (["HOT-1"], "HOT-1"),
        ([None], "None"),
        ({"HOT": 1}, "HOT"),
    ],
)
def test_exclude_bitmask_errors(spec, pattern):
    with pytest.raises(ValueError, match=pattern):
        exclude_bitmask(spec)
    with pytest.raises(ValueError):
        validate_exclude_flags(spec)


def test_validate_exclude_flags_normalises():
    assert validate_exclude_flags(["hot", " 3 ", 4, "ghost*"]) == ["HOT", 3, 4, "GHOST*"]


def test_describe_bits():
    assert describe_bits(0) == []
    assert describe_bits((1 << 10) | (1 << 0)) == ["TRANSIENT", "HOT"]
    assert describe_bits(1 << 3) == ["BIT3"]
    assert describe_bits(-(2**31)) == ["BIT31"]  # int32 sign bit = bit 31
    assert describe_bits(np.int32(1 << 21)) == ["SOURCE"]
    bits = flag_bits_from_header(fits.Header.fromstring(_qr3_header().tostring()))
    assert describe_bits(1 << 31, bits) == ["LASTBIT"]
    # exclude_bitmask and describe_bits agree
    names = ["PERSIST", "NONLINEAR", "STREAK"]
    assert describe_bits(exclude_bitmask(names)) == ["NONLINEAR", "PERSIST", "STREAK"]


def test_exclude_bits_remembered_per_run_equal_exclude_bitmask():
    """The frames' exclude mask, remembered per (specifications, flag names), is exclude_bitmask's,
    and a specification it refuses is refused every time (True is not bit 1)."""
    from spxquery.drizzle3d.flags import exclude_bitmask
    from spxquery.drizzle3d.frames import _exclude_bits

    bits = {"HOT": 3, "COLD": 4, "SOURCE": 21, "NONFUNC": 9}
    for specs in (None, [], ["HOT"], ["hot", 21], ("SOURCE", "C*"), [np.int64(9)], [1, "HOT"], "HOT", 21, "C*"):
        for _ in range(2):
            assert _exclude_bits(specs, bits) == exclude_bitmask(specs or [], bits)
    assert _exclude_bits([1], bits) == 2
    for bad in ([True], ["NOPE"], [[1]]):
        for _ in range(2):
            with pytest.raises(ValueError):
                _exclude_bits(bad, bits)


def test_flag_cards_found_by_search_equal_the_whole_header_read():
    """_flag_bits finds the flag cards by a search of the text (card-aligned HIERARCH / MP_ / MSKN):
    the names -> bits of reading every card, with look-alikes inside other cards ignored."""
    from spxquery.drizzle3d.fitsheader import Header
    from spxquery.drizzle3d.flags import flag_bits_from_header
    from spxquery.drizzle3d.frames import _FLAG_PREFIXES, _flag_bits

    cards = ["XTENSION= 'IMAGE   '", "MP_HOT  =                    3", "COMMENT   MP_WARM = 6", "",
             "HIERARCH MP_TRANSIENT = 12", "COMMENT   HIERARCH MP_FAKE = 30 and MSKN5 = 'X'",
             "MSKN0004= 'COLD    '", "OBJECT  = 'MP_X HIERARCH MP_Y'", "HIERARCH MP_SOURCE = 21 / MSKN0009",
             "EXTNAME = 'FLAGS   '"]
    text = "".join(f"{c:<80}" for c in cards)
    want = flag_bits_from_header(dict(Header(text, "FLAGS header").items(_FLAG_PREFIXES)))
    assert _flag_bits(Header(text, "FLAGS header")) == want
    assert {k: want[k] for k in ("HOT", "TRANSIENT", "COLD", "SOURCE")} == {"HOT": 3, "TRANSIENT": 12, "COLD": 4,
                                                                          "SOURCE": 21}
    assert not {"FAKE", "WARM", "X", "Y"} & set(want)
