"""The worker's state machine: signals and limits go in, a StopReason comes out. No I/O here."""
from __future__ import annotations

import signal
import time
from enum import Enum

from .options import WorkerOptions

_STOP = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT}


class StopReason(str, Enum):
    SIGNAL = "signal"
    MAX_JOBS = "max-jobs"
    MAX_TIME = "max-time"
    MEMORY = "memory"
    RESTART = "restart"
    EMPTY = "empty"
    ONCE = "once"
    ABANDON = "abandon"
    STUCK = "stuck"            # a job thread did not stop at its timeout (--concurrency)
    FATAL = "fatal"

    @property
    def exit_code(self) -> int:
        return 1 if self in (StopReason.ABANDON, StopReason.STUCK, StopReason.FATAL) else 0

    @property
    def recycles(self) -> bool:
        """An exit that the process manager answers with a fresh worker (see `startsecs`)."""
        return self in (StopReason.MAX_JOBS, StopReason.MAX_TIME, StopReason.MEMORY, StopReason.RESTART,
                        StopReason.STUCK)


class Lifecycle:
    def __init__(self, options: WorkerOptions, started: float) -> None:
        self.options = options
        self.started = started
        self.stop_signal: str | None = None
        self.abandon = False
        self.abandoned_at: float | None = None
        self.paused = False
        self.busy = False              # a job's handle() is running
        self.restart_requested = False

    def on_signal(self, signum: int) -> bool:
        """Record a signal; True when the running job must be interrupted now."""
        if signum in _STOP:
            if self.stop_signal is not None:
                self.abandon = True
                self.abandoned_at = time.monotonic()
                return self.busy
            self.stop_signal = signal.Signals(signum).name
        elif signum == signal.SIGUSR2:
            self.paused = True
        elif signum == signal.SIGCONT:
            self.paused = False
        return False

    def should_stop(self, now: float, rss_mb: float, done: int) -> StopReason | None:
        o = self.options
        if self.abandon:
            return StopReason.ABANDON
        if self.stop_signal is not None:
            return StopReason.SIGNAL
        if o.once and done >= 1:
            return StopReason.ONCE
        if o.max_jobs and done >= o.max_jobs:
            return StopReason.MAX_JOBS
        if o.max_time and now - self.started >= o.max_time:
            return StopReason.MAX_TIME
        if o.memory and rss_mb >= o.memory:
            return StopReason.MEMORY
        if self.restart_requested:
            return StopReason.RESTART
        return None
