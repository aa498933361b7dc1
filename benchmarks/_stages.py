"""The per-stage table of ``bench_pipeline.py --stages``: where each millisecond of a frame goes.

The runner of this package's runs sets ``SPXDRIZZLE_STAGE_TIMES=1`` and stores
``spxquery.drizzle3d.stagetimes.snapshot()`` in its result (``"stages"``); this module turns
the snapshots of several runs into one markdown table, milliseconds per frame, and writes it
under its own heading of docs/performance.md (kept apart from the comparison table).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from spxquery.drizzle3d.stagetimes import two_cores

DOC_HEADING = "## Pipeline: where the time of a frame goes (per-stage table)"
ENV = {"SPXDRIZZLE_STAGE_TIMES": "1"}

#: Row labels of the stages (stagetimes.STAGES order), as the issue names them.
LABELS = {
    "open": "open file, FITS structure",
    "headers": "header keywords, checks",
    "wcs": "celestial WCS",
    "wave": "WCS-WAVE table",
    "crop": "footprint crop",
    "sample": "fixed sample of rows: read, sanity verdict",
    "rows": "read IMAGE/VARIANCE/ZODI rows, ZODI subtracted as read",
    "flags": "read + decompress FLAGS, exclude mask",
    "zodi": "zodi scale fit (on the fixed sample)",
    "wavelengths": "per-pixel wavelengths",
    "corners": "corner map",
    "kernel": "Rust kernel",
    "setup": "once per run: setup before the frame loop (grid, wavelength sources, accumulators)",
    "finish": "once per run: after the frame loop (counts, log lines)",
    "write": "once per run: write the cube",
    "populate": "once per run, a thread of its own during the loop: the covariance cross terms' pages",
}
#: Stages paid once per run on the calling thread (spxquery.drizzle3d.stagetimes.RUN_STAGES): with
#: the frame loop they make up the end-to-end time. "loop" contains the per-frame stages.
RUN_STAGES = ("setup", "loop", "finish", "write")


def stage_table(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]]) -> List[str]:
    """Markdown lines: one column pair (wall, CPU ms per frame) per run.

    ``runs``: ``(label, n_frames, drizzle seconds, stages snapshot)``. The per-frame stages first
    (wall times of stages run on the reader threads overlap the kernel's, so they may add up to more
    than the end-to-end time), then the stages paid once per run (setup, finish, write), the frame
    loop as the calling thread saw it (wall), the end-to-end time, and the check: setup + loop +
    finish + write (wall) = end to end. CPU is the time of the thread that ran each stage.
    """
    names: List[str] = []
    for _, _, _, snap in runs:
        names += [n for n in snap if n not in names and n not in RUN_STAGES]
    names += [n for n in RUN_STAGES if n != "loop" and any(n in snap for _, _, _, snap in runs)]
    head = "| stage | " + " | ".join(f"{label}: wall ms | CPU ms" for label, _, _, _ in runs) + " |"
    rule = "|---|" + "---:|---:|" * len(runs)
    lines = [head, rule]
    for name in names:
        cells = []
        for _, n, _, snap in runs:
            s = snap.get(name)
            cells.append("—" if s is None else f"{1e3 * s['wall_s'] / n:.2f}")
            cells.append("—" if s is None else f"{1e3 * s['cpu_s'] / n:.2f}")
        lines.append(f"| {LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    loop, total, check = [], [], []
    for _, n, drizzle_s, snap in runs:
        s = snap.get("loop")
        loop += ["—" if s is None else f"{1e3 * s['wall_s'] / n:.2f}", ""]
        total.append(f"**{1e3 * drizzle_s / n:.2f}**")
        total.append(f"{1e3 * sum(s['cpu_s'] for k, s in snap.items() if k != 'loop') / n:.2f}")
        run_wall = [snap[k]["wall_s"] for k in RUN_STAGES if k in snap]
        check += [f"{1e3 * sum(run_wall) / n:.2f}" if len(run_wall) == len(RUN_STAGES) else "—", ""]
    lines.append("| the frame loop (calling thread; holds the per-frame stages) | " + " | ".join(loop) + " |")
    lines.append("| **end to end (drizzle_detector), per frame** | " + " | ".join(total) + " |")
    lines.append("| check: setup + frame loop + after + write | " + " | ".join(check) + " |")
    return lines


def fixed_cost_lines(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]]) -> List[str]:
    """One line per run: the once-per-run costs in ms per run (wall / CPU) and what the frame loop
    costs per frame, i.e. the end-to-end time per frame with the fixed costs spread over more frames."""
    lines = []
    for label, n, drizzle_s, snap in runs:
        fixed = [k for k in RUN_STAGES if k != "loop" and k in snap]
        if not fixed or "loop" not in snap:
            continue
        wall = 1e3 * sum(snap[k]["wall_s"] for k in fixed)
        cpu = 1e3 * sum(snap[k]["cpu_s"] for k in fixed)
        parts = ", ".join(f"{k} {1e3 * snap[k]['wall_s']:.1f} / {1e3 * snap[k]['cpu_s']:.1f}" for k in fixed)
        loop = 1e3 * snap["loop"]["wall_s"]
        lines.append(f"- {label}: once per run {wall:.1f} ms wall / {cpu:.1f} ms CPU ({parts}); the frame loop "
                     f"{loop:.1f} ms = {loop / n:.2f} ms per frame; end to end {1e3 * drizzle_s:.1f} ms = "
                     f"{1e3 * drizzle_s / n:.2f} ms per frame.")
    return lines


def two_core_lines(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]]) -> List[str]:
    """One line per run: how the frame loop used the two cores (``stagetimes.two_cores``): the wait
    for the first frame, the calling thread's share of the span from the first kernel to the last
    in the kernel (the rest: waiting for strips or for the GIL), the reader stages' CPU, the tail."""
    lines = []
    for label, n, _, snap in runs:
        t = two_cores(snap)
        if t is None or t["kernel_span_s"] <= 0:
            continue
        lines.append(
            f"- {label}: first kernel {1e3 * t['first_kernel_s']:.1f} ms after the loop's start; from it to the "
            f"last kernel's end ({1e3 * t['kernel_span_s']:.1f} ms) the calling thread was in the kernel "
            f"{100 * t['kernel_wall_s'] / t['kernel_span_s']:.0f}% of the time ({1e3 * t['kernel_cpu_s'] / n:.2f} ms "
            f"CPU per frame on it), the reader's stages took {1e3 * t['reader_cpu_s'] / n:.2f} ms CPU per frame; "
            f"{1e3 * t['after_last_kernel_s']:.1f} ms from the last kernel to the loop's end.")
    return lines


