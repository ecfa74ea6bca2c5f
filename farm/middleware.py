"""Job middleware: code that runs in the worker around a job's `handle()`.

A middleware is any object with `handle(self, job, next)`: it calls `next(job)` to go on (to
the next middleware, the last one to `handle()`) and returns what that returned, or holds the
job back by calling `job.release(delay)` without calling `next`. A held-back job goes back to
its queue after `delay` unstarted: not an attempt, not an exception (farm/worker/runner.py).

    class ImportCsv(farm.Job):
        middleware = [farm.WithoutOverlapping("import", release_after=10),
                      farm.RateLimited("mailer", per_minute=60),
                      farm.ThrottlesExceptions(3, minutes=5)]

Shared state lives in the connection's store as counters with an expiry (farm/locks.py), so
each of these holds across every worker and host.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from . import unique
from .errors import DriverUnavailable, FarmError, JobTimeout
from .jobs import FunctionCall, Job, job_name

HOLD_MIN = 0.1           # seconds: the shortest hold-back, so a held job never spins a worker
NO_TIMEOUT_LOCK = 3600.0  # seconds a WithoutOverlapping lock lives for a job with no timeout
OVERLAP_MARGIN = 3.0     # seconds a WithoutOverlapping lock outlives the job's timeout: a job that
                         # ignores its JobTimeout runs until the watchdog ends it (heart.GRACE + a tick)
STORE_DOWN_HOLD = 5.0    # seconds a job waits when its middleware cannot reach the store

Next = Callable[[Job], Any]


def chain_of(job: Job) -> list[Any]:
    """The job's middleware: the `middleware` list (or a method returning one)."""
    found = job.option("middleware") if isinstance(job, FunctionCall) else getattr(job, "middleware", None)
    if found and callable(found):
        found = found()
    return list(found or ())


def run(attempt: Any, before: Callable[[], None] | None = None) -> Any:
    """The worker's call of one attempt's handle(), through its middleware (if any); `before`
    (the `before` event) is called just ahead of handle(), so never for a held-back job."""
    job = attempt.job
    chain = job.option("middleware") if isinstance(job, FunctionCall) else getattr(job, "middleware", None)
    if not chain and attempt.unique is None:
        if before is not None:
            before()
        return job.handle()             # a plain job: nothing else
    return wrap(job, attempt.store, attempt.timeout, attempt.unique, before)


def wrap(job: Job, store: Any, timeout: float, lock: dict[str, Any] | None = None,
         before: Callable[[], None] | None = None) -> Any:
    """Run `handle()` inside the job's middleware. A middleware that released the job without
    calling `next` held it back: its outcome becomes ("hold", delay) for the runner."""
    chain = chain_of(job)
    job._farm_store, job._farm_timeout = store, timeout
    ran = False

    def step(i: int) -> Next:
        def next_(j: Job) -> Any:
            nonlocal ran
            if i < len(chain):
                return chain[i].handle(j, step(i + 1))
            ran = True
            if lock is not None and lock["until"] == "processing":
                unique.release(store, lock)
            if before is not None:
                before()
            return j.handle()
        return next_

    try:
        result = step(0)(job)
    except DriverUnavailable as e:
        if ran:
            raise                       # handle() ran: its outcome is the job's
        # the store is away before handle() ran: held back, no attempt burnt, nothing lost
        job._farm_outcome = ("hold", STORE_DOWN_HOLD, str(e))
        return None
    outcome = getattr(job, "_farm_outcome", None)
    if not ran and outcome is not None and outcome[0] == "release":
        job._farm_outcome = ("hold", max(HOLD_MIN, outcome[1]))
    return result


def store_of(job: Job) -> Any:
    """The store the worker running `job` keeps shared state in."""
    store = getattr(job, "_farm_store", None)
    if store is None:
        raise FarmError(f"{job_name(job)}: middleware needs the connection's store "
                        "(amqp: add `store: <a database connection>`)")
    return store


class WithoutOverlapping:
    """At most one job holding `key` runs at a time, on every worker and host; the others are
    held back for `release_after` seconds. The lock expires after the job's timeout, so a
    worker that dies holding it does not keep it."""

    def __init__(self, key: str, release_after: float = 1.0) -> None:
        self.key, self.release_after = str(key), float(release_after)

    def handle(self, job: Job, next: Next) -> Any:
        store, name = store_of(job), "overlap:" + self.key
        timeout = getattr(job, "_farm_timeout", 0) or NO_TIMEOUT_LOCK
        value, expires = store.incr(name, 1, timeout + OVERLAP_MARGIN)
        if value != 1:
            job.release(self.release_after)
            return None
        try:
            return next(job)
        finally:
            try:
                store.drop(name, expires)
            except FarmError:
                pass                    # it expires after the job's timeout

    def __repr__(self) -> str:
        return f"WithoutOverlapping({self.key!r}, release_after={self.release_after:g})"


class RateLimited:
    """At most `per_minute` handle() starts per minute under `name`, across the farm (fixed
    one-minute windows); a job over the limit is held back until the next window."""

    def __init__(self, name: str, per_minute: int) -> None:
        if isinstance(per_minute, bool) or not isinstance(per_minute, int) or per_minute < 1:
            raise ValueError(f"RateLimited: per_minute must be a positive integer, got {per_minute!r}")
        self.name, self.per_minute = str(name), per_minute

    def handle(self, job: Job, next: Next) -> Any:
        now = time.time()
        value, expires = store_of(job).incr("rate:" + self.name, 1, 60 - now % 60)
        if value > self.per_minute:
            job.release(max(HOLD_MIN, expires - now))
            return None
        return next(job)

    def __repr__(self) -> str:
        return f"RateLimited({self.name!r}, per_minute={self.per_minute})"


class ThrottlesExceptions:
    """After `n` exceptions within `minutes` (a window opened by the first of them), the job's
    further attempts are held back until that window has passed; a success clears the count
    (Laravel's semantics). Keyed by the job's name unless `key` is given. The exceptions
    themselves go on as usual (retried with the job's backoff, counted against its tries)."""

    def __init__(self, n: int, minutes: float = 10, key: str | None = None) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"ThrottlesExceptions: n must be a positive integer, got {n!r}")
        self.n, self.seconds, self.key = n, float(minutes) * 60, key

    def handle(self, job: Job, next: Next) -> Any:
        store = store_of(job)
        name = "throttle:" + (self.key or job_name(job))
        value, expires = store.incr(name, 0, 0)     # a read: a missing counter stays expired
        now = time.time()
        if value >= self.n and expires > now:
            job.release(max(HOLD_MIN, expires - now))
            return None
        try:
            result = next(job)
        except (Exception, JobTimeout):
            try:
                store.incr(name, 1, self.seconds)   # the first one opens the window
            except FarmError:
                pass                    # uncounted: the job's own exception is what goes on
            raise
        if value:
            try:
                store.drop(name)
            except FarmError:           # handle() succeeded: a store error must not make it run again
                pass                    # the count expires with its window
        return result

    def __repr__(self) -> str:
        return f"ThrottlesExceptions({self.n}, minutes={self.seconds / 60:g}, key={self.key!r})"
