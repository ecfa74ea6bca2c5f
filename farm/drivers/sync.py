"""The `sync` driver: a push runs the job at once, in the dispatching process (tests, debugging)."""
from __future__ import annotations

from typing import Sequence

from .. import app, payload, waker
from ..jobs import instantiate
from ..manifest import Connection
from ..worker.runner import run_inline
from .base import Outgoing, Reserved


class SyncQueue:
    supports_notify = False

    def __init__(self, conn: Connection) -> None:
        self.name = conn.name
        self.registry: payload.Registry | None = None

    def push(self, items: Sequence[Outgoing]) -> None:
        """Run each job now (delays are ignored); its exception reaches the dispatcher."""
        if self.registry is None:
            self.registry = payload.Registry(app.manifest().imports)
        for item in items:
            doc = payload.parse(item.body)
            job = instantiate(self.registry.resolve(doc["job"]), payload.decode_data(doc["data"]))
            job._farm_id, job._farm_attempts = item.id, 1
            if "chain" in doc or "batch" in doc:    # chains and batches (farm/batches.py)
                from ..batches import run_inline as run_workflow

                run_workflow(self, doc, job, item.id)
                continue
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
