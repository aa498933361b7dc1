"""Where a frame's bytes are: archive URLs, cutout URLs, mirror paths, local file names.

An archive ``uri`` is relative to the parent of the TAP endpoint; the part of a URL after
``/ibe/data/spherex/`` is the path in a mirror tree (and the key in the S3 copy). A cutout
is the file URL with ``?center=<ra>,<dec>&size=<deg>``. :func:`locate_frame` turns one
observation and the run's settings into a :class:`FrameLocation`, the one answer to "where
are this frame's bytes, and what must they look like". Angles in degrees, sizes in bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urljoin, urlsplit

from ..objectstore import ObjectLocation, object_url, resolved_options
from .adql import format_number

if TYPE_CHECKING:
    from ..config import Drizzle3DConfig
    from .observations import DrizzleObservation

logger = logging.getLogger(__name__)

#: Path marker after which an archive URL maps onto a mirror / S3 key.
DATA_MARKER = "/ibe/data/spherex/"
#: Side of a SPHEREx frame on the sky (deg).
FRAME_SIZE_DEG = 3.5
#: Auto rule: cutouts when the cutout side (region diagonal + 2 margins) is below this (deg).
CUTOUT_AUTO_MAX_DEG = 1.0
#: Longest archive file name used as is, and longest part of a name taken over (characters);
#: file systems allow 255 bytes, a cutout adds ~50.
MAX_NAME_CHARS = 160
MAX_STEM_CHARS = 80
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")

#: A cutout request: (ra, dec, side), deg.
Cutout = tuple[float, float, float]


@dataclass(frozen=True)
class FrameLocation:
    """Where one frame's bytes are, and what they must look like.

    ``kind``: ``"mirror"`` (``path`` is the file in a local mirror tree; no network) or
    ``"download"`` (``url`` is fetched into ``path``, the download cache).
    ``url``: what to fetch (the archive's file URL, or its cutout URL).
    ``expected_length`` (bytes) and ``checksum`` (``md5:<hex>``): the archive's
    description of the bytes at ``url``; None when it gives none (cutouts).
    """

    kind: Literal["mirror", "download"]
    path: Path
    url: str
    expected_length: int | None = None
    checksum: str | None = None


def url_file_name(url: str) -> str:
    """Last path component of ``url`` (unquoted), e.g. ``level2_..._l2b-v20-2025-247.fits``."""
    return PurePosixPath(unquote(urlsplit(url).path)).name


def data_base_url(tap_url: str) -> str:
    """Root that archive ``uri`` values are relative to: the parent of the TAP
    endpoint (``https://irsa.ipac.caltech.edu/TAP`` -> ``https://irsa.ipac.caltech.edu/``)."""
    return urljoin(tap_url.rstrip("/") + "/", "..")


def archive_key(url: str, root: object = "the mirror") -> str:
    """The part of ``url``'s path after ``/ibe/data/spherex/``: the path in a mirror tree and
    the key in the S3 copy. ValueError (naming ``root``) when there is none or it would leave
    the root (``..``, absolute)."""
    path = unquote(urlsplit(url).path)
    idx = path.find(DATA_MARKER)
    if idx < 0:
        raise ValueError(f"URL {url!r} has no {DATA_MARKER!r} part; cannot map it into {root}")
    rel = path[idx + len(DATA_MARKER):]
    if not valid_key(rel):
        raise ValueError(f"URL {url!r} maps outside the mirror root {root}")
    return rel


def valid_key(key: str) -> bool:
    """A relative key without empty, ``.`` or ``..`` parts (so it stays under its root)."""
    parts = key.split("/")
    return bool(key) and len(key) <= 1024 and all(p not in ("", ".", "..") for p in parts)


def mirror_path(data_mirror: Path, url: str) -> Path:
    """Local path of ``url`` in a mirror: ``data_mirror`` / the part of the URL
    path after ``/ibe/data/spherex/``. ValueError when the URL has no such part
    or the path would leave the mirror root."""
    root = Path(data_mirror).resolve()
    parts = PurePosixPath(archive_key(url, root)).parts
    # lexically (no symlink resolved): a link inside the mirror is the user's choice, and a
    # link to something that is no file is reported as what it is when the file is checked
    local = Path(os.path.normpath(root / Path(*parts)))
    if not local.is_relative_to(root):
        raise ValueError(f"URL {url!r} maps to {local}, outside the mirror root {root}")
    return local


def cloud_location(obs: DrizzleObservation, root: str, storage_options: dict | None = None) -> ObjectLocation:
    """Where ``obs`` is in an object store holding the archive tree (``root``: ``s3://bucket``
    or ``s3://bucket/prefix``): the key the archive gives (``cloud_access``) or else the part of
    the URL after ``/ibe/data/spherex/``; the archive's length is checked when it is opened.
    The location carries its filesystem options resolved here (:func:`~.objectstore.resolved_options`:
    anonymous S3 by default, ``AWS_ENDPOINT_URL`` of this process), so that a worker of a
    distributed run opens the same object whatever its own environment."""
    key = obs.cloud_key if obs.cloud_key else archive_key(obs.download_url, root)
    url = object_url(root, key)
    return ObjectLocation(url, obs.content_length, resolved_options(url, storage_options))


def cutout_size_deg(config: Drizzle3DConfig) -> float:
    """Side (deg) of a square cutout covering the region at any frame rotation:
    the region's diagonal plus ``cutout_margin_arcmin`` on each side."""
    return 2.0 * config.spatial_radius_deg() + 2.0 * config.cutout_margin_arcmin / 60.0


def resolve_cutout(config: Drizzle3DConfig) -> Cutout | None:
    """``(ra, dec, size_deg)`` when cutouts should be requested, else None.

    ``use_cutouts`` True/False forces; None (auto) turns cutouts on when the
    cutout side is below :data:`CUTOUT_AUTO_MAX_DEG` (a frame is ~3.5 deg).
    Mirror mode never uses cutouts (the mirror holds full frames).
    """
    size = cutout_size_deg(config)
    use = config.use_cutouts
    if use is None:
        use = size < CUTOUT_AUTO_MAX_DEG
    if not use:
        return None
    if size >= FRAME_SIZE_DEG:
        logger.info("cutout side %.2f deg >= frame size; cutouts still requested as configured", size)
    return (float(config.center_ra), float(config.center_dec), float(size))


def _format_cutout(cutout: Cutout) -> tuple[str, str, str]:
    if len(cutout) != 3:
        raise ValueError(f"cutout must be (ra, dec, size_deg), got {cutout!r}")
    ra = format_number("cutout ra", cutout[0], 0.0, 360.0)
    dec = format_number("cutout dec", cutout[1], -90.0, 90.0)
    size = format_number("cutout size (deg)", cutout[2], 1e-6, 180.0)
    return f"{float(ra):.6f}", f"{float(dec):.6f}", f"{float(size):.6f}"


def cutout_url(url: str, cutout: Cutout) -> str:
    """IRSA cutout URL: ``url?center=<ra>,<dec>&size=<deg>`` (degrees)."""
    ra, dec, size = _format_cutout(cutout)
    sep = "&" if urlsplit(url).query else "?"
    return f"{url}{sep}center={ra},{dec}&size={size}"


def source_key(url: str) -> str:
    """What identifies the bytes at ``url`` whatever the host (a mirror of the archive
    serves the same file): its path and query."""
    parts = urlsplit(url)
    return parts.path + ("?" + parts.query if parts.query else "")


def _url_tag(url: str) -> str:
    return hashlib.sha256(source_key(url).encode("utf-8", "surrogatepass")).hexdigest()[:12]


def local_file_name(obs: DrizzleObservation, cutout: Cutout | None = None, *, tagged: bool = False) -> str:
    """Local file name of a frame, the same in every run and never shared by two frames.

    The URL's file name when it is the archive's name of this very frame
    (``level2_<OBSID>D<det>_...fits``: one per exposure and detector); otherwise, or when
    ``tagged``, that name's safe part + ``_<OBSID>D<det>_<hash of the URL's path>.fits``
    (bounded length, only ``[A-Za-z0-9._+-]``). Cutouts get
    ``<stem>_cutout_<ra>_<dec>_<size>deg.fits`` so they never collide with full frames."""
    raw = obs.file_name
    name = _UNSAFE.sub("_", raw)
    own = f"level2_{obs.obs_id}D{obs.detector}_"
    if tagged or not (name == raw and name.startswith(own) and name.endswith(".fits")
                      and len(name) <= MAX_NAME_CHARS):
        stem = name[:-5] if name.lower().endswith(".fits") else name
        stem = stem.strip("._")[:MAX_STEM_CHARS] or "frame"
        ident = _UNSAFE.sub("_", f"{obs.obs_id}D{obs.detector}")[:MAX_STEM_CHARS]
        name = f"{stem}_{ident}_{_url_tag(obs.download_url)}.fits"
    if cutout is None:
        return name
    ra, dec, size = _format_cutout(cutout)
    return f"{name[:-5]}_cutout_{ra}_{dec}_{size}deg.fits"


def download_path(
    output_dir: Path, obs: DrizzleObservation, cutout: Cutout | None = None, *, tagged: bool = False
) -> Path:
    """Download-cache path of a frame: ``output_dir/images/D{N}/<local file name>``."""
    return Path(output_dir) / "images" / f"D{obs.detector}" / local_file_name(obs, cutout, tagged=tagged)


def locate_frame(
    obs: DrizzleObservation,
    *,
    data_mirror: Path | None = None,
    output_dir: Path | None = None,
    cutout: Cutout | None = None,
    tagged: bool = False,
) -> FrameLocation:
    """Where the bytes of ``obs`` are (``data_mirror`` given: its mirror file; ``cutout``
    is ignored there, a mirror holds full frames) or will be (``output_dir``: the download
    cache, fetched from the file URL or its cutout URL; ``tagged``: under the name with the
    URL's hash, see :func:`local_file_name`). ValueError when the frame has no place in the
    mirror or neither root is given."""
    if data_mirror is not None:
        path = mirror_path(Path(data_mirror), obs.download_url)
        return FrameLocation("mirror", path, obs.download_url, obs.content_length, obs.checksum)
    if output_dir is None:
        raise ValueError("locate_frame needs data_mirror or output_dir")
    dest = download_path(Path(output_dir), obs, cutout, tagged=tagged)
    if cutout is None:
        return FrameLocation("download", dest, obs.download_url, obs.content_length, obs.checksum)
    # the archive's length and checksum describe the whole file, not a cutout of it
    return FrameLocation("download", dest, cutout_url(obs.download_url, cutout))
