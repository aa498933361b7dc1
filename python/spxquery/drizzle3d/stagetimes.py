"""Per-stage times of the frame path: where each millisecond of a frame goes.

Off by default (one module-global test per stage). The pipeline benchmark turns it on
(``benchmarks/bench_pipeline.py --stages``, or ``SPXDRIZZLE_STAGE_TIMES=1`` in the environment)
and prints the totals: wall seconds (``time.perf_counter``) and CPU seconds of the calling
thread (``time.thread_time``), summed over frames and threads, and the number of calls.

Stages, in the order a frame meets them (:data:`STAGES`): ``open`` (the file and its
structure), ``headers`` (keywords of the needed extensions, checks), ``wcs`` (the celestial
WCS), ``wave`` (the ``WCS-WAVE`` table), ``crop`` (the footprint on the grid), ``sample`` (the
frame's fixed sample of rows, read and judged), ``rows``
(IMAGE/VARIANCE/ZODI pixels), ``flags`` (FLAGS pixels, decompressed), ``zodi`` (the scale
fit), ``wavelengths`` (per-pixel lookup), ``corners`` (the corner map), ``kernel`` (the Rust
accumulation); once per run (:data:`RUN_STAGES`): ``setup``, ``loop``, ``finish``, ``write`` (the
cube file); on a thread of its own, overlapping the loop: ``populate`` (the covariance cross terms'
pages faulted in, :func:`.vmhints.populate_async`).

Each stage also keeps when it first started and last ended (``time.perf_counter`` seconds), so a
snapshot tells how the frame loop used the two cores (:func:`two_cores`): how long the calling
thread waited for the first frame, how busy it was in the kernel from then to the last kernel,
what the reader thread's stages cost meanwhile.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, Optional

#: The stages, in the order a frame meets them.
STAGES = ("open", "headers", "wcs", "wave", "crop", "sample", "rows", "flags", "zodi", "wavelengths", "corners",
          "kernel", "setup", "loop", "finish", "write", "populate")
#: The stages paid once per run, on the calling thread: ``setup`` (grid, wavelength sources,
#: accumulators; before the frame loop), ``loop`` (the whole frame loop: contains the per-frame
#: stages), ``finish`` (after the loop, before writing) and ``write``. Their wall times add up to the
#: end-to-end time of ``drizzle_detector``.
RUN_STAGES = ("setup", "loop", "finish", "write")
#: The stages of preparing a frame (the reader thread's, :mod:`.readahead`): those before ``kernel``.
READER_STAGES = STAGES[:STAGES.index("kernel")]

_enabled = os.environ.get("SPXDRIZZLE_STAGE_TIMES", "") not in ("", "0")
_lock = threading.Lock()
_totals: Dict[str, list] = {}


class _Timer:
    __slots__ = ("name", "w0", "c0")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> "_Timer":
        self.w0 = time.perf_counter()
        self.c0 = time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        end = time.perf_counter()
        cpu = time.thread_time() - self.c0
        with _lock:
            t = _totals.setdefault(self.name, [0.0, 0.0, 0, self.w0, end])
            t[0] += end - self.w0
            t[1] += cpu
            t[2] += 1
            t[3] = min(t[3], self.w0)
            t[4] = max(t[4], end)


class _Off:
    __slots__ = ()

    def __enter__(self) -> "_Off":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


_OFF = _Off()


def stage(name: str):  # -> a context manager
    """``with stage("rows"): ...`` adds the block's wall and CPU time to stage ``name`` (when on)."""
    return _Timer(name) if _enabled else _OFF


def enable(on: bool = True) -> None:
    """Turn the timing on (or off); totals are kept until :func:`reset`."""
    global _enabled
    _enabled = bool(on)


def reset() -> None:
    """Forget all totals."""
    with _lock:
        _totals.clear()


def snapshot() -> Dict[str, Dict[str, float]]:
    """``{stage: {"wall_s", "cpu_s", "calls", "first_s", "last_s"}}`` summed since the last
    :func:`reset`, in :data:`STAGES` order; ``first_s`` / ``last_s``: when the stage first started
    and last ended (``time.perf_counter`` seconds: only their differences mean something)."""
    with _lock:
        names = [s for s in STAGES if s in _totals] + sorted(set(_totals) - set(STAGES))
        return {n: {"wall_s": _totals[n][0], "cpu_s": _totals[n][1], "calls": _totals[n][2], "first_s": _totals[n][3],
                    "last_s": _totals[n][4]} for n in names}


def two_cores(snap: Dict[str, Dict[str, float]]) -> Optional[Dict[str, float]]:
    """How the frame loop of a :func:`snapshot` used the cores, in seconds (None without a loop and
    a kernel): ``first_kernel_s`` (from the loop's start to the first kernel's: the first frame is
    prepared with nothing to overlap), ``kernel_span_s`` (from the first kernel's start to the
    last one's end), ``kernel_wall_s`` / ``kernel_cpu_s`` (the calling thread in the kernel: the
    rest of the span it waited for strips or the GIL), ``reader_cpu_s`` (CPU of the reader
    thread's stages, the first frame's included), ``after_last_kernel_s`` (to the loop's end)."""
    loop, kernel = snap.get("loop"), snap.get("kernel")
    if not loop or not kernel or not kernel.get("calls"):
        return None
    return {
        "first_kernel_s": kernel["first_s"] - loop["first_s"],
        "kernel_span_s": kernel["last_s"] - kernel["first_s"],
        "kernel_wall_s": kernel["wall_s"],
        "kernel_cpu_s": kernel["cpu_s"],
        "reader_cpu_s": sum(s["cpu_s"] for n, s in snap.items() if n in READER_STAGES),
        "after_last_kernel_s": loop["last_s"] - kernel["last_s"],
    }


__all__ = ["STAGES", "RUN_STAGES", "READER_STAGES", "stage", "enable", "reset", "snapshot", "two_cores"]
