"""Scaling beyond one piece (issue 20): one-piece vs tiled cubes on dask.distributed workers.

Rows (each run in a fresh subprocess, so that peak memory is the run's own):

* ``3x3``: a ``--size``-degree (default 3) D3 cube at native pixels from ``--full-frames``
  simulated QR3 full frames, one piece in this process vs ``--tile-deg`` (default 0.5) tiles on
  a LocalCluster of 1 and 2 worker processes: wall time, peak RSS of the process that held the
  accumulators (the driver for one piece, the largest worker for tiles) and the tile
  accumulators for reference (a worker should stay within them + 400 MB). The tiled cubes are
  checked equal to the one-piece cube, bit for bit.
* ``deep``: ``--deep-frames`` cutouts of one place (``_deepfield.py``, ``--deep-distinct``
  simulated files reused under new names) into a ``--deep-arcmin`` cube in ``--deep-tile``
  tiles, with 1 and 2 workers: time per frame.
* ``10x10`` (``--big``): a 10 x 10 degree D3 cube at native pixels in ``--tile-deg`` tiles on
  ``--big-workers`` workers, the frames offered to the tiles by their archive footprints; the
  tiles, manifest and quick-look are written, not the 11.6 GB cube file (``--big-assemble``
  writes it too). Its accumulators (21 GiB) cannot be allocated in one piece here.

``--rows`` picks the rows (default ``3x3,deep``). Peak memory is the process's own high-water
mark (``VmHWM`` of ``/proc/self/status``), not ``ru_maxrss``: Linux carries ``ru_maxrss`` over
``execve`` from the parent, so a row started from a parent that had loaded cubes reported the
parent's peak (the 3.62 GiB "driver" of the deep rows in the first run was this script's
comparison of the two 3 x 3 degree cubes, now streamed). Each row's output is removed after it
is measured.

    python benchmarks/bench_scale.py                       # 3x3 rows and a 1000-frame deep field
    python benchmarks/bench_scale.py --rows deep,big --deep-frames 5000 --big-workers 1,2
    python benchmarks/bench_scale.py --rows big --big-grid 3 --big-workers 1,2   # 18 frames covering 10 x 10 deg

Prints a Markdown table with the load average; records nothing by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
CACHE = Path.home() / ".cache" / "spxdrizzle-bench"
RA, DEC = 150.0, 2.0


def _field(n: int) -> list:
    """``n`` simulated QR3 full frames of detector 3 around (RA, DEC), cached."""
    from spxquery.drizzle3d.simulate import simulate_field

    root = CACHE / f"scale{n}-qr3"
    done = root / "paths.json"
    if done.is_file():
        return [Path(p) for p in json.loads(done.read_text())]
    info = simulate_field(root, RA, DEC, detectors=(3,), n_pointings=n, release="qr3", seed=5, x_jitter=50.0,
                          y_range=(900.0, 1140.0))
    done.write_text(json.dumps([str(p) for p in info.paths]))
    return list(info.paths)


def _mosaic(grid: int) -> list:
    """Full QR3 D3 frames tiling about 10 x 10 deg: ``grid`` x ``grid`` field centres 3.3 deg apart
    around (RA, DEC), two pointings each (each field simulated, and cached, on its own)."""
    from spxquery.drizzle3d.simulate import simulate_field

    paths: list = []
    half = (grid - 1) / 2
    for i in range(grid):
        for j in range(grid):
            root = CACHE / f"mosaic{grid}-qr3" / f"f{i}{j}"
            done = root / "paths.json"
            if not done.is_file():
                dec = DEC + (i - half) * 3.3
                ra = RA + (j - half) * 3.3 / math.cos(math.radians(dec))
                info = simulate_field(root, ra, dec, detectors=(3,), n_pointings=2, release="qr3", seed=11 + 7 * i + j,
                                      x_jitter=50.0, y_range=(900.0, 1140.0))
                done.write_text(json.dumps([str(p) for p in info.paths]))
            paths += [Path(p) for p in json.loads(done.read_text())]
    return paths


def peak_rss() -> int:
    """This process's peak resident memory [bytes]: ``VmHWM`` (Linux), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _footprints(paths: list) -> list:
    """The archive index's footprint (poly) of each path (None where the index does not list it)."""
    polys: dict = {}
    roots = {next((d for d in Path(os.path.realpath(p)).parents if (d / "archive_index.json").is_file()), None)
             for p in paths}
    for root in roots - {None}:
        for row in json.loads((root / "archive_index.json").read_text())["rows"]:
            polys[os.path.realpath(root / row["uri"].split("/data/spherex/", 1)[-1])] = row["poly"]
    return [polys.get(os.path.realpath(p)) for p in paths]


