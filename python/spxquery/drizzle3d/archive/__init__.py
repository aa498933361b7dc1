"""Archive access: find SPHEREx L2 frames with IRSA TAP and make them local files.

Modules, one concern each (the usual path through them is top to bottom):

- :mod:`.adql`: the ADQL text of the frame search, from validated numbers only.
- :mod:`.tap`: running a query on a TAP service with retries and the sync -> async fallback.
- :mod:`.tap_answer`: reading one TAP answer: bounded bytes, a VOTable, odd numeric cells as text.
- :mod:`.observations`: :class:`DrizzleObservation` (one frame as the archive describes it),
  TAP rows -> observations, newest processing version per exposure and detector.
- :mod:`.search`: :func:`query_observations` / :func:`search_frames`, the whole search.
- :mod:`.locations`: where a frame's bytes are: download and cutout URLs, mirror paths,
  local file names, the cutout rule; :class:`FrameLocation` / :func:`locate_frame`.
- :mod:`.fetch`: :func:`download_observations` (download or mirror mode) -> verified files.
- :mod:`.download`: the HTTP transfer engine (parallel, resumable, verified).
- :mod:`.verify`: is a local FITS file complete (size, structure, extensions, checksum).
- :mod:`.retry`: which answers are retried and how long to wait (shared by TAP and downloads).

``spxquery.drizzle3d.query`` is the spxquery 0.4.1 API module over this package.
"""

from .fetch import download_observations, download_observations_report, resolve_mirror
from .locations import FrameLocation, locate_frame, resolve_cutout
from .observations import DrizzleObservation
from .search import query_observations, search_frames
from .tap import ArchiveQueryError, ArchiveUnreachableError

__all__ = [
    "ArchiveQueryError",
    "ArchiveUnreachableError",
    "DrizzleObservation",
    "FrameLocation",
    "download_observations",
    "download_observations_report",
    "locate_frame",
    "query_observations",
    "resolve_cutout",
    "resolve_mirror",
    "search_frames",
]
