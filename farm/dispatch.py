"""Turning job objects into stored v1 documents: dispatch, dispatch_many, dispatch_sync."""
from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any, Iterable

from . import app, payload, unique
from .drivers.base import Outgoing
from .errors import FarmError, PayloadError, SerializationError
from .jobs import OPTIONS, FunctionCall, Job, job_name


def dispatch(job: Job, *, queue: str | None = None, delay: Any = None, connection: str | None = None,
             tries: int | None = None, backoff: Any = None, timeout: float | None = None,
             after_commit: Any = None) -> str | None:
    """Store the job on its queue; return its id. Raises DriverUnavailable if it could not be
    stored: on a database connection only once the database stayed unreachable for
    $FARM_DISPATCH_RETRY_SECONDS, a dropped connection being retried under the same id first
    (drivers/dbretry.py); the message then says whether the job may be stored (`unknown`: its id).

    `after_commit`: an SQLAlchemy Connection or Session whose transaction the job joins
    (farm/txdispatch.py): written in it on a database connection, published at its commit
    on the others."""
    out, conn = _outgoing(job, queue, delay, connection, tries, backoff, timeout)
    seconds = unique.wanted(job)
    if after_commit is not None:
        from .txdispatch import enqueue

        return enqueue(after_commit, out, conn, job, seconds)
    if seconds is not None:            # unique_for: None (nothing written) for a duplicate
        return unique.dispatch(job, out, conn, seconds)
    app.queue(conn).push([out])
    return out.id


CHUNK = 1000     # jobs per round trip in dispatch_many: a transaction, or a confirmed batch


def dispatch_many(jobs: Iterable[Job], *, queue: str | None = None, delay: Any = None,
                  connection: str | None = None) -> list[str | None]:
    """Store many jobs, a chunk of CHUNK per round trip (a transaction on a database, a batch
    of publishes waited for once on RabbitMQ); every job is checked before any is written.

    Returns the ids in order (None for a unique job refused as a duplicate, as `dispatch`
    does). A chunk that fails raises, with the chunks before it stored: the exception's
    `stored` holds their ids (and, on a database whose connection dropped, `unknown` those of
    the chunk that may or may not be stored).
    """
    by_conn: dict[str | None, list[Outgoing]] = {}
    order: list[Outgoing | None] = []
    taken: dict[str, unique.Taken] = {}       # unique jobs whose locks this call holds
    now, stamp = time.time(), payload.utcnow_iso()
    checked = [(job, *_outgoing(job, queue, delay, connection, None, None, None, now, stamp), unique.wanted(job))
               for job in jobs]     # all of them, before any lock is taken
    try:
        for job, out, conn, seconds in checked:
            if seconds is not None:
                took = unique.take(job, out, conn, seconds)
                if took is not None:
                    taken[out.id] = took
                out = took.out if took is not None else None
            if out is not None:
                by_conn.setdefault(conn, []).append(out)
            order.append(out)
    except BaseException:           # nothing was written: the locks taken go too
        for took in taken.values():
            took.give_up()
        raise
    stored: list[str] = []
    try:
        for conn, items in by_conn.items():
            q = app.queue(conn)
            for start in range(0, len(items), CHUNK):
                chunk = items[start:start + CHUNK]
                q.push(chunk)
                stored.extend(o.id for o in chunk)
    except BaseException as e:
        done = set(stored)
        for job_id, took in taken.items():
            if job_id not in done:
                took.failed(e)      # kept if the chunk may be stored (`e.unknown`)
        if isinstance(e, FarmError):
            e.stored = stored       # type: ignore[attr-defined]
        raise
    for took in taken.values():
        if took.sync:
            took.give_up()          # the sync driver has run it already
    return [o.id if o is not None else None for o in order]


def dispatch_sync(job: Job) -> Any:
    """Run the job now, in this process; its exception (after `failed()`) propagates."""
    from .worker.runner import run_inline

    return run_inline(job)


def _outgoing(job: Job, queue: str | None, delay: Any, connection: str | None, tries: int | None,
              backoff: Any, timeout: float | None, now: float | None = None,
              stamp: str | None = None) -> tuple[Outgoing, str | None]:
    if not isinstance(job, Job):
        raise SerializationError(f"dispatch() takes a farm.Job, got {type(job).__name__}")
    own = options_of(job)
    doc = _document(job, own, queue, tries, backoff, timeout, None, stamp)
    try:
        payload.check_shape(doc)        # refuse here what a worker would fail (a bad queue, tries=-1)
    except PayloadError as e:
        raise SerializationError(f"{doc['job']}: {e}") from None
    if own["encrypted"]:                # encrypted = True: only `data` is sealed (farm/crypto.py)
        doc["data"] = payload.sealed_data(doc["data"], own["owner"])
    delay = delay if delay is not None else own["delay"]
    out = Outgoing(id=doc["id"], queue=doc["queue"], body=payload.serialize(doc, own["owner"]),
                   available_at=(now or time.time()) + delay_seconds(delay))
    return out, connection or own["connection"]


