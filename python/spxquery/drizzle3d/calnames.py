"""Names of the SPHEREx spectral-WCS calibration product, and the ``spectral_wcs`` setting.

The product (one FITS file per detector and version, ~32 MB: ``CWAVE`` and ``CBAND``, the
central wavelength and bandwidth of every pixel in um, and a ``WCS-WAVE`` table) is named
``spectral_wcs_D<det>_spx_cal-wcs-v<ver>-<yyyy-ddd>.fits`` (QR1: ``..._spx_base-<yyyy-ddd>``) and
lives at ``<release>/spectral_wcs/<tag>/<det>/`` of the archive tree (IRSA, its S3 copy, a
mirror), where ``<tag>`` is ``cal-wcs-v<ver>-<yyyy-ddd>`` (or ``base-<yyyy-ddd>``). This module
holds that grammar only (no I/O), so that the configuration can check the setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Tuple, Union
from urllib.parse import unquote, urlsplit

from .textlimits import short_repr

#: ``spectral_wcs`` words: the product when available, or always the L2 lookup.
AUTO = "auto"
LOOKUP = "lookup"
#: A version tag as the archive tree names the product's directory.
TAG_PATTERN = r"cal-wcs-v(?P<ver>\d{1,6})-(?P<year>\d{4})-(?P<day>\d{3})|base-(?P<byear>\d{4})-(?P<bday>\d{3})"
_TAG = re.compile(rf"^(?:{TAG_PATTERN})$")
_NAME = re.compile(rf"^spectral_wcs_D(?P<det>[1-6])_spx_(?P<tag>{TAG_PATTERN})\.fits$")
#: Directory of the products in a release's tree (below ``<release>/``).
TREE_DIR = "spectral_wcs"


@dataclass(frozen=True)
class ProductName:
    """A parsed product file name: detector (1-6) and version tag (``cal-wcs-v4-2025-254``)."""

    detector: int
    tag: str

    @property
    def file_name(self) -> str:
        return f"spectral_wcs_D{self.detector}_spx_{self.tag}.fits"

    @property
    def version_key(self) -> Tuple[int, int, int]:
        """Sort key, newest last: (version, year, day); QR1 ``base-`` products are version 0."""
        return tag_key(self.tag)

    def relpath(self, release: str) -> str:
        """Path in the archive tree: ``<release>/spectral_wcs/<tag>/<det>/<file>``."""
        return f"{release}/{TREE_DIR}/{self.tag}/{self.detector}/{self.file_name}"


def tag_key(tag: str) -> Tuple[int, int, int]:
    """(version, year, day) of a version tag (ValueError when it is none)."""
    m = _TAG.match(tag)
    if m is None:
        raise ValueError(f"not a spectral-WCS version tag: {short_repr(tag)}")
    if m.group("ver") is not None:
        return int(m.group("ver")), int(m.group("year")), int(m.group("day"))
    return 0, int(m.group("byear")), int(m.group("bday"))


def is_tag(text: str) -> bool:
    """True when ``text`` is a version tag (``cal-wcs-v4-2025-254``, ``base-2025-158``)."""
    return _TAG.match(text) is not None


def parse_name(name_or_url: str) -> Optional[ProductName]:
    """The product named by a file name, path or URL (its last component), or None."""
    last = unquote(urlsplit(str(name_or_url)).path).rsplit("/", 1)[-1]
    m = _NAME.match(last)
    return None if m is None else ProductName(int(m.group("det")), m.group("tag"))


def release_of(url_or_path: Union[str, Path]) -> Optional[str]:
    """The release (``qr2``, ``qr3``, ...) of an archive URL or mirror path: the directory that
    holds ``level2/`` or ``spectral_wcs/``; None when the path shows none."""
    parts = unquote(urlsplit(str(url_or_path)).path).replace("\\", "/").split("/")
    for i in range(1, len(parts)):
        if parts[i] in ("level2", TREE_DIR) and re.fullmatch(r"qr\d*|dr\d+|[a-z]{1,8}\d{0,3}", parts[i - 1]):
            return parts[i - 1]
    return None


def check_setting(name: str, value: Any) -> str:
    """The normalised ``spectral_wcs`` value: ``auto``, ``lookup`` (any case), a version tag,
    or a path (a non-empty string or path-like, kept as text). ValueError naming ``name``."""
    if isinstance(value, Path):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be 'auto', 'lookup', a version such as 'cal-wcs-v4-2025-254' or the path "
                         f"of a product file or directory, got {short_repr(value)}")
    text = value.strip()
    if text.lower() in (AUTO, LOOKUP):
        return text.lower()
    if "\0" in text or len(text) > 4096:
        raise ValueError(f"{name}: not a usable path: {short_repr(text)}")
    return text


def setting_kind(value: str) -> str:
    """What a checked ``spectral_wcs`` value asks for: ``auto``, ``lookup``, ``version`` or ``path``."""
    if value in (AUTO, LOOKUP):
        return value
    return "version" if is_tag(value) else "path"


__all__ = ["AUTO", "LOOKUP", "TREE_DIR", "ProductName", "check_setting", "is_tag", "parse_name", "release_of",
           "setting_kind", "tag_key"]
