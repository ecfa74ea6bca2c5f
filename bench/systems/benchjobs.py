"""jobfarm's benchmark jobs: each records its start through `record.py`, as the peers' do."""
from __future__ import annotations

import time

import farm
import record


class Tick(farm.Job):
    """A no-op job that records its number."""

    def __init__(self, n: int) -> None:
        self.n = n

    def handle(self) -> None:
        record.write(self.n)


class Stamp(Tick):
    """The same job, dispatched one at a time to an idle worker for dispatch-to-start latency."""


class Nap(Tick):
    """A job that waits on I/O (50 ms of sleep, standing in for an HTTP call): it records its
    number as it starts and `-1 - number` as it ends, so a drain is timed to the last job's end."""

    def handle(self) -> None:
        record.write(self.n)
        time.sleep(0.05)
        record.write(-1 - self.n)


# -- scripts/bench --workflows (bench/workflows.py): the same no-op job with one feature each ----
class Sealed(Tick):
    """Its payload encrypted with $FARM_KEY."""

    encrypted = True


class Unique(Tick):
    """A unique job: a lock taken at dispatch and freed at its end."""

    unique_for = 600

    def unique_id(self) -> str:
        return str(self.n)


class Limited(Tick):
    """Through one middleware that goes to the store on each start (a limit never reached)."""

    middleware = [farm.RateLimited("bench", per_minute=10**9)] if hasattr(farm, "RateLimited") else []
