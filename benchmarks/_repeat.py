"""``bench_pipeline.py --repeat K``: K fresh-process runs of one case stand as one row, their median.

Fresh runs of the same case spread by ~15% on a quiet 2-core machine (8.2-9.5 ms per frame for
the 30' cube from 48 frames): one run per case cannot resolve a change of a few per cent. The
row of a repeated case shows the median drizzle time (and ratios are taken from it); the spread
(fastest and slowest run, ms per frame) goes in a column of its own.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Callable, List, Sequence


def _seconds(run: Any) -> float:
    return float(run.result["drizzle_s"])


def median_run(runs: Sequence[Any]) -> Any:
    """One run standing for ``runs`` (fresh processes of one case; ``bench_pipeline.Run``s).

    The first failed run when any failed (its status and error are what the row must show).
    Otherwise the run with the median drizzle time (of an even count the lower middle one, whose
    cube and stage clocks are real), with ``result["drizzle_s"]`` = the median of all runs,
    ``repeats`` = every run's drizzle seconds in ascending order, ``wall_s`` = the median process
    time and ``maxrss_mib`` = the largest peak (the memory target holds for every run)."""
    if not runs:
        raise ValueError("median_run: no runs")
    bad = next((r for r in runs if r.status != "ok" or r.result.get("drizzle_s") is None), None)
    if bad is not None:
        return bad
    ordered = sorted(runs, key=_seconds)
    middle = ordered[(len(ordered) - 1) // 2]
    times = [_seconds(r) for r in ordered]
    return dataclasses.replace(middle, result={**middle.result, "drizzle_s": statistics.median(times)},
                               repeats=times, wall_s=statistics.median(r.wall_s for r in runs),
                               maxrss_mib=max(r.maxrss_mib for r in runs))


def repeated(k: int, tag: str, execute: Callable[[str], Any]) -> Any:
    """``k`` fresh-process runs of one case, ``execute(tag)`` with tags ``tag``, ``tag-r2``, ...
    (stopped at the first failure), as one run (:func:`median_run`)."""
    runs: List[Any] = []
    for i in range(max(1, k)):
        runs.append(execute(tag if i == 0 else f"{tag}-r{i + 1}"))
        if runs[-1].status != "ok":
            break
    return median_run(runs)


def interleaved(k: int, executes: Sequence[Callable[[str], Any]], tags: Sequence[str]) -> List[List[Any]]:
    """``k`` rounds, each running every case once in turn (``executes[i](tag)``, tags as in
    :func:`repeated`), so that all cases see the same minutes of the machine; stopped at the first
    failure. Returns the runs of each round (the caller takes :func:`median_run` of each case's
    and may pair a round's runs)."""
    if len(executes) != len(tags):
        raise ValueError(f"interleaved: {len(executes)} cases but {len(tags)} tags")
    rounds: List[List[Any]] = []
    for i in range(max(1, k)):
        runs = []
        for execute, tag in zip(executes, tags):
            runs.append(execute(tag if i == 0 else f"{tag}-r{i + 1}"))
            if runs[-1].status != "ok":
                return rounds + [runs]
        rounds.append(runs)
    return rounds


def spread_cell(repeats: List[float], n_frames: int) -> str:
    """The table cell of a row's spread: ``min–max ms per frame (K runs)``; ``1 run`` when not repeated."""
    if len(repeats) < 2 or n_frames <= 0:
        return "1 run"
    lo, hi = 1e3 * min(repeats) / n_frames, 1e3 * max(repeats) / n_frames
    return f"{lo:.2f}–{hi:.2f} ({len(repeats)} runs)"
