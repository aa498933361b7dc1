"""Test helpers that are real components: a loopback IRSA-like archive server.

``ArchiveServer`` speaks TAP (sync and async/UWS) and serves FITS files with
HTTP Range support and programmable faults; tests and the offline demo point
``Drizzle3DConfig.tap_url`` at it.
"""

from .archive_server import (
    AdqlError,
    ArchiveServer,
    Fault,
    FaultPlan,
    evaluate_adql,
    frame_uri,
    load_index,
    polygon_contains_point,
    polygon_intersects_circle,
    simple_cutout,
    square_poly,
    write_index,
    write_small_frame,
)

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
