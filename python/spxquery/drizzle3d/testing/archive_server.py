"""A real loopback HTTP server imitating IRSA for SPHEREx: TAP + file serving.

Endpoints (relative to ``base_url``, e.g. ``http://127.0.0.1:PORT``):

- ``/TAP/sync`` (GET or POST, ``QUERY``, ``LANG=ADQL``, ``REQUEST=doQuery``,
  optional ``MAXREC``, ``FORMAT``/``RESPONSEFORMAT``): answers a VOTable.
- ``/TAP/async`` (UWS): POST creates a job (303 to ``/TAP/async/<id>``); the job
  document, ``/phase`` (POST ``PHASE=RUN``/``ABORT``), ``/results/result`` and
  DELETE are supported.
- ``/TAP/availability``, ``/TAP/capabilities``, ``/TAP/tables``: minimal VOSI documents.
- ``/SIA`` (GET or POST, SIA v2: ``COLLECTION``, ``MAXREC``, ``RESPONSEFORMAT``): the
  calibration files of the ``spherex_<release>_cal`` collections (``archive_index.json``'s
  ``calibration`` list) as ObsCore rows with their ``access_url``.
- ``/ibe/data/spherex/<dir>/``: an HTML index of the directory (the archive's browsable tree).
- ``/ibe/data/spherex/<path>``: files under ``root`` with ``Range: bytes=a-b``
  (206 + Content-Range), Content-Length, ETag, HEAD. A query string
  ``?center=<ra>,<dec>&size=<value>[deg|arcmin|arcsec]`` returns a cutout made
  by ``cutout_func(path, ra_deg, dec_deg, size_deg) -> HDUList`` (default:
  ``spxquery.drizzle3d.simulate.make_cutout``).

The query evaluator (:mod:`.adql_eval`) really applies the constraints it understands
(spherical polygon-versus-cap test for INTERSECTS); every received query text is recorded in
``server.queries``. Faults come from ``server.faults`` (a :class:`~.faults.FaultPlan`).

This module holds the server's state and lifecycle; the pieces live in their own modules
(geometry :mod:`.spherical`, :mod:`.adql_eval`, :mod:`.votable`, :mod:`.uws`, :mod:`.faults`,
:mod:`.cutouts`, the handler :mod:`.http_handler`, the index :mod:`.archive_index`, test frames
:mod:`.small_frames`) and are re-exported here under their former names.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from .adql_eval import AdqlError, evaluate_adql
from .archive_index import load_calibration, load_index, write_index
from .cutouts import CutoutUnavailable, default_cutout_func, parse_cutout_request, parse_cutout_size, simple_cutout
from .faults import Fault, FaultPlan
from .http_handler import DATA_PREFIX, SIA_PREFIX, TAP_PREFIX, ArchiveHandler, QuietServer
from .small_frames import frame_uri, write_small_frame
from .spherical import polygon_contains_point, polygon_intersects_circle, square_poly
from .uws import UwsJob
from .votable import votable_bytes

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

#: Columns of an SIA answer (ObsCore names) and the non-text ones' VOTable datatypes.
SIA_COLUMNS = ("obs_collection", "obs_id", "obs_publisher_did", "dataproduct_type", "dataproduct_subtype",
               "energy_bandpassname", "em_min", "em_max", "access_url", "access_format", "access_estsize")
SIA_DATATYPES = {"em_min": "double", "em_max": "double", "access_estsize": "long"}

__all__ = [
    "DATA_PREFIX",
    "SIA_COLUMNS",
    "SIA_PREFIX",
    "TAP_PREFIX",
    "AdqlError",
    "ArchiveServer",
    "CutoutUnavailable",
    "Fault",
    "FaultPlan",
    "evaluate_adql",
    "frame_uri",
    "load_index",
    "main",
    "parse_cutout_size",
    "polygon_contains_point",
    "polygon_intersects_circle",
    "simple_cutout",
    "square_poly",
    "write_index",
    "write_small_frame",
]


class ArchiveServer:
    """Loopback IRSA imitation. Use as a context manager::

        with ArchiveServer(root) as srv:
            srv.tap_url, srv.base_url, srv.queries, srv.faults.add(...)

    ``root``: directory holding the mirror tree (``<release>/level2/...``) and,
    unless ``index_rows`` is given, ``archive_index.json``.
    """

    def __init__(
        self,
        root: Path | None = None,
        index_rows: Sequence[dict[str, Any]] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cutout_func: Callable[..., Any] | None = None,
        chunk_size: int = 16384,
        max_rows: int | None = None,
        calibration_rows: Sequence[dict[str, Any]] | None = None,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        if index_rows is None:
            if self.root is None:
                raise ValueError("ArchiveServer needs root (with archive_index.json) or index_rows")
            index_rows = load_index(self.root)
        self.rows: list[dict[str, Any]] = [dict(r) for r in index_rows]
        #: Calibration files listed by the SIA service (``archive_index.json``'s ``calibration``).
        self.calibration: list[dict[str, Any]] = (
            [dict(r) for r in calibration_rows] if calibration_rows is not None
            else load_calibration(self.root) if self.root is not None else [])
        self.host = host
        self.port = port
        self.cutout_func = cutout_func
        self.chunk_size = int(chunk_size)
        self.max_rows = max_rows  # service row limit (OVERFLOW beyond it), None = unlimited
        self.faults = FaultPlan()
        self.queries: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.jobs: dict[str, UwsJob] = {}
        self._lock = threading.Lock()
        self._cutout_cache: dict[tuple[str, str], bytes] = {}
        self._httpd: QuietServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("ArchiveServer is not running")
        host, port = self._httpd.server_address[:2]
        host_s = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{host_s}:{port}"

    @property
    def tap_url(self) -> str:
        return self.base_url + TAP_PREFIX

    @property
    def sia_url(self) -> str:
        """The SIA v2 query endpoint (``base_url + "/SIA"``, as IRSA's beside its ``/TAP``)."""
        return self.base_url + SIA_PREFIX

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (long injected delays end early)."""
        return self._stop.is_set()

    def url_for(self, uri: str) -> str:
        """Download URL of an index ``uri`` (``ibe/data/spherex/...``) on this server."""
        return self.base_url + "/" + uri.lstrip("/")

    def start(self) -> Self:
        server: ArchiveServer = self

        class Handler(ArchiveHandler):
            archive = server

        self._stop.clear()
        self._httpd = QuietServer((self.host, self.port), Handler)
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

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- bookkeeping used by the handler --------------------------------------
    def record(self, **info: Any) -> None:
        with self._lock:
            self.requests.append(info)

    def hits(self, match: str) -> int:
        """Number of requests whose path contains ``match``."""
        with self._lock:
            return sum(1 for r in self.requests if match in r["path"])

    # -- TAP -----------------------------------------------------------------
    def run_query(self, params: dict[str, str]) -> tuple[int, bytes]:
        """(HTTP status, VOTable) of a TAP query with request ``params`` (names upper case)."""
        query = params.get("QUERY", "")
        with self._lock:
            self.queries.append(query)
        if params.get("LANG", "ADQL").upper() != "ADQL":
            return 400, votable_bytes([], [], "ERROR", f"unsupported LANG {params.get('LANG')!r}")
        if params.get("REQUEST", "doQuery") != "doQuery":
            return 400, votable_bytes([], [], "ERROR", f"unsupported REQUEST {params.get('REQUEST')!r}")
        fmt = (params.get("RESPONSEFORMAT") or params.get("FORMAT") or "votable").lower()
        if "votable" not in fmt and "xml" not in fmt:
            return 400, votable_bytes([], [], "ERROR", f"unsupported format {fmt!r}")
        try:
            columns, rows = evaluate_adql(query, self.rows)
        except AdqlError as exc:
            return 400, votable_bytes([], [], "ERROR", f"ADQL error: {exc}")
        status = "OK"
        maxrec = params.get("MAXREC")
        limit = self.max_rows
        if maxrec is not None and maxrec.strip():
            limit = int(maxrec) if limit is None else min(limit, int(maxrec))
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
            status = "OVERFLOW"
        return 200, votable_bytes(columns, rows, status)

    def run_sia(self, params: dict[str, list[str]]) -> tuple[int, bytes]:
        """(HTTP status, VOTable) of an SIA v2 query: the calibration files of the requested
        ``COLLECTION`` values (case-insensitive), ``MAXREC`` honoured. Calibration files have no
        footprint: a query with ``POS`` matches none of them. Other parameters are ignored."""
        with self._lock:
            self.queries.append("SIA " + json.dumps(params, sort_keys=True))
        fmt = ",".join(params.get("RESPONSEFORMAT", [])).lower()
        if fmt and "votable" not in fmt and "xml" not in fmt:
            return 400, votable_bytes([], [], "ERROR", f"unsupported RESPONSEFORMAT {fmt!r}")
        wanted = {c.strip().lower() for v in params.get("COLLECTION", []) for c in v.split(",") if c.strip()}
        rows = [] if params.get("POS") else [r for r in self.calibration
                                              if not wanted or str(r.get("obs_collection", "")).lower() in wanted]
        rows = [{**r, "access_url": self.url_for(str(r["uri"]))} for r in rows]
        status = "OK"
        maxrec = (params.get("MAXREC") or [""])[-1].strip()
        if maxrec:
            try:
                limit = int(maxrec)
            except ValueError:
                return 400, votable_bytes([], [], "ERROR", f"MAXREC must be an integer, got {maxrec!r}")
            if len(rows) > limit:
                rows, status = rows[:limit], "OVERFLOW"
        return 200, votable_bytes(SIA_COLUMNS, rows, status, datatypes=SIA_DATATYPES)

    def local_dir(self, rel: str) -> Path | None:
        """The directory under ``root`` at URL path ``rel``, or None."""
        if self.root is None:
            return None
        path = (self.root / unquote(rel)).resolve()
        if not path.is_relative_to(self.root) or not path.is_dir():
            return None
        return path

    def add_job(self, job: UwsJob) -> UwsJob:
        with self._lock:
            self.jobs[job.job_id] = job
        return job

    def remove_job(self, job_id: str) -> None:
        with self._lock:
            self.jobs.pop(job_id, None)

    def run_job(self, job: UwsJob) -> None:
        """Run an async job to COMPLETED (with its result) or ERROR (with the message)."""
        status, body = self.run_query(job.params)
        if status == 200:
            job.phase, job.result = "COMPLETED", body
        else:
            job.phase = "ERROR"
            m = re.search(rb"<INFO[^>]*QUERY_STATUS[^>]*>(.*?)</INFO>", body, re.DOTALL)
            job.error = m.group(1).decode() if m else "query failed"

    # -- files ---------------------------------------------------------------
    def local_file(self, rel: str) -> Path | None:
        """The file under ``root`` at URL path ``rel``, or None (missing, or outside the root)."""
        if self.root is None:
            return None
        path = (self.root / unquote(rel)).resolve()
        if not path.is_relative_to(self.root) or not path.is_file():
            return None
        return path

    def cutout_bytes(self, path: Path, query: dict[str, list[str]]) -> bytes:
        """FITS bytes of the cutout of ``path`` that ``query`` (parsed query string) asks for."""
        key = (str(path), json.dumps(query, sort_keys=True))
        with self._lock:
            cached = self._cutout_cache.get(key)
        if cached is not None:
            return cached
        func = self.cutout_func or default_cutout_func()
        if func is None:
            raise CutoutUnavailable("no cutout function available (spxquery.drizzle3d.simulate.make_cutout)")
        ra, dec, size = parse_cutout_request(query)
        buf = io.BytesIO()
        func(path, ra, dec, size).writeto(buf)
        data = buf.getvalue()
        with self._lock:
            self._cutout_cache[key] = data
        return data


def main(argv: Sequence[str] | None = None) -> int:
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
