"""Stopping running transfers: a per-file deadline and cancellation (Ctrl-C) within a second.

A blocked socket read ends only when data arrives or its timeout passes, so neither a
deadline checked between chunks nor a cancel flag can stop a trickling or silent server on
time. Each file's transfer therefore runs under a :class:`TransferGuard`: the HTTP
connection the session hands out for it is registered with the guard (the session's pools
do this, :func:`make_session`), and a :class:`Watchdog` thread shuts that connection's socket
down as soon as the guard's deadline passes or the run is cancelled; the blocked read then
returns at once and the transfer ends with the guard's reason. Times in seconds.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

#: How often (s) the watchdog looks at the running transfers.
WATCH_PERIOD = 0.1

USER_AGENT = "spxquery-drizzle3d (+https://github.com/spxquery)"

_current = threading.local()


class TransferStopped(Exception):
    """A guarded transfer was stopped: the message says why (deadline or cancellation)."""

    def __init__(self, reason: str, *, cancelled: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.cancelled = cancelled


class TransferGuard:
    """The budget of one file: ``deadline`` seconds from now for every attempt together,
    and the run's ``cancel`` event. Holds the connection in use while an attempt runs."""

    def __init__(self, cancel: threading.Event, deadline: float) -> None:
        self.cancel = cancel
        self.budget = float(deadline)
        self.deadline = time.monotonic() + self.budget
        self._lock = threading.Lock()
        self._conn: Any = None

    def stop_reason(self) -> TransferStopped | None:
        """Why the transfer must stop now, or None."""
        if self.cancel.is_set():
            return TransferStopped("cancelled (interrupted)", cancelled=True)
        if time.monotonic() >= self.deadline:
            return TransferStopped(
                f"no complete copy within the per-file deadline of {self.budget:g} s "
                "(a stalled or trickling server; raise download_deadline for very slow links)",
                cancelled=False,
            )
        return None

    def check(self) -> None:
        """Raise :class:`TransferStopped` when the transfer must stop."""
        stop = self.stop_reason()
        if stop is not None:
            raise stop

    def sleep(self, delay: float) -> None:
        """Wait ``delay`` s (a retry's backoff), ending early on cancellation; then :meth:`check`."""
        remaining = self.deadline - time.monotonic()
        self.cancel.wait(max(0.0, min(delay, remaining)))
        self.check()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within this block, connections the guarded session hands out on this thread
        belong to this guard (one HTTP exchange)."""
        _current.guard = self
        try:
            yield
        finally:
            _current.guard = None
            with self._lock:
                self._conn = None

    def attach(self, conn: Any) -> None:
        """Register the connection an exchange uses (called by the session's pools)."""
        with self._lock:
            self._conn = conn
        self.poke()

    def poke(self) -> None:
        """Shut the connection's socket down when the transfer must stop (the blocked read returns)."""
        if self.stop_reason() is None:
            return
        with self._lock:
            conn = self._conn
        sock = getattr(conn, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Watchdog:
    """A daemon thread that pokes every registered guard each :data:`WATCH_PERIOD` s."""

    def __init__(self, period: float = WATCH_PERIOD) -> None:
        self.period = period
        self._guards: set[TransferGuard] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spx-dl-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=1.0)

    @contextmanager
    def watching(self, guard: TransferGuard) -> Iterator[TransferGuard]:
        with self._lock:
            self._guards.add(guard)
        try:
            yield guard
        finally:
            with self._lock:
                self._guards.discard(guard)

    def poke_all(self) -> None:
        with self._lock:
            guards = list(self._guards)
        for guard in guards:
            guard.poke()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.poke_all()


class _GuardedPoolMixin:
    """Hands each connection to the guard active on the calling thread, if any."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)  # type: ignore[misc]
        guard = getattr(_current, "guard", None)
        if guard is not None:
            guard.attach(conn)
        return conn


class _GuardedHTTPPool(_GuardedPoolMixin, HTTPConnectionPool):
    pass


class _GuardedHTTPSPool(_GuardedPoolMixin, HTTPSConnectionPool):
    pass


class _GuardedAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


def make_session(max_workers: int = 4) -> requests.Session:
    """A ``requests.Session`` whose connection pool fits ``max_workers`` threads, whose
    connections can be stopped by a :class:`TransferGuard` (urllib3 retries disabled:
    retries are ours)."""
    session = requests.Session()
    adapter = _GuardedAdapter(pool_connections=4, pool_maxsize=max(4, int(max_workers)), max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session
