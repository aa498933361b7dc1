"""A real loopback HTTP server imitating IRSA for SPHEREx: TAP + file serving.

Endpoints (relative to ``base_url``, e.g. ``http://127.0.0.1:PORT``):

- ``/TAP/sync`` (GET or POST, ``QUERY``, ``LANG=ADQL``, ``REQUEST=doQuery``,
  optional ``MAXREC``, ``FORMAT``/``RESPONSEFORMAT``): answers a VOTable.
- ``/TAP/async`` (UWS): POST creates a job (303 to ``/TAP/async/<id>``); the job
  document, ``/phase`` (POST ``PHASE=RUN``/``ABORT``), ``/results/result`` and
  DELETE are supported.
- ``/TAP/availability``, ``/TAP/capabilities``: minimal VOSI documents.
- ``/ibe/data/spherex/<path>``: files under ``root`` with ``Range: bytes=a-b``
  (206 + Content-Range), Content-Length, ETag, HEAD. A query string
  ``?center=<ra>,<dec>&size=<value>[deg|arcmin|arcsec]`` returns a cutout made
  by ``cutout_func(path, ra_deg, dec_deg, size_deg) -> HDUList`` (default:
  ``spxquery.drizzle3d.simulate.make_cutout`` when it exists).

The query evaluator really applies the constraints it understands:
``INTERSECTS(<alias>.poly, CIRCLE('ICRS', ra, dec, r)) = 1`` (spherical
polygon-versus-cap test), ``CONTAINS(POINT('ICRS', ra, dec), <alias>.poly) = 1``,
``energy_bandpassname = '...'`` / ``IN (...)``, ``producttype = / IN / NOT IN``,
and numeric comparisons ``col op number`` on numeric columns. Every received
query text is recorded in ``server.queries``.

Faults come from ``server.faults`` (a :class:`FaultPlan`): per-path queues of
:class:`Fault` objects consumed one per matching request.
"""

from __future__ import annotations

import email.utils
import hashlib
import io
import json
import logging
import math
import re
import socket
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import parse_qs, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import numpy as np

logger = logging.getLogger(__name__)

DATA_PREFIX = "/ibe/data/spherex/"
TAP_PREFIX = "/TAP"

# Columns the simulated TAP schema knows, with VOTable datatypes.
_NUMERIC_COLUMNS = {
    "energy_bounds_lower": "double",
    "energy_bounds_upper": "double",
    "time_bounds_lower": "double",
    "time_bounds_upper": "double",
    "contentlength": "long",
}
_STRING_COLUMNS = (
    "obs_publisher_did",
    "energy_bandpassname",
    "uri",
    "contentchecksum",
    "producttype",
    "collection",
)
_POLY_COLUMN = "poly"


class CutoutUnavailable(RuntimeError):
    """The server was asked for a cutout but has no function to make one (HTTP 501)."""


class AdqlError(ValueError):
    """The query uses something this simulated TAP service does not understand."""


# ----------------------------------------------------------------------------
# Spherical geometry (degrees in, unit vectors inside)
# ----------------------------------------------------------------------------


def _unit(ra_deg: float, dec_deg: float) -> np.ndarray:
    ra, dec = math.radians(ra_deg), math.radians(dec_deg)
    return np.array([math.cos(dec) * math.cos(ra), math.cos(dec) * math.sin(ra), math.sin(dec)])


def _angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between unit vectors (radians), accurate at small separations."""
    return math.atan2(float(np.linalg.norm(np.cross(a, b))), float(np.dot(a, b)))


def _arc_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Angular distance (radians) from point p to the minor great-circle arc a-b."""
    n = np.cross(a, b)
    nn = float(np.linalg.norm(n))
    if nn < 1e-15:
        return _angle(p, a)
    n = n / nn
    f = p - float(np.dot(p, n)) * n
    fn = float(np.linalg.norm(f))
    if fn > 1e-15:
        f = f / fn
        # f lies on the arc when it is between a and b along the great circle
        if float(np.dot(np.cross(a, f), n)) >= 0.0 and float(np.dot(np.cross(f, b), n)) >= 0.0:
            return abs(math.asin(max(-1.0, min(1.0, float(np.dot(p, n))))))
    return min(_angle(p, a), _angle(p, b))


def _point_in_convex_polygon(p: np.ndarray, verts: Sequence[np.ndarray]) -> bool:
    """True when p lies inside (or on) a convex spherical polygon (either winding)."""
    signs = []
    for i in range(len(verts)):
        s = float(np.dot(np.cross(verts[i], verts[(i + 1) % len(verts)]), p))
        signs.append(s)
    return all(s >= -1e-15 for s in signs) or all(s <= 1e-15 for s in signs)


