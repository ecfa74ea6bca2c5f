"""Install the worker's signal handlers; they only tell the Lifecycle, and wake idle waits."""
from __future__ import annotations

import os
import signal
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
def installed(lifecycle: Lifecycle) -> Iterator[None]:
    """Handlers for the worker's lifetime; the previous ones come back after."""

    def handler(signum: int, frame: Any) -> None:
        if lifecycle.on_signal(signum):
            raise Abandon(signal.Signals(signum).name)

    previous = {s: signal.signal(s, handler) for s in HANDLED}
    previous[signal.SIGALRM] = timeout.install()
    try:
        with wakeup():
            yield
    finally:
        timeout.disarm()
        for s, h in previous.items():
            signal.signal(s, h)
