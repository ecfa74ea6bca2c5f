"""Jobs for the unique-job and middleware tests (tests/integration/test_unique_middleware.py)."""
from __future__ import annotations

import os
import time

import farm
from testjobs import record


class OnlyOnce(farm.Job):
    """A unique job keyed by `key`; records `<key> <attempt>` to `path` when it runs."""

    unique_for = 60

    def __init__(self, path: str, key: str, fail: bool = False) -> None:
        self.path, self.key, self.fail_it = path, key, fail

    def unique_id(self) -> str:
        return self.key

    def handle(self) -> None:
        record(self.path, f"{self.key} {self.attempts}")
        if self.fail_it:
            raise RuntimeError("failing on purpose")


class OnlyOnceFailing(OnlyOnce):
    tries = 1


class UniqueUntilStart(farm.Job):
    """Unique until it starts; then waits (up to 20 s) for `path + ".go"` to exist."""

    unique_for = 60
    unique_until = "processing"

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"started {os.getpid()}")
        deadline = time.monotonic() + 20
        while not os.path.exists(self.path + ".go") and time.monotonic() < deadline:
            time.sleep(0.02)


class ShortUnique(farm.Job):
    unique_for = 1

    def handle(self) -> None:
        pass


class Exclusive(farm.Job):
    """Holds the "shared" key while it runs: records `start end attempt pid` to `path`."""

    middleware = [farm.WithoutOverlapping("shared", release_after=0.2)]
    timeout = 30

    def __init__(self, path: str, seconds: float = 0.3) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        start = time.time()
        time.sleep(self.seconds)
        record(self.path, f"{start!r} {time.time()!r} {self.attempts} {os.getpid()}")


class HeldBack(farm.Job):
    """Waits behind the "gate" key (taken by the test): records `attempt pid` when it runs."""

    middleware = [farm.WithoutOverlapping("gate", release_after=0.3)]

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"{self.attempts} {os.getpid()}")


class Limited(farm.Job):
    """At most 3 starts a minute under "mailer": records `time pid` to `path`."""

    middleware = [farm.RateLimited("mailer", per_minute=3)]

    def __init__(self, path: str, seconds: float = 0) -> None:
        self.path, self.seconds = path, seconds

    def handle(self) -> None:
        record(self.path, f"{time.time()!r} {os.getpid()}")
        time.sleep(self.seconds)


class Throttled(farm.Job):
    """Always raises; after 2 exceptions its attempts are held back for the rest of a minute."""

    tries = 10
    backoff = 0
    middleware = [farm.ThrottlesExceptions(2, minutes=1)]

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"{self.attempts}")
        raise RuntimeError("upstream is down")


class Around:
    """A middleware of one's own: records before and after the job, around `next`."""

    def handle(self, job: farm.Job, next):
        record(job.path, "before")
        result = next(job)
        record(job.path, "after")
        return result


class Wrapped(farm.Job):
    middleware = [Around()]

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> str:
        record(self.path, "handle")
        return "handled"


class Gated(farm.Job):
    """Unique (until done); waits (up to 20 s) for `path + ".go"`, then records "ran"."""

    unique_for = 60

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        deadline = time.monotonic() + 20
        while not os.path.exists(self.path + ".go") and time.monotonic() < deadline:
            time.sleep(0.02)
        record(self.path, "ran")


class Hog(farm.Job):
    """Holds the "hog" key for `seconds` (timeout 1.5 s): records `start <tag> <time>` first."""

    middleware = [farm.WithoutOverlapping("hog", release_after=0.2)]
    timeout = 1.5

    def __init__(self, path: str, tag: str, seconds: float) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def handle(self) -> None:
        record(self.path, f"start {self.tag} {time.time()!r}")
        time.sleep(self.seconds)


class LimitedOnce(farm.Job):
    """Rate limited, one try: records its attempt to `path` when it runs."""

    tries = 1
    middleware = [farm.RateLimited("once", per_minute=100)]

    def __init__(self, path: str) -> None:
        self.path = path

    def handle(self) -> None:
        record(self.path, f"{self.attempts}")


class ThrottledThenFine(farm.Job):
    """Raises on its first attempt; on the next it takes the store's counters table away (as
    a store failing mid-job would) and succeeds. Records `attempt` each time it runs."""

    tries = 3
    backoff = 0
    middleware = [farm.ThrottlesExceptions(5, minutes=1)]

    def __init__(self, path: str, db: str, locks: str) -> None:
        self.path, self.db, self.locks = path, db, locks

    def handle(self) -> None:
        import sqlite3

        record(self.path, f"{self.attempts}")
        if self.attempts == 1:
            raise RuntimeError("upstream is down")
        con = sqlite3.connect(self.db, timeout=30, isolation_level=None)
        con.execute(f"ALTER TABLE {self.locks} RENAME TO {self.locks}_gone")
        con.close()


class Stubborn(farm.Job):
    """Holds the "stubborn" key and ignores its timeout (1 s) for `seconds`, as a job blocked
    outside Python would: records `start <tag> <time>`, then `alive <tag> <time>` as it goes."""

    middleware = [farm.WithoutOverlapping("stubborn", release_after=0.1)]
    timeout = 1

    def __init__(self, path: str, tag: str, seconds: float) -> None:
        self.path, self.tag, self.seconds = path, tag, seconds

    def handle(self) -> None:
        record(self.path, f"start {self.tag} {time.time()!r}")
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            try:
                time.sleep(0.05)
                record(self.path, f"alive {self.tag} {time.time()!r}")
            except farm.JobTimeout:
                pass
