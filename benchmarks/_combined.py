"""The combined-cube rows of ``bench_pipeline.py``: one cube of all six detectors vs six cubes.

Data: ``n`` pointings x 6 detectors of full-size (2040x2040) QR2 frames (``simulate_field(...,
detectors=(1, ..., 6), n_pointings=n, release='qr2', seed=FIELD_SEED)``, ~70 MB each) cached in
``<data-dir>-6det<n>``. Runs, each a fresh process of the same harness: the six single-detector
cubes (``drizzle_detector``, one detector's frames each) and the combined cube
(``drizzle_all_detectors`` on all the frames: each frame read once, 102 native planes). Targets
(issue 18): combined time <= 1.1 x the sum of the six single runs; combined peak RSS <= its
accumulators (102 planes) + 300 MiB.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

DETECTORS = (1, 2, 3, 4, 5, 6)
NATIVE_ALL_PLANES = 102
TIME_TARGET = 1.1


def field6_paths(root: Path, n_pointings: int, ra: float, dec: float, seed: int) -> Optional[Dict[int, List[Path]]]:
    """The cached six-detector field's frames by detector, or None when missing or incomplete."""
    want = {"ra": ra, "dec": dec, "seed": seed, "n_pointings": n_pointings, "release": "qr2",
            "detectors": list(DETECTORS)}
    try:
        if json.loads((root / "bench_field.json").read_text()) != want:
            return None
        rows = json.loads((root / "archive_index.json").read_text())["rows"]
    except (OSError, ValueError, KeyError):
        return None
    out: Dict[int, List[Path]] = {}
    for row in rows:
        p = root / row["uri"].split("/data/spherex/", 1)[-1]
        if not p.is_file() or p.stat().st_size != int(row["contentlength"]):
            return None
        out.setdefault(int(row["energy_bandpassname"][-1]), []).append(p)
    return out if sorted(out) == list(DETECTORS) and all(len(v) == n_pointings for v in out.values()) else None


def ensure_field6(root: Path, n_pointings: int, ra: float, dec: float, seed: int,
                  log: Callable[[str], None]) -> Dict[int, List[Path]]:
    """The six-detector field, simulated first when missing (~1.5 s per full-size frame)."""
    found = field6_paths(root, n_pointings, ra, dec, seed)
    if found is not None:
        log(f"data: reusing {6 * n_pointings} frames of six detectors in {root}")
        return found
    from spxquery.drizzle3d.simulate import simulate_field

    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"data: simulating {n_pointings} pointings x 6 detectors of full-size QR2 frames into {root} ...")
    t0 = time.perf_counter()
    simulate_field(tmp, ra, dec, detectors=DETECTORS, n_pointings=n_pointings, release="qr2", seed=seed)
    (tmp / "bench_field.json").write_text(json.dumps({"ra": ra, "dec": dec, "seed": seed, "n_pointings": n_pointings,
                                                      "release": "qr2", "detectors": list(DETECTORS)}))
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    log(f"data: done in {time.perf_counter() - t0:.0f} s")
    found = field6_paths(root, n_pointings, ra, dec, seed)
    if found is None:
        raise RuntimeError(f"simulated six-detector field in {root} is incomplete")
    return found


def combined_runs(run_one: Callable[..., Any], by_det: Dict[int, List[Path]], size: float
                  ) -> Tuple[Dict[int, Any], Any]:
    """Six single-detector runs and one combined run on the same frames: ``run_one(tag, paths,
    extra_args)`` -> Run (``bench_pipeline.execute`` with the runner's extra arguments)."""
    singles = {d: run_one(f"6det-D{d}-{size:g}arcmin", by_det[d], ["--detector", str(d)]) for d in DETECTORS}
    every = [p for d in DETECTORS for p in by_det[d]]
    combined = run_one(f"6det-all-{size:g}arcmin", every, ["--combine"])
    return singles, combined


def combined_report(singles: Dict[int, Any], combined: Any, size_label: str, baseline_mib: float,
                    accum_mib: Callable[[Tuple[int, int, int]], float], headroom_mib: float,
                    fmt: Callable[..., str]) -> List[str]:
    """Markdown lines: one row per single-detector cube, the sum, the combined cube, verdicts."""
    L = ["", f"### One cube of all six detectors vs six single-detector cubes ({size_label}, native grids)", "",
         "| cube | frames | drizzle s | process s | peak RSS MB | net MB | accumulators MB | limit MB | "
         "peak ≤ limit |", "|---|---:|---:|---:|---:|---:|---:|---:|:-:|"]
    total = 0.0
    ok = True

    def row(name: str, r: Any, planes: int) -> None:
        res = r.result
        shape = tuple(res.get("cube_shape") or (planes, 0, 0))
        acc = accum_mib(shape) if shape[1] else float("nan")  # type: ignore[arg-type]
        peak = r.maxrss_mib
        L.append(f"| {name} | {r.n_frames} | {fmt(res.get('drizzle_s'), '.1f')} | "
                 f"{fmt(r.wall_s, '.1f')} | {fmt(peak, '.0f')} | {fmt(peak - baseline_mib, '.0f')} | "
                 f"{fmt(acc, '.0f')} | {fmt(acc + headroom_mib, '.0f')} | "
                 f"{'yes' if peak <= acc + headroom_mib else 'no'} |")

    for d, r in sorted(singles.items()):
        row(f"D{d}", r, 17)
        if r.status == "ok":
            total += float(r.result["drizzle_s"])
        else:
            ok = False
    L.append(f"| sum of the six | {sum(r.n_frames for r in singles.values())} | {total:.1f} | | | | | | |")
    row("**all six in one cube**", combined, NATIVE_ALL_PLANES)
    L.append("")
    res = combined.result
    if ok and combined.status == "ok" and total > 0:
        ratio = float(res["drizzle_s"]) / total
        L.append(f"- Time: combined {res['drizzle_s']:.1f} s / sum of the six {total:.1f} s = **{ratio:.2f}** "
                 f"(target ≤ {TIME_TARGET}: {'met' if ratio <= TIME_TARGET else 'NOT met'}); each frame is read "
                 "once in both.")
        shape = tuple(res.get("cube_shape") or (NATIVE_ALL_PLANES, 0, 0))
        acc = accum_mib(shape)  # type: ignore[arg-type]
        peak = float(combined.maxrss_mib)
        limit = acc + headroom_mib
        verdict = "met" if peak <= limit else ("met on net only" if peak - baseline_mib <= limit else "NOT met")
        L.append(f"- Memory: combined peak {peak:.0f} MB (net {peak - baseline_mib:.0f} MB) vs accumulators "
                 f"{acc:.0f} MB + {headroom_mib:.0f} MB = {limit:.0f} MB: {verdict}.")
    else:
        L.append(f"- A run failed: combined {combined.status} {res.get('error') or ''}")
    L.append("")
    return L
