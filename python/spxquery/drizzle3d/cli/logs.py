"""Logging and progress bars of one ``spxdrizzle`` invocation."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

from tqdm import tqdm
from tqdm.auto import tqdm as auto_tqdm

_SIM_LOGGER = "spxquery.drizzle3d.simulate"


class _TqdmHandler(logging.StreamHandler):
    """Logging handler that writes through ``tqdm.write`` so messages do not break bars."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def logging_setup(verbose: bool, quiet: bool) -> Iterator[None]:
    """Configure the ``spxquery`` loggers for one CLI invocation (restored afterwards).

    Default: INFO for this package except the simulator's per-file messages;
    ``-v``: DEBUG everywhere (ours); ``-q``: WARNING. Astropy's FITSFixedWarning chatter is
    silenced unless ``-v``.
    """
    level = logging.DEBUG if verbose else (logging.WARNING if quiet else logging.INFO)
    pkg = logging.getLogger("spxquery")
    old = (pkg.level, pkg.propagate, list(pkg.handlers))
    handler = _TqdmHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s"))
    if not verbose:  # the simulator's per-file lines become a progress bar instead
        handler.addFilter(lambda r: r.levelno >= logging.WARNING or not r.name.startswith(_SIM_LOGGER))
    pkg.handlers = [handler]
    pkg.setLevel(level)
    pkg.propagate = False
    with warnings.catch_warnings():
        if not verbose:
            from astropy.wcs import FITSFixedWarning

            warnings.simplefilter("ignore", FITSFixedWarning)
            warnings.filterwarnings("ignore", message=".*datfix.*")
        try:
            yield
        finally:
            pkg.setLevel(old[0])
            pkg.propagate = old[1]
            pkg.handlers = old[2]


class _LogCounter(logging.Handler):
    """Advances a tqdm bar for every record of a logger whose message starts with ``prefix``."""

    def __init__(self, bar: Any, prefix: str) -> None:
        super().__init__(level=logging.DEBUG)
        self.bar = bar
        self.prefix = prefix

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith(self.prefix):
            self.bar.update(1)


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars unless ``-q`` or stderr is not a terminal."""
    return not getattr(args, "quiet", False) and sys.stderr.isatty()


def simulate_with_progress(args: argparse.Namespace, root: Path, n_files: int, **kwargs: Any) -> Any:
    """``simulate_field(root, **kwargs)`` with a progress bar over the files written."""
    from ..simulate import simulate_field

    field_logger = logging.getLogger("spxquery.drizzle3d.simulate.field")
    bar = auto_tqdm(total=n_files, desc="simulate", unit="file", disable=not show_progress(args))
    counter = _LogCounter(bar, "wrote")
    old_level = field_logger.level
    field_logger.addHandler(counter)
    if field_logger.getEffectiveLevel() > logging.INFO:
        field_logger.setLevel(logging.INFO)  # records reach the counter; other handlers filter
    try:
        return simulate_field(root, **kwargs)
    finally:
        field_logger.removeHandler(counter)
        field_logger.setLevel(old_level)
        bar.close()