def polygon_intersects_circle(poly: Sequence[float], ra: float, dec: float, radius: float) -> bool:
    """True when a convex spherical polygon (flat [ra1, dec1, ra2, dec2, ...], deg)
    and the cap of ``radius`` deg around (ra, dec) share any point.

    Tested exactly: the centre inside the polygon, or any edge arc (including
    its vertices) closer to the centre than ``radius``.
    """
    coords = [float(v) for v in poly]
    if len(coords) < 6 or len(coords) % 2:
        raise ValueError(f"polygon needs >= 3 (ra, dec) pairs, got {len(coords)} numbers")
    verts = [_unit(coords[i], coords[i + 1]) for i in range(0, len(coords), 2)]
    p = _unit(ra, dec)
    if _point_in_convex_polygon(p, verts):
        return True
    r = math.radians(radius)
    return any(_arc_distance(p, verts[i], verts[(i + 1) % len(verts)]) <= r for i in range(len(verts)))


def polygon_contains_point(poly: Sequence[float], ra: float, dec: float) -> bool:
    """True when the point (ra, dec) (deg) is inside the convex polygon."""
    coords = [float(v) for v in poly]
    verts = [_unit(coords[i], coords[i + 1]) for i in range(0, len(coords), 2)]
    return _point_in_convex_polygon(_unit(ra, dec), verts)


# ----------------------------------------------------------------------------
# ADQL evaluation (the subset our client and the seed send)
# ----------------------------------------------------------------------------

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_COL = r"(?:\w+\.)?(\w+)"
_RE_INTERSECTS = re.compile(
    rf"INTERSECTS\s*\(\s*{_COL}\s*,\s*CIRCLE\s*\(\s*'ICRS'\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*\)\s*=\s*1",
    re.IGNORECASE,
)
_RE_CONTAINS_POINT = re.compile(
    rf"CONTAINS\s*\(\s*POINT\s*\(\s*'ICRS'\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\)\s*,\s*{_COL}\s*\)\s*=\s*1",
    re.IGNORECASE,
)
_RE_NULL_OR_NOT_IN = re.compile(
    rf"\(\s*{_COL}\s+IS\s+NULL\s+OR\s+{_COL}\s+NOT\s+IN\s*\(([^)]*)\)\s*\)", re.IGNORECASE
)
_RE_STR_EQ = re.compile(rf"{_COL}\s*=\s*'([^']*)'", re.IGNORECASE)
_RE_STR_IN = re.compile(rf"{_COL}\s+(NOT\s+)?IN\s*\(([^)]*)\)", re.IGNORECASE)
_RE_NUM_CMP = re.compile(rf"{_COL}\s*(<=|>=|<>|!=|=|<|>)\s*({_NUM})(?![\w.])", re.IGNORECASE)
_RE_TOP = re.compile(r"^\s*SELECT\s+(?:TOP\s+(\d+)\s+)?(.*?)\s+FROM\s", re.IGNORECASE | re.DOTALL)
_RE_FROM = re.compile(r"\bFROM\s+spherex\.(artifact|plane)\b", re.IGNORECASE)


def _compare(a: float, op: str, b: float) -> bool:
    return {
        "<=": a <= b, ">=": a >= b, "<": a < b, ">": a > b, "=": a == b, "<>": a != b, "!=": a != b,
    }[op]


def evaluate_adql(query: str, rows: Sequence[Dict[str, Any]]) -> Tuple[List[str], List[Dict[str, Any]]]:
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
    columns: List[str] = []
    for item in m.group(2).split(","):
        item = item.strip()
        cm = re.fullmatch(rf"{_COL}(?:\s+AS\s+(\w+))?", item, re.IGNORECASE)
        if not cm:
            raise AdqlError(f"unsupported select item {item!r}")
        name = cm.group(1).lower()
        if name not in _NUMERIC_COLUMNS and name not in _STRING_COLUMNS and name != _POLY_COLUMN:
            raise AdqlError(f"column {name!r} does not exist")
        columns.append(name)
    where = re.split(r"\bWHERE\b", query, maxsplit=1, flags=re.IGNORECASE)
    where_text = re.split(r"\bORDER\s+BY\b", where[1], flags=re.IGNORECASE)[0] if len(where) > 1 else ""

    preds: List[Callable[[Dict[str, Any]], bool]] = []
    spatial = False
    for im in _RE_INTERSECTS.finditer(where_text):
        col, ra, dec, r = im.group(1).lower(), float(im.group(2)), float(im.group(3)), float(im.group(4))
        if col != _POLY_COLUMN:
            raise AdqlError(f"INTERSECTS on unknown geometry column {col!r}")
        preds.append(lambda row, ra=ra, dec=dec, r=r: polygon_intersects_circle(row["poly"], ra, dec, r))
        spatial = True
    for cm in _RE_CONTAINS_POINT.finditer(where_text):
        ra, dec, col = float(cm.group(1)), float(cm.group(2)), cm.group(3).lower()
        if col != _POLY_COLUMN:
            raise AdqlError(f"CONTAINS on unknown geometry column {col!r}")
        preds.append(lambda row, ra=ra, dec=dec: polygon_contains_point(row["poly"], ra, dec))
        spatial = True
    if not spatial:
        raise AdqlError("query has no INTERSECTS/CONTAINS constraint on poly")
    # String constraints
    for nm in _RE_NULL_OR_NOT_IN.finditer(where_text):
        col, col2, body = nm.group(1).lower(), nm.group(2).lower(), nm.group(3)
        if col != col2 or col not in _STRING_COLUMNS:
            raise AdqlError(f"unsupported IS NULL OR NOT IN on {col!r}/{col2!r}")
        values = set(re.findall(r"'([^']*)'", body))
        preds.append(lambda row, col=col, values=values: row.get(col) is None or row.get(col) not in values)
    where_text = _RE_NULL_OR_NOT_IN.sub(" ", where_text)
    for sm in _RE_STR_EQ.finditer(where_text):
        col, val = sm.group(1).lower(), sm.group(2)
        if col not in _STRING_COLUMNS:
            raise AdqlError(f"string comparison on unknown column {col!r}")
        preds.append(lambda row, col=col, val=val: row.get(col) == val)
    for sm in _RE_STR_IN.finditer(where_text):
        col, neg, body = sm.group(1).lower(), bool(sm.group(2)), sm.group(3)
        if col not in _STRING_COLUMNS:
            raise AdqlError(f"IN list on unknown column {col!r}")
        values = set(re.findall(r"'([^']*)'", body))
        if neg:
            preds.append(lambda row, col=col, values=values: row.get(col) is not None and row.get(col) not in values)
        else:
            preds.append(lambda row, col=col, values=values: row.get(col) in values)
    # Numeric comparisons (skip the ones inside the geometry functions)
    stripped = _RE_CONTAINS_POINT.sub(" ", _RE_INTERSECTS.sub(" ", where_text))
    for nm in _RE_NUM_CMP.finditer(stripped):
        col, op, val = nm.group(1).lower(), nm.group(2), float(nm.group(3))
        if col not in _NUMERIC_COLUMNS:
            raise AdqlError(f"numeric comparison on unknown column {col!r}")
        preds.append(lambda row, col=col, op=op, val=val: _compare(float(row[col]), op, val))

    out = [row for row in rows if all(p(row) for p in preds)]
    out.sort(key=lambda r: float(r["time_bounds_lower"]))
    if top is not None:
        out = out[:top]
    return columns, out


