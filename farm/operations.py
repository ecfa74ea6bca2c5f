"""Operations on a running farm: look a job up by id, cancel one, pause and resume a queue.

`farm.job_status(id)`, `farm.cancel(id)`, `farm.pause(q)`, `farm.resume(q)`, `farm.paused()`
(and `farmctl job / cancel / pause / resume`, `status`). A job is looked for on every
connection of the manifest (or the one named): in its queue (database and redis drivers),
among the failed jobs, and among the jobs kept as done (`retention`). RabbitMQ cannot find a
message by id, so on an amqp connection a job is known only once a worker runs it (from the
workers' heartbeats), once it failed, or once it is done with a retention; it cannot be
cancelled there.
"""
from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass
from typing import Any

from . import app
from .errors import FarmError, UsageError

PAUSE = "pause:"       # a stamp per paused queue in every store: `pause:<queue>` -> when


def job_status(job_id: str, connection: str | None = None) -> dict[str, Any] | None:
    """`{"id", "state", "queue", "attempts", "worker", "connection", "job", ...}`, `state` one of
    ready, delayed, reserved, failed, done; `worker` the id (as `status --json` shows it) of
    the worker holding a reserved job. None when no connection knows the id."""
    for name in _connections(connection):
        found = _status_on(name, job_id)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class Cancelled:
    """What `cancel` did, and why not when it did not."""

    ok: bool
    reason: str = ""


def cancel(job_id: str, connection: str | None = None) -> bool:
    """Remove a job that no worker holds (ready, delayed or waiting for its retry): True. False
    for a job a worker holds (started, or claimed to start next), one that has finished, an
    unknown id, or a job on RabbitMQ (which cannot take a message out of a queue by id)."""
    return cancel_job(job_id, connection).ok


def cancel_job(job_id: str, connection: str | None = None) -> Cancelled:
    """`cancel`, saying why it refused."""
    amqp = []
    for name in _connections(connection):
        q = app.queue(name)
        remove = getattr(q, "cancel", None)
        if remove is None:
            if app.manifest().connections[name].driver == "amqp":
                amqp.append(name)
            continue
        result = remove(job_id)
        if result is True:
            return Cancelled(True)
        if result is False:
            return Cancelled(False, f"job {job_id} has started: a worker holds it (connection {name!r})")
    status = job_status(job_id, connection)
    if status is not None:
        return Cancelled(False, f"job {job_id} is {status['state']}" + (
            f" (worker {status['worker']})" if status.get("worker") else "") + ": only a job no worker holds is cancelled")
    if amqp:
        return Cancelled(False, f"no job with id {job_id} found; connection(s) {', '.join(map(repr, amqp))} "
                         "use RabbitMQ, which cannot take a message out of a queue by id")
    return Cancelled(False, f"no job with id {job_id}")


def pause(queue: str, connection: str | None = None) -> None:
    """Every worker stops taking jobs from `queue` within a second (running ones finish); the
    stamp goes to every store of the manifest, or to `connection`'s."""
    _check_queue(queue)
    now = time.time()
    for store in _stores(connection):
        store.set_stamp(PAUSE + queue, now)


def resume(queue: str, connection: str | None = None) -> bool:
    """Workers take from `queue` again within a second; False if it was not paused."""
    _check_queue(queue)
    was = queue in paused(connection)
    for store in _stores(connection):
        store.delete_stamp(PAUSE + queue)
    return was


def paused(connection: str | None = None) -> list[str]:
    """The queues paused in any store of the manifest (or in `connection`'s)."""
    names: set[str] = set()
    for store in _stores(connection):
        names.update(name[len(PAUSE):] for name in store.stamps(PAUSE))
    return sorted(names)


