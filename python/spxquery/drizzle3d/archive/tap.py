"""Running one ADQL query on a TAP service (pyvo), with retries and the sync -> async fallback.

Errors are classified once (:func:`describe_error`): 5xx, 429, 408, timeouts and broken
connections are retried with backoff (:mod:`.retry`); a rejected query fails at once, and so
does a service that cannot be reached at all (connection refused, unknown host name:
:class:`ArchiveUnreachableError`, one line naming the URL), where retrying would only wait. In mode
``"auto"`` a query that keeps failing, times out repeatedly or comes back truncated
(``QUERY_STATUS = OVERFLOW``) is sent again as an async (UWS) job. A truncated result is
never returned silently: the table's ``meta["spx_truncated"]`` says so. pyvo sends the
requests; the answers are read by :mod:`.tap_answer` (bounded in size, an odd cell in a numeric
column read as text so that only its row is skipped). Times in seconds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
import warnings
from typing import Any, Iterator
from urllib.parse import urlsplit

import requests

from ..textlimits import short_text
from .retry import backoff_base as _backoff_base
from .retry import backoff_delay, is_retryable_status, parse_retry_after
from .tap_answer import AnswerTooLargeError, read_answer

logger = logging.getLogger(__name__)

#: Overall wait for an async TAP job (s).
ASYNC_JOB_TIMEOUT = 900.0
#: In mode "auto", this many sync timeouts in a row switch to an async job
#: (a query too slow for a sync answer will not get faster by repeating it).
SYNC_TIMEOUTS_BEFORE_ASYNC = 2


class ArchiveQueryError(RuntimeError):
    """The TAP service could not answer (after retries) or answered unusably."""


class ArchiveUnreachableError(ArchiveQueryError, ConnectionError):
    """The TAP service cannot be reached at all: connection refused or unknown host name."""


class _TimeoutSession(requests.Session):
    """Session applying a default timeout (s) to requests that set none
    (pyvo's sync queries pass no timeout)."""

    def __init__(self, timeout: float) -> None:
        super().__init__()
        self.default_timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what caused it: pyvo's ``cause``, ``__cause__``/``__context__``, urllib3's
    ``reason`` and exceptions wrapped in ``args`` (requests wraps urllib3's errors that way)."""
    todo, seen = [exc], set()
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        linked = [getattr(e, "cause", None), e.__cause__, e.__context__, getattr(e, "reason", None), *e.args[:1]]
        todo.extend(x for x in linked if isinstance(x, BaseException))


def unreachable_reason(exc: BaseException, url: str) -> str | None:
    """Why ``url`` cannot be reached, when ``exc`` says so for certain (connection refused,
    host name unknown), else None (a timeout or a dropped connection may pass)."""
    parts = urlsplit(url)
    host = parts.hostname or url
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for e in _causes(exc):
        if isinstance(e, socket.gaierror):
            return f"host name {host!r} not found ({e.strerror or e})"
        if isinstance(e, ConnectionRefusedError):
            return f"connection refused by {host} port {port} (no service listens there)"
    return None


def describe_error(exc: BaseException) -> tuple[str, bool, float | None, bool]:
    """(description, retryable, retry_after seconds, is_timeout) of a pyvo/requests error;
    the description is bounded (a server's error text can be any size)."""
    desc, retryable, retry_after, is_timeout = _describe(exc)
    return short_text(desc), retryable, retry_after, is_timeout


def _describe(exc: BaseException) -> tuple[str, bool, float | None, bool]:
    from pyvo.dal import DALFormatError, DALQueryError, DALServiceError

    cause: BaseException | None = exc
    code: int | None = getattr(exc, "code", None) if isinstance(exc, DALServiceError) else None
    response = None
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        resp = getattr(cause, "response", None)
        if resp is not None and response is None:
            response = resp
        if isinstance(cause, requests.exceptions.Timeout):
            return f"{type(cause).__name__}: {cause}", True, None, True
        if isinstance(cause, (requests.exceptions.ConnectionError, requests.exceptions.ChunkedEncodingError)):
            return f"{type(cause).__name__}: {cause}", True, None, False
        cause = getattr(cause, "cause", None) or cause.__cause__ or cause.__context__
    if response is not None and not code:
        code = response.status_code
    retry_after = parse_retry_after(response.headers.get("Retry-After")) if response is not None else None
    if isinstance(exc, DALQueryError) and not code:
        return f"query rejected by the service: {exc}", False, None, False
    if code:
        return f"HTTP {code}: {str(exc).strip()}", is_retryable_status(code), retry_after, False
    if isinstance(exc, DALFormatError):
        return f"unreadable response: {exc}", True, None, False
    if isinstance(exc, DALServiceError):
        return f"service error: {exc}", True, None, False
    return f"{type(exc).__name__}: {exc}", False, None, False


def _sync_result(service: Any, adql: str) -> Any:
    """One sync query, its answer read by :mod:`.tap_answer` (bounded, lenient on odd cells);
    errors as pyvo's ``run_sync`` raises them."""
    from pyvo.dal import DALFormatError
    from pyvo.dal.tap import TAPResults

    query = service.create_query(adql)
    try:
        stream = query.execute_stream()
        try:
            votable = read_answer(stream.read, query.queryurl)
        finally:
            stream.close()  # never drain the rest of an answer refused as too large
    except Exception as exc:
        query.raise_if_error()  # an HTTP error status says more than its body
        if isinstance(exc, AnswerTooLargeError):
            raise
        raise DALFormatError(exc, query.queryurl) from exc
    return TAPResults(votable, url=query.queryurl, session=getattr(service, "_session", None))


def _async_result(service: Any, adql: str) -> Any:
    """One async (UWS) job as pyvo's ``run_async`` runs it, its result read by
    :mod:`.tap_answer`; the job is deleted afterwards."""
    from pyvo.dal import DALFormatError, DALQueryError, DALServiceError
    from pyvo.dal.tap import TAPResults

    job = service.submit_job(adql).run().wait(timeout=ASYNC_JOB_TIMEOUT)
    try:
        job.raise_if_error()
        url = job.result_uri
        if url is None:
            raise DALServiceError(reason="No result URI available", url=job.url)
        try:
            response = job._session.get(url, stream=True)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise DALServiceError.from_except(exc, job.url) from exc
        try:
            votable = read_answer(functools.partial(response.raw.read, decode_content=True), url)
        except AnswerTooLargeError:
            raise
        except Exception as exc:
            raise DALFormatError(exc, url) from exc
        finally:
            response.close()
    finally:
        with contextlib.suppress(DALServiceError, DALQueryError, requests.RequestException):
            job.delete()
    return TAPResults(votable, url=url, session=job._session)


def _submit(service: Any, adql: str, mode: str) -> Any:
    """One sync query or one async job; pyvo's overflow warning is ours to report."""
    from pyvo.dal import DALOverflowWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DALOverflowWarning)
        if mode == "sync":
            return _sync_result(service, adql)
        return _async_result(service, adql)


def _run_mode(
    service: Any, adql: str, mode: str, *, tap_url: str, auto: bool, last: bool, retries: int, base: float,
    history: list[str],
) -> Any:
    """Up to ``retries + 1`` attempts in ``mode``: the result table (with
    ``meta["spx_truncated"]``), or None when this mode gave up. Each failure is
    appended to ``history``; a non-retryable one raises :class:`ArchiveQueryError`."""
    timeouts = 0
    for attempt in range(retries + 1):
        try:
            result = _submit(service, adql, mode)
        except AnswerTooLargeError as exc:  # not retried: the same answer again would be as large
            raise ArchiveQueryError(str(exc)) from exc
        except Exception as exc:  # pyvo raises several DAL* types, requests a few more
            unreachable = unreachable_reason(exc, tap_url)
            if unreachable is not None:
                raise ArchiveUnreachableError(
                    f"cannot reach the TAP service {tap_url}: {unreachable}; check tap_url (--tap-url) "
                    f"or $SPXQUERY_TAP_URL"
                ) from exc
            desc, retryable, retry_after, is_timeout = describe_error(exc)
            history.append(f"{mode}: {desc}")
            if not retryable:
                raise ArchiveQueryError(f"TAP query to {tap_url} failed ({mode}): {desc}") from exc
            timeouts = timeouts + 1 if is_timeout else 0
            if mode == "sync" and auto and timeouts >= SYNC_TIMEOUTS_BEFORE_ASYNC:
                logger.warning("TAP sync query to %s timed out %d times in a row; switching to an async job",
                               tap_url, timeouts)
                return None
            if attempt < retries:
                delay = backoff_delay(attempt + 1, base, retry_after)
                logger.warning("TAP %s query to %s failed (%s); retry %d/%d in %.2f s",
                               mode, tap_url, desc, attempt + 1, retries, delay)
                time.sleep(delay)
            continue
        table = result.to_table()
        truncated = (result.query_status or "OK").upper() == "OVERFLOW"
        table.meta["spx_truncated"] = truncated
        if truncated:
            history.append(f"{mode}: result truncated by the service at {len(table)} rows")
            logger.warning("TAP %s result from %s truncated at %d rows", mode, tap_url, len(table))
        elif mode == "async" and auto:
            logger.info("TAP async query to %s succeeded after sync failures", tap_url)
        return table
    if not last:
        logger.warning("TAP sync query to %s failed %d times; trying an async job", tap_url, retries + 1)
    return None


def run_tap_query(
    tap_url: str,
    adql: str,
    *,
    mode: str = "auto",
    timeout: float = 60.0,
    retries: int = 5,
    backoff_base: float | None = None,
    session: requests.Session | None = None,
) -> Any:
    """Run ``adql`` on the TAP service at ``tap_url``; returns an astropy Table.

    ``mode``: ``"sync"``, ``"async"`` or ``"auto"`` (sync, then async when
    sync keeps failing with retryable errors, times out
    :data:`SYNC_TIMEOUTS_BEFORE_ASYNC` times in a row, or the result is truncated).
    Retries (``retries`` extra attempts per mode) with exponential backoff on
    5xx/429/408, timeouts (``timeout`` s per HTTP exchange) and broken
    connections. Raises :class:`ArchiveQueryError` naming the URL and the last
    error. A truncated (OVERFLOW) result is never returned silently.
    """
    import pyvo

    if mode not in ("auto", "sync", "async"):
        raise ValueError(f"mode must be 'auto', 'sync' or 'async', got {mode!r}")
    base = _backoff_base(backoff_base)
    service = pyvo.dal.TAPService(tap_url, session=session if session is not None else _TimeoutSession(timeout))
    modes = ["sync", "async"] if mode == "auto" else [mode]
    history: list[str] = []
    truncated_at: int | None = None
    for m in modes:
        table = _run_mode(service, adql, m, tap_url=tap_url, auto=mode == "auto", last=m == modes[-1],
                          retries=retries, base=base, history=history)
        if table is None:
            continue
        if not table.meta["spx_truncated"] or m == modes[-1]:
            return table
        truncated_at = len(table)  # try the next mode
    last = history[-1] if history else "no attempt made"
    extra = f" (truncated at {truncated_at} rows)" if truncated_at is not None else ""
    earlier = list(dict.fromkeys(h for h in history[:-1] if h != last))[:2]  # distinct, bounded
    before = f"; before that: {'; '.join(earlier)}" if earlier else ""
    raise ArchiveQueryError(
        f"TAP query to {tap_url} failed after {len(history)} attempts{extra}; last error: {last}{before}"
    )
