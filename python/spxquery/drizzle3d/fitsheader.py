"""A small, strict FITS header: 80-character cards, values parsed on demand.

Keywords are parsed strictly (FITS 4.0 section 4.2): a
string in single quotes (``''`` is a quote; trailing blanks dropped; the OGIP ``CONTINUE``
convention for long strings), a logical ``T``/``F``, an integer, a real (``E`` or ``D``
exponent), or nothing (undefined), then optionally a ``/`` comment. Anything else is a
:class:`HeaderError` naming the header, the keyword and the value, as is a keyword that
appears twice when it is asked for. ``HIERARCH`` cards are found by the words after
``HIERARCH`` (``HIERARCH MP_HOT = 10`` is keyword ``MP_HOT``). Cards without a value
(``COMMENT``, ``HISTORY``, blank) are ignored. No C library sees the text.

After the first few lookups (searches of the text) the simple values of all standard cards
are read in one pass by the Rust extension (``_core.header_values``, ``rust/src/cards.rs``:
the same values as the parser here); a keyword it leaves out (repeated, malformed, a long
string, HIERARCH) is read here as before, with the same messages.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from . import _core

CARD = 80
BLOCK = 2880

_MISSING: Any = object()
_VALUES = getattr(_core, "header_values", None)
_isfinite = math.isfinite
_NUMBER_CHARS = "0123456789+-.EeDd"
#: Each card: its keyword when columns 9-10 are the value indicator "= ", else nothing.
_CARD_KEY = re.compile(r"(.{8})= .{70}|.{80}", re.S)
#: Standard keywords looked up by searching the text before a header reads (or indexes) all its cards.
_SCANS_BEFORE_INDEX = 6
_AFTER_STRING = re.compile(r"\s*(?:/.*)?$")
#: Cards that never carry a value (FITS 4.4.2.4), and HIERARCH (indexed by the words after it).
_NO_VALUE = ("COMMENT ", "HISTORY ", "        ", "HIERARCH")


class HeaderError(ValueError):
    """A keyword that is missing, repeated or malformed where it is needed."""


def _show(text: str, limit: int = 40) -> str:
    """``text`` for a message: printable, at most ``limit`` characters."""
    text = "".join(c if " " <= c <= "~" else "?" for c in text.strip())
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Header:
    """The keywords of one header. ``where`` names it in messages (e.g. ``"IMAGE header"``).

    ``text`` holds whole cards up to, not including, the ``END`` card.
    """

    def __init__(self, text: str, where: str):
        self.where = where
        self._text = text
        self._index: Optional[Dict[str, List[int]]] = None
        self._hier: Optional[Dict[str, List[int]]] = None
        self._lookups = 0
        self._has_hier = "HIERARCH" in text
        self._upper: Optional[str] = None
        self._values: Optional[Dict[str, Any]] = None
        self._others: Optional[FrozenSet[str]] = None  # None: every keyword read by the parser here

    # ------------------------------------------------------------------ cards
    def _card(self, i: int) -> str:
        return self._text[i * CARD:(i + 1) * CARD]

    @property
    def n_cards(self) -> int:
        return len(self._text) // CARD

    def _build_index(self) -> Dict[str, List[int]]:
        text = self._text
        keys = _CARD_KEY.findall(text)  # the keyword of each card with a value indicator, else ''
        pairs = [(k.rstrip(), j) for j, k in enumerate(keys) if k and k not in _NO_VALUE]
        if self._has_hier:
            for key, where in self._hierarch().items():
                pairs += [(key, j) for j in where]
        index: Dict[str, List[int]] = {key: [j] for key, j in pairs}
        if len(index) != len(pairs):  # repeated keywords: keep every position
            index = {}
            for key, j in pairs:
                index.setdefault(key, []).append(j)
        return index

    def _hierarch(self) -> Dict[str, List[int]]:
        """Card numbers of the ``HIERARCH`` keywords, by the words after ``HIERARCH``."""
        if self._hier is None:
            self._hier = {}
            text = self._text
            for j in _cards_starting(text, "HIERARCH "):
                pos = j * CARD
                eq = text.find("=", pos + 9, pos + CARD)
                if eq > 0:
                    self._hier.setdefault(" ".join(text[pos + 9:eq].split()).upper(), []).append(j)
        return self._hier

    @property
    def index(self) -> Dict[str, List[int]]:
        """Card numbers of every keyword with a value (HIERARCH ones by their words)."""
        if self._index is None:
            self._index = self._build_index()
        return self._index

    def _positions(self, key: str) -> List[int]:
        """Card numbers of ``key``. The first few lookups of standard keywords search the text
        for the card-aligned ``KEYWORD= `` (cheaper than indexing a header read for a few
        keywords); later ones use the index of all cards."""
        if self._index is not None:
            return self._index.get(key, [])
        self._lookups += 1
        if self._lookups > _SCANS_BEFORE_INDEX or len(key) > 8 or " " in key:
            return self.index.get(key, [])
        out = _cards_starting(self._text, f"{key:<8}= ")
        if self._has_hier and self._may_be_hierarch(key) and key in self._hierarch():
            out = sorted(out + self._hierarch()[key])
        return out

    def _may_be_hierarch(self, key: str) -> bool:
        """False when no HIERARCH card can be named ``key`` (a HIERARCH keyword is the upper-cased
        words of its card, so its name is in the upper-cased text): the cards of the few keywords
        looked up by search are then not all scanned for HIERARCH names."""
        if self._hier is not None:
            return True
        if self._upper is None:
            self._upper = self._text.upper()
        return key in self._upper

    def _read_values(self) -> Dict[str, Any]:
        """The one-pass values of the standard cards (empty, everything left to the parser here,
        without the extension or for text that is not ASCII)."""
        if self._values is None:
            if _VALUES is not None and self._text.isascii():
                values, others = _VALUES(text=self._text)
                self._values, self._others = values, frozenset(others)
                if self._has_hier:
                    self._hierarch()
            else:
                self._values, self._others = {}, None
        return self._values

    def read_all(self) -> "Header":
        """Read the values of all standard cards now, in one pass (for a header many of whose
        keywords will be asked for: no text searches for the first few); returns the header."""
        self._read_values()
        return self

    def _lookup(self, key: str) -> Any:
        """The value of ``key``, ``_MISSING`` when absent; :class:`HeaderError` when repeated or
        malformed."""
        values = self._values
        if values is None and self._lookups >= _SCANS_BEFORE_INDEX:
            values = self._read_values()
        if values is not None:  # else: one of the first lookups, a text search (cheaper)
            value = values.get(key, _MISSING)
            hier = self._hier is not None and key in self._hier  # built by _read_values when there are any
            if not hier and self._others is not None and (value is not _MISSING or key not in self._others):
                return value  # read in one pass, or absent
        where = self._positions(key)
        if not where:
            return _MISSING
        if len(where) > 1:
            raise HeaderError(f"{self.where}: keyword {key} appears {len(where)} times")
        return self._parse(key, where[0])

    def lacks(self, keys: Tuple[str, ...]) -> bool:
        """True when none of the standard (upper-case) keywords ``keys`` is in the header, neither
        as a card nor as a HIERARCH name: none of them occurs in its text (upper-cased when it has
        HIERARCH cards, whose names are upper-cased words), one search for all. False: look them
        up (e.g. ``BSCALE``/``BZERO``, absent from nearly every header, cost no lookup each)."""
        text = self._text
        if self._has_hier:
            if not text.isascii():
                return False
            if self._upper is None:
                self._upper = text.upper()
            text = self._upper
        return _any_of(keys).search(text) is None

    def find(self, key: str) -> int:
        """Card number of the first card of keyword ``key``, or -1."""
        where = self._positions(key)
        return where[0] if where else -1

    def value_at(self, key: str, card: int) -> Any:
        """The parsed value of card number ``card`` (named ``key`` in messages)."""
        return self._parse(key, card)

    def _value_text(self, i: int) -> str:
        card = self._card(i)
        if card.startswith("HIERARCH"):
            return card[card.find("=") + 1:]
        return card[10:]

    def __contains__(self, key: str) -> bool:
        values = self._values
        if values is None and self._lookups >= _SCANS_BEFORE_INDEX:
            values = self._read_values()
        if values is not None and self._others is not None:
            return key in values or key in self._others or (self._has_hier and key in self._hierarch())
        return bool(self._positions(key))

    def keys(self) -> List[str]:
        return list(self.index)

    # ------------------------------------------------------------------ values
    def _parse(self, key: str, i: int) -> Any:
        start = i * CARD
        raw = self._text[start + 10:start + CARD]
        if self._has_hier and self._text.startswith("HIERARCH", start):
            raw = self._value_text(i)
        s = raw.strip()
        if s.startswith("'"):
            value, rest = _string(s)
            if value is None or not _AFTER_STRING.match(rest):
                raise HeaderError(f"{self.where}: keyword {key} has a malformed string value {_show(raw)}")
            # OGIP long strings: a value ending in '&' continues in the following CONTINUE cards.
            j = i + 1
            while value.endswith("&") and j < self.n_cards and self._card(j).startswith("CONTINUE"):
                more, rest = _string(self._card(j)[8:].lstrip())
                if more is None:
                    break
                value = value[:-1] + more
                j += 1
            return value
        slash = s.find("/")
        token = (s[:slash] if slash >= 0 else s).rstrip()
        if not token:
            return None
        if token in ("T", "F"):
            return token == "T"
        # Numbers: only digits, signs, '.', and E/D exponents (no nan/inf/underscores), then
        # Python's own strict conversion.
        if not token.strip(_NUMBER_CHARS):
            try:
                if token.isdigit() or (token[0] in "+-" and token[1:].isdigit()):
                    return int(token)
                return float(token.replace("D", "E").replace("d", "e"))
            except ValueError:
                pass
        raise HeaderError(f"{self.where}: keyword {key} has a malformed value {_show(raw)}")

    def get(self, key: str, default: Any = None) -> Any:
        """The value of ``key`` (str, bool, int, float, or None when undefined); ``default``
        when absent. :class:`HeaderError` when repeated or malformed."""
        value = self._lookup(key)
        return default if value is _MISSING else value

    def _required(self, key: str, default: Any) -> Any:
        value = self._lookup(key)
        if value is _MISSING:
            if default is _MISSING:
                raise HeaderError(f"{self.where}: keyword {key} is missing")
            return default
        return value

    def get_int(self, key: str, default: Any = _MISSING) -> int:
        """An integer keyword; :class:`HeaderError` when missing (no default) or not an integer."""
        value = self._required(key, default)
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise HeaderError(f"{self.where}: keyword {key} = {_show(str(value))} is not an integer")
        return value

    def get_float(self, key: str, default: Any = _MISSING) -> float:
        """A finite real keyword (an integer value is accepted); :class:`HeaderError` when
        missing (no default), not a number, NaN or infinite."""
        value = self._required(key, default)
        if type(value) is float and value is not default:  # the common case, checked as below
            if not _isfinite(value):
                raise HeaderError(f"{self.where}: keyword {key} = {value} is not finite")
            return value
        if value is default and default is not _MISSING:
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise HeaderError(f"{self.where}: keyword {key} = {_show(str(value))} is not a number")
        value = float(value)
        if not math.isfinite(value):
            raise HeaderError(f"{self.where}: keyword {key} = {value} is not finite")
        return value

    def get_floats(self, keys: Sequence[str], default: float) -> List[float]:
        """``[get_float(key, default) for key in keys]`` (the same values and errors, in that order),
        without a call per keyword for the common case: values read in one pass, finite reals."""
        values = self._values
        if values is None and self._lookups >= _SCANS_BEFORE_INDEX:
            values = self._read_values()
        others, hier = self._others, self._hier
        if values is None or others is None:
            return [self.get_float(key, default) for key in keys]
        out = []
        for key in keys:
            value = values.get(key, _MISSING)
            if hier is not None and key in hier:
                out.append(self.get_float(key, default))
            elif type(value) is float and _isfinite(value):
                out.append(value)
            elif value is _MISSING and key not in others:
                out.append(default)
            else:
                out.append(self.get_float(key, default))
        return out

    def get_str(self, key: str, default: Any = _MISSING) -> str:
        """A string keyword, without trailing blanks; :class:`HeaderError` when missing (no
        default) or not a string."""
        value = self._required(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str):
            raise HeaderError(f"{self.where}: keyword {key} = {_show(str(value))} is not a string")
        return value

    def items(self, prefixes: Tuple[str, ...] = ("",)) -> Iterator[Tuple[str, Any]]:
        """``(keyword, value)`` of every valued card whose keyword starts with one of
        ``prefixes`` (default: all) and parses (malformed ones are skipped)."""
        for key, where in self.index.items():
            if not key.startswith(prefixes):
                continue
            for i in where:
                try:
                    yield key, self._parse(key, i)
                except HeaderError:
                    continue


@functools.lru_cache(maxsize=256)
def _prefix_search(prefix: str) -> Tuple["re.Pattern[str]", bool]:
    """``prefix`` as a compiled literal search, and whether two of its matches can overlap (a
    border: a proper prefix equal to a suffix), when ``finditer``'s non-overlapping matches could
    hide one."""
    overlaps = any(prefix.startswith(prefix[i:]) for i in range(1, len(prefix)))
    return re.compile(re.escape(prefix)), overlaps


@functools.lru_cache(maxsize=64)
def _any_of(keys: Tuple[str, ...]) -> "re.Pattern[str]":
    """A search for any of the literal ``keys``."""
    return re.compile("|".join(re.escape(k) for k in keys))


def _cards_starting(text: str, prefix: str) -> List[int]:
    """Card numbers (in order) of the cards of ``text`` that start with ``prefix``. Searched by
    ``re`` (its literal search skips ahead on the prefix's first character), not ``str.find``,
    which crawls through a header's blanks for a prefix ending in blanks (``"BSCALE  = "``: ~3x
    slower on a 100-card header)."""
    pattern, overlaps = _prefix_search(prefix)
    if not overlaps:
        return [m.start() // CARD for m in pattern.finditer(text) if m.start() % CARD == 0]
    out = []
    pos = text.find(prefix)
    while pos >= 0:
        if pos % CARD == 0:
            out.append(pos // CARD)
        pos = text.find(prefix, pos + 1)
    return out


def _string(s: str) -> Tuple[Optional[str], str]:
    """A quoted FITS string at the start of ``s``: ``(value, rest)``, value None when unclosed."""
    out = []
    i = 1
    n = len(s)
    while i < n:
        j = s.find("'", i)
        if j < 0:
            return None, ""
        out.append(s[i:j])
        if j + 1 < n and s[j + 1] == "'":
            out.append("'")
            i = j + 2
            continue
        return "".join(out).rstrip(), s[j + 1:]
    return None, ""


def find_end(text: str) -> int:
    """Index (characters) of the ``END`` card in ``text`` (card-aligned), or -1."""
    pos = text.find("END")
    while pos >= 0:
        if pos % CARD == 0 and text[pos + 3:pos + CARD].strip() == "":
            return pos
        pos = text.find("END", pos + 1)
    return -1


__all__ = ["BLOCK", "CARD", "Header", "HeaderError", "find_end"]
