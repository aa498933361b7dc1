"""Is the installed ``spxquery.drizzle3d`` this distribution's own? Checked before the command line runs.

spxquery 0.4.1 (PyPI) ships ``spxquery/drizzle3d/`` too, with nine files at the same paths as ours
(``__init__.py``, ``accumulate.py``, ``config.py``, ``grid.py``, ``io.py``, ``pipeline.py``,
``query.py``, ``spatial.py``, ``spectral.py``), and pip does not notice the clash:

- installing spxquery 0.4.1 *after* spxquery-drizzle3d replaces those nine files with 0.4.1's,
  leaving a mix of the two packages;
- uninstalling spxquery (after installing spxquery-drizzle3d) removes them.

:func:`installation_problem` compares the files on disk with the sha256 digests recorded in this
distribution's ``RECORD`` and describes any that were replaced or removed, naming the other
distribution that owns them and the command that repairs the installation. :func:`main` is the
``spxdrizzle`` console script (and ``python -m spxquery.drizzle3d``): it refuses to run on a broken
installation, then hands over to :func:`spxquery.drizzle3d.cli.main`.

Only the standard library is imported here, so the check runs whatever the state of the package.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import sys
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence, Tuple

DISTRIBUTION = "spxquery-drizzle3d"
PACKAGE_DIR = "spxquery/drizzle3d/"
REPAIR = f"pip install --force-reinstall --no-deps {DISTRIBUTION}"


def _digest(data: bytes, mode: str) -> str:
    """A RECORD-style digest: urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(hashlib.new(mode, data).digest()).rstrip(b"=").decode("ascii")


def damaged_files(dist: Optional[metadata.Distribution] = None) -> List[Tuple[str, str]]:
    """``(path, "replaced" | "missing")`` for each file of the package that differs from the RECORD.

    Paths are relative to site-packages (e.g. ``spxquery/drizzle3d/config.py``). Only files under
    ``spxquery/drizzle3d/`` that the RECORD lists with a digest are compared (byte-compiled caches
    are listed without one). An editable install (``maturin develop``) records none, and a source
    tree that is not installed has no RECORD: both give ``[]``.
    """
    if dist is None:
        try:
            dist = metadata.distribution(DISTRIBUTION)
        except metadata.PackageNotFoundError:
            return []
    damaged: List[Tuple[str, str]] = []
    # RECORD itself, not ``dist.files``: importlib_metadata >= 6 (imported by astropy's plugins when
    # asdf-astropy is installed) drops the files that no longer exist from ``files``.
    for row in csv.reader((dist.read_text("RECORD") or "").splitlines()):
        rel, digest = str(PurePosixPath(row[0])) if row else "", row[1] if len(row) > 1 else ""
        mode, _, value = digest.partition("=")
        if not rel.startswith(PACKAGE_DIR) or not value:
            continue
        try:
            data = Path(str(dist.locate_file(rel))).read_bytes()
        except OSError:
            damaged.append((rel, "missing"))
            continue
        if _digest(data, mode) != value:
            damaged.append((rel, "replaced"))
    return damaged


def _owners(paths: Sequence[str]) -> List[str]:
    """``name version`` of the other installed distributions whose RECORD lists any of ``paths``."""
    wanted = set(paths)
    owners = []
    for dist in metadata.distributions():
        name = dist.metadata["Name"] or "?"
        if name.lower().replace("_", "-") == DISTRIBUTION:
            continue
        if any(str(PurePosixPath(f)) in wanted for f in dist.files or []):
            owners.append(f"{name} {dist.version}")
    return sorted(set(owners))


def installation_problem() -> Optional[str]:
    """A message saying what is broken and how to repair it, or None when the installation is intact."""
    damaged = damaged_files()
    if not damaged:
        return None
    version = metadata.version(DISTRIBUTION)
    replaced = [p for p, how in damaged if how == "replaced"]
    missing = [p for p, how in damaged if how == "missing"]
    parts = []
    if replaced:
        owners = ", ".join(_owners(replaced)) or "another package"
        parts.append(f"{len(replaced)} of its files were overwritten by {owners} ({_listing(replaced)})")
    if missing:
        parts.append(f"{len(missing)} of its files are missing ({_listing(missing)}); uninstalling spxquery "
                     "removes them, as spxquery 0.4.1 ships files at the same paths")
    return f"the installation of {DISTRIBUTION} {version} is broken: {'; '.join(parts)}. Repair with: {REPAIR}"


def _listing(paths: Sequence[str], most: int = 4) -> str:
    names = [p[len(PACKAGE_DIR):] for p in paths]
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``spxdrizzle`` command: exit 1 with the repair command on a broken installation, else run the CLI."""
    problem = installation_problem()
    if problem is not None:
        print(f"error: {problem}", file=sys.stderr)
        return 1
    from .cli import main as cli_main

    return cli_main(argv)
