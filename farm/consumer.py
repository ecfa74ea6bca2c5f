"""Consuming by hand: `farm.reserve()` for loops written without `farmctl work`.

The verbs of a beanstalkd-style queue (as the PHP simple-job-queue uses its own): reserve the
next job, delete it when done, release it to try again later, bury it aside. Buried jobs are
failed jobs (`farmctl failed`), and `farmctl retry` kicks them back.

A reservation is kept while the caller holds it: on a database a thread of this process
renews it every retry_after / 3 seconds (as a worker's does), on RabbitMQ the delivery stays
ours while the consuming connection lives. A process that dies holding one loses nothing:
the job is handed out again after retry_after (database) or at once (RabbitMQ).
"""
from __future__ import annotations

import json
import os
import threading
import time
import weakref
from typing import Any, Sequence

from . import app, payload
from .drivers.base import Reserved
from .errors import FarmError

RENEW_TICK = 0.25


def reserve(queues: str | Sequence[str] = "default", *, timeout: float = 0.0,
            connection: str | None = None) -> Reservation | None:
    """The next ready job of `queues` (a name or a list, in priority order), reserved for this
    process, or None once `timeout` seconds passed with none ready."""
    names = [queues] if isinstance(queues, str) else list(queues)
    if not names or not all(isinstance(q, str) and q for q in names):
        raise FarmError(f"reserve: expected a queue name or a list of them, got {queues!r}")
    conn = app.manifest().connection(connection)
    q = app.queue(conn.name)
    # RabbitMQ: the channel's prefetch follows the limit, so it must leave room for one more
    # delivery beside the ones this process holds; any beyond the first go straight back
    limit = 1 + _keeper().held_on(q) if conn.driver == "amqp" else 1
    got = q.reserve(names, limit, max(0.0, float(timeout)))
    if not got:
        return None
    if len(got) > 1:
        q.give_back(got[1:])
    starting = getattr(q, "starting", None)
    if starting is not None and not starting(got[0]):   # amqp: a stale delivery, handed out again
        return None
    return Reservation(q, conn.name, got[0])


class Reservation:
    """A reserved job: read its document, then `delete()`, `release(delay)` or `bury(reason)`.

    `attempts` counts the starts of the job, this one included (a release keeps the count).
    """

    def __init__(self, queue: Any, connection: str, reserved: Reserved) -> None:
        self._queue, self._reserved = queue, reserved
        self.connection = connection
        self.settled: str | None = None         # "deleted", "released" or "buried"
        self._doc: dict[str, Any] | None = None
        _keeper().hold(self)

    def __repr__(self) -> str:
        return f"<Reservation {self.id} queue={self.queue} attempts={self.attempts} {self.settled or 'held'}>"

    @property
    def id(self) -> str:
        return self._reserved.id

    @property
    def queue(self) -> str:
        return self._reserved.queue

    @property
    def attempts(self) -> int:
        return self._reserved.attempts

    @property
    def body(self) -> str | bytes:
        """The document as stored (bytes only when it is not UTF-8)."""
        return self._reserved.body

    @property
    def document(self) -> dict[str, Any]:
        """The v1 document; PayloadError when the body is not one (bury it)."""
        if self._doc is None:
            self._doc = payload.parse(self._reserved.body)
        return self._doc

    @property
    def job(self) -> str:
        """The job's name, `module:Qualname`."""
        return self.document["job"]

    @property
    def data(self) -> dict[str, Any]:
        """The payload, with datetime, date, UUID, Decimal and bytes values as themselves."""
        return payload.decode_data(self.document["data"])

    def delete(self) -> None:
        """Done: the job leaves the queue."""
        self._settle("deleted", lambda: self._queue.ack(self._reserved))

    def release(self, delay: float = 0) -> None:
        """Back on its queue, ready after `delay` seconds; the attempt counts."""
        self._settle("released", lambda: self._queue.release(self._reserved, max(0.0, float(delay)),
                                                             self._ended()))

    def bury(self, reason: str = "buried") -> None:
        """Aside, into the failed jobs with `reason` (`farmctl failed`; `farmctl retry` kicks it
        back). FarmError if the reservation had lapsed and the job is another's now."""
        self._settle("buried", lambda: self._queue.fail(self._reserved, self._ended(), str(reason)))

    def _settle(self, outcome: str, fn: Any) -> None:
        if self.settled:
            raise FarmError(f"job {self.id} is already {self.settled}")
        done = fn()
        self.settled = outcome if done is not False else "lost"
        _keeper().drop(self)
        if done is False:
            raise FarmError(f"job {self.id}: its reservation lapsed and it is handed out again; not {outcome}")

    def _ended(self) -> str:
        """The body with this start counted in `attempts`, as a worker writes it back."""
        body = self._reserved.body
        if isinstance(body, bytes):
            return body.decode("utf-8", "backslashreplace")
        try:
            doc = json.loads(body)
        except ValueError:
            return body
        if not isinstance(doc, dict):
            return body
        doc["attempts"] = self.attempts
        return payload.dumps(doc)


class _Keeper(threading.Thread):
    """Renews this process's held reservations, per queue every retry_after / 3 seconds. It
    holds them weakly: a Reservation the caller dropped unsettled is no longer renewed, and
    lapses after retry_after like a dead consumer's."""

    def __init__(self) -> None:
        super().__init__(name="farm-reservations", daemon=True)
        self.lock = threading.Lock()
        # id(queue) -> (queue, id(reservation) -> reservation)
        self.held: dict[int, tuple[Any, weakref.WeakValueDictionary[int, Reservation]]] = {}
        self.last: dict[int, float] = {}

    def hold(self, r: Reservation) -> None:
        with self.lock:
            self.held.setdefault(id(r._queue), (r._queue, weakref.WeakValueDictionary()))[1][id(r)] = r
            self.last.setdefault(id(r._queue), time.monotonic())

    def drop(self, r: Reservation) -> None:
        with self.lock:
            entry = self.held.get(id(r._queue))
            if entry is not None:
                entry[1].pop(id(r), None)

    def held_on(self, queue: Any) -> int:
        with self.lock:
            entry = self.held.get(id(queue))
            return len(entry[1]) if entry else 0

    def run(self) -> None:
        while True:
            time.sleep(RENEW_TICK)
            now = time.monotonic()
            with self.lock:
                due = [(key, q, [r._reserved for r in list(holds.values())])
                       for key, (q, holds) in self.held.items()
                       if len(holds) and now - self.last.get(key, 0) >= max(0.2, getattr(q, "retry_after", 90) / 3)]
            due = [(key, q, jobs) for key, q, jobs in due if jobs]
            for key, q, jobs in due:
                try:
                    q.renew(jobs)
                except FarmError:
                    pass                # tried again next tick; past retry_after the job is lapsed
                else:
                    self.last[key] = now


_state: dict[str, Any] = {"pid": None, "keeper": None}
_lock = threading.Lock()


def _keeper() -> _Keeper:
    """This process's keeper thread (a forked child starts its own)."""
    with _lock:
        if _state["pid"] != os.getpid():
            _state["pid"], _state["keeper"] = os.getpid(), _Keeper()
            _state["keeper"].start()
        return _state["keeper"]
