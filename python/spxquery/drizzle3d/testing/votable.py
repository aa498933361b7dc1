"""TAP result documents of the simulated service: VOTable 1.4, TABLEDATA, written by hand.

Written by hand because astropy 8.0's C TABLEDATA writer corrupts the heap intermittently
(astropy issue 20419), which crashed threaded servers. ``status`` ``"OVERFLOW"`` puts the
second ``QUERY_STATUS`` after the table, as TAP requires for a truncated result; ``"ERROR"``
writes no table.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from xml.sax.saxutils import escape as xml_escape

from .tap_schema import NUMERIC_COLUMNS, POLY_COLUMN


def _field(name: str, datatypes: dict[str, str]) -> str:
    if name in datatypes:
        kind = datatypes[name].removesuffix("[]")
        size = ' arraysize="*"' if kind == "char" or datatypes[name].endswith("[]") else ""
        return f'   <FIELD name="{name}" ID="{name}" datatype="{kind}"{size}/>'
    if name in NUMERIC_COLUMNS:
        return f'   <FIELD name="{name}" ID="{name}" datatype="{NUMERIC_COLUMNS[name]}"/>'
    if name == POLY_COLUMN:
        return f'   <FIELD name="{name}" ID="{name}" datatype="double" arraysize="*" xtype="polygon" unit="deg"/>'
    return f'   <FIELD name="{name}" ID="{name}" datatype="char" arraysize="*"/>'


def _cell(name: str, v: Any, datatypes: dict[str, str]) -> str:
    if v is None:
        return "<TD/>"
    if name in datatypes:
        text = " ".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
        return f"<TD>{xml_escape(text)}</TD>"
    if name == POLY_COLUMN:
        return "<TD>" + " ".join(repr(float(x)) for x in v) + "</TD>"
    if NUMERIC_COLUMNS.get(name) == "long":
        return f"<TD>{int(v)}</TD>"
    if name in NUMERIC_COLUMNS:
        return f"<TD>{float(v)!r}</TD>"
    return f"<TD>{xml_escape(str(v))}</TD>"


def votable_bytes(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], status: str = "OK", message: str = "",
    datatypes: dict[str, str] | None = None,
) -> bytes:
    """Serialise ``rows`` (their ``columns``) to a TAP result VOTable
    (RESOURCE type="results") with ``QUERY_STATUS`` ``status`` and ``message``.
    ``datatypes`` declares some columns with another VOTable datatype (``"double[]"``: an
    array) and writes their cells as given (``str(value)``), e.g. a hostile answer with
    ``contentlength`` '12abc'."""
    types = dict(datatypes or {})
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<VOTABLE version="1.4" xmlns="http://www.ivoa.net/xml/VOTable/v1.3">',
        ' <RESOURCE type="results">',
    ]
    first = "OK" if status == "OVERFLOW" else status
    if message:
        out.append(f'  <INFO name="QUERY_STATUS" value="{first}">{xml_escape(message)}</INFO>')
    else:
        out.append(f'  <INFO name="QUERY_STATUS" value="{first}"/>')
    if status != "ERROR":
        out.append("  <TABLE>")
        out.extend(_field(name, types) for name in columns)
        out.append("   <DATA><TABLEDATA>")
        for row in rows:
            out.append("    <TR>" + "".join(_cell(name, row.get(name), types) for name in columns) + "</TR>")
        out.append("   </TABLEDATA></DATA>")
        out.append("  </TABLE>")
    if status == "OVERFLOW":
        out.append('  <INFO name="QUERY_STATUS" value="OVERFLOW"/>')
    out.append(" </RESOURCE>")
    out.append("</VOTABLE>")
    return ("\n".join(out) + "\n").encode("utf-8")
