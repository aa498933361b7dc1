"""``bench_pipeline.py --repeat``: K fresh runs of a case stand as their median (benchmarks/_repeat.py)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import pytest

_spec = importlib.util.spec_from_file_location("_repeat", Path(__file__).parents[1] / "benchmarks" / "_repeat.py")
assert _spec is not None and _spec.loader is not None
_repeat = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_repeat)


@dataclass
class Run:  # the fields of bench_pipeline.Run that the median reads and sets
    status: str = "ok"
    result: Dict = field(default_factory=dict)
    wall_s: float = 0.0
    maxrss_mib: float = 0.0
    repeats: List[float] = field(default_factory=list)


def _runs(times, rss=(100.0,)):
    return [Run(result={"drizzle_s": t, "output": f"cube{i}"}, wall_s=1.0 + t, maxrss_mib=rss[i % len(rss)])
            for i, t in enumerate(times)]


def test_median_of_an_odd_count_is_the_middle_run():
    m = _repeat.median_run(_runs([0.50, 0.40, 0.45], rss=(100.0, 130.0, 110.0)))
    assert m.result["drizzle_s"] == 0.45 and m.result["output"] == "cube2"  # the middle run's cube
    assert m.repeats == [0.40, 0.45, 0.50]
    assert m.maxrss_mib == 130.0  # the memory target must hold for every run
    assert m.wall_s == pytest.approx(1.45)


def test_median_of_an_even_count_is_the_mean_of_the_middle_two_with_a_real_run_behind_it():
    m = _repeat.median_run(_runs([0.40, 0.60, 0.50, 0.90]))
    assert m.result["drizzle_s"] == pytest.approx(0.55)
    assert m.result["output"] == "cube2"  # the lower middle run (0.50)
    assert _repeat.spread_cell(m.repeats, 100) == "4.00–9.00 (4 runs)"


def test_a_failed_run_is_what_the_row_shows():
    runs = _runs([0.4, 0.5])
    runs.append(Run(status="> cap", result={"error": "killed"}))
    assert _repeat.median_run(runs).status == "> cap"


def test_repeated_runs_k_tags_and_stops_at_a_failure():
    tags: List[str] = []

    def execute(tag):
        tags.append(tag)
        return Run(status="failed" if len(tags) == 2 else "ok", result={"drizzle_s": 0.1})

    assert _repeat.repeated(3, "new-30arcmin", execute).status == "failed"
    assert tags == ["new-30arcmin", "new-30arcmin-r2"]
    tags.clear()
    one = _repeat.repeated(1, "x", lambda t: tags.append(t) or Run(result={"drizzle_s": 0.2}))
    assert tags == ["x"] and one.repeats == [0.2] and _repeat.spread_cell(one.repeats, 10) == "1 run"


def test_interleaved_rounds_run_every_case_in_turn_and_stop_at_a_failure():
    calls = []

    def case(fail_at=None):
        def execute(tag):
            calls.append(tag)
            return Run(status="failed" if tag == fail_at else "ok", result={"drizzle_s": 0.1})
        return execute

    rounds = _repeat.interleaved(3, [case(), case()], ["a", "b"])
    assert calls == ["a", "b", "a-r2", "b-r2", "a-r3", "b-r3"]  # interleaved, not all of a first
    assert [len(r) for r in rounds] == [2, 2, 2]
    calls.clear()
    rounds = _repeat.interleaved(3, [case(), case(fail_at="b-r2")], ["a", "b"])
    assert calls == ["a", "b", "a-r2", "b-r2"]  # nothing after the failure
    assert rounds[-1][-1].status == "failed"
    assert _repeat.median_run([r[1] for r in rounds]).status == "failed"
    with pytest.raises(ValueError, match="2 cases but 1 tags"):
        _repeat.interleaved(1, [case(), case()], ["a"])
