"""Bounded text for messages: a value from a file, a server or a user never makes an
error message or a log line unbounded (a 421-byte YAML alias bomb once became a 351 MB
message). Lengths in characters."""

from __future__ import annotations

import reprlib
from typing import Any

#: Longest text of one value in a message (characters).
MAX_VALUE_CHARS = 120

_repr = reprlib.Repr()
_repr.maxlevel = 3
_repr.maxstring = MAX_VALUE_CHARS
_repr.maxother = MAX_VALUE_CHARS
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxlong = 40


def short_text(text: Any, limit: int = 2 * MAX_VALUE_CHARS) -> str:
    """``str(text)`` cut to ``limit`` characters (the cut says how long the whole was)."""
    s = text if isinstance(text, str) else str(text)
    if len(s) <= limit:
        return s
    return f"{s[:limit]}... [{len(s)} characters]"


def short_repr(value: Any, limit: int = MAX_VALUE_CHARS) -> str:
    """``repr(value)`` bounded in depth, items and ``limit`` characters, built without ever
    forming the full repr of a huge or deeply nested value."""
    try:
        text = _repr.repr(value)
    except Exception as exc:  # noqa: BLE001 - a hostile __repr__ must not break the message
        text = f"<{type(value).__name__} (unprintable: {type(exc).__name__})>"
    return short_text(text, limit)
