"""The index of a simulated archive: ``ROOT/archive_index.json``, the simulated TAP database.

``{"rows": [...]}``, one row per file with exactly the TAP column names (no table prefix) that
the frame search selects, plus ``collection`` (docs/design.md); optionally ``"calibration":
[...]``, the calibration files of the ``spherex_<release>_cal`` SIA collections. Written by the simulator and by
:func:`~.small_frames.write_small_frame` users, read by the archive server. Wavelengths in the
rows are in metres (as IRSA states them), times in MJD, sizes in bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: File name of the index under an archive root.
INDEX_FILE = "archive_index.json"


def md5_of(path: Path) -> str:
    """Hex MD5 of the file at ``path``."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def index_row(
    path: Path,
    uri: str,
    *,
    release: str,
    obs_id: str,
    detector: int,
    band_um: tuple[float, float],
    mjd: tuple[float, float],
    poly: Sequence[float],
    producttype: str = "image",
) -> dict[str, Any]:
    """The index row of the file at ``path`` served as ``uri`` (``ibe/data/spherex/...``):
    its size and MD5 are read from the file; ``band_um`` = detector band (um), ``mjd`` =
    (start, end) of the exposure, ``poly`` = footprint corners (deg, flat list)."""
    det = int(detector)
    return {
        "obs_publisher_did": f"ivo://irsa.ipac/spherex_{release}?{obs_id}/D{det}",
        "energy_bandpassname": f"SPHEREx-D{det}",
        "energy_bounds_lower": band_um[0] * 1e-6,
        "energy_bounds_upper": band_um[1] * 1e-6,
        "time_bounds_lower": mjd[0],
        "time_bounds_upper": mjd[1],
        "poly": list(poly),
        "uri": uri,
        "contentlength": int(Path(path).stat().st_size),
        "contentchecksum": f"md5:{md5_of(Path(path))}",
        "producttype": producttype,
        "collection": f"spherex_{release}",
        "cloud_access": cloud_access(uri),
    }


#: The bucket of IRSA's S3 copy of the archive.
CLOUD_BUCKET = "nasa-irsa-spherex"


def cloud_access(uri: str) -> str:
    """The ``cloud_access`` JSON of an artifact served as ``uri``, as IRSA writes it: bucket,
    key (the part after ``ibe/data/spherex/``) and region."""
    key = uri.split("ibe/data/spherex/", 1)[-1]
    return json.dumps({"aws": {"bucket_name": CLOUD_BUCKET, "key": key, "region": "us-east-1"}})


def write_index(root: Path, rows: Sequence[dict[str, Any]],
                calibration: Sequence[dict[str, Any]] | None = None) -> Path:
    """Write ``root/archive_index.json`` (``{"rows": [...]}``, plus ``"calibration": [...]`` when
    given: the calibration files the server's SIA service lists); returns its path."""
    path = Path(root) / INDEX_FILE
    doc: dict[str, Any] = {"rows": list(rows)}
    if calibration:
        doc["calibration"] = list(calibration)
    path.write_text(json.dumps(doc, indent=1))
    return path


def load_calibration(root: str | Path) -> list[dict[str, Any]]:
    """The ``calibration`` entries of ``root/archive_index.json`` (SIA rows of the ``_cal``
    collections: ``uri``, ``obs_collection``, ...); [] when the index has none or is missing."""
    path = Path(root)
    if path.suffix != ".json":
        path = path / INDEX_FILE
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data.get("calibration") if isinstance(data, dict) else None
    return [dict(r) for r in rows] if isinstance(rows, list) else []


def load_index(root: str | Path) -> list[dict[str, Any]]:
    """Rows of ``root/archive_index.json`` (``root`` may also be the ``.json`` file itself).
    FileNotFoundError when missing, ValueError when it holds no list of rows."""
    path = Path(root)
    if path.suffix != ".json":
        path = path / INDEX_FILE
    if not path.exists():
        raise FileNotFoundError(f"archive index not found: {path}")
    data = json.loads(path.read_text())
    rows = data.get("rows") if isinstance(data, dict) else data
    if isinstance(rows, list):
        return rows
    raise ValueError(f"{path}: 'rows' must be a list")
