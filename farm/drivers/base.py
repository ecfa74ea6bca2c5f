"""The driver interface: a Queue holds ready/delayed/reserved jobs, a Store holds the rest.

Drivers store the v1 document as given and never import job code.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence


@dataclass(frozen=True)
class Outgoing:
    id: str
    queue: str
    body: str             # the v1 JSON document
    available_at: float   # epoch seconds
    attempts: int = 0     # starts already made (a retried or re-pushed job may carry some)


@dataclass
class Reserved:
    id: str               # the job's uuid (the id dispatch returned)
    queue: str
    body: str | bytes     # the v1 document; bytes only when they are not UTF-8 (failed as such)
    attempts: int         # starts so far, this one included (written by `starting`)
    handle: Any = field(default=None, repr=False)   # the driver's own (row id, delivery tag)
    retain: float = 0     # seconds its ack keeps it as done (`retention`); 0: plain, forgotten


@dataclass(frozen=True)
class FailedJob:
    id: str
    connection: str
    queue: str
    body: str
    exception: str
    failed_at: float


class Queue(Protocol):
    name: str                  # the connection's name in the manifest
    supports_notify: bool      # reserve(wait=...) wakes as soon as a job is pushed

    def push(self, items: Sequence[Outgoing]) -> None: ...
    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]: ...
    def starting(self, job: Reserved) -> bool: ...                # about to run it: its start is written
                                                                   # (False: it must not run, see amqp)
    def renew(self, jobs: Sequence[Reserved]) -> None: ...          # heartbeat of held jobs
    def ack(self, job: Reserved) -> None: ...                      # done: delete
    def release(self, job: Reserved, delay: float, body: str) -> None: ...   # try again later
    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None: ...
                                   # unstarted, or held back by middleware: no attempt used
    def fail(self, job: Reserved, body: str, error: str) -> None: ...        # to the failed table
    def counts(self) -> dict[str, dict[str, int | None]]: ...      # queue -> ready/delayed/reserved/failed
    def clear(self, queue: str) -> int: ...                        # drop ready jobs
    def close(self) -> None: ...


class Store(Protocol):
    """Failed jobs, stamps and worker heartbeats; the database driver is one."""

    def add_failed(self, entry: FailedJob) -> None: ...
    def failed(self, ids: Sequence[str] | None = None, queue: str | None = None,
               limit: int | None = None) -> list[FailedJob]: ...
    def count_failed(self, queue: str | None = None) -> int: ...
    def forget(self, ids: Sequence[str]) -> int: ...
    def prune_failed(self, before: float) -> int: ...
    def set_stamp(self, name: str, value: float) -> None: ...
    def stamp(self, name: str) -> float | None: ...
    def delete_stamp(self, name: str) -> None: ...
    def stamps(self, prefix: str) -> dict[str, float]: ...
    def claim(self, name: str, expires: float) -> bool: ...       # first caller wins (schedule ticks);
                                                                   # forgotten some time after `expires`
    def unclaim(self, name: str) -> None: ...                      # give a claim up (its work failed)
    def beat(self, worker: dict[str, Any]) -> None: ...
    def workers(self) -> list[dict[str, Any]]: ...
    def forget_worker(self, worker_id: str) -> None: ...
    def prune_workers(self, before: float) -> int: ...            # heartbeats older than `before`
    # job counts (farm/counts.py): rows {"minute", "queue", "job", "outcome", "n", "seconds",
    # "buckets": {le: n}} added to per-minute rows and to totals since the table was made
    def add_counts(self, rows: Sequence[dict[str, Any]]) -> None: ...
    def counts_by_minute(self, since: float) -> list[dict[str, Any]]: ...   # {"minute", "queue", "job", "outcome", "n"}
    def job_totals(self) -> list[dict[str, Any]]: ...   # {"queue", "job", "outcome", "n", "seconds", "buckets"}
    def prune_counts(self, before: float) -> int: ...   # per-minute rows older than `before`
    # jobs kept as done (`retention`); the database and redis drivers keep their own, amqp the store's
    def record_done(self, job_id: str, info: dict[str, Any], until: float) -> None: ...
    def done_job(self, job_id: str) -> dict[str, Any] | None: ...
    def prune_done(self, before: float) -> int: ...
    # chains and batches (farm/batches.py; drivers/batchstore.py, redis_batches.py): a batch
    # record {"id", "name", "total", "processed", "failed", "callbacks", "created_at",
    # "finished_at", "cancelled_at"}; only a member (its id given at add_batch or grow_batch)
    # counts, once; a callback fires once
    def add_batch(self, doc: dict[str, Any]) -> None: ...           # doc["jobs"]: the member ids
    def grow_batch(self, batch_id: str, job_ids: Sequence[str]) -> None: ...
    def shrink_batch(self, batch_id: str, job_ids: Sequence[str]) -> None: ...  # undoes grow_batch
    def batch_job_finished(self, batch_id: str, job_id: str, failed: bool) -> dict[str, Any] | None: ...
    def fire_batch(self, batch_id: str, which: str) -> bool: ...     # which: then, catch, finally
    def unfire_batch(self, batch_id: str, which: str) -> None: ...
    def batch(self, batch_id: str) -> dict[str, Any] | None: ...
    def batches(self, limit: int = 50) -> list[dict[str, Any]]: ...  # newest first
    def cancel_batch(self, batch_id: str) -> bool: ...               # False: unknown id
    def prune_batches(self, before: float) -> int: ...               # finished before `before`
    # counters with an expiry (farm/locks.py): unique jobs and middleware
    def incr(self, name: str, by: int, ttl: float) -> tuple[int, float]: ...   # (value, expires_at)
    def drop(self, name: str, expires: float | None = None) -> bool: ...     # only its holder's with expires


def done_info(job: Reserved, connection: str, now: float) -> dict[str, Any]:
    """What `farm.job_status` says of a job kept as done (read from its document only for
    jobs with a retention, at their ack)."""
    import json

    try:
        doc = json.loads(job.body)
    except (TypeError, ValueError):
        doc = {}
    name = doc.get("job") if isinstance(doc, dict) else None
    return {"id": job.id, "connection": connection, "queue": job.queue, "job": name,
            "attempts": job.attempts, "done_at": now}
