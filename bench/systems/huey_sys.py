"""Huey 3.5 on SQLite: `huey_consumer huey_app.huey -k process -w N`, `tick(n)` / `tick.map(ns)`."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Sequence
import harness

CONSUMER = str(Path(sys.executable).parent / "huey_consumer")


class Huey:
    name = "huey"
    how = ("huey_consumer huey_app.huey -k process -w N (SqliteHuey, one consumer whose pool has "
           "N worker processes), defaults otherwise")

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend != "sqlite":
            raise ValueError(f"huey is benchmarked on sqlite only, not {backend!r}")
        self.backend = backend
        self.db = tmp / "huey.db"
        queue = "q" + uuid.uuid4().hex[:8]
        self.env = harness.worker_env(out, BENCH_QUEUE=queue, HUEY_DB=str(self.db))
        import huey_app

        self.app = huey_app
        self.tasks = {"tick": huey_app.tick, "stamp": huey_app.stamp}

    def reset(self) -> None:
        self.app.huey.storage.flush_queue()

    def worker_commands(self, workers: int) -> list[list[str]]:
        # Huey's default worker type is a thread; `-k process` gives one OS process per worker
        # (plus the consumer's own process and its scheduler process).
        return [[CONSUMER, "huey_app.huey", "-k", "process", "-w", str(workers)]]

    def dispatch(self, kind: str, n: int) -> None:
        self.tasks[kind](n)                              # calling a task enqueues it

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        # Huey has no bulk enqueue: TaskWrapper.map(), its documented "enqueue many" call, is a
        # loop of single enqueues (one INSERT transaction each), and the storage has no
        # enqueue_many. So this is the same work as looping over dispatch().
        self.tasks[kind].map(ns)

    def close(self) -> None:
        self.app.huey.storage.flush_all()
        self.app.huey.storage.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db}{suffix}").unlink(missing_ok=True)


def make(backend: str, tmp: Path, out: Path) -> Huey:
    return Huey(backend, tmp, out)
