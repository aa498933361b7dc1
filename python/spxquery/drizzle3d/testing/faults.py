"""Programmable misbehaviour of the simulated archive: status codes, delays, cut or lying bodies.

A :class:`FaultPlan` holds per-path queues of :class:`Fault` objects; each request whose path
contains a queue's match string consumes the next fault (``times`` per fault, -1 = forever).
Every applied fault is recorded in ``FaultPlan.applied``. Times in seconds, sizes in bytes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass


@dataclass
class Fault:
    """One injected misbehaviour, applied to one matching request.

    status: answer this HTTP status (with ``retry_after`` seconds if given).
    delay: sleep this long (s) before answering (use > client timeout).
    drop_after: send only this many body bytes, then close the connection.
    content_length_delta: advertise Content-Length = true length + delta.
    ignore_range: answer 200 with the whole file even when Range was asked.
    rate: send the body at this many bytes per second (a trickle).
    extra_bytes: send this many junk bytes after the file (counted in Content-Length unless
        ``no_length``); made as they are sent, so a huge number is an endless body.
    no_length: send no Content-Length (the body ends when the connection closes).
    body: answer this body (status ``status`` or 200) instead of the resource, e.g. a
        hand-made TAP answer; ``content_type`` is its type; ``extra_bytes``, ``no_length``,
        ``drop_after``, ``rate`` and ``content_length_delta`` apply to it too.
    """

    status: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    drop_after: int | None = None
    content_length_delta: int = 0
    ignore_range: bool = False
    rate: float | None = None
    extra_bytes: int = 0
    no_length: bool = False
    body: bytes | None = None
    content_type: str = "application/x-votable+xml"

    @property
    def alters_framing(self) -> bool:
        """True when the answer's length cannot be trusted (the connection closes after it)."""
        return bool(self.content_length_delta or self.drop_after is not None or self.extra_bytes
                    or self.no_length)


@dataclass
class _Queue:
    match: str
    fault: Fault
    remaining: int  # -1 = forever


class FaultPlan:
    """Per-path fault queues. ``add(match, *faults, times=1)``: the next requests
    whose path contains ``match`` get the faults in order (each ``times`` times;
    ``times=-1`` = forever)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Queue] = []
        self.applied: list[tuple[str, Fault]] = []

    def add(self, match: str, *faults: Fault, times: int = 1) -> FaultPlan:
        with self._lock:
            for f in faults:
                self._entries.append(_Queue(match, f, times))
        return self

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def pending(self) -> int:
        """Number of one-shot faults not yet consumed."""
        with self._lock:
            return sum(e.remaining for e in self._entries if e.remaining > 0)

    def take(self, path: str) -> Fault | None:
        """The next fault for a request to ``path`` (consumed), or None."""
        with self._lock:
            for entry in self._entries:
                if entry.match in path and entry.remaining != 0:
                    if entry.remaining > 0:
                        entry.remaining -= 1
                    self.applied.append((path, entry.fault))
                    return entry.fault
        return None
