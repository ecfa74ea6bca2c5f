"""The `sync` driver: a push runs the job at once, in the dispatching process (tests, debugging)."""
from __future__ import annotations

import threading
from collections import deque
from typing import Sequence

from .. import app, payload, waker
from ..jobs import instantiate
from ..manifest import Connection
from ..worker.runner import run_inline
from .base import Outgoing, Reserved


_LOCAL = threading.local()     # .pending: the pushes made by the jobs this thread is running


def _drain(pending: "deque[tuple[SyncQueue, Outgoing]]") -> None:
    """Run what is queued, in order; every job runs (as a queue would keep them), and the first
    exception is raised at the end."""
    first: BaseException | None = None
    while pending:
        queue, item = pending.popleft()
        try:
            queue._run(item)
        except BaseException as e:
            first = first or e
    if first is not None:
        raise first


class SyncQueue:
    supports_notify = False

    def __init__(self, conn: Connection) -> None:
        self.name = conn.name
        self.registry: payload.Registry | None = None

    def push(self, items: Sequence[Outgoing]) -> None:
        """Run each job now (delays are ignored); its exception reaches the dispatcher.

        A push made while a job runs on this thread (a chain's next link, a batch callback) is
        run after that job, from a queue, not inside it: a long chain does not recurse."""
        pending = getattr(_LOCAL, "pending", None)
        if pending is not None:
            pending.extend((self, item) for item in items)
            return
        _LOCAL.pending = pending = deque()
        try:
            for item in items:
                pending.append((self, item))
                _drain(pending)
        finally:
            _LOCAL.pending = None

    def _run(self, item: Outgoing) -> None:
        if self.registry is None:
            self.registry = payload.Registry(app.manifest().imports)
        doc = payload.parse(item.body)
        job = instantiate(self.registry.resolve(doc["job"]), payload.decode_data(doc["data"]))
        job._farm_id, job._farm_attempts = item.id, 1
        if "chain" in doc or "batch" in doc:    # chains and batches (farm/batches.py)
            from ..batches import run_inline as run_workflow

            run_workflow(self, doc, job, item.id)
            return
        run_inline(job, self.name)

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        """Nothing is ever queued: wait out `wait` (as every driver does), then say so."""
        waker.wait(wait)
        return []

    def starting(self, job: Reserved) -> bool:
        return True

    def renew(self, jobs: Sequence[Reserved]) -> None: ...
    def ack(self, job: Reserved) -> None: ...
    def release(self, job: Reserved, delay: float, body: str) -> None: ...
    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None: ...
    def fail(self, job: Reserved, body: str, error: str) -> None: ...

    def counts(self) -> dict[str, dict[str, int]]:
        return {}

    def clear(self, queue: str) -> int:
        return 0

    def close(self) -> None: ...
