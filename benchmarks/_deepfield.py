"""The deep-field data of ``bench_pipeline.py --deep-frames N``: many IRSA-style cutouts of one place.

A deep field near the ecliptic poles holds thousands of exposures of one position. The
benchmark simulates ``distinct`` 0.2-deg cutouts (``simulate_field(..., cutout_size_deg=0.2)``,
QR2 layout by default, since spxquery 0.4.1 reads only files with a PSF image) into
``~/.cache/spxdrizzle-bench/deep<distinct>-<release>`` and reuses them under new observation
ids (symbolic links named like new archive files) until ``n`` frames are listed: every
frame is read and drizzled in full; only the pixels repeat.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import List

DEEP_RA, DEEP_DEC, DEEP_SEED = 150.0, 2.0, 77
CUTOUT_DEG = 0.2


def _log(msg: str) -> None:
    import sys

    print(msg, file=sys.stderr, flush=True)


def _cached(root: Path, params: dict) -> List[Path]:
    try:
        if json.loads((root / "bench_field.json").read_text()) != params:
            return []
        rows = json.loads((root / "archive_index.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return []
    paths = [root / r["uri"].split("/data/spherex/", 1)[-1] for r in rows]
    ok = len(paths) == params["n_pointings"] and all(
        p.is_file() and p.stat().st_size == int(r["contentlength"]) for p, r in zip(paths, rows))
    return paths if ok else []


def deep_field(cache: Path, n: int, distinct: int, release: str = "qr2") -> List[Path]:
    """``n`` cutout paths of one position: ``distinct`` simulated files, repeated under new names."""
    root = cache / f"deep{distinct}-{release}"
    params = {"ra": DEEP_RA, "dec": DEEP_DEC, "seed": DEEP_SEED, "n_pointings": distinct, "release": release,
              "cutout_size_deg": CUTOUT_DEG}
    files = _cached(root, params)
    if not files:
        from spxquery.drizzle3d.simulate import simulate_field

        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        _log(f"data: simulating {distinct} {release} cutouts of {CUTOUT_DEG} deg into {root} ...")
        t0 = time.perf_counter()
        simulate_field(tmp, DEEP_RA, DEEP_DEC, detectors=(3,), n_pointings=distinct, release=release,
                       cutout_size_deg=CUTOUT_DEG, seed=DEEP_SEED)
        (tmp / "bench_field.json").write_text(json.dumps(params))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
        _log(f"data: done in {time.perf_counter() - t0:.0f} s")
        files = _cached(root, params)
        if not files:
            raise RuntimeError(f"simulated deep field in {root} is incomplete")
    links = root / f"as{n}"
    if not (links.is_dir() and len(list(links.iterdir())) == n):
        shutil.rmtree(links, ignore_errors=True)
        links.mkdir()
        for i in range(n):
            src = files[i % len(files)]
            (links / f"level2_2026W01_1A_{i:05d}_1D3_spx_l2b-v12-2025-164_cutout.fits").symlink_to(src)
    return sorted(links.iterdir())


__all__ = ["deep_field", "DEEP_RA", "DEEP_DEC", "CUTOUT_DEG"]
