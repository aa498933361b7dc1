"""Helpers of the hostile-input corpus (issue 16; every case is marked ``hostile``, so
``pytest -m hostile --collect-only -q`` counts them): a time bound for every case,
subprocesses with an address-space limit for cases that could allocate without bound, and
the check that nothing partial carries a final name."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

#: Address space (bytes) of a subprocess running a risky case: the interpreter, numpy,
#: astropy and pyvo fit easily; a runaway allocation of gigabytes does not.
SUBPROCESS_MEMORY = 3 << 30

REPO = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError in the main thread) when the block takes longer than ``seconds``;
    a hang therefore fails the case instead of stalling the suite."""

    def _alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"case took longer than its bound of {seconds:g} s")

    old = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _limit_memory() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (SUBPROCESS_MEMORY, SUBPROCESS_MEMORY))


def run_python(code: str, *args: str, timeout: float = 60.0, cwd: Path | None = None,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code args`` with the address-space limit, bounded in time."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=full_env, preexec_fn=_limit_memory)


def run_cli(*args: str, timeout: float = 120.0, cwd: Path | None = None,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``spxdrizzle ARGS`` (as ``python -m spxquery.drizzle3d``) with the limits of :func:`run_python`."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "spxquery.drizzle3d", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=full_env, preexec_fn=_limit_memory)


def small_archive(root: Path, ra: float, dec: float, step: float, n: int = 4) -> tuple[Path, list[dict]]:
    """``n`` small detector-3 frames along RA (``step`` deg apart) and their index under ``root``."""
    from spxquery.drizzle3d.testing import write_index, write_small_frame

    rows = [write_small_frame(root, f"2025W18_2B_000{i}_1", 3, ra=ra + step * i, dec=dec, mjd=60800.0 + i,
                              npix=48, seed=i) for i in range(1, n + 1)]
    write_index(root, rows)
    return root, rows


def no_partial_under_final_name(root: Path) -> list[Path]:
    """Files under ``root`` with a final FITS name that are not complete FITS files."""
    from spxquery.drizzle3d.archive.verify import check_fits_file

    bad = []
    for p in Path(root).rglob("*.fits"):
        if p.is_file() and check_fits_file(p) is not None:
            bad.append(p)
    return bad


def wait_for(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` every 20 ms until true; AssertionError naming ``what`` after ``timeout`` s."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