def stage_section(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]], meta: Dict[str, str]) -> str:
    """The doc section: heading, how it was measured, the table."""
    lines = [DOC_HEADING, "",
             f"Measured {meta['date']} with `{meta['command']}` (git {meta['git']}); {meta['nproc']} CPUs, load "
             f"average at start {meta['load_start']}, at end {meta['load_end']}.", "",
             "Milliseconds per frame, summed over the frames of each run: wall time of each stage and the CPU time "
             "of the thread that ran it. Stages run on the reader threads overlap the kernel, so their wall times can "
             "add up to more than the end-to-end time. The rows 'once per run' are paid once by the calling thread "
             "(spread here over the frames); with the frame loop they make up the end-to-end time (last row: the "
             "check). The end-to-end row is the whole `drizzle_detector` call divided by the frames (and the sum of "
             "the stages' CPU).", ""]
    lines += stage_table(runs)
    fixed = fixed_cost_lines(runs)
    if fixed:
        lines += ["", "Once per run, ms per run (wall / CPU of the calling thread):", ""] + fixed
    cores = two_core_lines(runs)
    if cores:
        lines += ["", "The two cores in the frame loop (kernel CPU: the calling thread's only; with the pool its "
                  "helper's CPU is not counted):", ""] + cores
    return "\n".join(lines) + "\n"


__all__ = ["DOC_HEADING", "ENV", "RUN_STAGES", "stage_table", "fixed_cost_lines", "two_core_lines", "stage_section"]
