"""Dramatiq 2.2 on RabbitMQ or Redis: the `dramatiq` CLI (processes x 8 threads), `actor.send`."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Sequence
import harness

DRAMATIQ = str(Path(sys.executable).parent / "dramatiq")
URLS = {"amqp": os.environ.get("FARM_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        # a Redis database of its own, as RQ's (bench/systems/rq_sys.py)
        "redis": os.environ.get("FARM_BENCH_DRAMATIQ_REDIS", "redis://127.0.0.1:6379/11")}


class DramatiqSystem:
    name = "dramatiq"
    how = ("dramatiq dramatiq_app --processes N --threads 8 --queues Q (one process per worker, "
           "8 threads each = its default), RabbitmqBroker defaults otherwise")

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend not in URLS:
            raise SystemExit(f"dramatiq: no backend {backend!r} here (only {', '.join(URLS)})")
        self.backend = backend
        if backend == "redis":
            self.how = self.how.replace("RabbitmqBroker", "RedisBroker")
        self.queue = "dramatiq_" + uuid.uuid4().hex[:8]
        self.env = harness.worker_env(out, BENCH_QUEUE=self.queue, BENCH_AMQP_URL=URLS[backend])
        import dramatiq_app

        self.mod = dramatiq_app
        self.kinds = {"tick": dramatiq_app.tick, "stamp": dramatiq_app.stamp}

    def reset(self) -> None:
        b = self.mod.broker
        if self.backend == "redis":
            b.declare_queue(self.queue)
        else:
            b.declare_queue(self.queue, ensure=True)
        b.flush(self.queue)                     # purges Q, Q.DQ and Q.XQ

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [[DRAMATIQ, "dramatiq_app", "--processes", str(workers), "--threads", "8",
                 "--queues", self.queue]]

    def dispatch(self, kind: str, n: int) -> None:
        self.kinds[kind].send(n)

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        # Dramatiq has no bulk enqueue. Its documented way to send many messages is a group:
        # group(...).run() (no completion callbacks) calls broker.enqueue once per message,
        # i.e. one basic_publish each on the broker's thread-local channel.
        from dramatiq import group

        actor = self.kinds[kind]
        group(actor.message(n) for n in ns).run()

    def close(self) -> None:
        from dramatiq.common import dq_name, xq_name

        b = self.mod.broker
        if self.backend == "redis":
            b.flush_all()                       # its database is the run's own
            b.close()
            return
        ch = b.channel
        for q in (self.queue, dq_name(self.queue), xq_name(self.queue)):
            ch.queue_delete(q)
        b.close()


def make(backend: str, tmp: Path, out: Path) -> DramatiqSystem:
    return DramatiqSystem(backend, tmp, out)
