"""The frame loop's reader: files become strips on a reader thread while the kernel runs.

:class:`ReadAhead` walks the files in the order given, on one thread: each file is prepared
(:func:`.frames.prepare_frame`: headers, checks, crop, flags, zodi scale; then the wavelengths
:meth:`.wavesources.WaveSources.attach` chose for it) and cut into strips
ready for the engine (pixels read, zodi subtracted, wavelengths, corner map), and everything
is handed to the caller in that same order as :class:`Item` s. So the caller's thread only runs
the kernel (which releases the GIL), the reading of the next files overlaps it on the other
core, and voxel sums keep their input order: the cube is bit-identical to a sequential run.

Memory: the strips handed over and not yet taken back stay within ``budget_bytes``
(:data:`READ_AHEAD_BYTES`; one strip is always allowed), so a run holds at most about two
strips beside the accumulators, whatever the frames. A file that cannot be used never stops
the loop: it becomes a ``reject`` item with the reason.

Frames in flight: with ``workers`` > 1 up to ``workers`` files are prepared at once by a
thread pool (:func:`.frames.prepare_frame`: headers, sample, flags and the pixels of crops up
to ``frames.STRIP_PIXELS``; for crops of at most :data:`READY_STRIP_PIXELS` pixels also the
strip itself: zodi subtracted, wavelengths, corner map), still handed over in file order. So
frames read in place from an object store wait for the network side by side (the pipeline's
:func:`~.pipeline.frames_in_flight`); local files are prepared one at a time, as two preparing
threads share the GIL. :meth:`ReadAhead.ahead` tells the caller whether the reader is ahead of
it (the frame loop then gives the kernel both cores). Each prepared frame holds at most about
30 MB (a crop of ``STRIP_PIXELS`` pixels, or the
strip of a crop of ``READY_STRIP_PIXELS``).

The run's first frame (a local file) comes in strips of :data:`FIRST_FRAME_STRIP_PIXELS`, read
and made one at a time as handed over: nothing overlaps it, so the kernel starts on its first
rows while the reader makes the rest (the next frames come whole, made ahead as above).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Deque, Generator, Iterator, List, NamedTuple, Optional, Tuple

import numpy as np

from .frames import STRIP_PIXELS, Frame, FrameError, prepare_frame
from .grid import OutputGrid
from .objectstore import as_location
from .wavesources import WaveSources

logger = logging.getLogger(__name__)

#: Bytes of prepared strips allowed in flight between the reader thread and the kernel.
READ_AHEAD_BYTES = 64 * 1024 * 1024
#: Crops of at most this many input pixels are cut into their (one) strip by the worker that
#: prepared the frame (about 56 bytes a pixel: at most ~15 MB a frame).
READY_STRIP_PIXELS = 262_144
#: The run's first frame (its crop at most :data:`READY_STRIP_PIXELS`) is read and handed over in
#: strips of rows of about this many pixels: the kernel starts on its first rows while the reader
#: prepares the rest (a 30' crop: ~146k pixels, 3 strips of 128 rows; first strip ~2.4 ms of CPU
#: sooner, the frame's reading and kernel CPU within ~0.2 ms of one strip's; 5 strips cost ~1 ms
#: more). Strips in row order give the same cube, bit for bit, as one strip.
FIRST_FRAME_STRIP_PIXELS = 49_152


class Item(NamedTuple):
    """One step of the loop, in file order. ``kind``:

    * ``reject``: the file cannot be used (``payload``: the reason);
    * ``skip``: the frame does not touch the grid;
    * ``frame``: a frame whose strips follow (``payload``: the :class:`~.frames.Frame`);
    * ``strip``: the next strip of the current frame (``payload``: a :class:`~.frames.Strip`);
    * ``end``: the current frame's strips are all there;
    * ``broken``: reading failed after some strips of the frame were handed over (``payload``:
      the reason; those strips may have been drizzled already).
    """

    path: Any
    """The file: a :class:`~pathlib.Path` or an :class:`~.objectstore.ObjectLocation`."""
    kind: str
    payload: Any


def _nbytes(payload: Any) -> int:
    if isinstance(payload, tuple):
        return sum(a.nbytes for a in payload if isinstance(a, np.ndarray))
    return 0


def _drain(strips: List[Any]) -> Iterator[Any]:
    """The strips of a list, each let go of once handed over."""
    while strips:
        yield strips.pop(0)


class ReadAhead:
    """Iterate over :class:`Item` s of ``paths`` prepared for ``grid`` (see the module docs)."""

    def __init__(self, paths: List[Any], config: Any, grid: OutputGrid, budget_bytes: int = READ_AHEAD_BYTES,
                 workers: int = 1, waves: Optional[WaveSources] = None):
        """``workers``: files prepared at once (module docs); ``waves``: where each frame's
        wavelengths come from (None: the L2 lookup)."""
        self.paths = [as_location(p) for p in paths]
        self.workers = max(1, int(workers))
        self.config = config
        self.grid = grid
        self.waves = waves
        self.budget = int(budget_bytes)
        self._items: "queue.Queue[Optional[Item]]" = queue.Queue()
        self._cv = threading.Condition()
        self._in_flight = 0
        self._strips_waiting = 0  # strips handed over, not taken yet
        self._finished_reading = False  # the reader thread has ended
        self._stop = False
        self._first_frame = True  # no frame handed over yet: the next one comes in first strips
        self._error: Optional[BaseException] = None
        self._started = False
        self._thread = threading.Thread(target=self._run, name=f"drizzle-reader-{grid.detectors}", daemon=True)

    # ------------------------------------------------------------------ reader thread
    def _put(self, item: Item) -> bool:
        """Hand ``item`` over once the budget allows; False when the loop was stopped."""
        n = _nbytes(item.payload) if item.kind == "strip" else 0
        with self._cv:
            while not self._stop and self._in_flight > 0 and self._in_flight + n > self.budget:
                self._cv.wait()
            if self._stop:
                return False
            self._in_flight += n
            if item.kind == "strip":
                self._strips_waiting += 1
        self._items.put(item)
        return True

    def _prepare_frame(self, path: Any) -> Optional[Frame]:
        """:func:`.frames.prepare_frame`; the run's first frame read from a local file in strips of
        :data:`FIRST_FRAME_STRIP_PIXELS` when its crop is at most :data:`READY_STRIP_PIXELS` pixels
        (larger crops: their usual strips)."""
        if not (self._first_frame and isinstance(path, Path)):
            return prepare_frame(path, self.config, self.grid)
        frame = prepare_frame(path, self.config, self.grid, strip_pixels=FIRST_FRAME_STRIP_PIXELS)
        if frame is not None and frame.n_pixels > READY_STRIP_PIXELS:
            frame = replace(frame, strip_rows=max(1, STRIP_PIXELS // (frame.crop[1] - frame.crop[0])))
        return frame

    def _prepare(self, path: Any) -> Tuple[Item, Any]:
        """The ``frame``, ``skip`` or ``reject`` item of one file, and the strips of a frame whose
        crop is at most :data:`READY_STRIP_PIXELS` pixels (a list, or the exception that stopped
        them; None: the strips are made when handed over)."""
        try:
            frame = self._prepare_frame(path)
            if frame is not None and self.waves is not None:
                frame = self.waves.attach(frame)
        except FrameError as exc:
            return Item(path, "reject", exc.reason), None
        except Exception as exc:  # a broken file must never stop the run
            return Item(path, "reject", f"unexpected read error ({type(exc).__name__}: {exc})"), None
        if frame is None:
            return Item(path, "skip", None), None
        ready: Any = None
        if frame.n_pixels <= READY_STRIP_PIXELS and frame.strip_rows >= frame.crop[3] - frame.crop[2]:
            try:
                ready = list(frame.strips())
            except Exception as exc:  # reported as the strips' failure, in file order
                ready = exc
        return Item(path, "frame", frame), ready

    def _prepared(self) -> Generator[Tuple[Item, Any], None, None]:
        """:meth:`_prepare` of every file in order; with ``workers`` > 1, that many files ahead
        are prepared at once by a thread pool."""
        if self.workers == 1:
            for path in self.paths:
                yield self._prepare(path)
            return
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="drizzle-prepare")
        pending: "Deque[Future[Tuple[Item, Any]]]" = deque()
        todo = iter(self.paths)
        try:
            for path in todo:
                pending.append(pool.submit(self._prepare, path))
                if len(pending) >= self.workers:
                    break
            while pending:
                item = pending.popleft().result()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self._prepare, nxt))
                yield item
                del item
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _frame_items(self, first: Item, ready: Any) -> Iterator[Item]:
        if first.kind != "frame":
            yield first
            return
        path, frame = first.path, first.payload
        yield first
        n = 0
        try:
            if isinstance(ready, Exception):
                raise ready
            for strip in frame.strips() if ready is None else _drain(ready):
                yield Item(path, "strip", strip)
                del strip
                n += 1
        except Exception as exc:
            reason = exc.reason if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
            yield Item(path, "broken", f"read failed after {n} strip(s) ({reason})")
            return
        yield Item(path, "end", None)

    def _run(self) -> None:
        prepared = self._prepared()
        try:
            for first, ready in prepared:
                if first.kind == "frame":
                    self._first_frame = False
                for item in self._frame_items(first, ready):
                    if not self._put(item):
                        return
                    del item
                del first, ready
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc
        finally:
            prepared.close()  # the pool (if any) finishes the frames it started
            self._finished_reading = True
            self._items.put(None)

    # ------------------------------------------------------------------ caller
    def start(self) -> None:
        """Start the reader thread now, so that the first file is prepared while the caller does
        something else (iterating starts it otherwise). Iterate afterwards, or :meth:`close`."""
        if not self._started:
            self._started = True
            self._thread.start()

    def __iter__(self) -> Iterator[Item]:
        self.start()
        taken = 0
        try:
            while True:
                if taken:  # the previous strip is done with: its bytes leave the budget
                    with self._cv:
                        self._in_flight -= taken
                        self._cv.notify_all()
                    taken = 0
                item = self._items.get()
                if item is None:
                    break
                if item.kind == "strip":
                    taken = _nbytes(item.payload)
                    with self._cv:
                        self._strips_waiting -= 1
                yield item
                del item
            if self._error is not None:
                raise self._error
        finally:
            self.close()

    def ahead(self) -> bool:
        """Whether the reader is ahead of the caller: it has handed over a strip the caller has not
        taken yet, or it has nothing left to prepare (the frame side does not need a core)."""
        return self._strips_waiting > 0 or self._finished_reading

    def close(self) -> None:
        """Stop the reader thread (pending strips are dropped) and wait for it."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            while self._thread.is_alive():
                try:
                    self._items.get(timeout=0.05)
                except queue.Empty:
                    pass
            self._thread.join()


__all__ = ["Item", "ReadAhead", "READ_AHEAD_BYTES", "READY_STRIP_PIXELS", "FIRST_FRAME_STRIP_PIXELS"]
