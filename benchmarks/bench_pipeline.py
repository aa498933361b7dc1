"""End-to-end pipeline benchmark: this package vs spxquery 0.4.1 (pure numpy), same frames.

What it does, in one invocation:

1. Data: ``--frames`` (16) full-size (2040x2040) QR2 detector-3 L2 frames written by this
   package's simulator (``simulate_field(root, RA, Dec, detectors=(3,), n_pointings=16,
   release='qr2', seed=...)``, ~70 MB each) into ``--data-dir`` (default
   ~/.cache/spxdrizzle-bench/field16; ``fieldN`` for N frames). Reused when
   ``archive_index.json`` lists the expected frames and every file has the listed size and the
   field parameters match; regenerated otherwise. Further counts (``--frames 16,64``) add rows
   of this package alone for the cubes up to 1 deg on fields of that many frames.
2. The old package: a virtual environment OUTSIDE the repository (``--old-venv``, default
   ~/.cache/spxdrizzle-bench/venv-spxquery041), created when missing with
   ``python3 -m venv`` + ``pip install spxquery==0.4.1`` (needs network access to PyPI once).
3. Runs, each in a fresh subprocess (``benchmarks/_spxquery041_runner.py``, the same
   harness for both packages): for every cube size in ``--sizes`` (default 30' and 180',
   i.e. 30'x30' and 3x3 deg, native D3 grid: xy_oversample=1, z_oversample=1, detector 3,
   default xy_shrink, centred on the field centre), this package and spxquery 0.4.1 call
   ``drizzle_detector(paths, config, 3, build_output_wcs(config))``. Timed: that call
   (read + drizzle + write of the cube, both packages), with the input files read once
   beforehand so both read from the page cache; the process total is also reported. This
   package's runs of each case (the deep field's too) are repeated in ``--repeat`` (3) fresh
   processes: the row gives the median drizzle time (ratios and targets use it), the spread
   (fastest-slowest, ms per frame) in a column of its own, the largest peak RSS, and the cube of
   the median run (``benchmarks/_repeat.py``); spxquery 0.4.1 runs once. Peak
   memory: ``ru_maxrss`` of the child from ``os.wait4`` (per run), minus a baseline (the peak
   RSS of a process that only imported the package) for the net value.
   Accumulators: ours n_z*ny*nx*(3*8 + 3*4) bytes, 0.4.1's n_z*ny*nx*(3*8 + 2 + 2*4).
   Memory target: peak RSS <= accumulators + 300 MB (MB = 2**20 bytes), checked raw and net.
4. spxquery 0.4.1 on cubes larger than 1 deg is slow (~1-2 min per frame) and needs
   ~12 GB: by default it drizzles only the first ``--old-frames`` (3) frames there; this
   package is then timed on the same subset too, and the old/new ratio uses that subset.
   A run longer than ``--time-cap`` minutes is killed and reported as '> cap'; the old
   process has an address-space limit (``--mem-cap-gb``; a MemoryError is reported).
   The deep field (``--deep-frames`` IRSA-style 0.2 deg cutouts of one place, default 2000,
   into a ``--deep-size`` cube; ``benchmarks/_deepfield.py``) is drizzled whole by this
   package; spxquery 0.4.1 drizzles its first ``--deep-old-frames`` (200), compared likewise.
   ``--stages`` adds one run per case with the stage clocks on and writes the per-stage table
   (ms per frame; the costs paid once per run, setup / after the loop / writing, in rows of their
   own, so that they and the frame loop add up to the end-to-end time) under its own heading;
   ``--covariance`` adds a column per case with the covariance cross terms on (issue 22), prints
   each staged run's peak RSS, and writes each case's ratio with / without covariance (the 30'
   cubes and the deep field's cutouts; time, kernel CPU, write, peak memory against the cross
   terms' size; ``--repeat`` rounds of the staged pair, interleaved: medians and the rounds'
   ratios), where the added time goes against what the 1.6x target allows, and the disk's floor
   (the bytes the covariance adds to the file written alone) under its own heading
   (``benchmarks/_covariance.py``).
5. Science parity (casual): SCI of both cubes where both are finite: slope of old vs new
   (least squares through 0) over all common voxels; Pearson r and slope of the
   wavelength-collapsed images per pixel and in 8x8-pixel block means; medians. 0.4.1
   places pixels half a pixel off (and uses a bilinear point kernel), so only broad
   agreement is expected, best seen in the block means.
6. One cube of all six detectors (``--combined N``, default 4 pointings, i.e. 24 full-size frames
   of D1-D6, cached beside ``--data-dir``): the six single-detector cubes and the combined cube
   (``drizzle_all_detectors``, 102 native planes) on the same frames, at the first size; the
   combined time against 1.1x the sum of the six, its peak RSS against its accumulators + 300 MB
   (``benchmarks/_combined.py``).
7. Prints a markdown table and writes it, with date, machine, load average, versions and
   the exact command, under '## Pipeline: this package vs spxquery 0.4.1' in
   ``--doc`` (default docs/performance.md; other sections of that file are kept).

Examples::

    python benchmarks/bench_pipeline.py                       # the full comparison
    python benchmarks/bench_pipeline.py --skip-old --sizes 30 # quick: this package only
    python benchmarks/bench_pipeline.py --old-frames 0        # old code on all frames at 3 deg
    python benchmarks/bench_pipeline.py --skip-old --sizes 30 --frames 16,64 --stages
                                                              # the 30' row on 16 and on 64 frames
    python benchmarks/bench_pipeline.py --stages              # everything, plus the per-stage table
    python benchmarks/bench_pipeline.py --skip-old --stages   # this package only, with the stage table

Every run is a separate process; only one runs at a time. Outputs (cubes, logs, result
JSON) go to ``--work-dir`` (default ~/.cache/spxdrizzle-bench/runs) and are overwritten.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import functools
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

import _covariance
import _deepfield
import _doc
import _rejection
import _repeat
import _stages
from _field import CACHE, DETECTOR, FIELD_DEC, FIELD_RA, FIELD_SEED, N_FRAMES, ensure_field, field_dir, frame_counts

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RUNNER = HERE / "_spxquery041_runner.py"
DOC_HEADING = "## Pipeline: this package vs spxquery 0.4.1"
OLD_SPEC = "spxquery==0.4.1"
MIB = 1024.0 * 1024.0
TARGET_RATIO = {"30'x30'": 250.0, "3°x3°": 5.0}  # issue targets: >= 250x at 30' (issue 23), >= 5x at 3 deg
#: Issue 23: at most 8 ms per frame for the 30' cube, 5 ms for the deep field's cutouts.
TARGET_PER_FRAME = {"30'x30'": 0.008, "deep field": 0.005}
DEEP_CASE = "deep field"
MEM_HEADROOM_MIB = 300.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def mem_available_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / MIB
    except OSError:
        pass
    return None


# ── old package venv ─────────────────────────────────────────────────────────────────────


def old_python(venv: Path, venv_python: str) -> Path:
    """Interpreter of the spxquery 0.4.1 venv, creating the venv when missing."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import importlib.metadata as m, spxquery.drizzle3d.pipeline; "
             "assert m.version('spxquery') == '0.4.1', m.version('spxquery')"]
    if py.exists() and subprocess.run(check, capture_output=True, cwd="/").returncode == 0:
        return py
    log(f"old package: creating {venv} with {venv_python} -m venv + pip install {OLD_SPEC} ...")
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([venv_python, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", OLD_SPEC], check=True)
    r = subprocess.run(check, capture_output=True, text=True, cwd="/")
    if r.returncode != 0:
        raise RuntimeError(f"{OLD_SPEC} in {venv} does not import: {r.stderr.strip()[-2000:]}")
    return py


# ── one subprocess run ───────────────────────────────────────────────────────────────────


@dataclass
class Run:
    impl: str  # "new" | "old"
    size: float  # arcmin
    n_frames: int
    case: str = ""  # the comparison it belongs to (size label, or the deep field)
    n_total: int = N_FRAMES  # frames of its data set
    status: str = "ok"  # ok | > cap | MemoryError | failed
    result: Dict = field(default_factory=dict)
    wall_s: float = 0.0
    maxrss_mib: float = 0.0
    load_before: str = ""
    load_after: str = ""
    output: Optional[Path] = None
    repeats: List[float] = field(default_factory=list)  # drizzle s of each repeated run (--repeat)


def run_child(python: Path, args: List[str], log_path: Path, time_cap_s: float,
              as_limit_bytes: Optional[int], rss_kill_mib: float,
              extra_env: Optional[Dict[str, str]] = None) -> Tuple[str, float, float]:
    """Run ``python RUNNER args`` in its own session; return (status, wall s, ru_maxrss MiB).

    Polls with ``os.wait4`` (so ``ru_maxrss`` is this child's own peak) and kills the process
    group past ``time_cap_s`` ('> cap') or when its RSS exceeds ``rss_kill_mib`` ('> mem cap').
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})

    def preexec() -> None:
        os.setsid()
        if as_limit_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (as_limit_bytes, as_limit_bytes))

    with open(log_path, "w") as lf:
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(python), str(RUNNER), *args], stdout=lf, stderr=subprocess.STDOUT,
                                cwd=str(log_path.parent), env=env, preexec_fn=preexec)
        status = "ok"
        while True:
            pid, wstatus, ru = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(wstatus)
                break
            elapsed = time.perf_counter() - t0
            rss = _proc_rss_mib(proc.pid)
            if elapsed > time_cap_s or (rss is not None and rss > rss_kill_mib):
                status = "> cap" if elapsed > time_cap_s else "> mem cap"
                os.killpg(proc.pid, signal.SIGKILL)
                _, wstatus, ru = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(wstatus)
                break
            time.sleep(0.1)
        wall = time.perf_counter() - t0
    return status, wall, ru.ru_maxrss / 1024.0


def _proc_rss_mib(pid: int) -> Optional[float]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def runner_args(result: Path, paths_file: Optional[Path] = None, size: Optional[float] = None,
                out_dir: Optional[Path] = None, centre: Tuple[float, float] = (FIELD_RA, FIELD_DEC),
                reject: bool = False, extra: Optional[List[str]] = None) -> List[str]:
    """The runner's arguments; ``extra`` replaces ``--detector 3`` (e.g. ``--combine``)."""
    if paths_file is None:
        return ["--result", str(result), "--baseline"]
    return ["--result", str(result), "--paths-file", str(paths_file), "--ra", repr(centre[0]), "--dec",
            repr(centre[1]), "--size-arcmin", repr(size), *(extra or ["--detector", str(DETECTOR)]),
            "--output-dir", str(out_dir), *(["--reject-outliers"] if reject else [])]


def warm_page_cache(paths: List[Path]) -> None:
    """Read every input file once so that each run reads from memory, not disk (equal
    footing for both packages; the first run of a session would otherwise pay for the
    disk)."""
    for path in paths:
        with open(path, "rb") as fh:
            while fh.read(1 << 24):
                pass


def execute(python: Path, impl: str, tag: str, work: Path, cfg: argparse.Namespace, as_limit: Optional[int],
            rss_kill_mib: float, paths: Optional[List[Path]] = None, size: Optional[float] = None,
            case: str = "", stages: bool = False, centre: Tuple[float, float] = (FIELD_RA, FIELD_DEC),
            reject: bool = False, extra: Optional[List[str]] = None) -> Run:
    """One fresh-process run (baseline when ``paths`` is None); retries import failures (Rust rebuilds)."""
    rdir = work / tag
    rdir.mkdir(parents=True, exist_ok=True)
    result_path = rdir / "result.json"
    paths_file = None
    if paths is not None:
        paths_file = rdir / "paths.txt"
        paths_file.write_text("".join(f"{p}\n" for p in paths))
    run = Run(impl=impl, size=size or 0.0, n_frames=len(paths) if paths else 0, case=case)
    if paths:
        warm_page_cache(paths)
    for attempt in range(cfg.import_retries + 1):
        result_path.unlink(missing_ok=True)
        run.load_before = loadavg()
        log(f"[{tag}] start (load {run.load_before}) ...")
        child_args = runner_args(result_path, paths_file, size, rdir / "out", centre, reject, extra)
        status, wall, maxrss = run_child(python, child_args, rdir / "run.log", cfg.time_cap * 60.0, as_limit,
                                         rss_kill_mib, _stages.ENV if stages else None)
        run.load_after = loadavg()
        run.status, run.wall_s, run.maxrss_mib = status, wall, maxrss
        run.result = json.loads(result_path.read_text()) if result_path.exists() else {}
        err = run.result.get("error")
        if status == "ok" and err and err.startswith("import failed") and attempt < cfg.import_retries:
            log(f"[{tag}] {err}; retrying in 30 s (the extension may be being rebuilt)")
            time.sleep(30)
            continue
        break
    if run.status == "ok":
        err = run.result.get("error")
        if not run.result:
            # killed without a result: RLIMIT_AS can make the interpreter abort instead of raising
            tail = (rdir / "run.log").read_text()[-400:]
            run.status = "MemoryError" if "MemoryError" in tail or "memory" in tail.lower() else "failed"
            run.result = {"error": f"no result; log tail: {tail.strip()}"}
        elif err:
            run.status = "MemoryError" if err.startswith("MemoryError") else "failed"
    if run.result.get("output"):
        run.output = Path(run.result["output"])
    msg = run.result.get("error") or ""
    log(f"[{tag}] {run.status}: wall {wall:.1f} s, drizzle {run.result.get('drizzle_s', float('nan')):.1f} s, "
        f"peak RSS {maxrss:.0f} MiB (load after {run.load_after}) {msg[:300]}")
    return run


# ── science parity ───────────────────────────────────────────────────────────────────────


def parity(new_path: Path, old_path: Path) -> Dict[str, float]:
    """Broad SCI agreement of two cubes on the same grid (old 0.4.1 has a half-pixel shift)."""
    from astropy.io import fits

    with fits.open(new_path, memmap=True) as a, fits.open(old_path, memmap=True) as b:
        n = np.asarray(a["SCI"].data, dtype=np.float64)
        o = np.asarray(b["SCI"].data, dtype=np.float64)
    if n.shape != o.shape:
        return {"error": f"shapes differ: {n.shape} vs {o.shape}"}  # type: ignore[dict-item]
    both = np.isfinite(n) & np.isfinite(o)
    out: Dict[str, float] = {"common_voxel_fraction": float(both.mean())}
    if not both.any():
        return out
    nv, ov = n[both], o[both]
    out["slope_old_vs_new"] = float(np.dot(ov, nv) / np.dot(nv, nv))
    out["median_new"] = float(np.median(nv))
    out["median_old"] = float(np.median(ov))
    # per-plane medians over common pixels, and the wavelength-collapsed images
    planes = [(float(np.median(n[k][both[k]])), float(np.median(o[k][both[k]])))
              for k in range(n.shape[0]) if both[k].sum() > 100]
    diffs = np.array([po - pn for pn, po in planes])
    out["plane_median_abs_diff_max"] = float(np.max(np.abs(diffs))) if len(diffs) else float("nan")
    out["plane_median_new_mean"] = float(np.mean([pn for pn, _ in planes])) if planes else float("nan")
    nn = np.where(both, n, 0.0).sum(0)
    oo = np.where(both, o, 0.0).sum(0)
    cnt = both.sum(0)
    cn, co = nn / np.maximum(cnt, 1), oo / np.maximum(cnt, 1)
    for b in (1, 8):  # wavelength-collapsed images, then b x b block means (where all pixels are common)
        k0, k1 = (cn.shape[0] // b) * b, (cn.shape[1] // b) * b

        def block(a: np.ndarray, k0: int = k0, k1: int = k1, b: int = b) -> np.ndarray:
            return a[:k0, :k1].reshape(k0 // b, b, k1 // b, b).mean(axis=(1, 3))

        ok = block((cnt > 0).astype(np.float64)) == 1.0
        x, y = block(cn)[ok], block(co)[ok]
        if x.size > 10:
            out[f"collapsed_pearson_r_{b}"] = float(np.corrcoef(x, y)[0, 1])
            out[f"collapsed_slope_{b}"] = float(np.dot(y, x) / np.dot(x, x))
    return out


# ── report ───────────────────────────────────────────────────────────────────────────────


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_head() -> str:
    try:
        r = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return r.stdout.strip() + (" (+ uncommitted changes in the checkout)" if dirty else "")
    except OSError:
        return "unknown"


def accum_mib(impl: str, shape: Tuple[int, int, int]) -> float:
    per_voxel = (3 * 8 + 3 * 4) if impl == "new" else (3 * 8 + 2 + 2 * 4)
    return shape[0] * shape[1] * shape[2] * per_voxel / MIB


def expected_shape(size: float) -> Tuple[int, int, int]:
    n = int(size * 60.0 / 6.15 + 1e-9)
    return (17, n, n)


def size_label(size: float) -> str:
    return f"{size:g}'x{size:g}'" if size < 60 else f"{size / 60:g}°x{size / 60:g}°"


def fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None or not np.isfinite(x) else format(x, spec)


def per_frame(run: Run) -> Optional[float]:
    d = run.result.get("drizzle_s")
    return d / run.n_frames if (run.status == "ok" and d is not None and run.n_frames) else None


def table_lines(runs: List[Run], ratio_pairs: Dict[str, Tuple[Run, Run]], baselines: Dict[str, Run],
                cap_min: float) -> List[str]:
    """One markdown table row per run (the header is :func:`build_report`'s)."""
    L: List[str] = []
    for r in runs:
        shape = tuple(r.result.get("cube_shape") or expected_shape(r.size))
        acc = accum_mib(r.impl, shape)  # type: ignore[arg-type]
        limit = acc + MEM_HEADROOM_MIB
        base = baselines.get(r.impl)
        net = r.maxrss_mib - base.maxrss_mib if base else None
        name = "this package" if r.impl == "new" else "spxquery 0.4.1"
        ratio = ""
        pair = ratio_pairs.get(r.case)
        if pair and r is pair[1]:
            pn, po = per_frame(pair[0]), per_frame(pair[1])
            if pn and po:
                ratio = f"**{po / pn:.1f}x**"
            elif pair[1].status != "ok":
                cap = pair[1].result.get("drizzle_s")
                ratio = f"> {(cap or cap_min * 60) / pair[1].n_frames / pn:.0f}x" if pn and pair[1].status == "> cap" \
                    else "n/a"
        if r.status == "ok":
            drz, pf = fmt(r.result.get("drizzle_s"), ".1f"), fmt(per_frame(r), ".3f")
        elif r.status == "> cap":
            drz, pf = f"> {cap_min:g} min (cap)", f"> {cap_min * 60 / r.n_frames:.3g}"
        else:
            drz, pf = r.status, "—"
        frames = f"{r.n_frames}" + ("" if r.n_frames == r.n_total else f" of {r.n_total}")
        ok_raw = "yes" if r.maxrss_mib <= limit else "no"
        ok_net = ("yes" if net is not None and net <= limit else "no") if net is not None else "—"
        what = size_label(r.size) + (" deep field, 0.2° cutouts" if r.case == DEEP_CASE else "")
        spread = _repeat.spread_cell(r.repeats, r.n_frames)
        L.append(f"| {what} ({shape[1]}x{shape[2]}x{shape[0]}) | {name} | {frames} | {drz} | {pf} | {spread} | "
                 f"{ratio} | {fmt(r.wall_s, '.1f')} | {fmt(r.maxrss_mib, '.0f')} | {fmt(net, '.0f')} | "
                 f"{fmt(acc, '.0f')} | {fmt(limit, '.0f')} | {ok_raw} | {ok_net} |")
    return L


def target_lines(runs: List[Run], ratio_pairs: Dict[str, Tuple[Run, Run]], baselines: Dict[str, Run],
                 cap_min: float) -> List[str]:
    """The verdict of each target (per-frame time, ratio to 0.4.1, memory), one bullet each."""
    tl = []
    for r in runs:  # per-frame targets: this package on all frames of the case, with or without the old code
        pf = per_frame(r)
        if r.impl == "new" and r.n_frames == r.n_total and pf and r.case in TARGET_PER_FRAME:
            goal = TARGET_PER_FRAME[r.case]
            tl.append(f"- {r.case}: this package {1e3 * pf:.2f} ms per frame — target ≤ {1e3 * goal:g} ms: "
                      f"{'met' if pf <= goal else 'NOT met'}.")
    for case, (rn, ro) in ratio_pairs.items():
        pn, po = per_frame(rn), per_frame(ro)
        target = TARGET_RATIO.get(case)
        if pn and po:
            verdict = "" if target is None else f" — target ≥ {target:g}x: {'met' if po / pn >= target else 'NOT met'}"
            tl.append(f"- {case}: spxquery 0.4.1 {po:.3f} s/frame vs this package {pn:.4f} s/frame "
                      f"on the same {rn.n_frames} frames = {po / pn:.1f}x{verdict}.")
        elif pn and ro.status == "> cap":
            lo = cap_min * 60.0 / ro.n_frames
            tl.append(f"- {case}: spxquery 0.4.1 did not finish {ro.n_frames} frames within the "
                      f"{cap_min:g}-min cap (> {lo:.3g} s/frame) vs this package {pn:.3f} s/frame = > {lo / pn:.0f}x.")
        else:
            tl.append(f"- {case}: spxquery 0.4.1 {ro.status}: {ro.result.get('error') or ''} "
                      f"(peak RSS {ro.maxrss_mib:.0f} MB when it stopped).")
        if rn.n_frames != rn.n_total:
            full = next((r for r in runs if r.impl == "new" and r.case == case and r.n_frames == r.n_total
                         and r.status == "ok"), None)
            if full and pn:
                n_more = full.n_frames - rn.n_frames
                marg = (full.result["drizzle_s"] - rn.result["drizzle_s"]) / n_more
                tl.append(f"  (Each run's s/frame includes its fixed costs, e.g. writing the {case} cube "
                          f"once. This package on all {full.n_frames} frames: {per_frame(full):.3f} s/frame; marginal "
                          f"cost per extra frame ({full.result['drizzle_s']:.1f} s - {rn.result['drizzle_s']:.1f} s) / "
                          f"{n_more} = {marg:.2f} s. The ratio above compares equal work only.)")
    for r in runs:
        if r.impl == "new" and r.status == "ok" and r.n_frames == r.n_total:
            shape = tuple(r.result.get("cube_shape") or expected_shape(r.size))
            limit = accum_mib("new", shape) + MEM_HEADROOM_MIB  # type: ignore[arg-type]
            net = r.maxrss_mib - baselines["new"].maxrss_mib
            verdict = "met" if r.maxrss_mib <= limit else ("met on net only" if net <= limit else "NOT met")
            tl.append(f"- Memory, this package, {r.case}, {r.n_frames} frames: peak {r.maxrss_mib:.0f} MB "
                      f"(net {net:.0f} MB) vs limit {limit:.0f} MB — target {verdict}.")
    return tl


def build_report(runs: List[Run], ratio_pairs: Dict[str, Tuple[Run, Run]], baselines: Dict[str, Run],
                 parities: Dict[str, Dict], meta: Dict[str, str], cap_min: float) -> str:
    L: List[str] = []
    L.append(DOC_HEADING)
    L.append("")
    L.append(f"Measured {meta['date']} with `{meta['command']}`.")
    L.append("")
    L.append(f"- Machine: {meta['nproc']} CPUs ({meta['cpu']}), {meta['mem']}; load average (1/5/15 min) at "
             f"start {meta['load_start']}, at end {meta['load_end']} (machine shared with other work).")
    L.append(f"- This package: {meta['new_version']} (git {meta['git']}), Python {meta['new_python']}, numpy "
             f"{meta['new_numpy']}, astropy {meta['new_astropy']}; Rust engine uses all CPUs.")
    L.append(f"- spxquery 0.4.1 (PyPI, own venv {meta['old_venv']}): Python {meta['old_python']}, numpy "
             f"{meta['old_numpy']}, astropy {meta['old_astropy']}.")
    L.append(f"- Data: {meta['frames']} simulated full-size (2040x2040) QR2 D3 frames (~70 MB each, "
             f"`simulate_field(..., {FIELD_RA}, {FIELD_DEC}, detectors=(3,), n_pointings={meta['frames']}, "
             "release='qr2', "
             f"seed={FIELD_SEED})`); cubes centred on the field centre, native D3 grid (xy_oversample=1, "
             "z_oversample=1, 17 planes, default xy_shrink 0.8).")
    L.append("- Timed: one `drizzle_detector(paths, config, 3, build_output_wcs(config))` call in a fresh process "
             "(reads the files, drizzles, writes the cube FITS; the files are read once beforehand, so both packages "
             "read from the page cache); this package's rows: the median of "
             f"{meta['repeat']} such processes, their fastest and slowest in the spread column, the largest peak "
             "RSS; 'process' = whole subprocess wall time incl. imports. Peak RSS = `ru_maxrss` of that process; "
             "'net' subtracts the peak RSS of a process that only imported the package (baseline: this package "
             f"{fmt(baselines['new'].maxrss_mib, '.0f')} MiB"
             + (f", 0.4.1 {fmt(baselines['old'].maxrss_mib, '.0f')} MiB" if 'old' in baselines else "") + "). "
             "Accumulators: ours n_z·ny·nx·(3·8+3·4) B, 0.4.1's n_z·ny·nx·(3·8+2+2·4) B. "
             "Limit = accumulators + 300 MiB. MB here = MiB.")
    L.append("")
    L.append("| cube | implementation | frames | drizzle s | s / frame | spread, ms / frame | old / new | process s "
             "| peak RSS MB | net MB | accumulators MB | limit MB | raw ≤ limit | net ≤ limit |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:-:|:-:|")
    L.extend(table_lines(runs, ratio_pairs, baselines, cap_min))
    L.append("")
    tl = target_lines(runs, ratio_pairs, baselines, cap_min)
    if tl:
        L.append("Targets (issues 3 and 23: 30' ≤ 8 ms per frame and ≥ 250x, 3° ≥ 5x, deep field ≤ 5 ms per frame; "
                 "peak ≤ accumulators + 300 MB):")
        L.append("")
        L.extend(tl)
        L.append("")
    if parities:
        L.append("Science parity (SCI where both cubes are finite; 0.4.1 is offset by half a pixel, so only broad "
                 "agreement is expected):")
        L.append("")
        for case, p in parities.items():
            if "error" in p:
                L.append(f"- {case}: {p['error']}")
                continue
            L.append(f"- {case}: common voxels {p.get('common_voxel_fraction', 0):.0%}; slope old vs new "
                     f"(all common voxels) {fmt(p.get('slope_old_vs_new'), '.3f')}; wavelength-collapsed images: "
                     f"Pearson r {fmt(p.get('collapsed_pearson_r_1'), '.3f')} and slope "
                     f"{fmt(p.get('collapsed_slope_1'), '.3f')} per pixel, "
                     f"r {fmt(p.get('collapsed_pearson_r_8'), '.3f')} "
                     f"and slope {fmt(p.get('collapsed_slope_8'), '.3f')} in 8x8-pixel blocks; median SCI new "
                     f"{fmt(p.get('median_new'), '.2e')} / old {fmt(p.get('median_old'), '.2e')} MJy/sr; largest "
                     f"per-plane median difference {fmt(p.get('plane_median_abs_diff_max'), '.2e')} MJy/sr.")
        L.append("")
    return "\n".join(L)


def write_doc(doc: Path, section: str) -> None:
    """Replace (or append) the DOC_HEADING section of ``doc``; other sections are kept."""
    from _doc import write_section

    write_section(doc, DOC_HEADING, section)


# ── main ─────────────────────────────────────────────────────────────────────────────────


#: Two runs of one case: (without, with) outlier rejection, or covariance.
Pair = Tuple[Run, Run]


def run_cases(cfg: argparse.Namespace, cases: List[Tuple[str, List[Path], float, Tuple[float, float], int]],
              oldpy: Optional[Path], work: Path, as_limit: int, rss_kill: float
              ) -> Tuple[List[Run], Dict[str, Tuple[Run, Run]], Dict[str, Dict], List[Run], Dict[str, Pair],
                         List[Pair]]:
    """Every case ``(label, paths, size, centre, frames for the old code)``: this package on all
    frames (and again with stage clocks when ``--stages``, with outlier rejection when
    ``--reject``, staged with covariance when ``--covariance``), the old code and this package on
    the old code's frames. Returns the runs, the (new, old) pair and the parity of each case, the
    staged runs, the (without, with rejection) pairs and the staged (without, with covariance)
    pairs."""
    runs: List[Run] = []
    ratio_pairs: Dict[str, Tuple[Run, Run]] = {}
    parities: Dict[str, Dict] = {}
    staged: List[Run] = []
    reject_pairs: Dict[str, Tuple[Run, Run]] = {}
    cov_pairs: List[Pair] = []
    for case, case_paths, size, centre, n_old in cases:
        tag = f"{size:g}arcmin" + ("-deep" if case == DEEP_CASE else "")
        if case != DEEP_CASE and len(case_paths) != N_FRAMES:
            tag += f"-{len(case_paths)}frames-field"
        kw = dict(case=case, centre=centre)
        new = functools.partial(execute, cfg.new_python, "new", work=work, cfg=cfg, as_limit=None,
                                rss_kill_mib=rss_kill, size=size, **kw)  # + tag: one run of this package
        new_all = _repeat.repeated(cfg.repeat, f"new-{tag}", functools.partial(new, paths=case_paths))
        new_all.n_total = len(case_paths)
        runs.append(new_all)
        if cfg.reject:  # the same run with outlier rejection (issue 19)
            rej = execute(cfg.new_python, "new", f"new-{tag}-reject", work, cfg, None, rss_kill, case_paths, size,
                          reject=True, **kw)
            rej.n_total = len(case_paths)
            reject_pairs[case] = (new_all, rej)
        stage_run = functools.partial(execute, cfg.new_python, "new", work=work, cfg=cfg, as_limit=None,
                                      rss_kill_mib=rss_kill, paths=case_paths, size=size, stages=True, **kw)
        if cfg.covariance:  # staged runs without and with the covariance cross terms (issue 22), interleaved
            cov_extra = ["--detector", str(DETECTOR), "--covariance"]
            rounds = _repeat.interleaved(cfg.repeat, [stage_run, functools.partial(stage_run, extra=cov_extra)],
                                         [f"new-{tag}-stages", f"new-{tag}-covariance"])
            plain = _repeat.median_run([r[0] for r in rounds])
            cov_runs = [r[1] for r in rounds if len(r) > 1]
            cov = _repeat.median_run(cov_runs) if cov_runs else replace(
                plain, status="failed", result={"error": "not run: the run without covariance failed"})
            cov.case = f"{case} with covariance"
            cov.result["pair_ratios"] = sorted(r[1].result["drizzle_s"] / r[0].result["drizzle_s"] for r in rounds
                                               if len(r) == 2 and all(x.status == "ok" for x in r))
            cov_pairs.append((plain, cov))
            staged += [plain, cov]
        elif cfg.stages:  # a separate run: the stage clocks cost time of their own
            staged.append(stage_run(f"new-{tag}-stages"))
        if not oldpy or n_old <= 0:  # n_old 0: this package only (the longer runs of --frames)
            continue
        new_ref = new_all
        if n_old != len(case_paths):
            new_ref = _repeat.repeated(cfg.repeat, f"new-{tag}-{n_old}frames",
                                       functools.partial(new, paths=case_paths[:n_old]))
            new_ref.n_total = len(case_paths)
            runs.append(new_ref)
        old = execute(oldpy, "old", f"old-{tag}" + ("" if n_old == len(case_paths) else f"-{n_old}frames"), work, cfg,
                      as_limit, rss_kill, case_paths[:n_old], size, **kw)
        old.n_total = len(case_paths)
        runs.append(old)
        ratio_pairs[case] = (new_ref, old)
        if old.output and new_ref.output and old.output.exists() and new_ref.output.exists():
            parities[case] = parity(new_ref.output, old.output)
            log(f"parity {case}: {parities[case]}")
    return runs, ratio_pairs, parities, staged, reject_pairs, cov_pairs


def covariance_row(plain: Run, cov: Run) -> _covariance.Row:
    """A row of the covariance section: a case's staged runs without and with covariance."""
    shape = tuple(plain.result.get("cube_shape") or expected_shape(plain.size))
    label = plain.case + (f" ({shape[1]}x{shape[2]}x{shape[0]})" if len(shape) == 3 else "")
    terms = _covariance.cross_terms_mib(shape, DETECTOR) if len(shape) == 3 else None  # type: ignore[arg-type]
    r0, r1 = (plain.result if plain.status == "ok" else {}), (cov.result if cov.status == "ok" else {})
    out = r1.get("output")
    floor = _covariance.write_floor_s(Path(out).parent, _covariance.added_bytes(r0, r1)) if out else None
    return (label, plain.n_frames, r0, plain.maxrss_mib, r1, cov.maxrss_mib, terms, floor)


def run_meta(cfg: argparse.Namespace, command: str, load_start: str, baselines: Dict[str, Run]) -> Dict[str, str]:
    """Date, command, machine, load, git and versions of both packages, for the report."""
    nr = baselines["new"].result
    orr = baselines["old"].result if "old" in baselines else {}
    meminfo = f"{(mem_available_gib() or 0):.0f} GiB available"
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
        total = int(next(ln for ln in lines if ln.startswith("MemTotal")).split()[1])
        meminfo = f"{total / MIB:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "frames": " and ".join(str(n) for n in frame_counts(cfg.frames)),
        "command": command,
        "repeat": str(max(1, cfg.repeat)),
        "nproc": str(os.cpu_count()),
        "cpu": cpu_model(),
        "mem": meminfo,
        "load_start": load_start,
        "load_end": loadavg(),
        "git": git_head(),
        "new_version": f"spxquery-drizzle3d {nr.get('package_version', '?')}",
        "new_python": nr.get("python", "?"),
        "new_numpy": nr.get("numpy", "?"),
        "new_astropy": nr.get("astropy", "?"),
        "old_venv": str(cfg.old_venv).replace(str(Path.home()), "~"),
        "old_python": orr.get("python", "—"),
        "old_numpy": orr.get("numpy", "—"),
        "old_astropy": orr.get("astropy", "—"),
    }


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="30,180",
                    help="comma-separated cube sizes in arcmin (square, native D3 grid); default 30,180 "
                         "(30' and 3 deg)")
    ap.add_argument("--skip-old", action="store_true", help="run this package only (no spxquery 0.4.1, no venv)")
    ap.add_argument("--frames", default=str(N_FRAMES),
                    help="full frames of the simulated field (cached in ~/.cache/spxdrizzle-bench/fieldN, made when "
                         "missing: ~70 MB and a few seconds each); comma-separated counts (e.g. 16,64): the first is "
                         "the field of every case and of the comparison with spxquery 0.4.1, each further count adds "
                         "rows of this package alone for the cubes up to 1 deg (the 30' row on more frames, its "
                         "fixed costs spread thinner). Default %(default)s")
    ap.add_argument("--old-frames", type=int, default=3,
                    help="frames drizzled by spxquery 0.4.1 on cubes larger than 1 deg (the first N of the field; this "
                         "package is also timed on the same N for the ratio); 0 = all. Default 3")
    ap.add_argument("--repeat", type=int, default=3, metavar="K",
                    help="fresh-process runs of this package per case (the deep field's too; with --covariance "
                         "also rounds of its staged pair, without and with, interleaved; not the rejection or "
                         "six-detector runs, nor spxquery 0.4.1's): the tables give their median and spread. "
                         "Default %(default)s")
    ap.add_argument("--time-cap", type=float, default=15.0,
                    help="minutes; a run longer than this is killed and reported as '> cap' (default 15)")
    ap.add_argument("--mem-cap-gb", type=float, default=16.0,
                    help="GiB; address-space limit of the spxquery 0.4.1 process and RSS kill threshold of every run "
                         "(lowered to MemAvailable - 1 GiB when less is free); default 16")
    ap.add_argument("--data-dir", type=Path, default=None,
                    help="cached simulated field of the first --frames count (created when missing); default "
                         "~/.cache/spxdrizzle-bench/field16 (fieldN for N frames)")
    ap.add_argument("--old-venv", type=Path, default=CACHE / "venv-spxquery041",
                    help="virtual environment of spxquery 0.4.1 (created when missing); default %(default)s")
    ap.add_argument("--venv-python", default=shutil.which("python3") or sys.executable,
                    help="interpreter used to create --old-venv (Python >= 3.11); default %(default)s")
    ap.add_argument("--new-python", type=Path, default=Path(sys.executable),
                    help="interpreter with this package installed; default %(default)s")
    ap.add_argument("--work-dir", type=Path, default=CACHE / "runs",
                    help="per-run cubes, logs and result JSON (overwritten); default %(default)s")
    ap.add_argument("--doc", type=Path, default=REPO / "docs" / "performance.md",
                    help="markdown file whose '%s' section is replaced by the table; default %%(default)s"
                         % DOC_HEADING)
    ap.add_argument("--no-doc", action="store_true", help="print the table only, do not write --doc")
    ap.add_argument("--deep-frames", type=int, default=2000,
                    help="frames of the deep-field row (IRSA-style 0.2 deg cutouts of one place into a --deep-size "
                         "cube; 0 = no deep field); default 2000")
    ap.add_argument("--deep-distinct", type=int, default=200,
                    help="distinct simulated cutouts behind the deep field (reused under new names); default 200")
    ap.add_argument("--deep-size", type=float, default=8.0, help="deep-field cube side [arcmin]; default 8")
    ap.add_argument("--deep-old-frames", type=int, default=200,
                    help="deep-field cutouts drizzled by spxquery 0.4.1 (the first N; this package is also timed "
                         "on the same N for the ratio); 0 = all. Default 200")
    ap.add_argument("--reject", action="store_true",
                    help="also run every case of this package with outlier rejection and write its section of --doc")
    ap.add_argument("--covariance", action="store_true",
                    help="also run every case of this package with covariance=True, with stage clocks next to a "
                         "staged run without (columns of the per-stage table; implies --stages)")
    ap.add_argument("--stages", action="store_true",
                    help="time each stage of the frame path in this package's runs and write the per-stage table "
                         "(ms per frame, wall and CPU) under its own heading of --doc")
    ap.add_argument("--combined", type=int, default=4, metavar="N",
                    help="pointings of the six-detector field (N x 6 full-size frames) on which one cube of all six "
                         "detectors is timed against the six single-detector cubes, at the first size; 0 = skip. "
                         "Default 4")
    ap.add_argument("--import-retries", type=int, default=3,
                    help="retries (30 s apart) when this package fails to import (extension being rebuilt)")
    return ap.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    cfg = parse_args(argv)

    sizes = [float(s) for s in cfg.sizes.split(",") if s.strip()]
    command = "python benchmarks/bench_pipeline.py" + "".join(" " + shlex.quote(a) for a in (argv or sys.argv[1:]))
    load_start = loadavg()
    avail = mem_available_gib()
    mem_cap = cfg.mem_cap_gb if avail is None else min(cfg.mem_cap_gb, max(avail - 1.0, 1.0))
    if mem_cap < cfg.mem_cap_gb:
        log(f"memory cap lowered to {mem_cap:.1f} GiB (MemAvailable {avail:.1f} GiB)")
    as_limit = int(mem_cap * 1024**3)
    rss_kill = mem_cap * 1024.0
    log(f"load average at start: {load_start}; sizes {sizes}; old code {'skipped' if cfg.skip_old else 'included'}")

    counts = frame_counts(cfg.frames)
    given_dir = cfg.data_dir is not None
    data_dir = (cfg.data_dir or field_dir(counts[0])).expanduser()
    cfg.data_dir = data_dir if given_dir else field_dir(N_FRAMES)  # beside it: the deep and six-detector fields
    paths = ensure_field(data_dir, counts[0])
    longer = {n: ensure_field(field_dir(n), n) for n in counts[1:]}
    oldpy = None if cfg.skip_old else old_python(cfg.old_venv.expanduser(), cfg.venv_python)
    work = cfg.work_dir.expanduser()
    work.mkdir(parents=True, exist_ok=True)

    baselines: Dict[str, Run] = {"new": execute(cfg.new_python, "new", "baseline-new", work, cfg, None, rss_kill)}
    if oldpy:
        baselines["old"] = execute(oldpy, "old", "baseline-old", work, cfg, as_limit, rss_kill)
    cases = [(size_label(size), paths, size, (FIELD_RA, FIELD_DEC),
              len(paths) if (size <= 60.0 or cfg.old_frames <= 0) else min(cfg.old_frames, len(paths)))
             for size in sizes]
    cases += [(size_label(size), more, size, (FIELD_RA, FIELD_DEC), 0)
              for n, more in longer.items() for size in sizes if size <= 60.0]
    if cfg.deep_frames > 0:
        deep = _deepfield.deep_field(cfg.data_dir.expanduser().parent, cfg.deep_frames, cfg.deep_distinct)
        n_old = len(deep) if cfg.deep_old_frames <= 0 else min(cfg.deep_old_frames, len(deep))
        cases.append((DEEP_CASE, deep, cfg.deep_size, (_deepfield.DEEP_RA, _deepfield.DEEP_DEC), n_old))
    runs, ratio_pairs, parities, staged, reject_pairs, cov_pairs = run_cases(cfg, cases, oldpy, work, as_limit,
                                                                             rss_kill)
    combined_lines: List[str] = []
    if cfg.combined > 0 and sizes:
        import _combined

        size6 = sizes[0]
        root6 = cfg.data_dir.expanduser().with_name(cfg.data_dir.expanduser().name + f"-6det{cfg.combined}")
        by_det = _combined.ensure_field6(root6, cfg.combined, FIELD_RA, FIELD_DEC, FIELD_SEED, log)
        singles, comb = _combined.combined_runs(
            lambda tag, p, extra: execute(cfg.new_python, "new", tag, work, cfg, None, rss_kill, p, size6, extra=extra),
            by_det, size6)
        runs_ok = [*singles.values(), comb]
        combined_lines = _combined.combined_report(
            singles, comb, size_label(size6), baselines["new"].maxrss_mib, lambda sh: accum_mib("new", sh),
            MEM_HEADROOM_MIB, fmt)
        if not all(r.status == "ok" for r in runs_ok):
            runs.extend(r for r in runs_ok if r.status != "ok")

    meta = run_meta(cfg, command, load_start, baselines)
    report = build_report(runs, ratio_pairs, baselines, parities, meta, cfg.time_cap) + "\n".join(combined_lines)
    print(report)
    stage_runs = [(f"{r.case}, {r.n_frames} frames", r.n_frames, r.result["drizzle_s"], r.result["stages"])
                  for r in staged if r.status == "ok" and r.result.get("stages")]
    stage_report = _stages.stage_section(stage_runs, meta) if stage_runs else ""
    print(stage_report)
    for r in staged:  # the memory of the staged runs (with --covariance: the cross terms' share)
        print(f"{r.case}, {r.n_frames} frames: peak RSS {r.maxrss_mib:.0f} MiB, "
              f"drizzle {r.result.get('drizzle_s', 0.0):.2f} s")
    reject_report = _rejection.section(
        [(case, plain.n_frames, plain.result, plain.maxrss_mib, rej.result, rej.maxrss_mib,
          accum_mib("new", expected_shape(plain.size))) for case, (plain, rej) in reject_pairs.items()], meta)
    print(reject_report)
    cov_report = _covariance.section([covariance_row(plain, cov) for plain, cov in cov_pairs], meta)
    print(cov_report)
    if not cfg.no_doc:
        write_doc(cfg.doc, report)
        if stage_report:
            _doc.write_section(cfg.doc, _stages.DOC_HEADING, stage_report)
        if reject_pairs:
            _doc.write_section(cfg.doc, _rejection.DOC_HEADING, reject_report)
        if cov_report:
            _doc.write_section(cfg.doc, _covariance.DOC_HEADING, cov_report)
        log(f"wrote the table(s) to {cfg.doc}")
    return 0 if all(r.status == "ok" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
