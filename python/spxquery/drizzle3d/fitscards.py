"""FITS header text written fast: cards rendered as astropy renders them, without Card objects.

Writing a cube's headers through astropy ``Header``/``Card`` objects costs ~0.1 ms a card and
is quadratic in the number of cards (each new keyword re-indexes the header), which made the
PRIMARY header of a deep field (two cards per input frame) take seconds. Here a header is an
ordered ``{keyword: card image}`` (:class:`CardText`) with ``Header.__setitem__``'s rules (an
existing keyword keeps its place, commentary cards follow the last of their kind) and the
cards are formatted by :func:`card_image`, character for character what astropy's
``str(fits.Card(keyword, value, comment))`` gives (tested), so the files do not change.

Only the common cases are formatted here: a standard keyword (``[A-Z0-9_-]``, at most 8
characters) with a ``str`` (printable ASCII, one card), ``bool``, ``int`` or finite ``float``
value and a printable comment. Everything else (HIERARCH, long strings with CONTINUE cards,
commentary cards, record-valued cards, values astropy refuses) goes to astropy's ``Card``
itself, so its formatting and its errors are unchanged.
"""

from __future__ import annotations

import re
import warnings
from math import isfinite
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
from astropy.io import fits

#: One card: 80 characters.
CARD = 80
#: One FITS block: 2880 bytes.
BLOCK = 2880
_KEYWORD = re.compile(r"[A-Z0-9_-]{1,8}\Z")
_TEXT = re.compile(r"[ -~]*\Z")
_COMMENTARY = frozenset(("", "COMMENT", "HISTORY", "END", "CONTINUE"))


def _format_float(value: float) -> str:
    """astropy's float text: ``str(value)`` with ``E``, at most 20 characters."""
    text = str(value).replace("e", "E")
    if len(text) > 20:
        idx = text.find("E")
        text = text[:20] if idx < 0 else text[: 20 - (len(text) - idx)] + text[idx:]
    return text


def _value_text(value: Any) -> str | None:
    """The 20-column value field of a simple value, or None (astropy formats it)."""
    kind = type(value)
    if kind is str:
        if not _TEXT.match(value) or ":" in value:  # ':' may make a record-valued card
            return None
        if value == "":
            return "''"
        quoted = "'{:8}'".format(value.replace("'", "''"))
        return f"{quoted:20}"
    if kind is bool or kind is np.bool_:
        return f"{'T' if value else 'F':>20}"
    if kind is int or isinstance(value, np.integer):
        return f"{int(value):>20d}"
    if (kind is float or kind is np.float64) and isfinite(value):
        return f"{_format_float(float(value)):>20}"
    return None


def card_image(keyword: str, value: Any, comment: str = "") -> str:
    """The card text (80 characters, more for astropy's CONTINUE cards) of ``keyword = value /
    comment``: ``str(astropy.io.fits.Card(keyword, value, comment))``, fast for common cards."""
    key = keyword.upper()
    comment = comment or ""
    if _KEYWORD.match(key) and key not in _COMMENTARY and _TEXT.match(comment):
        text = _value_text(value)
        if text is not None:
            # astropy leaves out a comment of blanks (it tests the stripped comment)
            out = f"{key:8}= {text}" + (f" / {comment}" if comment.rstrip() else "")
            if len(out) <= CARD:
                return f"{out:{CARD}}"
            if not (type(value) is str and len(text) > CARD - 10):
                return out[:CARD]  # astropy truncates the comment (with a warning)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fits.verify.VerifyWarning)
        return str(fits.Card(keyword, value, comment))


class CardText:
    """An ordered header being written, with ``Header.__setitem__``'s rules: an existing keyword
    is updated in place; a new one goes after the last non-commentary card; a COMMENT/HISTORY card
    after the last of its kind, else at the end. ``text`` is the header's bytes."""

    def __init__(self, memo: Optional[Dict[Tuple[str, type, str, str], str]] = None) -> None:
        """``memo``: card images already made, shared by headers that repeat cards (the cube's
        image extensions): a card of the same keyword, value type and ``repr``, and comment is
        formatted once."""
        self._keys: List[str] = []
        self._images: List[str] = []
        self._index: Dict[str, int] = {}
        self._memo = memo

    def _image(self, keyword: str, value: Any, comment: str) -> str:
        if self._memo is None:
            return card_image(keyword, value, comment)
        key = (keyword, type(value), repr(value), comment)
        image = self._memo.get(key)
        if image is None:
            image = self._memo[key] = card_image(keyword, value, comment)
        return image

    def set(self, keyword: str, value: Any, comment: str = "") -> None:
        """``header[keyword] = (value, comment)``."""
        key = keyword.strip().upper()
        if key in _COMMENTARY:
            self._commentary(key, str(value))
        elif key in self._index:
            self._images[self._index[key]] = self._image(keyword, value, comment)
        else:
            at = len(self._keys)
            while at and self._keys[at - 1] in _COMMENTARY:
                at -= 1
            self._insert(at, key, self._image(keyword, value, comment))

    def _commentary(self, key: str, text: str) -> None:
        """A COMMENT/HISTORY card, formatted by astropy (long text spans several cards)."""
        card = str(fits.Card(key, text))
        same = [i for i, k in enumerate(self._keys) if k == key]
        self._insert(same[-1] + 1 if same else len(self._keys), key, card)

    def _insert(self, at: int, key: str, image: str) -> None:
        self._keys.insert(at, key)
        self._images.insert(at, image)
        if at == len(self._keys) - 1:
            if key not in _COMMENTARY:
                self._index[key] = at
        else:
            self._index = {k: i for i, k in enumerate(self._keys) if k not in _COMMENTARY}

    def update(self, cards: Iterable[Tuple[str, Any, str]]) -> None:
        """:meth:`set` of each ``(keyword, value, comment)``."""
        for keyword, value, comment in cards:
            self.set(keyword, value, comment)

    def keywords(self) -> List[str]:
        """The non-commentary keywords, in order."""
        return [k for k in self._keys if k not in _COMMENTARY]

    def text(self) -> bytes:
        """The header as written: the cards, END, blanks up to a multiple of 2880 bytes."""
        body = "".join(self._images) + f"{'END':{CARD}}"
        body += " " * (-len(body) % BLOCK)
        return body.encode("ascii")


def cards_of(header: fits.Header) -> List[Tuple[str, Any, str]]:
    """``(keyword, value, comment)`` of each card of an astropy ``header``, in order."""
    return [(card.keyword, card.value, card.comment) for card in header.cards]


__all__ = ["CARD", "BLOCK", "card_image", "CardText", "cards_of"]
