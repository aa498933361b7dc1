"""Is a local FITS file complete? Size, FITS structure, required extensions, checksum.

A partial transfer must never pass as complete: a file is accepted only when its size is
the stated length (bytes) and a whole number of 2880-byte blocks, astropy reads every HDU
header and the last HDU's data ends exactly at the end of the file, every required
extension (EXTNAME) is present, and its digest matches the archive's ``md5:<hex>``.
Used for downloads, files kept from an earlier run, and mirror files alike.

A file that passed is given a small record beside it (``.<name>.verified``: its size,
modification time and inode, the source it came from, the checksum and extensions checked),
so that a rerun trusts an unchanged file without hashing it again (:func:`verify_cached`);
any change of size, time or inode, another source or another checksum means a full check.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

from ..filekind import not_a_regular_file

logger = logging.getLogger(__name__)

#: Size of a FITS block (bytes); every FITS file is a whole number of them.
FITS_BLOCK = 2880
#: Read size (bytes) for checksums.
_DIGEST_BLOCK = 1 << 20
#: Largest verification record read (bytes); a larger one is ignored.
_RECORD_MAX_BYTES = 1 << 16


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
    odd = not_a_regular_file(path)
    if odd is not None:
        return "file missing" if odd.startswith("does not exist") else odd
    size = path.stat().st_size
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


def record_path(path: Path) -> Path:
    """Where the verification record of ``path`` lives: ``.<name>.verified`` beside it."""
    path = Path(path)
    return path.with_name("." + path.name + ".verified")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "ino": int(st.st_ino)}


def write_record(path: Path, source: str, checksum: str | None, required_hdus: Sequence[str]) -> None:
    """Record that ``path``, as it is now, passed :func:`check_fits_file` with ``checksum``
    and ``required_hdus`` for ``source`` (written atomically; a failure only loses the cache)."""
    rec = record_path(path)
    tmp = rec.with_name(rec.name + f".tmp{os.getpid()}")
    try:
        doc = {**_stat_key(path), "source": source, "checksum": (checksum or "").strip().lower(),
               "hdus": sorted(h.upper() for h in required_hdus)}
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, rec)
    except OSError as exc:
        logger.debug("no verification record for %s: %s", path, exc)
        tmp.unlink(missing_ok=True)


def _record_says_verified(path: Path, source: str, checksum: str | None, required_hdus: Sequence[str]) -> bool:
    rec = record_path(path)
    try:
        with open(rec, "rb") as f:
            raw = f.read(_RECORD_MAX_BYTES + 1)
        doc = json.loads(raw) if len(raw) <= _RECORD_MAX_BYTES else None
        key = _stat_key(path)
    except (OSError, ValueError):
        return False
    if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in key.items()):
        return False
    if doc.get("source") != source:
        return False
    if checksum and doc.get("checksum") != checksum.strip().lower():
        return False
    hdus = doc.get("hdus")
    return isinstance(hdus, list) and {h.upper() for h in required_hdus} <= set(hdus)


def verify_cached(
    path: Path,
    expected_length: int | None = None,
    checksum: str | None = None,
    required_hdus: Sequence[str] = (),
    source: str = "",
) -> str | None:
    """:func:`check_fits_file`, skipped when the file's record says that the same checks
    passed for the same ``source`` and the file has not changed since (size, modification
    time, inode); a pass is recorded. Returns why ``path`` is not complete, or None."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size is not None and (expected_length is None or size == int(expected_length)):
        if _record_says_verified(path, source, checksum, required_hdus):
            return None
    reason = check_fits_file(path, expected_length, checksum, required_hdus)
    if reason is None:
        write_record(path, source, checksum, required_hdus)
    return reason
