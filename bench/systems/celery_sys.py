"""Celery 5.7 on RabbitMQ or Redis: the `celery -A celery_app worker` CLI, prefork pool, `task.delay`."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path
from typing import Sequence
import harness

CELERY = str(Path(sys.executable).parent / "celery")
URLS = {"amqp": os.environ.get("FARM_BENCH_AMQP", "amqp://guest:guest@127.0.0.1:5672/%2F"),
        # a Redis database of its own, as RQ's (bench/systems/rq_sys.py)
        "redis": os.environ.get("FARM_BENCH_CELERY_REDIS", "redis://127.0.0.1:6379/10")}


class CelerySystem:
    name = "celery"
    how = ("celery -A celery_app worker --pool prefork --concurrency N -Q Q --loglevel WARNING "
           "(one pool child per worker), no result backend, defaults otherwise")

    def __init__(self, backend: str, tmp: Path, out: Path) -> None:
        if backend not in URLS:
            raise SystemExit(f"celery: no backend {backend!r} here (only {', '.join(URLS)})")
        self.backend = backend
        self.queue = "celery_" + uuid.uuid4().hex[:8]
        self.env = harness.worker_env(out, BENCH_QUEUE=self.queue, BENCH_AMQP_URL=URLS[backend])
        import celery_app

        self.mod = celery_app
        self.kinds = {"tick": celery_app.tick, "stamp": celery_app.stamp}

    def reset(self) -> None:
        # Declares the default queue (task_default_queue = self.queue) and purges it.
        self.mod.app.control.purge()

    def worker_commands(self, workers: int) -> list[list[str]]:
        return [[CELERY, "-A", "celery_app", "worker", "--pool", "prefork", "--concurrency", str(workers),
                 "-Q", self.queue, "--loglevel", "WARNING"]]

    def dispatch(self, kind: str, n: int) -> None:
        self.kinds[kind].delay(n)

    def dispatch_many(self, kind: str, ns: Sequence[int]) -> None:
        # Celery has no bulk publish. The documented way to send many tasks at once is a group:
        # group(...).apply_async() publishes each signature in turn over ONE producer (one
        # connection/channel acquired for the whole group, see canvas.group._apply_tasks).
        # It needs no result backend as long as the GroupResult is not waited on.
        from celery import group

        task = self.kinds[kind]
        group(task.s(n) for n in ns).apply_async()

    def close(self) -> None:
        app = self.mod.app
        with app.connection_for_write() as conn:
            ch = conn.default_channel
            ch.queue_delete(self.queue)
            ch.exchange_delete(self.queue)      # the direct exchange Celery declared for the queue
        app.pool.force_close_all()


def make(backend: str, tmp: Path, out: Path) -> CelerySystem:
    return CelerySystem(backend, tmp, out)
