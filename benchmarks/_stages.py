"""The per-stage table of ``bench_pipeline.py --stages``: where each millisecond of a frame goes.

The runner of this package's runs sets ``SPXDRIZZLE_STAGE_TIMES=1`` and stores
``spxquery.drizzle3d.stagetimes.snapshot()`` in its result (``"stages"``); this module turns
the snapshots of several runs into one markdown table, milliseconds per frame, and writes it
under its own heading of docs/performance.md (kept apart from the comparison table).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

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
    "rows": "read IMAGE/VARIANCE/ZODI rows",
    "flags": "read + decompress FLAGS, exclude mask",
    "zodi": "zodi fit + subtraction",
    "wavelengths": "per-pixel wavelengths",
    "corners": "corner map",
    "kernel": "Rust kernel",
    "write": "write the cube",
}


def stage_table(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]]) -> List[str]:
    """Markdown lines: one column pair (wall, CPU ms per frame) per run.

    ``runs``: ``(label, n_frames, drizzle seconds, stages snapshot)``. Wall times of stages that
    run on the reader thread overlap the kernel's, so the stages' wall times may add up to more
    than the end-to-end time; CPU is the calling thread's own time.
    """
    names: List[str] = []
    for _, _, _, snap in runs:
        names += [n for n in snap if n not in names]
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
    total = []
    for _, n, drizzle_s, snap in runs:
        total.append(f"**{1e3 * drizzle_s / n:.2f}**")
        total.append(f"{1e3 * sum(s['cpu_s'] for s in snap.values()) / n:.2f}")
    lines.append("| **end to end (drizzle_detector), per frame** | " + " | ".join(total) + " |")
    return lines


def stage_section(runs: Sequence[Tuple[str, int, float, Dict[str, Dict[str, float]]]], meta: Dict[str, str]) -> str:
    """The doc section: heading, how it was measured, the table."""
    lines = [DOC_HEADING, "",
             f"Measured {meta['date']} with `{meta['command']}` (git {meta['git']}); {meta['nproc']} CPUs, load "
             f"average at start {meta['load_start']}, at end {meta['load_end']}.", "",
             "Milliseconds per frame, summed over the frames of each run: wall time of each stage and the CPU time "
             "of the thread that ran it. Stages run on the reader thread overlap the kernel, so wall times can add "
             "up to more than the end-to-end time; the last row is the whole `drizzle_detector` call divided by "
             "the frames (and the sum of the stages' CPU).", ""]
    lines += stage_table(runs)
    return "\n".join(lines) + "\n"


__all__ = ["DOC_HEADING", "ENV", "stage_table", "stage_section"]
