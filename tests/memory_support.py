"""Helpers of the tests that check which memory a run touched (Linux)."""

from __future__ import annotations

import mmap

import numpy as np


def resident_pages(a: np.ndarray) -> int:
    """Pages of the memory spanned by the C-contiguous ``a`` that are mapped (``/proc/self/pagemap``
    bit 63: present), whatever their contents (a page only read maps the zero page: present too)."""
    page = mmap.PAGESIZE
    first, last = a.ctypes.data // page, (a.ctypes.data + a.nbytes - 1) // page
    with open("/proc/self/pagemap", "rb") as f:
        f.seek(first * 8)
        entries = np.frombuffer(f.read((last - first + 1) * 8), dtype="<u8")
    return int(np.count_nonzero(entries >> np.uint64(63)))
