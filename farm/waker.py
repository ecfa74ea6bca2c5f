"""Idle waits that a signal cuts short: drivers sleep here instead of time.sleep."""
from __future__ import annotations

import os
import select
import time
from typing import Sequence

_fd: int | None = None


def install(fd: int | None) -> None:
    """The read end of the signal wakeup pipe (set by the worker's signal handling)."""
    global _fd
    _fd = fd


def wait(timeout: float, fds: Sequence[int] = ()) -> bool:
    """Sleep up to `timeout`; True if one of `fds` became readable, False otherwise."""
    watch = list(fds) + ([_fd] if _fd is not None else [])
    if not watch:
        time.sleep(max(0.0, timeout))
        return False
    ready, _, _ = select.select(watch, [], [], max(0.0, timeout))
    if _fd is not None and _fd in ready:
        try:
            os.read(_fd, 512)
        except OSError:
            pass
    return any(fd in ready for fd in fds)


def signalled() -> bool:
    """True (once) if a signal arrived since the last wait: for waits that cannot watch a pipe."""
    if _fd is None:
        return False
    ready, _, _ = select.select([_fd], [], [], 0)
    if ready:
        try:
            os.read(_fd, 512)
        except OSError:
            pass
        return True
    return False
