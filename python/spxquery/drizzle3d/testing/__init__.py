"""Test scaffolding that is a real component: a loopback IRSA-like archive server.

``ArchiveServer`` speaks TAP (sync and async/UWS) and serves FITS files with
HTTP Range support and programmable faults; tests and the offline demo point
``Drizzle3DConfig.tap_url`` at it. Nothing in the pipeline imports this package
(the CLI's demo and serve commands import it when they run).

Modules, one concern each: :mod:`.archive_server` (the server: state, lifecycle, queries),
:mod:`.http_handler` (routing, TAP endpoints, files with Range), :mod:`.adql_eval` (the ADQL
subset), :mod:`.spherical` (polygon geometry), :mod:`.tap_schema` (columns, VOSI documents),
:mod:`.votable` (result documents), :mod:`.uws` (async jobs), :mod:`.faults` (fault injection),
:mod:`.cutouts` (cutout requests and makers), :mod:`.archive_index` (``archive_index.json``),
:mod:`.small_frames` (tiny genuine test frames).
"""

from .adql_eval import AdqlError, evaluate_adql
from .archive_index import load_index, write_index
from .archive_server import ArchiveServer
from .cutouts import simple_cutout
from .faults import Fault, FaultPlan
from .small_frames import frame_uri, write_small_frame
from .spherical import polygon_contains_point, polygon_intersects_circle, square_poly

__all__ = [
    "AdqlError",
    "ArchiveServer",
    "Fault",
    "FaultPlan",
    "evaluate_adql",
    "frame_uri",
    "load_index",
    "polygon_contains_point",
    "polygon_intersects_circle",
    "simple_cutout",
    "square_poly",
    "write_index",
    "write_small_frame",
]
