"""jobfarm's benchmark jobs: each records its start through `record.py`, as the peers' do."""
from __future__ import annotations

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
