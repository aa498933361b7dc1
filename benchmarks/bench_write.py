"""The costs a run pays once, in isolation: grid setup, writing the cube, one frame's zodi fit.

Each round runs a fresh process per interpreter (``--python``, default this venv's; give two to
compare, e.g. main's ``python/`` through a wrapper that sets ``PYTHONPATH``), interleaved. The
process drizzles the 30' cube of the cached 16-frame field (``bench_pipeline.py``'s, made when
missing, ``_field.py``) once, then times, in CPU ms of the process:

* ``grid``: ``OutputGrid.for_detector``, the first call of the process (the run's setup);
* ``save (run)``: ``save_cube`` inside that run (first call: lazy imports, caches);
* ``format``: the whole file formatted into a writer that drops the bytes (best of 7);
* ``save``: ``save_cube`` again, atomic (temporary file, fsync, rename over the last cube; best
  of 7 for CPU, and its wall time, best of 5);
* ``zodi``: the zodi scale of the first frame from its sample (``zodi.frame_scale``, best of 50).

Usage::

    python benchmarks/bench_write.py --rounds 3 --python .venv/bin/python /path/to/main-python
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
COLUMNS = ("grid", "save (run)", "format", "save", "save wall", "zodi")


def child(out_dir: str) -> None:
    """One measurement (in the child process): prints a JSON line of CPU/wall ms."""
    from astropy import log

    log.setLevel("ERROR")
    sys.path.insert(0, str(HERE))
    import _field
    from spxquery.drizzle3d import cubefile, frames, pipeline, zodi
    from spxquery.drizzle3d.config import Drizzle3DConfig
    from spxquery.drizzle3d.grid import OutputGrid, build_output_wcs

    paths = _field.ensure_field(_field.field_dir(_field.N_FRAMES))
    cfg = Drizzle3DConfig(center_ra=_field.FIELD_RA, center_dec=_field.FIELD_DEC, width=30.0,
                          height=30.0, detector=3, xy_oversample=1.0, z_oversample=1.0, output_dir=out_dir,
                          overwrite=True, progress=False)
    wcs = build_output_wcs(cfg)
    res = {}
    c0 = time.process_time()
    OutputGrid.for_detector(cfg, 3, wcs)
    res["grid"] = time.process_time() - c0
    held, fits_of = {}, []
    save, frame_scale = pipeline.save_cube, zodi.frame_scale

    def timed_save(cube, path, **kw):
        held["cube"] = cube
        t0 = time.process_time()
        try:
            return save(cube, path, **kw)
        finally:
            res["save (run)"] = time.process_time() - t0

    def kept_fit(*a, **k):
        fits_of.append((a, k))
        return frame_scale(*a, **k)

    pipeline.save_cube, frames._zodi.frame_scale = timed_save, kept_fit
    pipeline.drizzle_detector(paths, cfg, 3, wcs)
    cube = held["cube"]

    class Drop:
        def write(self, data) -> int:
            return memoryview(data).nbytes

    def best(fn, n: int, clock=time.process_time) -> float:
        times = []
        for _ in range(n):
            t0 = clock()
            fn()
            times.append(clock() - t0)
        return min(times)

    res["format"] = best(lambda: cubefile._write_streamed(Drop(), cube), 7)
    dst = Path(out_dir) / "bench_write.fits"
    res["save"] = best(lambda: cubefile.save_cube(cube, dst, overwrite=True), 7)
    res["save wall"] = best(lambda: cubefile.save_cube(cube, dst, overwrite=True), 5, time.perf_counter)
    a, k = fits_of[0]
    res["zodi"] = best(lambda: frame_scale(*a, **k), 50)
    print(json.dumps({key: 1e3 * v for key, v in res.items()}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", nargs="+", default=[sys.executable], help="interpreters to compare (interleaved)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (one process per interpreter each); default 3")
    ap.add_argument("--child", metavar="OUT_DIR", help=argparse.SUPPRESS)
    cfg = ap.parse_args()
    if cfg.child:
        child(cfg.child)
        return 0
    rows = {py: [] for py in cfg.python}
    with tempfile.TemporaryDirectory(prefix="bench_write.") as tmp:
        for r in range(cfg.rounds):
            for py in cfg.python:
                load = Path("/proc/loadavg").read_text().split()[0]
                out = subprocess.run([py, __file__, "--child", tmp], capture_output=True, text=True, check=True)
                rows[py].append((load, json.loads(out.stdout.strip().splitlines()[-1])))
                print(f"round {r + 1} {py} (load {load}) done", file=sys.stderr)
    print("| interpreter | load | " + " | ".join(f"{c} ms" for c in COLUMNS) + " |")
    print("|---|---:|" + "---:|" * len(COLUMNS))
    for py, runs in rows.items():
        for load, res in runs:
            print(f"| {py} | {load} | " + " | ".join(f"{res[c]:.2f}" for c in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
