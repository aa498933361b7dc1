"""Is a local FITS file complete? Size, FITS structure, required extensions, checksum.

A partial transfer must never pass as complete: a file is accepted only when its size is
the stated length (bytes) and a whole number of 2880-byte blocks, astropy reads every HDU
header and the last HDU's data ends exactly at the end of the file, every required
extension (EXTNAME) is present, and its digest matches the archive's ``md5:<hex>``.
Used for downloads, files kept from an earlier run, and mirror files alike.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

#: Size of a FITS block (bytes); every FITS file is a whole number of them.
FITS_BLOCK = 2880
#: Read size (bytes) for checksums.
_DIGEST_BLOCK = 1 << 20


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of the file at ``path`` with ``algorithm`` (a :mod:`hashlib` name)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_DIGEST_BLOCK), b""):
            h.update(block)
    return h.hexdigest()


def _fits_structure(path: Path, size: int, required_hdus: Sequence[str]) -> str | None:
    """Why the HDUs of ``path`` (``size`` bytes) are incomplete, or None."""
    from astropy.io import fits

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                if len(hdul) == 0:
                    return "no HDU"
                end = 0
                for hdu in hdul:
                    info = hdu.fileinfo()
                    end = max(end, int(info["datLoc"]) + int(info["datSpan"]))
                names = {str(h.name).upper() for h in hdul}
        for w in caught:
            if "truncat" in str(w.message).lower():
                return f"FITS truncated: {w.message}"
    except Exception as exc:  # noqa: BLE001 - astropy raises OSError/ValueError/... on garbage
        return f"not readable as FITS ({type(exc).__name__}: {exc})"
    if end != size:
        return f"FITS structure ends at byte {end} but the file has {size} bytes"
    missing = [h for h in required_hdus if h.upper() not in names]
    if missing:
        return f"missing extension(s) {', '.join(missing)} (have {', '.join(sorted(names))})"
    return None


def check_fits_file(
    path: Path,
    expected_length: int | None = None,
    checksum: str | None = None,
    required_hdus: Sequence[str] = (),
) -> str | None:
    """Why ``path`` is not a complete FITS file, or ``None`` when it is.

    Checks: exists; size == ``expected_length`` (bytes) when given; size is a
    whole number of 2880-byte blocks; astropy reads every HDU header and the
    last HDU's data ends exactly at the end of the file; every EXTNAME in
    ``required_hdus`` is present; the digest matches ``checksum``
    (``"<alg>:<hex>"``, e.g. ``md5:...``) when given.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "file missing"
    if expected_length is not None and size != int(expected_length):
        return f"size {size} bytes != expected {int(expected_length)} bytes"
    if size == 0 or size % FITS_BLOCK:
        return f"size {size} bytes is not a whole number of 2880-byte FITS blocks"
    reason = _fits_structure(path, size, required_hdus)
    if reason is not None:
        return reason
    if checksum:
        alg, _, want = checksum.partition(":")
        alg = alg.strip().lower()
        if want and alg in hashlib.algorithms_available:
            got = file_digest(path, alg)
            if got.lower() != want.strip().lower():
                return f"{alg} checksum {got} != archive {want.strip()}"
        else:
            logger.debug("ignoring checksum of unknown form %r for %s", checksum, path)
    return None


def is_complete_fits(path: Path, expected_length: int | None = None, required_hdus: Sequence[str] = ()) -> bool:
    """True when ``path`` is a complete FITS file (size, structure, required
    extensions; see :func:`check_fits_file`)."""
    return check_fits_file(path, expected_length, required_hdus=required_hdus) is None
