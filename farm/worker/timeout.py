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


@contextmanager
def hard_timeout(seconds: float) -> Iterator[None]:
    if seconds <= 0:
        yield
        return
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
