"""Elementwise exp/log/power through the C library's scalar functions (Python's ``math``).

numpy's float64 ``exp``, ``log``, ``log10`` and ``power`` run SIMD loops chosen for the CPU: on a
machine with AVX-512 they are other implementations than on an AVX2 one and can differ in the
last bit. Where such a value decides a cube's bits (the edges of an oversampled wavelength grid)
or its header (the spectral axis fit), the package computes it here instead, so that the same
inputs give the same cube on every machine. Meant for short arrays (planes, edges): a Python loop.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np


def _each(fn: Callable[[float], float], a: Any) -> np.ndarray:
    x = np.asarray(a, dtype=np.float64)
    return np.fromiter((fn(float(v)) for v in x.reshape(-1)), dtype=np.float64, count=x.size).reshape(x.shape)


def exp(a: Any) -> np.ndarray:
    """``e**a`` elementwise (float64, C library ``exp``; OverflowError above ~709.78, where numpy gives inf)."""
    return _each(math.exp, a)


def log(a: Any) -> np.ndarray:
    """Natural logarithm elementwise (float64, C library ``log``; ValueError for values <= 0)."""
    return _each(math.log, a)


def geomspace(start: float, stop: float, num: int) -> np.ndarray:
    """``num`` >= 2 values from ``start`` to ``stop`` (both > 0, returned exactly) in equal ratios:
    numpy's ``geomspace`` algorithm (``10 ** linspace(log10(start), log10(stop))``) with the C
    library's ``log10`` and ``pow``, i.e. numpy's bits on a CPU without AVX-512, on any CPU."""
    start, stop = float(start), float(stop)
    if not (start > 0 and stop > 0) or int(num) < 2:
        raise ValueError(f"geomspace needs start, stop > 0 and num >= 2, got {start!r}, {stop!r}, {num!r}")
    y = np.linspace(math.log10(start), math.log10(stop), int(num))
    out = _each(lambda v: math.pow(10.0, v), y)
    out[0], out[-1] = start, stop
    return out


__all__ = ["exp", "log", "geomspace"]
