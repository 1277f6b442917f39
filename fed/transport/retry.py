"""One retry policy for the channel: exponential backoff with jitter, bounded by a deadline.

Sends, BYEs and the startup barrier all retry the same way; what differs is which
errors are worth another attempt (`transient`) and when to give up early (`abort`).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def with_retries(
    attempt: Callable[[], T],
    *,
    deadline: float,
    transient: Callable[[BaseException], bool],
    abort: Callable[[BaseException], None] | None = None,
    on_retry: Callable[[BaseException], None] | None = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 1.0,
) -> T:
    """Call `attempt` until it returns, or re-raise its last error.

    An error is raised at once when `transient(error)` is false, when `abort(error)`
    raises (its own error replaces it), or once `deadline` (a `time.monotonic()`
    value) has passed; the last attempt starts at the deadline. Sleeps are jittered so that parties
    retrying the same peer do not reconnect in lockstep.
    """
    delay = first_delay_s
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not transient(exc):
                raise
            if abort is not None:
                abort(exc)
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            pause = min(delay * random.uniform(0.5, 1.0), left)  # the last try at the deadline
            if on_retry is not None:
                on_retry(exc)
            time.sleep(pause)
            delay = min(delay * 2, max_delay_s)
