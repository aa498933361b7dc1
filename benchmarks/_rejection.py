"""The outlier-rejection section of docs/performance.md (``bench_pipeline.py --reject``): each
case of this package without and with ``reject_outliers``, time and peak memory, against
issue 19's targets."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

DOC_HEADING = "## Outlier rejection (bench_pipeline.py --reject)"
#: Issue 19: with rejection at most this many times the time without.
TIME_RATIO = 2.5
#: Issue 19: peak memory at most 2x the accumulators + this many MB, for any number of frames.
HEADROOM_MB = 300.0
_MB_PER_MIB = 1024.0 * 1024.0 / 1e6

#: (case, frames, result without, peak MiB without, result with, peak MiB with, accumulators MiB)
Row = Tuple[str, int, Dict, float, Dict, float, float]


def _f(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def section(rows: List[Row], meta: Dict[str, str]) -> str:
    """Markdown under :data:`DOC_HEADING` ("" without rows)."""
    if not rows:
        return ""
    lines = [DOC_HEADING, "",
             f"{meta['date']}, `{meta['command']}`, {meta['nproc']} cores ({meta['cpu']}), load "
             f"{meta['load_start']} -> {meta['load_end']}, git {meta['git']}.", "",
             "| case | frames | drizzle without (s) | with (s) | ratio | peak without (MB) | peak with (MB) "
             "| accumulators (MB) | peak with / (2 x acc. + 300 MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case, n, plain, peak_plain, rej, peak_rej, acc_mib in rows:
        t0, t1 = plain.get("drizzle_s"), rej.get("drizzle_s")
        acc = acc_mib * _MB_PER_MIB
        ratio = t1 / t0 if t0 and t1 else None
        budget = peak_rej * _MB_PER_MIB / (2 * acc + HEADROOM_MB) if peak_rej else None
        lines.append(f"| {case} | {n} | {_f(t0)} | {_f(t1)} | {_f(ratio)}x | {peak_plain * _MB_PER_MIB:.0f} | "
                     f"{peak_rej * _MB_PER_MIB:.0f} | {acc:.0f} | {_f(budget)} |")
    lines += ["", f"Targets (issue 19): the time with rejection at most {TIME_RATIO:g}x the time without; peak "
              f"memory at most 2x the accumulators + {HEADROOM_MB:g} MB for any number of frames (last column "
              "at most 1). Every frame is read, checked and drizzled twice: the first pass builds the robust "
              "model cube."]
    return "\n".join(lines) + "\n"