# -- looking a job up ------------------------------------------------------------------------
def _status_on(name: str, job_id: str) -> dict[str, Any] | None:
    q = app.queue(name)
    lookup = getattr(q, "lookup", None)
    store = _store_or_none(name)
    found = lookup(job_id) if lookup is not None else None
    if found is not None:
        worker = _worker_for(store, name, job_id, found.pop("token")) if found["state"] == "reserved" else None
        at = found.pop("available_at")
        return _doc(job_id, found["state"], name, found["queue"], found["job"], found["attempts"], worker,
                    available_at=_iso(at) if found["state"] == "delayed" else None)
    if store is None:
        return None
    if lookup is None:          # amqp: a job is seen in the queue only while a worker runs it
        running = _running(store, name, job_id)
        if running is not None:
            return _doc(job_id, "reserved", name, running.get("queue"), running.get("job"), None, running["id"])
    failed = [f for f in store.failed(ids=[job_id]) if f.connection == name]
    if failed:
        f = failed[0]
        doc = _parsed(f.body)
        return _doc(job_id, "failed", name, f.queue, doc.get("job"), doc.get("attempts"), None,
                    failed_at=_iso(f.failed_at), exception=(f.exception.splitlines() or [""])[0])
    holder = q if hasattr(q, "done_job") else store
    if not hasattr(holder, "done_job"):
        return None
    done = holder.done_job(job_id)      # expired ones are not read (workers' hearts prune them)
    if done is not None and done.get("connection", name) == name:
        return _doc(job_id, "done", name, done.get("queue"), done.get("job"), done.get("attempts"), None,
                    done_at=_iso(done.get("done_at")))
    return None


def _doc(job_id: str, state: str, connection: str, queue: str | None, job: str | None,
         attempts: int | None, worker: str | None, **extra: Any) -> dict[str, Any]:
    return {"id": job_id, "state": state, "queue": queue, "attempts": attempts, "worker": worker,
            "connection": connection, "job": job, **extra}


def _worker_for(store: Any, connection: str, job_id: str, token: str | None) -> str | None:
    """The id of the worker whose reservation token is `token` (its heartbeat says it), else
    of the worker whose heartbeat shows it running the job."""
    if store is None:
        return None
    workers = store.workers()
    for w in workers:
        if token and w.get("token") == token and w.get("connection") == connection:
            return w.get("id")
    running = _running(store, connection, job_id, workers)
    return running["id"] if running else None


def _running(store: Any, connection: str, job_id: str,
             workers: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The heartbeat of a live worker running the job (heartbeats come every 5 s)."""
    for w in workers if workers is not None else store.workers():
        if w.get("connection") == connection and job_id in (w.get("job_ids") or []):
            queues = w.get("queues") or [None]
            return {"id": w.get("id"), "job": w.get("job") if len(w.get("job_ids") or []) == 1 else None,
                    "queue": queues[0] if len(queues) == 1 else None}
    return None


# -- where -----------------------------------------------------------------------------------
def _connections(connection: str | None) -> list[str]:
    m = app.manifest()
    if connection is not None:
        return [m.connection(connection).name]
    return [name for name, c in m.connections.items() if c.driver not in ("sync", "async")]


def _store_or_none(name: str) -> Any:
    """The connection's store; None for an amqp connection without `store:`. A store that
    cannot be reached is an error, never skipped: a pause it missed would not hold."""
    c = app.manifest().connection(name)
    if c.driver == "amqp" and not c.store:
        return None
    return app.store(name)


def _stores(connection: str | None) -> list[Any]:
    """Each store once: the connection's, or every connection's."""
    names = _connections(connection) if connection is not None else [
        n for n, c in app.manifest().connections.items() if c.driver in ("database", "redis", "amqp")]
    seen: dict[int, Any] = {}
    for name in names:
        s = _store_or_none(name)
        if s is not None:
            seen.setdefault(id(s), s)
    if not seen:
        raise FarmError(f"no connection {'named ' + repr(connection) + ' ' if connection else ''}has a store "
                        "for the paused queues (a database or redis connection, or amqp with `store:`)")
    return list(seen.values())


def _check_queue(queue: str) -> None:
    if not isinstance(queue, str) or not queue.strip() or len(queue) > 150:
        raise UsageError(f"not a queue name: {queue!r}")


def _parsed(body: str) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(float(at), dt.timezone.utc).isoformat(timespec="seconds")
