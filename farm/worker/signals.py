"""Install the worker's signal handlers; they only tell the Lifecycle, and wake idle waits."""
from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Iterator

from .. import waker
from ..errors import Abandon
from . import timeout
from .lifecycle import Lifecycle

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR2, signal.SIGCONT)


@contextmanager
def wakeup() -> Iterator[None]:
    """Every signal also writes to a pipe that idle waits (farm.waker) watch, so they end at once."""
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    waker.install(r)
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        waker.install(None)
        os.close(r)
        os.close(w)


@contextmanager
def installed(lifecycle: Lifecycle, late: "LateStops | None" = None) -> Iterator[None]:
    """Handlers for the worker's loop; the previous ones come back after. A stop signal `late`
    noted before the loop began is handed to the lifecycle first."""

    def handler(signum: int, frame: Any) -> None:
        if lifecycle.on_signal(signum):
            raise Abandon(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    previous[signal.SIGALRM] = timeout.install()
    if late is not None and late.got:
        lifecycle.on_signal(late.got[0])
    try:
        with wakeup():
            yield
    finally:
        timeout.disarm()
        for s, h in previous.items():
            signal.signal(s, h)



STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


class LateStops:
    """Stop signals that come outside the loop's handlers: noted, never fatal."""

    def __init__(self) -> None:
        self.got: list[int] = []

    def note(self, signum: int, frame: Any) -> None:
        self.got.append(signum)

    def wait_out(self, seconds: float) -> None:
        """Sleep up to `seconds`; a stop signal ends the wait (a recycling exit waiting out
        supervisord's startsecs, stopped by `supervisorctl stop`, still exits 0)."""
        deadline = time.monotonic() + seconds
        while not self.got and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(0.05, left))


@contextmanager
def late_stops() -> Iterator[LateStops]:
    """For the worker's whole run: between its start, its loop, its shut-down and its exit a
    TERM is noted instead of killing it by the default action (chaos memory_recycling: a
    worker stopped while it waited out startsecs died with -15). Handlers come back after."""
    late = LateStops()
    previous = {s: signal.signal(s, late.note) for s in STOP_SIGNALS}
    try:
        yield late
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def exiting() -> None:
    """The worker's run is over and the process exits next: a stop signal now could only turn
    its own exit status into death by signal (chaos memory_recycling saw -15), so it is ignored."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