def _votable_bytes(
    columns: Sequence[str], rows: Sequence[Dict[str, Any]], status: str = "OK", message: str = ""
) -> bytes:
    """Serialise rows to a TAP result VOTable 1.4 (RESOURCE type="results",
    TABLEDATA). Written by hand: astropy 8.0's C TABLEDATA writer corrupts the
    heap intermittently (astropy issue 20419), which crashed threaded servers."""
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
        for name in columns:
            if name in _NUMERIC_COLUMNS:
                out.append(f'   <FIELD name="{name}" ID="{name}" datatype="{_NUMERIC_COLUMNS[name]}"/>')
            elif name == _POLY_COLUMN:
                out.append(f'   <FIELD name="{name}" ID="{name}" datatype="double" arraysize="*" xtype="polygon" unit="deg"/>')
            else:
                out.append(f'   <FIELD name="{name}" ID="{name}" datatype="char" arraysize="*"/>')
        out.append("   <DATA><TABLEDATA>")
        for row in rows:
            cells = []
            for name in columns:
                v = row.get(name)
                if v is None:
                    cells.append("<TD/>")
                elif name == _POLY_COLUMN:
                    cells.append("<TD>" + " ".join(repr(float(x)) for x in v) + "</TD>")
                elif _NUMERIC_COLUMNS.get(name) == "long":
                    cells.append(f"<TD>{int(v)}</TD>")
                elif name in _NUMERIC_COLUMNS:
                    cells.append(f"<TD>{float(v)!r}</TD>")
                else:
                    cells.append(f"<TD>{xml_escape(str(v))}</TD>")
            out.append("    <TR>" + "".join(cells) + "</TR>")
        out.append("   </TABLEDATA></DATA>")
        out.append("  </TABLE>")
    if status == "OVERFLOW":
        out.append('  <INFO name="QUERY_STATUS" value="OVERFLOW"/>')
    out.append(" </RESOURCE>")
    out.append("</VOTABLE>")
    return ("\n".join(out) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------
# Faults
# ----------------------------------------------------------------------------


@dataclass
class Fault:
    """One injected misbehaviour, applied to one matching request.

    status: answer this HTTP status (with ``retry_after`` seconds if given).
    delay: sleep this long (s) before answering (use > client timeout).
    drop_after: send only this many body bytes, then close the connection.
    content_length_delta: advertise Content-Length = true length + delta.
    ignore_range: answer 200 with the whole file even when Range was asked.
    """

    status: Optional[int] = None
    retry_after: Optional[float] = None
    delay: float = 0.0
    drop_after: Optional[int] = None
    content_length_delta: int = 0
    ignore_range: bool = False


class FaultPlan:
    """Per-path fault queues. ``add(match, *faults, times=1)``: the next requests
    whose path contains ``match`` get the faults in order (each ``times`` times;
    ``times=-1`` = forever)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: List[List[Any]] = []  # [match, fault, remaining]
        self.applied: List[Tuple[str, Fault]] = []

    def add(self, match: str, *faults: Fault, times: int = 1) -> "FaultPlan":
        with self._lock:
            for f in faults:
                self._entries.append([match, f, times])
        return self

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def pending(self) -> int:
        """Number of one-shot faults not yet consumed."""
        with self._lock:
            return sum(e[2] for e in self._entries if e[2] > 0)

    def take(self, path: str) -> Optional[Fault]:
        with self._lock:
            for entry in self._entries:
                if entry[0] in path and entry[2] != 0:
                    if entry[2] > 0:
                        entry[2] -= 1
                    self.applied.append((path, entry[1]))
                    return entry[1]
        return None


# ----------------------------------------------------------------------------
# Index loading and cutouts
# ----------------------------------------------------------------------------


def load_index(root: Path) -> List[Dict[str, Any]]:
    """Rows of ``root/archive_index.json`` (``{"rows": [...]}``, design.md format)."""
    path = Path(root) / "archive_index.json"
    if not path.exists():
        raise FileNotFoundError(f"archive index not found: {path}")
    data = json.loads(path.read_text())
    rows = data["rows"] if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ValueError(f"{path}: 'rows' must be a list")
    return rows


def _default_cutout_func() -> Optional[Callable[..., Any]]:
    try:
        from spxquery.drizzle3d.simulate import make_cutout  # type: ignore[attr-defined]
    except ImportError:
        return None
    return make_cutout


_SIZE_UNITS = {"": 1.0, "deg": 1.0, "d": 1.0, "arcmin": 1 / 60.0, "arcsec": 1 / 3600.0}


def parse_cutout_size(text: str) -> float:
    """IRSA ``size=`` value (``0.1``, ``0.1deg``, ``30arcmin``, ``90arcsec``) -> degrees."""
    m = re.fullmatch(rf"\s*({_NUM})\s*([a-z]*)\s*", text)
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad cutout size {text!r}")
    return float(m.group(1)) * _SIZE_UNITS[m.group(2)]


# ----------------------------------------------------------------------------
# Server
# ----------------------------------------------------------------------------


@dataclass
class _Job:
    job_id: str
    query: str
    params: Dict[str, str]
    phase: str = "PENDING"
    result: Optional[bytes] = None
    error: str = ""
    created: float = field(default_factory=time.time)


class ArchiveServer:
    """Loopback IRSA imitation. Use as a context manager::

        with ArchiveServer(root) as srv:
            srv.tap_url, srv.base_url, srv.queries, srv.faults.add(...)

    ``root``: directory holding the mirror tree (``<release>/level2/...``) and,
    unless ``index_rows`` is given, ``archive_index.json``.
    """

    def __init__(
        self,
        root: Optional[Path] = None,
        index_rows: Optional[Sequence[Dict[str, Any]]] = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cutout_func: Optional[Callable[..., Any]] = None,
        chunk_size: int = 16384,
        max_rows: Optional[int] = None,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        if index_rows is None:
            if self.root is None:
                raise ValueError("ArchiveServer needs root (with archive_index.json) or index_rows")
            index_rows = load_index(self.root)
        self.rows: List[Dict[str, Any]] = [dict(r) for r in index_rows]
        self.host = host
        self.port = port
        self.cutout_func = cutout_func
        self.chunk_size = int(chunk_size)
        self.max_rows = max_rows  # service row limit (OVERFLOW beyond it), None = unlimited
        self.faults = FaultPlan()
        self.queries: List[str] = []
        self.requests: List[Dict[str, Any]] = []
        self.jobs: Dict[str, _Job] = {}
        self._lock = threading.Lock()
        self._cutout_cache: Dict[Tuple[str, str], bytes] = {}
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("ArchiveServer is not running")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def tap_url(self) -> str:
        return self.base_url + TAP_PREFIX

    def url_for(self, uri: str) -> str:
        """Download URL of an index ``uri`` (``ibe/data/spherex/...``) on this server."""
        return self.base_url + "/" + uri.lstrip("/")

    def start(self) -> "ArchiveServer":
        server = self

        class Handler(_Handler):
            archive = server

        self._stop.clear()
        self._httpd = _QuietServer((self.host, self.port), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="ArchiveServer", daemon=True)
        self._thread.start()
        logger.debug("ArchiveServer listening on %s", self.base_url)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> "ArchiveServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- helpers used by the handler ----------------------------------------
    def record(self, **info: Any) -> None:
        with self._lock:
            self.requests.append(info)

    def hits(self, match: str) -> int:
        """Number of requests whose path contains ``match``."""
        with self._lock:
            return sum(1 for r in self.requests if match in r["path"])

    def run_query(self, params: Dict[str, str]) -> Tuple[int, bytes]:
        query = params.get("QUERY", "")
        with self._lock:
            self.queries.append(query)
        if params.get("LANG", "ADQL").upper() != "ADQL":
            return 400, _votable_bytes([], [], "ERROR", f"unsupported LANG {params.get('LANG')!r}")
        if params.get("REQUEST", "doQuery") != "doQuery":
            return 400, _votable_bytes([], [], "ERROR", f"unsupported REQUEST {params.get('REQUEST')!r}")
        fmt = (params.get("RESPONSEFORMAT") or params.get("FORMAT") or "votable").lower()
        if "votable" not in fmt and "xml" not in fmt:
            return 400, _votable_bytes([], [], "ERROR", f"unsupported format {fmt!r}")
        try:
            columns, rows = evaluate_adql(query, self.rows)
        except AdqlError as exc:
            return 400, _votable_bytes([], [], "ERROR", f"ADQL error: {exc}")
        status = "OK"
        maxrec = params.get("MAXREC")
        limit = self.max_rows
        if maxrec is not None and maxrec.strip():
            limit = int(maxrec) if limit is None else min(limit, int(maxrec))
        if limit is not None:
            if len(rows) > limit:
                rows = rows[:limit]
                status = "OVERFLOW"
        return 200, _votable_bytes(columns, rows, status)

    def local_file(self, rel: str) -> Optional[Path]:
        if self.root is None:
            return None
        path = (self.root / unquote(rel)).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def cutout_bytes(self, path: Path, query: Dict[str, List[str]]) -> bytes:
        key = (str(path), json.dumps(query, sort_keys=True))
        with self._lock:
            cached = self._cutout_cache.get(key)
        if cached is not None:
            return cached
        func = self.cutout_func or _default_cutout_func()
        if func is None:
            raise CutoutUnavailable("no cutout function available (spxquery.drizzle3d.simulate.make_cutout)")
        ra_s, dec_s = query["center"][0].split(",")[:2]
        ra = float(ra_s.rstrip("d"))
        dec = float(dec_s.rstrip("d"))
        size = parse_cutout_size(query["size"][0])
        hdul = func(path, ra, dec, size)
        buf = io.BytesIO()
        hdul.writeto(buf)
        data = buf.getvalue()
        with self._lock:
            self._cutout_cache[key] = data
        return data


def _uws_job_xml(job: _Job, job_url: str) -> bytes:
    # fixed timestamps: ERFA warns ("dubious year") on dates past its leap-second table
    ts = "2025-06-01T00:00:00Z"
    results = ""
    if job.phase == "COMPLETED":
        results = f'<uws:result id="result" xlink:href="{xml_escape(job_url)}/results/result"/>'
    error = ""
    if job.phase == "ERROR":
        error = (
            '<uws:errorSummary type="fatal" hasDetail="false">'
            f"<uws:message>{xml_escape(job.error)}</uws:message></uws:errorSummary>"
        )
    params = "".join(
        f'<uws:parameter id="{xml_escape(k.lower())}">{xml_escape(v)}</uws:parameter>' for k, v in job.params.items()
    )
    text = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<uws:job xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="1.1">'
        f"<uws:jobId>{job.job_id}</uws:jobId>"
        '<uws:runId/><uws:ownerId xsi:nil="true"/>'
        f"<uws:phase>{job.phase}</uws:phase>"
        '<uws:quote xsi:nil="true"/>'
        f"<uws:creationTime>{ts}</uws:creationTime>"
        f"<uws:startTime>{ts}</uws:startTime><uws:endTime>{ts}</uws:endTime>"
        "<uws:executionDuration>600</uws:executionDuration>"
        f"<uws:destruction>{ts}</uws:destruction>"
        f"<uws:parameters>{params}</uws:parameters>"
        f"<uws:results>{results}</uws:results>{error}"
        "</uws:job>"
    )
    return text.encode()


_CAPABILITIES = b"""<?xml version="1.0" encoding="UTF-8"?>
<vosi:capabilities xmlns:vosi="http://www.ivoa.net/xml/VOSICapabilities/v1.0"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1"
  xmlns:tr="http://www.ivoa.net/xml/TAPRegExt/v1.0">
  <capability standardID="ivo://ivoa.net/std/TAP" xsi:type="tr:TableAccess">
    <interface xsi:type="vs:ParamHTTP" role="std"><accessURL use="base">BASE</accessURL></interface>
    <language><name>ADQL</name><version ivo-id="ivo://ivoa.net/std/ADQL#v2.0">2.0</version></language>
    <outputFormat><mime>application/x-votable+xml</mime></outputFormat>
  </capability>
</vosi:capabilities>
"""

def _tables_xml() -> bytes:
    """VOSI tableset describing spherex.plane and spherex.artifact (simulated columns)."""
    plane = ["obs_publisher_did", "energy_bandpassname", "energy_bounds_lower", "energy_bounds_upper",
             "time_bounds_lower", "time_bounds_upper", "poly"]
    artifact = ["uri", "contentlength", "contentchecksum", "producttype"]

    def table(name: str, cols: Sequence[str]) -> str:
        body = "".join(
            f"<column><name>{c}</name><dataType xsi:type=\"vs:VOTableType\">"
            f"{_NUMERIC_COLUMNS.get(c, 'double' if c == _POLY_COLUMN else 'char')}</dataType></column>"
            for c in cols
        )
        return f"<table><name>{name}</name>{body}</table>"

    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<vosi:tableset xmlns:vosi="http://www.ivoa.net/xml/VOSITables/v1.0" '
        'xmlns:vs="http://www.ivoa.net/xml/VODataService/v1.1" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        "<schema><name>spherex</name>"
        + table("spherex.plane", plane) + table("spherex.artifact", artifact)
        + "</schema></vosi:tableset>"
    ).encode()


_AVAILABILITY = b"""<?xml version="1.0" encoding="UTF-8"?>
<vosi:availability xmlns:vosi="http://www.ivoa.net/xml/VOSIAvailability/v1.0">
  <vosi:available>true</vosi:available>
</vosi:availability>
"""


class _QuietServer(ThreadingHTTPServer):
    """ThreadingHTTPServer that logs client disconnects at debug level."""

    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("connection from %s ended abruptly", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    archive: ArchiveServer  # set by the subclass built in ArchiveServer.start
    protocol_version = "HTTP/1.1"
    server_version = "SpxArchiveSim/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        logger.debug("%s - %s", self.address_string(), format % args)

    # -- plumbing -----------------------------------------------------------
    def _send(self, status: int, body: bytes, content_type: str = "text/plain", headers: Optional[Dict[str, str]] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(303, b"", headers={"Location": location})

    def _read_params(self) -> Dict[str, str]:
        split = urlsplit(self.path)
        params = {k.upper(): v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            ctype = self.headers.get("Content-Type", "")
            if raw and "multipart/form-data" in ctype:
                from email.parser import BytesParser
                from email.policy import HTTP

                msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
                for part in msg.iter_parts():
                    name = part.get_param("name", header="content-disposition")
                    if name:
                        params[name.upper()] = part.get_content() if part.get_content_type().startswith("text") else part.get_payload(decode=True).decode()
            elif raw:
                for k, v in parse_qs(raw.decode(), keep_blank_values=True).items():
                    params[k.upper()] = v[-1]
        return params

    def _fault(self, path: str) -> Tuple[bool, Optional[Fault]]:
        """Apply the next planned fault for ``path``; returns (answered, fault)."""
        fault = self.archive.faults.take(path)
        if fault is None:
            return False, None
        if fault.delay > 0:
            # sleep in small steps so server shutdown is not held up
            end = time.monotonic() + fault.delay
            while time.monotonic() < end and not self.archive._stop.is_set():
                time.sleep(0.02)
        if fault.status is not None:
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = f"{fault.retry_after:g}"
            if self.command == "POST":
                self._read_params()  # drain the body so the connection stays usable
            self._send(fault.status, f"injected fault: HTTP {fault.status}\n".encode(), headers=headers)
            return True, fault
        return False, fault

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path = split.path
        self.archive.record(method=self.command, path=path, query=split.query, range=self.headers.get("Range"))
        try:
            answered, fault = self._fault(path)
            if answered:
                return
            if path.startswith(DATA_PREFIX):
                self._serve_file(path[len(DATA_PREFIX):], split.query, fault)
            elif path.rstrip("/").startswith(TAP_PREFIX):
                self._serve_tap(path[len(TAP_PREFIX):].rstrip("/"))
            else:
                self._send(404, b"not found\n")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # a bug or a failing cutout function: answer 500, keep serving
            logger.exception("archive server error on %s %s", self.command, self.path)
            try:
                self._send(500, f"internal error: {type(exc).__name__}: {exc}\n".encode())
            except OSError:
                self.close_connection = True

    do_GET = _dispatch
    do_POST = _dispatch
    do_HEAD = _dispatch
    do_DELETE = _dispatch

    # -- TAP ----------------------------------------------------------------
    def _serve_tap(self, sub: str) -> None:
        arch = self.archive
        if sub == "/availability":
            return self._send(200, _AVAILABILITY, "text/xml")
        if sub == "/tables":
            return self._send(200, _tables_xml(), "text/xml")
        if sub == "/capabilities":
            return self._send(200, _CAPABILITIES.replace(b"BASE", arch.tap_url.encode()), "text/xml")
        if sub == "/sync":
            params = self._read_params()
            status, body = arch.run_query(params)
            return self._send(status, body, "application/x-votable+xml")
        if sub == "/async":
            if self.command == "POST":
                params = self._read_params()
                job = _Job(job_id=uuid.uuid4().hex[:12], query=params.get("QUERY", ""), params=params)
                with arch._lock:
                    arch.jobs[job.job_id] = job
                if params.get("PHASE", "").upper() == "RUN":
                    self._run_job(job)
                return self._redirect(f"{arch.tap_url}/async/{job.job_id}")
            return self._send(200, b"<uws:jobs xmlns:uws=\"http://www.ivoa.net/xml/UWS/v1.0\"/>", "text/xml")
        m = re.fullmatch(r"/async/(\w+)(/.*)?", sub)
        if m:
            job = arch.jobs.get(m.group(1))
            if job is None:
                return self._send(404, b"no such job\n")
            job_url = f"{arch.tap_url}/async/{job.job_id}"
            rest = m.group(2) or ""
            if self.command == "DELETE" or (rest == "" and self.command == "POST" and self._read_params().get("ACTION", "").upper() == "DELETE"):
                with arch._lock:
                    arch.jobs.pop(job.job_id, None)
                return self._redirect(f"{arch.tap_url}/async")
            if rest == "":
                return self._send(200, _uws_job_xml(job, job_url), "text/xml")
            if rest == "/phase":
                if self.command == "POST":
                    phase = self._read_params().get("PHASE", "").upper()
                    if phase == "RUN" and job.phase == "PENDING":
                        self._run_job(job)
                    elif phase == "ABORT" and job.phase in ("PENDING", "QUEUED", "EXECUTING"):
                        job.phase = "ABORTED"
                    return self._redirect(job_url)
                return self._send(200, job.phase.encode(), "text/plain")
            if rest in ("/results/result", "/results/result/"):
                if job.phase != "COMPLETED" or job.result is None:
                    return self._send(404, b"job has no result\n")
                return self._send(200, job.result, "application/x-votable+xml")
            if rest == "/error":
                return self._send(200, job.error.encode(), "text/plain")
        return self._send(404, b"unknown TAP resource\n")

    def _run_job(self, job: _Job) -> None:
        status, body = self.archive.run_query(job.params)
        if status == 200:
            job.phase, job.result = "COMPLETED", body
        else:
            job.phase = "ERROR"
            m = re.search(rb"<INFO[^>]*QUERY_STATUS[^>]*>(.*?)</INFO>", body, re.DOTALL)
            job.error = m.group(1).decode() if m else "query failed"

    # -- files --------------------------------------------------------------
    def _serve_file(self, rel: str, query: str, fault: Optional[Fault]) -> None:
        arch = self.archive
        if self.command not in ("GET", "HEAD"):
            return self._send(405, b"method not allowed\n")
        path = arch.local_file(rel)
        if path is None:
            return self._send(404, f"no such file: {rel}\n".encode())
        qs = parse_qs(query)
        if "center" in qs or "size" in qs:
            if "center" not in qs or "size" not in qs:
                return self._send(400, b"cutouts need both center and size\n")
            try:
                data = arch.cutout_bytes(path, qs)
            except CutoutUnavailable as exc:
                return self._send(501, f"{exc}\n".encode())
            except ValueError as exc:
                return self._send(400, f"bad cutout request: {exc}\n".encode())
            etag = '"' + hashlib.md5(data).hexdigest() + '"'
        else:
            data = path.read_bytes()
            st = path.stat()
            etag = f'"{st.st_size:x}-{int(st.st_mtime_ns):x}"'
        size = len(data)
        start, end = 0, size - 1
        status = 200
        rng = self.headers.get("Range")
        if rng and not (fault is not None and fault.ignore_range):
            m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self._send(416, b"bad range\n", headers={"Content-Range": f"bytes */{size}"})
            if m.group(1) == "":
                start, end = max(0, size - int(m.group(2))), size - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            if start >= size or start > end:
                return self._send(416, b"range not satisfiable\n", headers={"Content-Range": f"bytes */{size}"})
            status = 206
        body = data[start:end + 1]
        advertised = len(body) + (fault.content_length_delta if fault else 0)
        self.send_response(status)
        self.send_header("Content-Type", "application/fits")
        self.send_header("Content-Length", str(advertised))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", email.utils.formatdate(usegmt=True))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        lying = fault is not None and (fault.content_length_delta != 0 or fault.drop_after is not None)
        if lying:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = len(body)
        if fault is not None and fault.drop_after is not None:
            limit = min(limit, fault.drop_after)
        step = arch.chunk_size
        for i in range(0, limit, step):
            self.wfile.write(body[i:min(i + step, limit)])
        self.wfile.flush()
        if fault is not None and fault.drop_after is not None:
            # abrupt close mid-body
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# ----------------------------------------------------------------------------
# Small genuine archives for tests (no simulator needed)
# ----------------------------------------------------------------------------


def frame_uri(
    obs_id: str, detector: int, version: int = 12, date: str = "2025-164", release: str = "qr2"
) -> str:
    """IRSA-style ``uri`` of an L2 frame (``ibe/data/spherex/<release>/level2/<plan>/l2b-v<ver>-<date>/<det>/<file>``)."""
    plan = "_".join(obs_id.split("_")[:2])
    tag = f"l2b-v{version}-{date}"
    return f"ibe/data/spherex/{release}/level2/{plan}/{tag}/{detector}/level2_{obs_id}D{detector}_spx_{tag}.fits"


def square_poly(ra: float, dec: float, half_deg: float) -> List[float]:
    """Corners (deg, flat list, counter-clockwise on the sky) of a square of
    half-side ``half_deg`` centred on (ra, dec)."""
    c = math.cos(math.radians(dec))
    d = half_deg / max(c, 1e-6)
    return [
        (ra + d) % 360.0, dec - half_deg,
        (ra - d) % 360.0, dec - half_deg,
        (ra - d) % 360.0, dec + half_deg,
        (ra + d) % 360.0, dec + half_deg,
    ]


def write_small_frame(
    root: Path,
    obs_id: str,
    detector: int,
    *,
    ra: float,
    dec: float,
    half_deg: float = 0.05,
    mjd: float = 60800.0,
    version: int = 12,
    date: str = "2025-164",
    release: str = "qr2",
    npix: int = 48,
    producttype: str = "image",
    seed: int = 0,
) -> Dict[str, Any]:
    """Write a small genuine multi-extension FITS frame (PRIMARY, IMAGE with a
    TAN WCS, FLAGS, VARIANCE, WCS-WAVE one-row table) under ``root`` and return
    its archive-index row. Not a full L2 simulation (use ``simulate`` for that)."""
    from astropy.io import fits

    uri = frame_uri(obs_id, detector, version, date, release)
    path = Path(root) / uri[len("ibe/data/spherex/"):]
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---TAN", "DEC--TAN"
    hdr["CRPIX1"] = hdr["CRPIX2"] = (npix + 1) / 2.0
    hdr["CRVAL1"], hdr["CRVAL2"] = ra, dec
    scale = 2 * half_deg / npix
    hdr["CD1_1"], hdr["CD1_2"], hdr["CD2_1"], hdr["CD2_2"] = -scale, 0.0, 0.0, scale
    hdr["DETECTOR"], hdr["OBSID"] = detector, obs_id
    hdr["MJD-BEG"], hdr["MJD-END"], hdr["MJD-AVG"] = mjd, mjd + 0.001, mjd + 0.0005
    hdr["BUNIT"] = "MJy/sr"
    prim = fits.PrimaryHDU()
    prim.header["VERSION"] = f"l2b-v{version}-{date}"
    hdul = fits.HDUList([
        prim,
        fits.ImageHDU(rng.normal(1.0, 0.1, (npix, npix)).astype(np.float32), hdr, name="IMAGE"),
        fits.ImageHDU(rng.integers(0, 4, (npix, npix)).astype(np.int32), name="FLAGS"),
        fits.ImageHDU(np.full((npix, npix), 0.01, np.float32), name="VARIANCE"),
        fits.BinTableHDU.from_columns([
            fits.Column("X", "3E", array=np.array([[1.0, npix / 2.0, float(npix)]], np.float32)),
            fits.Column("Y", "3E", array=np.array([[1.0, npix / 2.0, float(npix)]], np.float32)),
            fits.Column("VALUES", "18E", array=rng.uniform(1.0, 2.0, (1, 18)).astype(np.float32)),
        ], name="WCS-WAVE"),
    ])
    hdul.writeto(path, overwrite=True)
    data = path.read_bytes()
    det = int(detector)
    band_lo = {1: 0.75, 2: 1.10, 3: 1.63, 4: 2.42, 5: 3.83, 6: 4.42}[det]
    band_hi = {1: 1.09, 2: 1.62, 3: 2.41, 4: 3.82, 5: 4.41, 6: 5.00}[det]
    return {
        "obs_publisher_did": f"ivo://irsa.ipac/spherex_{release}?{obs_id}/D{det}",
        "energy_bandpassname": f"SPHEREx-D{det}",
        "energy_bounds_lower": band_lo * 1e-6,
        "energy_bounds_upper": band_hi * 1e-6,
        "time_bounds_lower": mjd,
        "time_bounds_upper": mjd + 0.001,
        "poly": square_poly(ra, dec, half_deg),
        "uri": uri,
        "contentlength": len(data),
        "contentchecksum": "md5:" + hashlib.md5(data).hexdigest(),
        "producttype": producttype,
        "collection": f"spherex_{release}",
    }


def simple_cutout(path: Path, ra: float, dec: float, size_deg: float) -> Any:
    """Square cutout (``size_deg`` side, deg) of every 2-D image HDU using the
    IMAGE WCS and astropy's Cutout2D; other HDUs copied whole. For tests that
    need cutouts of :func:`write_small_frame` files."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.io import fits
    from astropy.nddata import Cutout2D
    from astropy.wcs import WCS, FITSFixedWarning

    with fits.open(path) as full, warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(full["IMAGE"].header)
        out = fits.HDUList([fits.PrimaryHDU(header=full[0].header.copy())])
        pos = SkyCoord(ra, dec, unit="deg")
        for hdu in full[1:]:
            if hdu.data is not None and hdu.data.ndim == 2 and hdu.data.shape == full["IMAGE"].data.shape:
                cut = Cutout2D(hdu.data, pos, size_deg * u.deg, wcs=wcs, mode="trim")
                h = hdu.header.copy()
                h.update(cut.wcs.to_header())
                out.append(fits.ImageHDU(cut.data, h, name=hdu.name))
            else:
                out.append(hdu.copy())
        return out


def write_index(root: Path, rows: Sequence[Dict[str, Any]]) -> Path:
    """Write ``root/archive_index.json`` (``{"rows": [...]}``)."""
    path = Path(root) / "archive_index.json"
    path.write_text(json.dumps({"rows": list(rows)}, indent=1))
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m spxquery.drizzle3d.testing.archive_server ROOT [--port N]``:
    serve a simulated archive until interrupted (logs the TAP URL)."""
    import argparse

    parser = argparse.ArgumentParser(description="Serve a simulated SPHEREx archive (TAP + files) on 127.0.0.1")
    parser.add_argument("root", type=Path, help="directory with archive_index.json and the mirror tree")
    parser.add_argument("--port", type=int, default=0, help="TCP port (0 = any free port)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with ArchiveServer(args.root, port=args.port) as srv:
        logger.info("serving %s: tap_url=%s (SPXQUERY_TAP_URL=%s); Ctrl-C to stop", args.root, srv.tap_url, srv.tap_url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            logger.info("stopping")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
