"""Batches: many jobs dispatched together, with callbacks when they have all finished.

Each job of a batch carries `"batch": "<id>"` in its document, and is recorded in the store
as a member when the batch is made (or grows). When one finishes (succeeds, or finally fails)
its worker counts it in the store with `batch_job_finished`, atomic and once per member (a
document that merely names a batch counts for nothing), and then pushes the callbacks that are due: `catch` at the first
final failure, `then` when every job succeeded, `finally_` when every job has finished.
Each callback's push is preceded by `fire_batch` (a conditional update of the batch record),
so it is pushed once however many workers see the batch finish, and however late a retried
job of the batch finishes. A job of a cancelled batch that has not started
is skipped: acked without running, and counted as processed (not failed), so the batch still
finishes and `finally_` runs; `then` never runs for a cancelled batch.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, Callable, Iterator, Sequence

from . import app, payload
from .drivers.base import Outgoing
from .errors import FarmError, SerializationError
from .jobs import Job

CLAIM_TTL = 86400.0           # seconds an add's claim is kept (only a crashed job's rerun meets it)
FIRE_TTL = 7 * 86400.0        # redis: a callback's claim, until its lasting mark is surely set
_MEMORY: dict[str, Any] = {}  # connection -> MemoryBatches, for the sync and async drivers


def store_of(queue: Any) -> Any:
    """Where a connection's batches live: its `store:`, the queue itself (database, redis), or
    this process's memory (sync, async)."""
    store = getattr(queue, "store", None)
    if store is not None:
        return store
    if hasattr(queue, "batch_job_finished"):
        return queue
    if type(queue).__name__ in ("SyncQueue", "AsyncQueue"):
        from .drivers.batchstore import MemoryBatches

        return _MEMORY.setdefault(queue.name, MemoryBatches())
    raise FarmError(f"connection {queue.name!r} has no store for batches and chains: "
                    "add `store: <a database connection>` to it")


