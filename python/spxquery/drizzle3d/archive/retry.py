"""Retry policy shared by TAP queries and file transfers.

Which answers are worth another attempt (408, 425, 429 and every 5xx), how long to wait
before attempt ``n`` (exponential backoff with jitter, at least the server's
``Retry-After``, both capped), and the default first delay. Times in seconds.
"""

from __future__ import annotations

import email.utils
import random
import time

#: Default first backoff delay (s); delay n = base * 2**(n-1) * U(0.5, 1.5), capped at MAX_BACKOFF.
#: Read at call time, so tests may lower it for a whole run.
DEFAULT_BACKOFF_BASE = 1.0
#: Longest backoff between two attempts (s).
MAX_BACKOFF = 60.0
#: Longest server-requested ``Retry-After`` we honour (s).
MAX_RETRY_AFTER = 120.0
#: HTTP statuses worth retrying besides every 5xx.
RETRY_STATUS = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    """True for HTTP statuses that a later attempt may cure (408, 425, 429, 5xx)."""
    return status in RETRY_STATUS or 500 <= status < 600


def backoff_base(value: float | None) -> float:
    """``value`` (s) as a float, or :data:`DEFAULT_BACKOFF_BASE` when None."""
    return DEFAULT_BACKOFF_BASE if value is None else float(value)


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` (seconds or HTTP date) -> seconds >= 0, or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_delay(attempt: int, base: float, retry_after: float | None = None) -> float:
    """Delay (s) before retry number ``attempt`` (1-based): exponential with
    jitter, at least the server's ``Retry-After`` (capped)."""
    delay = min(MAX_BACKOFF, base * 2.0 ** min(attempt - 1, 64)) * random.uniform(0.5, 1.5)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay
