"""One TAP answer read by this package: bounded bytes, parsed as a VOTable, odd cells tolerated.

pyvo hands over the raw HTTP stream (:func:`read_answer`); at most
:data:`MAX_TAP_ANSWER_BYTES` (decoded) are read, counted while streaming, so an endless or
huge answer is refused (:class:`AnswerTooLargeError`) instead of filling the memory. The bytes
are parsed with astropy's VOTable parser, as pyvo does; when a cell of a numeric column cannot
be read as its declared type (``contentlength`` '12abc' in a column declared ``long``, as IRSA
declares it), astropy refuses the whole answer, so the answer is parsed again with that FIELD
declared as text (``char``; cells the type reads as NULL stay NULL): the row checks of
:mod:`.observations` then skip just the rows whose values are no numbers, with their warnings.
Sizes in bytes.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from typing import Any

import numpy as np

from ..textlimits import short_text

#: Largest TAP answer read (bytes, after content decoding); a real frame search answers a few MB.
MAX_TAP_ANSWER_BYTES = 512 << 20
_CHUNK = 1 << 20
_NUMERIC = {b"boolean", b"bit", b"unsignedByte", b"short", b"int", b"long", b"float", b"double",
            b"floatComplex", b"doubleComplex", b"int16", b"int32", b"int64", b"float32", b"float64",
            b"unsignedInt", b"unsignedShort"}
_RE_TABLEDATA = re.compile(rb"<(?:[\w.-]+:)?TABLEDATA[\s>]")
_RE_FIELD = re.compile(rb"<(?:[\w.-]+:)?FIELD((?:\s+[\w:.-]+\s*=\s*(?:\"[^\"]*\"|'[^']*'))*)\s*/?>")
_RE_ATTR = re.compile(rb"([\w:.-]+)\s*=\s*(?:\"([^\"]*)\"|'([^']*)')")
_RE_NULL = re.compile(rb"<(?:[\w.-]+:)?VALUES\b[^>]*?\snull\s*=\s*[\"']([^\"']*)[\"']")
_RE_BAD_CELL = re.compile(r"\(in row \d+, col '([^']*)'\)")


class AnswerTooLargeError(RuntimeError):
    """The answer is longer than :data:`MAX_TAP_ANSWER_BYTES` (the message names the URL)."""


def read_bounded(read: Callable[[int], bytes], url: str) -> bytes:
    """All bytes of the stream ``read`` (a file's ``read(n)``), at most
    :data:`MAX_TAP_ANSWER_BYTES`; :class:`AnswerTooLargeError` as soon as there are more."""
    limit = MAX_TAP_ANSWER_BYTES
    buf = io.BytesIO()
    size = 0
    while True:
        chunk = read(min(_CHUNK, limit + 1 - size))
        if not chunk:
            return buf.getvalue()
        size += len(chunk)
        if size > limit:
            raise AnswerTooLargeError(
                f"the TAP answer from {short_text(url)} is larger than {limit} bytes (MAX_TAP_ANSWER_BYTES), "
                f"far more than a frame search should return; narrow the region, mjd_range or detector"
            )
        buf.write(chunk)


def _attrs(tag_attrs: bytes) -> dict[bytes, bytes]:
    return {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _RE_ATTR.finditer(tag_attrs)}


def _field_id(attrs: dict[bytes, bytes]) -> str:
    """The column ID astropy gives a FIELD (its ``ID``, else its name made a valid XML id)."""
    from astropy.utils.xml.check import fix_id

    ident = attrs.get(b"ID") or attrs.get(b"id")
    if ident:
        return ident.decode("utf-8", errors="replace")
    return str(fix_id(attrs.get(b"name", b"").decode("utf-8", errors="replace")))


def _as_text(data: bytes, column: str) -> tuple[bytes, str | None] | None:
    """``data`` with the numeric FIELD whose ID is ``column`` declared as text (``char``, any
    length) and the FIELD's NULL value (``<VALUES null=...>``, None if it has none); None when
    there is no such FIELD before the first TABLEDATA."""
    table = _RE_TABLEDATA.search(data)
    if table is None:
        return None
    head = data[:table.start()]
    for m in _RE_FIELD.finditer(head):
        attrs = _attrs(m.group(1))
        if attrs.get(b"datatype") not in _NUMERIC or _field_id(attrs) != column:
            continue
        kept = b"".join(a.group(0) + b" " for a in _RE_ATTR.finditer(m.group(1))
                        if a.group(1) not in (b"datatype", b"arraysize"))
        tag = m.group(0)
        new = tag[:tag.index(b"FIELD") + 5] + b" " + kept + b'datatype="char" arraysize="*"' + \
            (b"/>" if tag.endswith(b"/>") else b">")
        body = b"" if tag.endswith(b"/>") else head[m.end():].split(b"FIELD>", 1)[0]
        null = _RE_NULL.search(body)
        text = null.group(1).decode("utf-8", errors="replace").strip() if null else None
        return head[:m.start()] + new + data[m.start() + len(tag):], text
    return None


def _mask_nulls(votable: Any, nulls: dict[str, str | None]) -> None:
    """Mask the cells of the columns read as text that the declared type would have read as
    NULL: empty, 'NaN' (any case) or the FIELD's ``VALUES null``."""
    array = votable.get_first_table().array
    for column, null in nulls.items():
        if column in array.dtype.names:
            blank = {"", "nan", (null or "").lower()}
            array.mask[column] |= np.array([str(v).strip().lower() in blank for v in array.data[column]], dtype=bool)


def parse_answer(data: bytes) -> Any:
    """The VOTable of ``data`` (astropy's parser, as pyvo uses it). A numeric column with a cell
    that is no number of its type is read as text, column by column (at most once per FIELD;
    its NULL cells stay NULL); any other parse error is raised as astropy raises it."""
    from astropy.io.votable import parse

    as_text: dict[str, str | None] = {}
    while True:
        try:
            votable = parse(io.BytesIO(data))
        except Exception as exc:  # astropy raises ValueError, TypeError, VOWarning subclasses, ...
            found = _RE_BAD_CELL.findall(str(exc))  # astropy appends the cell's place to the message
            column = found[-1] if found else ""
            changed = _as_text(data, column) if column and column not in as_text else None
            if changed is None:
                raise
            data, as_text[column] = changed
            continue
        if as_text:  # (an error answer has no table)
            _mask_nulls(votable, as_text)
        return votable


def read_answer(read: Callable[[int], bytes], url: str) -> Any:
    """:func:`read_bounded` then :func:`parse_answer`: the VOTable of one TAP answer."""
    return parse_answer(read_bounded(read, url))
