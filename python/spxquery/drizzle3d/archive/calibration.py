"""Finding and fetching the spectral-WCS calibration product of a release (one file per detector).

Where a product can be found, each answering "which versions exist":

- a mirror tree, by path: ``<mirror>/<release>/spectral_wcs/<tag>/<det>/spectral_wcs_D<det>_spx_<tag>.fits``
  (:func:`mirror_products`; IRSA's tree, the S3 copy and a local mirror share the layout);
- IRSA's SIA v2 service, collection ``spherex_<release>_cal`` (:func:`sia_products`; the rows'
  ``access_url`` name the files);
- the archive's browsable directories, ``<base>/ibe/data/spherex/<release>/spectral_wcs/``
  (:func:`tree_products`, HTML indexes), when SIA answers nothing;
- the download cache beside the images, ``<output_dir>/images/<release>/spectral_wcs/<tag>/<det>/``
  (:func:`cached_products`), where :func:`fetch_product` keeps each version once.

:func:`newest` picks a version: the newest (version number, then date) unless a tag is named.
Which version belongs to which L2 file is not documented, so the caller records what it used.
Nothing here raises for an unavailable product: :class:`CalibrationUnavailable` carries the reason
the caller reports before falling back to the L2 lookup.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Optional, Sequence
from urllib.parse import unquote, urljoin, urlsplit

import requests

from ..calnames import TREE_DIR, ProductName, is_tag, parse_name, release_of, tag_key
from ..textlimits import short_text
from .download import DownloadTask, download_files
from .locations import DATA_MARKER
from .retry import backoff_base, backoff_delay, is_retryable_status
from .tap import _TimeoutSession, describe_error

logger = logging.getLogger(__name__)

#: Extensions a product file must hold.
PRODUCT_HDUS = ("CWAVE", "CBAND")
#: Largest directory index read (bytes) and links followed per index.
MAX_LISTING_BYTES = 1 << 20
MAX_LINKS = 2000
_HREF = re.compile(r"""href\s*=\s*["']([^"'#?]+)["']""", re.IGNORECASE)


class CalibrationUnavailable(RuntimeError):
    """No usable product: ``reason`` says why (bounded text, no traceback)."""

    def __init__(self, reason: str):
        self.reason = short_text(reason)
        super().__init__(self.reason)


@dataclass(frozen=True)
class ProductLocation:
    """One product file: its name (detector, version tag), release, and where its bytes are:
    ``path`` (a local file: mirror, cache, user's) or ``url`` (to download)."""

    name: ProductName
    release: Optional[str]
    path: Optional[Path] = None
    url: Optional[str] = None

    @property
    def detector(self) -> int:
        return self.name.detector

    @property
    def tag(self) -> str:
        return self.name.tag


def newest(products: Iterable[ProductLocation], detector: int, tag: Optional[str] = None) -> Optional[ProductLocation]:
    """The newest product of ``detector`` (by version, then date; a local copy before a remote
    one of the same version; then by location, so the choice is stable), or the one of version
    ``tag``; None when there is none."""
    found = [p for p in products if p.detector == int(detector) and (tag is None or p.tag == tag)]
    if not found:
        return None
    return max(found, key=lambda p: (p.name.version_key, p.path is not None, str(p.path or p.url)))


def mirror_products(root: Path, release: str) -> List[ProductLocation]:
    """The product files of ``release`` in a mirror tree (by path; no file is opened)."""
    base = Path(root) / release / TREE_DIR
    out = []
    if base.is_dir():
        for path in sorted(base.glob("*/*/spectral_wcs_D*_spx_*.fits")):
            name = parse_name(path.name)
            if name is not None and path.parent.name == str(name.detector) and path.parent.parent.name == name.tag:
                if path.is_file():
                    out.append(ProductLocation(name, release, path=path))
    return out


def directory_products(root: Path) -> List[ProductLocation]:
    """Every product file below a directory (any layout; the release is read from the path when
    it shows one, as in a mirror tree), or the file itself when ``root`` is one."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob("spectral_wcs_D*_spx_*.fits")) if root.is_dir() else []
    out = []
    for path in paths:
        name = parse_name(path.name)
        if name is not None and path.is_file():
            out.append(ProductLocation(name, release_of(path), path=path))
    return out


def cache_root(output_dir: Path) -> Path:
    """Root of the cache of fetched products, beside the images: ``output_dir/images``, holding
    ``<release>/spectral_wcs/<tag>/<det>/<file>`` (the archive's layout)."""
    return Path(output_dir) / "images"


def cached_products(output_dir: Path, release: str) -> List[ProductLocation]:
    """Products of ``release`` fetched by an earlier run."""
    return mirror_products(cache_root(output_dir), release)


def tree_releases(root: Path) -> List[str]:
    """The releases with a ``spectral_wcs`` directory under a mirror (or cache) root."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / TREE_DIR).is_dir())


def _get(session: requests.Session, url: str, params: Optional[dict] = None, *, timeout: float,
         retries: int) -> requests.Response:
    """GET with retries of 5xx/429/408 and broken connections; CalibrationUnavailable otherwise."""
    attempt = 0
    while True:
        try:
            r = session.get(url, params=params, timeout=timeout, stream=True)
            if r.status_code == 200:
                return r
            reason, retry = f"HTTP {r.status_code} from {url}", is_retryable_status(r.status_code)
            r.close()
        except requests.RequestException as exc:
            reason, retry = f"{url}: {describe_error(exc)[0]}", isinstance(exc, (requests.ConnectionError,
                                                                               requests.Timeout))
        attempt += 1
        if not retry or attempt > retries:
            raise CalibrationUnavailable(reason)
        time.sleep(backoff_delay(attempt, backoff_base(None)))


def sia_products(sia_url: str, release: str, *, timeout: float = 60.0, retries: int = 2,
                 session: Optional[requests.Session] = None) -> List[ProductLocation]:
    """The spectral-WCS products listed by the SIA v2 service at ``sia_url`` in collection
    ``spherex_<release>_cal`` (pyvo; rows whose ``access_url`` is not a product are ignored).
    CalibrationUnavailable when the service does not answer."""
    from pyvo.dal import DALServiceError
    from pyvo.dal.sia2 import SIA2Service

    own = session is None
    session = session or _TimeoutSession(timeout)
    try:
        service = SIA2Service(sia_url, session=session, check_baseurl=False)
        attempt = 0
        while True:
            try:
                table = service.search(collection=f"spherex_{release}_cal", maxrec=100000).to_table()
                break
            except (DALServiceError, requests.RequestException, OSError) as exc:
                desc, retryable, _, _ = describe_error(exc)
                attempt += 1
                if not retryable or attempt > retries:
                    raise CalibrationUnavailable(f"SIA {sia_url}: {desc}") from None
                time.sleep(backoff_delay(attempt, backoff_base(None)))
            except Exception as exc:  # a malformed answer (pyvo/astropy parse errors)
                raise CalibrationUnavailable(f"SIA {sia_url}: unreadable answer ({type(exc).__name__}: "
                                             f"{short_text(str(exc))})") from None
    finally:
        if own:
            session.close()
    if "access_url" not in table.colnames:
        raise CalibrationUnavailable(f"SIA {sia_url}: the answer has no access_url column")
    out = []
    for value in table["access_url"]:
        url = value.decode() if isinstance(value, bytes) else str(value)
        name = parse_name(url)
        if name is not None and urlsplit(url).scheme in ("http", "https") and release_of(url) in (None, release):
            out.append(ProductLocation(name, release, url=url))
    return out


def _links(session: requests.Session, url: str, *, timeout: float, retries: int) -> List[str]:
    """Absolute URLs of the links below ``url`` in its HTML index (parent links dropped)."""
    r = _get(session, url, timeout=timeout, retries=retries)
    try:
        body = r.raw.read(MAX_LISTING_BYTES + 1, decode_content=True)
    finally:
        r.close()
    text = body[:MAX_LISTING_BYTES].decode("utf-8", "replace")
    out = []
    for href in _HREF.findall(text)[:MAX_LINKS]:
        full = urljoin(url, href)
        if full.startswith(url) and full != url:
            out.append(full)
    return out


def tree_products(base_url: str, release: str, detector: int, *, tag: Optional[str] = None, timeout: float = 60.0,
                  retries: int = 2, session: Optional[requests.Session] = None) -> List[ProductLocation]:
    """The product of ``detector`` in the archive's browsable tree under ``base_url`` (the
    root the archive's ``uri`` values are relative to): the version directories of
    ``ibe/data/spherex/<release>/spectral_wcs/`` are listed, and the newest one (or ``tag``)
    holding a product of the detector is returned (at most one). CalibrationUnavailable when
    the tree cannot be listed."""
    own = session is None
    session = session or requests.Session()
    top = urljoin(base_url.rstrip("/") + "/", f"{DATA_MARKER.strip('/')}/{release}/{TREE_DIR}/")
    try:
        tags = []
        for link in _links(session, top, timeout=timeout, retries=retries):
            name = unquote(link[len(top):]).strip("/")
            if is_tag(name) and (tag is None or name == tag):
                tags.append(name)
        for t in sorted(set(tags), key=tag_key, reverse=True):
            folder = f"{top}{t}/{int(detector)}/"
            try:
                links = _links(session, folder, timeout=timeout, retries=retries)
            except CalibrationUnavailable:
                continue
            for link in links:
                found = parse_name(link)
                if found is not None and found.detector == int(detector) and found.tag == t:
                    return [ProductLocation(found, release, url=link)]
        return []
    finally:
        if own:
            session.close()


def fetch_product(product: ProductLocation, output_dir: Path, *, timeout: float = 60.0, retries: int = 5,
                  deadline: float = 900.0, progress: bool = False) -> Path:
    """A verified local copy of ``product``: its own path when local, else the cached copy
    ``output_dir/images/<release>/spectral_wcs/<tag>/<det>/<file>`` (downloaded once, reused
    after the same checks). CalibrationUnavailable with the reason when the download fails."""
    if product.path is not None:
        return product.path
    if product.url is None or product.release is None:
        raise CalibrationUnavailable(f"{product.name.file_name}: no location")
    dest = cache_root(output_dir) / product.name.relpath(product.release)
    report = download_files([DownloadTask(product.url, dest, required_hdus=PRODUCT_HDUS)], max_workers=1,
                            timeout=timeout, retries=retries, progress=progress, deadline=deadline,
                            desc="spectral WCS")
    if report.paths[0] is None:
        reason = report.failures[0].reason if report.failures else "not downloaded"
        raise CalibrationUnavailable(f"{product.url}: {reason}")
    return Path(report.paths[0])


def sia_url_for(base_url: str) -> str:
    """IRSA's SIA v2 endpoint beside its TAP service: ``<base>/SIA``."""
    return urljoin(base_url.rstrip("/") + "/", "SIA")


def describe(products: Sequence[ProductLocation]) -> str:
    """Versions found, for messages: ``cal-wcs-v4-2025-254 (D1-D6)``."""
    by_tag: dict = {}
    for p in products:
        by_tag.setdefault(p.tag, set()).add(p.detector)
    return ", ".join(f"{t} (D{','.join(map(str, sorted(d)))})" for t, d in sorted(by_tag.items())) or "none"


__all__ = ["PRODUCT_HDUS", "CalibrationUnavailable", "ProductLocation", "cache_root", "cached_products",
           "describe", "directory_products", "fetch_product", "mirror_products", "newest",
           "sia_products", "sia_url_for", "tree_products", "tree_releases"]
