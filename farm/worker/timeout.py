"""The hard timeout of one attempt: SIGALRM raises JobTimeout inside the job.

Arming an interval timer is a system call that costs more than a no-op job itself on some
virtual machines (about 8 us of 50 per job, measured with py-spy), so the timer is not armed
and cancelled around every job. Each attempt only writes its deadline; the timer is armed
when no earlier alarm is due, and an alarm that comes before the running job's deadline (the
job it was armed for has ended) re-arms itself for the remainder. A stream of short jobs with
the same timeout thus costs one `setitimer` per timeout period instead of two per job.

A job stuck where no Python code runs (a C call holding on) is caught by the heart's
watchdog instead, which settles the attempt and ends the worker (see heart.py).
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import JobTimeout

_deadline: float | None = None     # monotonic time the running attempt must end by
_alarm_at: float | None = None     # monotonic time the armed timer fires


def _arm(seconds: float) -> None:
    global _alarm_at
    seconds = max(seconds, 1e-3)
    _alarm_at = time.monotonic() + seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)


def _alarm(signum: int, frame: Any) -> None:
    global _alarm_at
    _alarm_at = None
    if _deadline is None:
        return                          # armed for a job that has ended; nothing runs now
    left = _deadline - time.monotonic()
    if left > 0:
        _arm(left)                      # armed for an earlier job: wait for this one's deadline
        return
    raise JobTimeout("the job ran past its timeout")


def install() -> Any:
    """Install the SIGALRM handler (once per worker); returns the previous one."""
    return signal.signal(signal.SIGALRM, _alarm)


def disarm() -> None:
    """Cancel a pending alarm (before the previous SIGALRM handler comes back)."""
    global _alarm_at, _deadline
    signal.setitimer(signal.ITIMER_REAL, 0)
    _alarm_at = _deadline = None


@contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    """Raise JobTimeout in this (main) thread after `seconds`; needs install() first."""
    global _deadline
    if seconds <= 0:
        yield
        return
    _deadline = time.monotonic() + seconds
    if _alarm_at is None or _alarm_at > _deadline:
        _arm(seconds)
    try:
        yield
    finally:
        _deadline = None
