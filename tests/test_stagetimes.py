"""Stage clocks (stagetimes): totals per stage, when each stage first started and last ended, and
the summary of how the frame loop used the two cores (``two_cores``)."""

from __future__ import annotations

import threading
import time

import pytest

from spxquery.drizzle3d import stagetimes
from spxquery.drizzle3d.config import Drizzle3DConfig
from spxquery.drizzle3d.grid import build_output_wcs
from spxquery.drizzle3d.pipeline import drizzle_detector


@pytest.fixture
def clocks():
    """Stage clocks on and empty for the test; off and empty afterwards."""
    stagetimes.reset()
    stagetimes.enable(True)
    try:
        yield
    finally:
        stagetimes.enable(False)
        stagetimes.reset()


def _spin(seconds: float) -> None:
    """Busy for ``seconds`` (CPU time of this thread, unlike a sleep)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_each_stage_keeps_its_first_start_and_last_end(clocks):
    t0 = time.perf_counter()
    with stagetimes.stage("loop"):
        time.sleep(0.02)  # waiting for the first frame
        reader = threading.Thread(target=lambda: [_run("open", 0.005) for _ in range(2)])
        reader.start()
        for _ in range(3):
            _run("kernel", 0.01)
            time.sleep(0.005)  # waiting for the next strip
        reader.join()
    t1 = time.perf_counter()
    snap = stagetimes.snapshot()
    assert [snap[n]["calls"] for n in ("open", "kernel", "loop")] == [2, 3, 1]
    for s in snap.values():
        assert t0 <= s["first_s"] <= s["last_s"] <= t1
    assert snap["loop"]["first_s"] <= snap["kernel"]["first_s"] - 0.02
    assert snap["kernel"]["last_s"] <= snap["loop"]["last_s"]

    cores = stagetimes.two_cores(snap)
    assert cores is not None
    assert cores["first_kernel_s"] == pytest.approx(snap["kernel"]["first_s"] - snap["loop"]["first_s"])
    assert cores["first_kernel_s"] >= 0.02
    assert cores["kernel_span_s"] == pytest.approx(snap["kernel"]["last_s"] - snap["kernel"]["first_s"])
    # Three kernels of 10 ms with two 5 ms waits between them: the calling thread was in the kernel
    # about 30 of the span's 40 ms.
    assert 0.03 <= cores["kernel_wall_s"] <= cores["kernel_span_s"] - 0.009
    assert cores["kernel_cpu_s"] == pytest.approx(snap["kernel"]["cpu_s"])
    assert cores["reader_cpu_s"] == pytest.approx(snap["open"]["cpu_s"])
    assert cores["after_last_kernel_s"] == pytest.approx(snap["loop"]["last_s"] - snap["kernel"]["last_s"])


def _run(name: str, seconds: float) -> None:
    with stagetimes.stage(name):
        _spin(seconds)


def test_two_cores_needs_a_loop_and_a_kernel(clocks):
    assert stagetimes.two_cores({}) is None
    with stagetimes.stage("loop"):
        _run("open", 0.001)
    assert stagetimes.two_cores(stagetimes.snapshot()) is None  # no kernel ran


def test_the_two_cores_of_a_pipeline_run(clocks, drizzled_cubes, tmp_path):
    cfg = Drizzle3DConfig(center_ra=150.0, center_dec=2.0, width=6.0, height=6.0, detector=3, output_dir=tmp_path,
                          progress=False)
    assert drizzle_detector(drizzled_cubes.field.paths, cfg, 3, build_output_wcs(cfg)) is not None
    snap = stagetimes.snapshot()
    cores = stagetimes.two_cores(snap)
    assert cores is not None
    assert snap["kernel"]["calls"] >= 1
    # The first frame is prepared (on the reader thread) before the first kernel can start.
    assert cores["first_kernel_s"] > 0
    assert cores["reader_cpu_s"] > 0
    assert 0 < cores["kernel_wall_s"] <= cores["kernel_span_s"] + 1e-9
    assert cores["after_last_kernel_s"] >= 0
    assert snap["write"]["first_s"] >= snap["loop"]["last_s"]  # the cube is written after the loop
