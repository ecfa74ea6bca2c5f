"""RQ 2.12 on Redis: one `rq worker` (default rq.Worker, a forked work horse per job) per worker,
`queue.enqueue(tick, n)` and `queue.enqueue_many([Queue.prepare_data(tick, (n,)), ...])`."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Sequence

from redis import Redis
from rq import Queue

import harness
import rq_jobs

RQ = str(Path(sys.executable).parent / "rq")
# A Redis database of its own: close() flushes it, so nothing else may live there.
URL = os.environ.get("RQ_BENCH_URL", "redis://127.0.0.1:6379/9")


class RQSystem:
    name = "rq"
    how = "rq worker --url redis://127.0.0.1:6379/9 Q, one process per worker (default rq.Worker: forks a work horse per job), defaults otherwise"

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend != "redis":
            raise ValueError(f"rq is benchmarked on redis only, not {backend!r}")
        self.backend = backend
        self.queue_name = "q" + uuid.uuid4().hex[:8]
        self.env = harness.worker_env(out)
        self.conn = Redis.from_url(URL)
        self.queue = Queue(self.queue_name, connection=self.conn)
        self.funcs = {"tick": rq_jobs.tick, "stamp": rq_jobs.stamp}

    def reset(self) -> None:
        self.queue.empty()

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [[RQ, "worker", "--url", URL, self.queue_name] for _ in range(workers)]

    def dispatch(self, kind: str, n: int) -> None:
        self.queue.enqueue(self.funcs[kind], n)        # result_ttl etc. left at RQ's defaults

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        f = self.funcs[kind]
        self.queue.enqueue_many([Queue.prepare_data(f, (n,)) for n in ns])   # one pipeline

    def close(self) -> None:
        self.conn.flushdb()          # the queue, jobs, results, registries and worker keys of this run
        self.conn.close()


def make(backend: str, tmp: Path, out: Path) -> RQSystem:
    return RQSystem(backend, tmp, out)
