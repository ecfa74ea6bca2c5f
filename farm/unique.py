"""Unique jobs: `unique_for` keeps a second copy of a job out while the first holds its lock.

The lock is a counter in the connection's store (farm/locks.py) named after the job and its
`unique_id()` (default: the whole payload as canonical JSON), taken with one atomic `incr`:
the first dispatch gets 1 and is stored, any other gets more and writes nothing. It expires
after `unique_for` seconds whatever happens, so a lost job or a dead worker cannot hold it
forever. The holder's expiry rides in the document (`"unique": {"key", "expires", "until"}`,
absent for a plain job), so the worker frees that lock only, never a later holder's: when
the job is done or has finally failed (`unique_until = "done"`), or starts ("processing").
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from . import app, payload
from .drivers.base import Outgoing
from .errors import FarmError
from .jobs import FunctionCall, Job, job_name
from .locks import MEMORY
from .log import Log

UNTIL = ("done", "processing")


def wanted(job: Job) -> float | None:
    """The job's `unique_for` (seconds), or None for a plain job (the hot path: one read)."""
    seconds = job.option("unique_for") if isinstance(job, FunctionCall) else job.unique_for
    if seconds is None:
        return None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise FarmError(f"{job_name(job)}: unique_for must be a positive number of seconds, got {seconds!r}")
    return float(seconds)


def key_of(job: Job) -> str:
    """`unique:<job name>:<unique_id()>`; hashed when it would not fit a 191-character key."""
    name = job_name(job)
    own = getattr(job, "unique_id", None)
    if callable(own):
        uid = str(own())
    else:
        uid = json.dumps(job.payload(), default=payload._tag, sort_keys=True, separators=(",", ":"))
    key = f"unique:{name}:{uid}"
    if len(key) > 191:
        key = "unique:" + hashlib.sha256(f"{name}\0{uid}".encode()).hexdigest()
    return key


def store_for(connection: str | None) -> Any:
    """Where the connection's locks live: its store; this process for sync and async."""
    return _store(app.manifest().connection(connection))


def _store(conn: Any) -> Any:
    return MEMORY if conn.driver in ("sync", "async") else app.store(conn.name)


def take(job: Job, out: Outgoing, connection: str | None, seconds: float, store: Any = None) -> Taken | None:
    """Take the job's lock: the job to store, its document naming the lock; None if another
    copy holds it (then nothing may be written). `store`: where the lock is written, if not
    the connection's store (dispatch(after_commit=) writes it in the caller's transaction)."""
    until = job.option("unique_until") if isinstance(job, FunctionCall) else job.unique_until
    until = until or "done"
    if until not in UNTIL:
        raise FarmError(f"{job_name(job)}: unique_until must be 'done' or 'processing', got {until!r}")
    conn = app.manifest().connection(connection)
    store = store if store is not None else _store(conn)
    key = key_of(job)
    value, expires = store.incr(key, 1, seconds)
    if value != 1:
        return None
    extra = json.dumps({"key": key, "expires": expires, "until": until}, separators=(",", ":"))
    out = dataclasses.replace(out, body=out.body[:-1] + ',"unique":' + extra + "}")
    return Taken(out, store, key, expires, sync=conn.driver == "sync")


@dataclasses.dataclass(frozen=True)
class Taken:
    """A unique job whose lock this dispatch holds."""

    out: Outgoing
    store: Any
    key: str
    expires: float
    sync: bool = False      # the sync driver runs the job as it is pushed: then the lock goes

    def give_up(self) -> None:
        """Its push failed (or, sync driver, it has run): free the lock. A push that failed
        after all may have landed: then a copy can be stored beside it (see `failed`)."""
        try:
            self.store.drop(self.key, self.expires)
        except FarmError:
            pass

    def failed(self, error: BaseException) -> None:
        """Its push raised `error`: free the lock, unless the error says the job may be stored
        after all (DriverUnavailable's `unknown` names its id: a database reply lost with its
        connection). That lock is kept, so no second copy is stored beside a job that landed;
        it expires after unique_for."""
        if self.out.id not in (getattr(error, "unknown", None) or ()):
            self.give_up()


def dispatch(job: Job, out: Outgoing, connection: str | None, seconds: float) -> str | None:
    """Take the job's lock and store it; None, with nothing written, if another copy holds it."""
    taken = take(job, out, connection, seconds)
    if taken is None:
        return None
    try:
        app.queue(connection).push([taken.out])
    except BaseException as e:
        taken.failed(e)
        raise
    if taken.sync:
        taken.give_up()                 # the sync driver has run it already
    return taken.out.id


def held(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The document's unique lock, if it names one properly (another producer's may not): a
    unique lock only, so a document cannot make a worker free a middleware's counter."""
    u = doc.get("unique")
    if (isinstance(u, dict) and isinstance(u.get("key"), str) and u["key"].startswith("unique:")
            and isinstance(u.get("expires"), (int, float)) and u.get("until") in UNTIL):
        return u
    return None


def release(store: Any, lock: dict[str, Any] | None, log: Log | None = None) -> None:
    """Free the job's own lock (done, failed for good, or started under "processing"). A store
    that cannot be reached leaves it to expire after `unique_for`."""
    if lock is None or lock.get("freed"):
        return
    lock["freed"] = True
    try:
        (store if store is not None else MEMORY).drop(lock["key"], float(lock["expires"]))
    except FarmError as e:
        (log or Log()).warning("unique.not_freed", key=lock["key"], error=str(e),
                               detail="it expires after unique_for")



# -- after_commit: a lock taken for a job that joins the caller's transaction ------------------
