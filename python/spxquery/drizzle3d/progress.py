"""Progress bars, drawn only where someone watches them.

A bar is drawn when it was asked for (``Drizzle3DConfig.progress``, the CLI's ``-q``) and
standard error is a terminal or the code runs in a Jupyter kernel (where ``tqdm.auto`` draws
a widget). In a log file or a CI job nothing is drawn, so no carriage-return lines pile up.
"""

from __future__ import annotations

import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from tqdm.auto import tqdm

#: Seconds between redraws of a :func:`waiting` bar.
WAIT_REFRESH_S = 0.5


def _in_jupyter_kernel() -> bool:
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def watched() -> bool:
    """True when standard error is a terminal or a Jupyter kernel runs."""
    stream = sys.stderr
    try:
        tty = bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # a replaced or closed stream
        tty = False
    return tty or _in_jupyter_kernel()


class HiddenBar:
    """What :func:`progress_bar` returns when nothing is drawn: counts like a disabled ``tqdm`` bar
    (``n``, ``total``, ``update``) without creating one (a first ``tqdm`` of a process builds a
    ``multiprocessing`` lock: ~2 ms of every fresh run)."""

    disable = True

    def __init__(self, total: Optional[float] = None):
        self.total = total
        self.n: float = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def refresh(self) -> None:
        return None

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        return None

    def close(self) -> None:
        return None

    def __enter__(self) -> "HiddenBar":
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def progress_bar(total: Optional[float], desc: str, unit: str = "it", enabled: bool = True, **kwargs: Any) -> Any:
    """A ``tqdm`` bar when ``enabled`` and :func:`watched`, else a :class:`HiddenBar`."""
    if not (enabled and watched()):
        return HiddenBar(total)
    return tqdm(total=total, desc=desc, unit=unit, **kwargs)


def byte_bar(desc: str, enabled: bool = True, total: Optional[int] = None) -> Any:
    """A :func:`progress_bar` counting bytes (``update(nbytes)``; shown as kB, MB, GB with the
    rate), over ``total`` bytes when known, else a running count."""
    return progress_bar(total, desc, unit="B", enabled=enabled, unit_scale=True, unit_divisor=1000)


@contextmanager
def waiting(desc: str, enabled: bool = True) -> Iterator[Any]:
    """A bar showing the elapsed time of a wait of unknown length (e.g. a TAP query), redrawn
    every :data:`WAIT_REFRESH_S` s by a daemon thread until the block ends. Yields the bar
    (``set_postfix_str`` shows what is happening)."""
    bar = progress_bar(None, desc, unit="s", enabled=enabled, bar_format="{desc}: {elapsed}{postfix}")
    done = threading.Event()

    def redraw() -> None:
        while not done.wait(WAIT_REFRESH_S):
            bar.refresh()

    thread = None
    if not bar.disable:
        thread = threading.Thread(target=redraw, name=f"progress-{desc}", daemon=True)
        thread.start()
    try:
        yield bar
    finally:
        done.set()
        if thread is not None:
            thread.join()
        bar.close()


__all__ = ["HiddenBar", "byte_bar", "progress_bar", "waiting", "watched"]
