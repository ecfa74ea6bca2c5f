"""The hard timeout of one attempt: SIGALRM raises JobTimeout inside the job.

A job stuck where no Python code runs (a C call holding on) is caught by the heart's
watchdog instead, which settles the attempt and ends the worker (see heart.py).
"""
from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import JobTimeout


def _alarm(signum: int, frame: Any) -> None:
    raise JobTimeout("the job ran past its timeout")


def install() -> Any:
    """Install the SIGALRM handler (once per worker); returns the previous one."""
    return signal.signal(signal.SIGALRM, _alarm)


@contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    """Raise JobTimeout in this (main) thread after `seconds`; needs install() first."""
    if seconds <= 0:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