def _docs(jobs: Sequence[Job], batch_id: str | None, queue: str | None,
          ids_from: str | None = None) -> tuple[list[Outgoing], str | None]:
    """The jobs' documents (tagged with the batch), checked before any is written. With
    `ids_from`, their ids derive from it (the same each time), else they are random."""
    from .dispatch import _outgoing

    out: list[Outgoing] = []
    conn: str | None = None
    for n, job in enumerate(jobs):
        o, c = _outgoing(job, queue, None, None, None, None, None)
        conn = conn or c
        if batch_id is not None:
            doc = payload.parse(o.body)
            doc["batch"] = batch_id
            if ids_from is not None:
                doc["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"farm:{ids_from}:{n}"))
            o = Outgoing(id=doc["id"], queue=o.queue, body=payload.dumps(doc), available_at=o.available_at)
        out.append(o)
    return out, conn


def _callback(job: Job, queue: str | None = None) -> dict[str, Any]:
    """A callback's document as dispatch() makes it: checked, its data sealed when encrypted."""
    from .dispatch import _outgoing

    return payload.parse(_outgoing(job, queue, None, None, None, None, None)[0].body)


class Batch:
    """`farm.batch([...], name=...)`: `.then(job)`, `.catch(job)`, `.finally_(job)`, `.dispatch()`.

    `.id` is known before dispatch, so a callback may be given it as data."""

    def __init__(self, jobs: Sequence[Job], name: str | None = None) -> None:
        from .dispatch import new_id

        self.id = new_id()
        self.jobs = list(jobs)
        self.name = name
        self.callbacks: dict[str, Job] = {}

    def then(self, job: Job) -> "Batch":
        self.callbacks["then"] = job
        return self

    def catch(self, job: Job) -> "Batch":
        self.callbacks["catch"] = job
        return self

    def finally_(self, job: Job) -> "Batch":
        self.callbacks["finally"] = job
        return self

    def dispatch(self, *, queue: str | None = None, connection: str | None = None) -> str:
        """Record the batch in the store, then push its jobs; returns the batch id. `queue`
        applies to the jobs and to the callbacks (as Laravel's onQueue does).

        The record comes first, so no job can finish before its batch exists; a push that
        fails raises with the record left (its batch never finishes: cancel it)."""
        if self.name is not None and (not isinstance(self.name, str) or len(self.name) > 191):
            raise SerializationError("a batch's name must be a string of at most 191 characters")
        items, own = _docs(self.jobs, self.id, queue)
        callbacks = {which: _callback(job, queue) for which, job in self.callbacks.items()}
        q = app.queue(connection or own)
        store = store_of(q)
        now = time.time()
        store.add_batch({"id": self.id, "name": self.name, "jobs": [o.id for o in items], "callbacks": callbacks,
                         "created_at": now})
        if not items:                   # nothing to wait for: finished as it is made
            _fire(q, store, store.batch(self.id), None)
        from .dispatch import CHUNK

        for start in range(0, len(items), CHUNK):
            q.push(items[start:start + CHUNK])
        return self.id


def batch(jobs: Sequence[Job], name: str | None = None) -> Batch:
    """A batch of jobs; add callbacks, then `.dispatch()` it."""
    return Batch(jobs, name)


class BatchRef:
    """A running job's batch (`self.batch`): its `.id`, and `.add([...])` to grow it."""

    def __init__(self, batch_id: str, queue: Any, job_id: str, log: Any = None) -> None:
        self.id = batch_id
        self._queue = queue
        self._job_id = job_id
        self._log = log
        self._adds = 0

    def add(self, jobs: Sequence[Job]) -> list[str]:
        """Add jobs to this batch (it cannot finish before they do); their ids.

        Once per call (the n-th `add` of a job id): a job run again after its worker died does
        not add them twice. On redis the rerun finishes the add (pushing what was not pushed)
        and returns the same ids; elsewhere it returns [] (and logs `batch.add_skipped`)."""
        self._adds += 1
        name = f"batchadd:{self._job_id}:{self._adds}"
        items, _ = _docs(jobs, self.id, None, ids_from=f"{self.id}:{name}")
        if not items:
            return []
        if not push_once(self._queue, store_of(self._queue), name, items, grow=self.id):
            from .log import Log

            (self._log or Log()).warning("batch.add_skipped", id=self._job_id, batch=self.id, add=self._adds,
                                         jobs=len(items), detail="made when this job ran before: not added again")
            return []
        return [o.id for o in items]

    def status(self) -> dict[str, Any] | None:
        return status(store_of(self._queue).batch(self.id))

    def __repr__(self) -> str:
        return f"BatchRef({self.id!r})"


def push_once(queue: Any, store: Any, name: str, items: list[Outgoing], grow: str | None = None) -> bool:
    """Push `items` unless claim `name` was taken (growing batch `grow` by them first); False
    when it was. On the database driver claim, growth and jobs are one transaction; on redis
    one job's claim and push are one script (an add: an idempotent growth, then each job so);
    else the claim comes first, so a worker killed before the push loses the push."""
    expires = time.time() + CLAIM_TTL
    if store is queue and hasattr(queue, "claim_and_push"):
        done = queue.claim_and_push(name, expires, items, grow)
        if done is not None:            # redis: None when it cannot be one step
            return bool(done)
    if not store.claim(name, expires):
        return False
    grown = False
    ids = [o.id for o in items]
    try:
        if grow is not None:
            store.grow_batch(grow, ids)     # first: the batch must not finish in between
            grown = True
        queue.push(items)
    except BaseException:
        if grown:
            store.shrink_batch(grow, ids)
        store.unclaim(name)
        raise
    return True


# -- in the worker (farm/worker/runner.py calls these for documents with a "batch" key) --------
def skipped(runner: Any, attempt: Any) -> bool:
    """Before a batch job starts: give it its `self.batch`; True if its batch is cancelled, in
    which case it has been counted and acked without running."""
    doc, r = attempt.doc, attempt.reserved
    bid = doc.get("batch")
    if not isinstance(bid, str):
        return False
    attempt.job._farm_batch = BatchRef(bid, runner.queue, r.id, runner.log)
    store = store_of(runner.queue)
    found = store.batch(bid)
    if found is None or found["cancelled_at"] is None:
        return False
    _count(runner, store, bid, r.id, False)
    runner.queue.ack(r)
    runner.log.info("job.skipped", id=r.id, job=doc["job"], queue=r.queue, batch=bid,
                    detail="its batch is cancelled")
    if "unique" in doc:                 # it will never run: its unique lock goes now
        from . import unique

        unique.release(getattr(runner, "store", None), unique.held(doc), runner.log)
    return True


def finished(runner: Any, doc: dict[str, Any], job_id: str, failed: bool) -> None:
    """A batch job succeeded (before its ack) or finally failed: count it, fire what is due."""
    bid = doc.get("batch")
    if isinstance(bid, str):
        _count(runner, store_of(runner.queue), bid, job_id, failed)


def unrunnable(runner: Any, reserved: Any) -> None:
    """A job failed without running (its document names no job we run): if it belongs to a
    batch, count it as failed, so the batch still finishes. Only on that failure path."""
    try:
        doc = json.loads(reserved.body)
    except (TypeError, ValueError, RecursionError):
        return
    bid = doc.get("batch") if isinstance(doc, dict) else None
    if isinstance(bid, str) and 0 < len(bid) <= payload.MAX_ID:
        _count(runner, store_of(runner.queue), bid, reserved.id, True)


def _count(runner: Any, store: Any, bid: str, job_id: str, failed: bool) -> None:
    found = store.batch_job_finished(bid, job_id, failed)
    if found is None:
        runner.log.warning("batch.unknown", id=job_id, batch=bid, detail="no such batch in the store (pruned?)")
        return
    _fire(runner.queue, store, found, runner.log)


def _fire(queue: Any, store: Any, b: dict[str, Any] | None, log: Any) -> None:
    """Push each callback that is due, once (its fired mark in the batch record decides who)."""
    if b is None:
        return
    due = []
    if b["failed"]:
        due.append("catch")
    if b["finished_at"] is not None:
        if not b["failed"] and b["cancelled_at"] is None:
            due.append("then")
        due.append("finally")
    for which in due:
        doc = b["callbacks"].get(which)
        if not doc:
            continue
        items = [Outgoing(id=doc["id"], queue=doc.get("queue") or "default", body=payload.dumps(doc),
                          available_at=time.time())]
        if store is queue and hasattr(queue, "fire_and_push"):     # database: one transaction
            if not queue.fire_and_push(b["id"], which, items):
                continue
        elif store is queue and hasattr(queue, "batch_fired"):     # redis: claim and push, one script
            if queue.batch_fired(b["id"], which):
                continue
            pushed = queue.claim_and_push(f"fire:{b['id']}:{which}", time.time() + FIRE_TTL, items)
            store.fire_batch(b["id"], which)    # the lasting mark (the claim expires)
            if not pushed:
                continue
        elif not store.fire_batch(b["id"], which):
            continue
        else:
            try:
                queue.push(items)
            except BaseException:
                store.unfire_batch(b["id"], which)
                raise
        if log is not None:
            log.info("batch.callback", batch=b["id"], callback=which, id=doc["id"], job=doc["job"])


# -- reading and managing batches ---------------------------------------------------------
def status(b: dict[str, Any] | None) -> dict[str, Any] | None:
    """The public figures of a batch record (DESIGN "Wave-2 fine points"); times in ISO 8601
    UTC, as `job_status` and `failed --json` show them."""
    from .operations import _iso

    if b is None:
        return None
    total, processed = b["total"], b["processed"]
    return {"id": b["id"], "name": b["name"], "total": total, "pending": max(0, total - processed),
            "processed": processed, "failed": b["failed"],
            "progress": round(100.0 * processed / total, 2) if total else 100.0,
            "created_at": _iso(b["created_at"]), "finished_at": _iso(b["finished_at"]),
            "cancelled": b["cancelled_at"] is not None}


Skip = Callable[[str, Exception], None]     # told of a connection whose store did not answer


def _stores(connection: str | None = None) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Each connection's batch store once, as (name, opener), the default connection first
    (amqp without `store:` has none). Nothing is opened here: a caller asks one at a time."""
    m = app.manifest()
    names = [m.connection(connection).name] if connection else \
        [m.default] + [n for n in m.connections if n != m.default]
    seen: set[str] = set()
    for name in names:
        c = m.connection(name)
        if c.driver == "amqp" and not c.store:
            continue
        key = c.store or name
        if key in seen:
            continue
        seen.add(key)
        yield name, (lambda c=c, name=name: app.queue(c.store) if c.store else store_of(app.queue(name)))


def _ask(connection: str | None, ask: Callable[[Any], Any], on_skip: Skip | None,
         enough: Callable[[Any], bool] = lambda _: False) -> list[Any]:
    """`ask` each store in turn (stopping once `enough` of an answer); a store that cannot be
    reached is skipped (and `on_skip` told), and the first error raised only if none answered."""
    answers: list[Any] = []
    errors: list[tuple[str, FarmError]] = []
    for name, opener in _stores(connection):
        try:
            answer = ask(opener())
        except FarmError as e:
            errors.append((name, e))
            continue
        answers.append(answer)
        if enough(answer):
            break
    if errors and not answers:
        raise errors[0][1]
    for name, e in errors:
        if on_skip is not None:
            on_skip(name, e)
    return answers


def batch_status(batch_id: str, connection: str | None = None, on_skip: Skip | None = None) -> dict[str, Any] | None:
    """`{"id", "name", "total", "pending", "processed", "failed", "progress", "created_at",
    "finished_at", "cancelled"}`, or None for an unknown id."""
    found = [b for b in _ask(connection, lambda s: s.batch(batch_id), on_skip, lambda b: b is not None) if b]
    return status(found[0]) if found else None


def batch_cancel(batch_id: str, connection: str | None = None, on_skip: Skip | None = None) -> bool:
    """Cancel a batch: its jobs not yet started are skipped. False for an unknown id."""
    return any(_ask(connection, lambda s: s.cancel_batch(batch_id), on_skip, bool))


def recent_batches(limit: int = 50, connection: str | None = None,
                   on_skip: Skip | None = None) -> list[dict[str, Any]]:
    """The most recent batches of every store that answers, newest first."""
    found = [b for listed in _ask(connection, lambda s: s.batches(limit), on_skip) for b in listed]
    found.sort(key=lambda b: -b["created_at"])
    return [status(b) for b in found[:limit]]    # type: ignore[misc]


def prune_batches(hours: float, connection: str | None = None, on_skip: Skip | None = None) -> int:
    """Forget batches that finished more than `hours` ago; how many."""
    before = time.time() - hours * 3600
    return sum(_ask(connection, lambda s: s.prune_batches(before), on_skip))


def run_inline(queue: Any, doc: dict[str, Any], job: Job, job_id: str) -> None:
    """The sync driver's path for a document with a "chain" or "batch" key: the same steps a
    worker takes (skip when cancelled, count, push the next link), in the dispatching process."""
    from types import SimpleNamespace

    from .chains import succeeded
    from .drivers.base import Reserved
    from .log import Log
    from .worker.runner import run_inline as run

    runner = SimpleNamespace(queue=queue, log=Log(level="warning"))
    attempt = SimpleNamespace(doc=doc, job=job, reserved=Reserved(job_id, doc.get("queue") or "default", "", 1))
    if "batch" in doc and skipped(runner, attempt):
        return
    try:
        run(job, getattr(queue, "name", None))
    except Exception:
        finished(runner, doc, job_id, True)
        raise
    if getattr(job, "_farm_outcome", None) is not None:
        return                          # released or held back: neither counted nor chained on
    finished(runner, doc, job_id, False)
    succeeded(runner, doc)