_NAMES: dict[Any, tuple[str, str]] = {}     # job class (or @farm.job function) -> (name, owner)


def options_of(job: Job) -> dict[str, Any]:
    """The job's own options as they are now: set on the instance (in `__init__`), else the
    class attribute; for `@farm.job`, the decorator's. Read at every dispatch, so a class
    attribute changed at run time (a test's monkeypatch) takes effect."""
    if isinstance(job, FunctionCall):
        key: Any = job.function
        get = job.function.options.get
        found = {name: get(name) for name in OPTIONS}
        until = False
    else:                               # plain attribute reads: the instance's, else the class's
        key = type(job)
        found = {"queue": job.queue, "connection": job.connection, "tries": job.tries,
                 "backoff": job.backoff, "timeout": job.timeout, "max_exceptions": job.max_exceptions,
                 "delay": job.delay, "retention": job.retention, "encrypted": job.encrypted}
        until = key.retry_until is not Job.retry_until
    names = _NAMES.get(key)
    if names is None:
        name = job_name(job)
        names = _NAMES[key] = (name, name.partition(":")[2] or name)
    found["name"], found["owner"], found["until"] = names[0], names[1], until
    return found


def build(job: Job, *, queue: str | None = None, tries: int | None = None, backoff: Any = None,
          timeout: float | None = None, job_id: str | None = None,
          dispatched_at: str | None = None) -> dict[str, Any]:
    """The v1 document for `job` (data not yet tagged). Precedence: dispatch-time options >
    the instance's attributes > the class's (the worker's flags and defaults come after)."""
    return _document(job, options_of(job), queue, tries, backoff, timeout, job_id, dispatched_at)


def _document(job: Job, own: dict[str, Any], queue: str | None, tries: int | None, backoff: Any,
              timeout: float | None, job_id: str | None, dispatched_at: str | None) -> dict[str, Any]:
    until = job.retry_until() if own["until"] else None
    if until is not None:
        if not isinstance(until, dt.datetime) or until.tzinfo is None:
            raise SerializationError(f"{own['name']}.retry_until() must return an aware datetime, got {until!r}")
        until = until.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    backoff = backoff if backoff is not None else own["backoff"]
    if isinstance(backoff, (int, float)):
        backoff = [backoff]
    doc = {
        "v": payload.VERSION,
        "id": job_id or new_id(),
        "job": own["name"],
        "data": job.payload(),
        "queue": queue or own["queue"] or "default",
        "attempts": 0,
        "tries": tries if tries is not None else own["tries"],
        "backoff": list(backoff) if backoff is not None else None,
        "timeout": timeout if timeout is not None else own["timeout"],
        "max_exceptions": own["max_exceptions"],
        "retry_until": until,
        "dispatched_at": dispatched_at or payload.utcnow_iso(),
    }
    if own["retention"] is not None:        # only then: a plain job's document is unchanged
        doc["retention"] = own["retention"]
    return doc


def new_id() -> str:
    """A random (version 4) UUID as text, at half the cost of str(uuid.uuid4())."""
    b = bytearray(os.urandom(16))
    b[6], b[8] = b[6] & 0x0F | 0x40, b[8] & 0x3F | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def delay_seconds(delay: Any) -> float:
    """Seconds from now for a delay given as seconds, a timedelta or an aware datetime."""
    if delay is None:
        return 0.0
    if isinstance(delay, dt.timedelta):
        return max(0.0, delay.total_seconds())
    if isinstance(delay, dt.datetime):
        if delay.tzinfo is None:
            raise FarmError("delay: a datetime must be timezone-aware (e.g. datetime.now(timezone.utc))")
        return max(0.0, (delay - dt.datetime.now(dt.timezone.utc)).total_seconds())
    if isinstance(delay, (int, float)) and not isinstance(delay, bool):
        return max(0.0, float(delay))
    raise FarmError(f"delay: expected seconds, a timedelta or an aware datetime, got {delay!r}")
