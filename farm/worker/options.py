"""Worker options: one frozen object merged from built-in defaults, the pipeline and the flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .. import queuespec
from ..errors import UsageError
from ..manifest import Manifest

DEFAULT_TRIES = 1
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class WorkerOptions:
    connection: str
    queues: tuple[str, ...] = ("default",)
    weights: tuple[int, ...] = ()  # one per queue: a weighted worker (farm/worker/weights.py); (): strict order
    pipeline: str | None = None
    max_jobs: int = 0              # 0: no limit
    max_time: float = 0            # seconds; 0: no limit
    stop_when_empty: bool = False
    once: bool = False
    sleep: float = 3.0
    timeout: float = DEFAULT_TIMEOUT
    tries: int = DEFAULT_TRIES
    backoff: tuple[float, ...] = (0.0,)
    memory: int = 128              # MB of RSS, worker and children; 0: no limit
    rest: float = 0.0
    prefetch: int | None = None    # None: adapt to job length
    concurrency: int = 1           # jobs run at once, on threads (1: in the worker's own thread)
    retry_after: float = 90.0
    job_limit: float = 0           # a pipeline's stop window less a margin: no job runs longer; 0: none
    retention: float = 0           # the pipeline's `retention:`: seconds a finished job is kept as done

    @property
    def prefetch_limit(self) -> int:
        return self.prefetch or 100

    @property
    def queue_flag(self) -> str:
        """`--queue` as written: `a,b`, or `a:6,b:3` for a weighted worker."""
        return queuespec.flag(self.queues, self.weights)


def merge(manifest: Manifest, flags: dict[str, Any]) -> WorkerOptions:
    """Built-in defaults < the pipeline's values < the flags given on the command line."""
    values: dict[str, Any] = {}
    pipeline_name = flags.get("pipeline")
    if pipeline_name:
        p = manifest.pipeline(pipeline_name)
        values.update(connection=p.connection, queues=p.queues, weights=p.weights, pipeline=p.name, max_jobs=p.max_jobs,
                      max_time=p.max_time, sleep=p.sleep, memory=p.memory, rest=p.rest, prefetch=p.prefetch,
                      concurrency=p.concurrency)
        if p.retention is not None:
            values["retention"] = p.retention
        for name in ("timeout", "tries", "backoff"):
            if getattr(p, name) is not None:
                values[name] = getattr(p, name)
    values.update({k: v for k, v in flags.items() if v is not None and k not in ("pipeline", "queues")})
    if flags.get("queues") is not None:          # --queue: (names, weights), weights () when strict
        values["queues"], values["weights"] = flags["queues"]
    values.setdefault("connection", manifest.default)
    conn = manifest.connection(values["connection"])
    if conn.driver == "sync":
        raise UsageError(f"connection {conn.name!r} uses the sync driver: its jobs run when they are "
                         "dispatched, so there is nothing for a worker to take")
    if conn.driver == "async":
        raise UsageError(f"connection {conn.name!r} uses the async driver: its jobs run on threads of the "
                         "process that dispatched them, so there is nothing for a worker to take")
    values["retry_after"] = conn.retry_after
    timeout = values.get("timeout")
    if conn.driver == "amqp" and timeout and timeout + 30 >= conn.consumer_timeout:
        raise UsageError(f"--timeout {timeout:g}: not below connection {conn.name!r}'s consumer_timeout of "
                         f"{conn.consumer_timeout:g} s less a 30 s margin (RabbitMQ would take the job back "
                         "while it runs)")
    if values.get("prefetch") is None and conn.prefetch is not None:
        values["prefetch"] = conn.prefetch
    fields = {f.name for f in dataclasses.fields(WorkerOptions)}
    return WorkerOptions(**{k: v for k, v in values.items() if k in fields})
