"""The simulated field of ``bench_pipeline.py``: N full-size QR2 D3 frames, cached in
``~/.cache/spxdrizzle-bench/fieldN`` (``field16`` the default; every count its own directory,
none deleted: the caches are shared), and the ``--frames`` counts."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import List, Optional

CACHE = Path.home() / ".cache" / "spxdrizzle-bench"
N_FRAMES = 16
DETECTOR = 3
FIELD_RA, FIELD_DEC, FIELD_SEED = 150.0, 2.0, 2026


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def field_dir(n_frames: int) -> Path:
    """The cache of the simulated field of ``n_frames`` full frames: ``field16`` (the default field),
    ``field{N}`` for other counts (never the same directory: caches are shared, none is deleted)."""
    return CACHE / f"field{n_frames}"


def field_paths(root: Path, n_frames: int = N_FRAMES) -> Optional[List[Path]]:
    """Frame paths of a complete cached field (index order), or None when incomplete."""
    index, params = root / "archive_index.json", root / "bench_field.json"
    want = {"ra": FIELD_RA, "dec": FIELD_DEC, "seed": FIELD_SEED, "n_pointings": n_frames,
            "release": "qr2", "detectors": [DETECTOR]}
    try:
        if json.loads(params.read_text()) != want:
            return None
        rows = json.loads(index.read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    if len(rows) != n_frames:
        return None
    paths = []
    for row in rows:
        rel = row["uri"].split("/data/spherex/", 1)[-1]  # ibe/data/spherex/qr2/level2/... -> qr2/level2/...
        p = root / rel
        if not p.is_file() or p.stat().st_size != int(row["contentlength"]):
            return None
        paths.append(p)
    return paths


def ensure_field(root: Path, n_frames: int = N_FRAMES) -> List[Path]:
    """The ``n_frames`` cached frames, simulating them first when missing or incomplete."""
    paths = field_paths(root, n_frames)
    if paths is not None:
        log(f"data: reusing {len(paths)} frames in {root}")
        return paths
    from spxquery.drizzle3d.simulate import simulate_field

    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"data: simulating {n_frames} full-size QR2 D{DETECTOR} frames into {root} (~70 MB each) ...")
    t0 = time.perf_counter()
    simulate_field(tmp, FIELD_RA, FIELD_DEC, detectors=(DETECTOR,), n_pointings=n_frames, release="qr2",
                   seed=FIELD_SEED)
    (tmp / "bench_field.json").write_text(json.dumps(
        {"ra": FIELD_RA, "dec": FIELD_DEC, "seed": FIELD_SEED, "n_pointings": n_frames, "release": "qr2",
         "detectors": [DETECTOR]}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log(f"data: done in {time.perf_counter() - t0:.0f} s")
    paths = field_paths(root, n_frames)
    if paths is None:
        raise RuntimeError(f"simulated field in {root} is incomplete (archive_index.json vs files)")
    return paths


def frame_counts(text: str) -> List[int]:
    """The counts of ``--frames`` (``16`` or ``16,64``): positive, distinct, in the given order."""
    try:
        counts = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--frames: comma-separated frame counts expected, got {text!r}") from None
    if not counts or min(counts) < 1 or len(set(counts)) != len(counts):
        raise SystemExit(f"--frames: distinct positive counts expected, got {text!r}")
    return counts


__all__ = ["CACHE", "N_FRAMES", "DETECTOR", "FIELD_RA", "FIELD_DEC", "FIELD_SEED", "field_dir", "field_paths",
           "ensure_field", "frame_counts"]
