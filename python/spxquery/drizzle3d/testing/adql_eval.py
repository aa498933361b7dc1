"""The ADQL subset the simulated TAP service understands, evaluated against index rows.

Supported: ``SELECT [TOP n] <columns> FROM spherex.artifact/plane ... WHERE`` with
``INTERSECTS(<alias>.poly, CIRCLE('ICRS', ra, dec, r)) = 1`` (spherical polygon versus cap),
``CONTAINS(POINT('ICRS', ra, dec), <alias>.poly) = 1``, ``col = '...'``, ``col [NOT] IN (...)``,
``(col IS NULL OR col NOT IN (...))`` on character columns and ``col op number`` on numeric
columns, all joined by AND. That is what this project's client and spxquery 0.4.1 send.
Anything else raises :class:`AdqlError` (the service answers 400), never a silent wrong
answer. Angles in degrees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from .spherical import polygon_contains_point, polygon_intersects_circle
from .tap_schema import NUMERIC_COLUMNS, POLY_COLUMN, STRING_COLUMNS, is_column

Row = dict[str, Any]
Predicate = Callable[[Row], bool]

#: A decimal number as ADQL writes it.
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COL = r"(?:\w+\.)?(\w+)"
_RE_INTERSECTS = re.compile(
    rf"INTERSECTS\s*\(\s*{_COL}\s*,\s*CIRCLE\s*\(\s*'ICRS'\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*\)\s*\)"
    r"\s*=\s*1",
    re.IGNORECASE,
)
_RE_CONTAINS_POINT = re.compile(
    rf"CONTAINS\s*\(\s*POINT\s*\(\s*'ICRS'\s*,\s*({NUMBER})\s*,\s*({NUMBER})\s*\)\s*,\s*{_COL}\s*\)\s*=\s*1",
    re.IGNORECASE,
)
_RE_NULL_OR_NOT_IN = re.compile(
    rf"\(\s*{_COL}\s+IS\s+NULL\s+OR\s+{_COL}\s+NOT\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE
)
_RE_STR_EQ = re.compile(rf"{_COL}\s*=\s*'([^']*)'", re.IGNORECASE)
_RE_STR_IN = re.compile(rf"{_COL}\s+(NOT\s+)?IN\s*\(([^)]*)\)", re.IGNORECASE)
_RE_NUM_CMP = re.compile(rf"{_COL}\s*(<=|>=|<>|!=|=|<|>)\s*({NUMBER})(?![\w.])", re.IGNORECASE)
_RE_TOP = re.compile(r"^\s*SELECT\s+(?:TOP\s+(\d+)\s+)?(.*?)\s+FROM\s", re.IGNORECASE | re.DOTALL)
_RE_FROM = re.compile(r"\bFROM\s+spherex\.(artifact|plane)\b", re.IGNORECASE)

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "=": lambda a, b: a == b,
    "<>": lambda a, b: a != b,
    "!=": lambda a, b: a != b,
}


class AdqlError(ValueError):
    """The query uses something this simulated TAP service does not understand."""


def _select_columns(items: str) -> list[str]:
    columns: list[str] = []
    for raw in items.split(","):
        item = raw.strip()
        cm = re.fullmatch(rf"{_COL}(?:\s+AS\s+(\w+))?", item, re.IGNORECASE)
        if not cm:
            raise AdqlError(f"unsupported select item {item!r}")
        name = cm.group(1).lower()
        if not is_column(name):
            raise AdqlError(f"column {name!r} does not exist")
        columns.append(name)
    return columns


def _intersects(ra: float, dec: float, r: float) -> Predicate:
    return lambda row: polygon_intersects_circle(row[POLY_COLUMN], ra, dec, r)


def _contains(ra: float, dec: float) -> Predicate:
    return lambda row: polygon_contains_point(row[POLY_COLUMN], ra, dec)


def _spatial_predicates(where: str) -> list[Predicate]:
    preds: list[Predicate] = []
    for m in _RE_INTERSECTS.finditer(where):
        if m.group(1).lower() != POLY_COLUMN:
            raise AdqlError(f"INTERSECTS on unknown geometry column {m.group(1).lower()!r}")
        preds.append(_intersects(float(m.group(2)), float(m.group(3)), float(m.group(4))))
    for m in _RE_CONTAINS_POINT.finditer(where):
        if m.group(3).lower() != POLY_COLUMN:
            raise AdqlError(f"CONTAINS on unknown geometry column {m.group(3).lower()!r}")
        preds.append(_contains(float(m.group(1)), float(m.group(2))))
    if not preds:
        raise AdqlError("query has no INTERSECTS/CONTAINS constraint on poly")
    return preds


def _null_or_not_in(col: str, values: set[str]) -> Predicate:
    return lambda row: row.get(col) is None or row.get(col) not in values


def _equals(col: str, value: str) -> Predicate:
    return lambda row: row.get(col) == value


def _in(col: str, values: set[str], negated: bool) -> Predicate:
    if negated:
        return lambda row: row.get(col) is not None and row.get(col) not in values
    return lambda row: row.get(col) in values


def _compare(col: str, op: str, value: float) -> Predicate:
    return lambda row: _COMPARE[op](float(row[col]), value)


def _string_predicates(where: str) -> tuple[list[Predicate], str]:
    """Predicates of the character-column constraints, and ``where`` without the
    ``IS NULL OR NOT IN`` groups (so that their parts are not read twice)."""
    preds: list[Predicate] = []
    for m in _RE_NULL_OR_NOT_IN.finditer(where):
        col, col2 = m.group(1).lower(), m.group(2).lower()
        if col != col2 or col not in STRING_COLUMNS:
            raise AdqlError(f"unsupported IS NULL OR NOT IN on {col!r}/{col2!r}")
        preds.append(_null_or_not_in(col, set(re.findall(r"'([^']*)'", m.group(3)))))
    where = _RE_NULL_OR_NOT_IN.sub(" ", where)
    for m in _RE_STR_EQ.finditer(where):
        col = m.group(1).lower()
        if col not in STRING_COLUMNS:
            raise AdqlError(f"string comparison on unknown column {col!r}")
        preds.append(_equals(col, m.group(2)))
    for m in _RE_STR_IN.finditer(where):
        col = m.group(1).lower()
        if col not in STRING_COLUMNS:
            raise AdqlError(f"IN list on unknown column {col!r}")
        preds.append(_in(col, set(re.findall(r"'([^']*)'", m.group(3))), bool(m.group(2))))
    return preds, where


def _numeric_predicates(where: str) -> list[Predicate]:
    """Comparisons ``col op number``, leaving out the numbers inside the geometry functions."""
    stripped = _RE_CONTAINS_POINT.sub(" ", _RE_INTERSECTS.sub(" ", where))
    preds: list[Predicate] = []
    for m in _RE_NUM_CMP.finditer(stripped):
        col = m.group(1).lower()
        if col not in NUMERIC_COLUMNS:
            raise AdqlError(f"numeric comparison on unknown column {col!r}")
        preds.append(_compare(col, m.group(2), float(m.group(3))))
    return preds


def evaluate_adql(query: str, rows: Sequence[Row]) -> tuple[list[str], list[Row]]:
    """Evaluate the supported ADQL subset against index rows.

    Returns (selected column names, matching rows sorted by time_bounds_lower).
    Raises :class:`AdqlError` on anything unsupported (unknown column, missing
    FROM spherex.*, no spatial constraint).
    """
    m = _RE_TOP.match(query)
    if not m:
        raise AdqlError("query must start with SELECT ... FROM")
    top = int(m.group(1)) if m.group(1) else None
    if not _RE_FROM.search(query):
        raise AdqlError("only spherex.artifact / spherex.plane are known to this service")
    columns = _select_columns(m.group(2))
    parts = re.split(r"\bWHERE\b", query, maxsplit=1, flags=re.IGNORECASE)
    where = re.split(r"\bORDER\s+BY\b", parts[1], flags=re.IGNORECASE)[0] if len(parts) > 1 else ""
    preds = _spatial_predicates(where)
    string_preds, where = _string_predicates(where)
    preds += string_preds + _numeric_predicates(where)
    out = [row for row in rows if all(p(row) for p in preds)]
    out.sort(key=lambda r: float(r["time_bounds_lower"]))
    return columns, out if top is None else out[:top]