def _run_row(spec: dict) -> dict:
    """One row in this (fresh) process: drizzle, then peak memory of the driver and the workers."""
    import logging

    from spxquery.drizzle3d import Drizzle3DConfig
    from spxquery.drizzle3d.grid import build_output_wcs
    from spxquery.drizzle3d.pipeline import drizzle_detector, drizzle_tiled

    logging.basicConfig(level=logging.WARNING)
    if spec["data"] == "deep":
        from _deepfield import deep_field

        paths = deep_field(CACHE, spec["frames"], spec["distinct"])
    elif spec["data"] == "mosaic":
        paths = _mosaic(spec["frames"])
    else:
        paths = _field(spec["frames"])
    config = Drizzle3DConfig(center_ra=RA, center_dec=DEC, width=spec["arcmin"], height=spec["arcmin"], detector=3,
                             output_dir=Path(spec["out"]), progress=False, overwrite=True)
    workers_rss = []
    pieces = 0
    t0 = time.perf_counter()
    if spec["workers"] == 0:
        out = drizzle_detector(paths, config, 3, build_output_wcs(config))
    else:
        from distributed import Client, LocalCluster

        env = {"RAYON_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // spec["workers"]))}
        footprints = _footprints(paths) if spec.get("footprints") else None
        with LocalCluster(n_workers=spec["workers"], threads_per_worker=1, processes=True, dashboard_address=":0",
                          env=env) as cluster, Client(cluster) as client:
            t0 = time.perf_counter()
            out = drizzle_tiled(paths, config.replace(scheduler=cluster.scheduler_address), 3, spec["tile_arcmin"],
                                footprints=footprints, assemble=spec.get("assemble", True))
            elapsed = time.perf_counter() - t0
            workers_rss = list(client.run(peak_rss).values())
        pieces = len(list((Path(spec["out"]) / "tiles_D3").glob("tile_*.fits")))
    elapsed = time.perf_counter() - t0 if spec["workers"] == 0 else elapsed
    return {"seconds": elapsed, "frames": len(paths), "out": str(out), "driver_rss": peak_rss(),
            "workers_rss": workers_rss, "pieces": pieces}


def _sub(spec: dict) -> dict:
    res = subprocess.run([sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"row {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _data_digests(path: str) -> dict:
    """SHA-256 of the data bytes of each compared extension, read in chunks (no array in memory)."""
    import hashlib

    from astropy.io import fits

    out = {}
    with fits.open(path, memmap=False, lazy_load_hdus=True) as h, open(path, "rb") as f:
        for e in ("SCI", "VARIANCE", "AND_MASK", "OR_MASK", "COUNT", "WAVELENGTH"):
            info = h[e].fileinfo()
            digest, start, left = hashlib.sha256(), info["datLoc"], info["datSpan"]
            f.seek(start)
            while left > 0:
                chunk = f.read(min(left, 1 << 24))
                digest.update(chunk)
                left -= len(chunk)
            out[e] = digest.hexdigest()
    return out


def _same(a: str, b: str) -> bool:
    return _data_digests(a) == _data_digests(b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--rows", default="3x3,deep", help="rows to run: 3x3, deep, big (default 3x3,deep)")
    ap.add_argument("--size", type=float, default=3.0, help="side of the large cube [deg] (default 3)")
    ap.add_argument("--tile-deg", type=float, default=0.5, help="tile side [deg] (default 0.5)")
    ap.add_argument("--full-frames", type=int, default=2, help="simulated QR3 full frames (default 2)")
    ap.add_argument("--deep-frames", type=int, default=1000, help="cutouts of the deep field (default 1000)")
    ap.add_argument("--deep-distinct", type=int, default=50, help="distinct simulated cutouts (default 50)")
    ap.add_argument("--deep-arcmin", type=float, default=10.0, help="deep cube side [arcmin] (default 10)")
    ap.add_argument("--deep-tile", type=float, default=5.0, help="deep cube tile side [arcmin] (default 5)")
    ap.add_argument("--deep-workers", default="1,2", help="workers of the deep rows (default 1,2)")
    ap.add_argument("--big", action="store_true", help="also the 10 x 10 degree cube (same as adding big to --rows)")
    ap.add_argument("--big-workers", default="2", help="workers of the 10 x 10 degree rows (default 2)")
    ap.add_argument("--big-grid", type=int, default=0,
                    help="10 x 10 degree rows on a grid of N x N simulated fields 3.3 deg apart (2 frames each) "
                         "that cover the cube, instead of the --full-frames field (default 0: that field)")
    ap.add_argument("--big-assemble", action="store_true", help="also write the 10 x 10 degree cube file (11.6 GB)")
    ap.add_argument("--out", type=Path, default=CACHE / "scale-out")
    args = ap.parse_args()
    if args.row:
        print(json.dumps(_run_row(json.loads(args.row))))
        return
    from _deepfield import deep_field

    wanted = set(args.rows.split(",")) | ({"big"} if args.big else set())
    _field(args.full_frames)  # simulated once, outside the timed rows and their memory
    if "big" in wanted and args.big_grid:
        _mosaic(args.big_grid)
    if "deep" in wanted:
        deep_field(CACHE, args.deep_frames, args.deep_distinct)
    gib = 1 << 30
    side = round(args.tile_deg * 3600 / 6.15)
    notes = [f"tile accumulators ({args.tile_deg:g} deg tiles): {17 * side * side * 36 / gib:.2f} GiB"]
    rows = []
    big = {"data": "full", "frames": args.full_frames, "arcmin": args.size * 60, "tile_arcmin": args.tile_deg * 60}
    if "3x3" in wanted:
        for workers in (0, 1, 2):
            rows.append((f"{args.size:g}x{args.size:g} deg", workers, _sub({**big, "workers": workers,
                                                                              "out": str(args.out / f"big{workers}")})))
        notes.append(f"tiled == one piece, bit for bit: {[_same(rows[0][2]['out'], r[2]['out']) for r in rows[1:]]}")
        for workers in (0, 1, 2):
            shutil.rmtree(args.out / f"big{workers}", ignore_errors=True)
    if "deep" in wanted:
        deep = {"data": "deep", "frames": args.deep_frames, "distinct": args.deep_distinct,
                "arcmin": args.deep_arcmin, "tile_arcmin": args.deep_tile, "footprints": True}
        for workers in (int(w) for w in args.deep_workers.split(",")):
            rows.append((f"deep {args.deep_frames} cutouts, {args.deep_arcmin:g}'", workers,
                         _sub({**deep, "workers": workers, "out": str(args.out / f"deep{workers}")})))
            shutil.rmtree(args.out / f"deep{workers}", ignore_errors=True)
    if "big" in wanted:
        n = round(600 * 60 / 6.15)
        notes.append(f"10x10 deg: {n} x {n} x 17 voxels, one-piece accumulators {17 * n * n * 36 / gib:.1f} GiB")
        for workers in (int(w) for w in args.big_workers.split(",")):
            out = args.out / f"ten{workers}"
            data = {"data": "mosaic", "frames": args.big_grid} if args.big_grid else {}
            spec = {**big, **data, "arcmin": 600.0, "workers": workers, "out": str(out), "footprints": True,
                    "assemble": args.big_assemble}
            rows.append(("10x10 deg", workers, _sub(spec)))
            shutil.rmtree(out, ignore_errors=True)
    print(f"load average: {os.getloadavg()}, cpus: {os.cpu_count()}")
    print("; ".join(notes))
    print("| cube | run | wall s | s/frame | pieces | peak RSS GiB (driver) | peak RSS GiB (largest worker) |")
    print("|---|---|---|---|---|---|---|")
    for name, workers, r in rows:
        run = "one piece" if workers == 0 else f"tiles, {workers} worker(s)"
        wr = f"{max(r['workers_rss']) / gib:.2f}" if r["workers_rss"] else "-"
        print(f"| {name} | {run} | {r['seconds']:.1f} | {r['seconds'] / r['frames']:.3f} | {r['pieces']} | "
              f"{r['driver_rss'] / gib:.2f} | {wr} |")


if __name__ == "__main__":
    main()
