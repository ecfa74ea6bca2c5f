"""Turning job objects into stored v1 documents: dispatch, dispatch_many, dispatch_sync."""
from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any, Iterable

from . import app, payload
from .drivers.base import Outgoing
from .errors import FarmError, PayloadError, SerializationError
from .jobs import FunctionCall, Job, job_name, option


def dispatch(job: Job, *, queue: str | None = None, delay: Any = None, connection: str | None = None,
             tries: int | None = None, backoff: Any = None, timeout: float | None = None) -> str | None:
    """Store the job on its queue; return its id. Raises DriverUnavailable if it was not stored."""
    out, conn = _outgoing(job, queue, delay, connection, tries, backoff, timeout)
    app.queue(conn).push([out])
    return out.id


def dispatch_many(jobs: Iterable[Job], *, queue: str | None = None, delay: Any = None,
                  connection: str | None = None) -> list[str]:
    """Store many jobs with one round trip per chunk; all are checked before any is written."""
    by_conn: dict[str | None, list[Outgoing]] = {}
    now, stamp = time.time(), payload.utcnow_iso()
    for job in jobs:
        out, conn = _outgoing(job, queue, delay, connection, None, None, None, now, stamp)
        by_conn.setdefault(conn, []).append(out)
    ids: list[str] = []
    for conn, items in by_conn.items():
        app.queue(conn).push(items)
        ids.extend(o.id for o in items)
    return ids


def dispatch_sync(job: Job) -> Any:
    """Run the job now, in this process; its exception (after `failed()`) propagates."""
    from .worker.runner import run_inline

    return run_inline(job)


def _outgoing(job: Job, queue: str | None, delay: Any, connection: str | None, tries: int | None,
              backoff: Any, timeout: float | None, now: float | None = None,
              stamp: str | None = None) -> tuple[Outgoing, str | None]:
    if not isinstance(job, Job):
        raise SerializationError(f"dispatch() takes a farm.Job, got {type(job).__name__}")
    doc = build(job, queue=queue, tries=tries, backoff=backoff, timeout=timeout, dispatched_at=stamp)
    try:
        payload.check_shape(doc)        # refuse here what a worker would fail (a bad queue, tries=-1)
    except PayloadError as e:
        raise SerializationError(f"{doc['job']}: {e}") from None
    own = _defaults(job)
    delay = delay if delay is not None else own["delay"]
    out = Outgoing(id=doc["id"], queue=doc["queue"], body=payload.serialize(doc, own["owner"]),
                   available_at=(now or time.time()) + delay_seconds(delay))
    return out, connection or own["connection"]


_DEFAULTS: dict[Any, dict[str, Any]] = {}


def _defaults(job: Job) -> dict[str, Any]:
    """A job type's own options, read once per class (or per @farm.job function)."""
    key = job.function if isinstance(job, FunctionCall) else type(job)
    found = _DEFAULTS.get(key)
    if found is None:
        name = job_name(job)
        backoff = option(job, "backoff")
        found = {name: option(job, name) for name in
                 ("queue", "tries", "timeout", "max_exceptions", "delay", "connection")}
        found.update(name=name, owner=name.partition(":")[2] or name,
                     backoff=[backoff] if isinstance(backoff, (int, float)) else backoff,
                     until=type(job).retry_until is not Job.retry_until)
        _DEFAULTS[key] = found
    return found


def build(job: Job, *, queue: str | None = None, tries: int | None = None, backoff: Any = None,
          timeout: float | None = None, job_id: str | None = None,
          dispatched_at: str | None = None) -> dict[str, Any]:
    """The v1 document for `job` (data not yet tagged); dispatch-time options beat the job's own."""
    own = _defaults(job)
    until = job.retry_until() if own["until"] else None
    if until is not None:
        if not isinstance(until, dt.datetime) or until.tzinfo is None:
            raise SerializationError(f"{own['name']}.retry_until() must return an aware datetime, got {until!r}")
        until = until.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    backoff = backoff if backoff is not None else own["backoff"]
    if isinstance(backoff, (int, float)):
        backoff = [backoff]
    return {
        "v": payload.VERSION,
        "id": job_id or str(uuid.uuid4()),
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
