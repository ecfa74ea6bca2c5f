"""The `amqp` driver: RabbitMQ through pika.

A farm queue `Q` is the durable RabbitMQ queue `Q`; a delay is a durable TTL queue
`Q.delay.<ms>` dead-lettering back to `Q` (stock RabbitMQ, no plugin); classic or quorum
queues (`queue_type:`, `amqp_declare`). Failed jobs, stamps and heartbeats live in the
connection's `store:` (a database connection). `urls:` are tried in turn on every connect.

The pika plumbing is in `amqp_io` (the consuming connection and its keeper thread) and
`amqp_frames` (confirms, frames); this module is the driver's verbs and the bookkeeping in
the store.

The channel's prefetch count follows the batch the worker asks for (one job at a time while
jobs are slow), so a handful of long jobs spreads over the workers. Every failure of the
consuming channel makes the broker requeue what it had sent; the copies this process still
holds are stale and never run (`AmqpQueue.is_stale`).
"""
from __future__ import annotations

import collections
import json
import threading
import time
import uuid
from typing import Any, Callable, Sequence
from urllib.parse import parse_qs, urlsplit

import pika
import pika.exceptions

from ..errors import DriverUnavailable, FarmError
from ..manifest import Connection
from .amqp_declare import declare, delay_bucket
from .amqp_frames import Confirms
from .amqp_io import PIKA_ERRORS, Buffered, Consumer, Delivery, close_quietly, describe_error
from .base import FailedJob, Outgoing, Reserved, done_info

DEFAULT_PREFETCH = 100


class AmqpQueue:
    """A connection's queues on RabbitMQ.

    Delivery is at-least-once when a broker, connection or channel fails: the broker requeues
    whatever was unacked on a channel that went. Deliveries the worker holds from such a
    channel are stale (`is_stale`): they are never started, and acking, releasing, giving back
    or failing one does nothing (`fail` returns False), since the broker's requeued copy is the
    job now. A job that finished as its channel went has lost its ack, so it runs
    once more; the rerun counts that start as a death.
    """

    supports_notify = True
    # a redelivered message may have died unstarted in a dead worker's prefetch, which the
    # broker does not tell apart from a death inside the job: one more crash is allowed, so a
    # healthy job hit by two kills in a SIGKILL storm is not failed (a killer: 3 or 4 deaths)
    uncertain_deaths = 1

    def __init__(self, conn: Connection, store: Any = None) -> None:
        self.name = conn.name
        self.config = conn
        self.store = store
        urls = conn.urls or [conn.url or "amqp://guest:guest@127.0.0.1:5672/%2F"]
        self.brokers = [_parameters(u, conn.heartbeat, several=len(urls) > 1)   # `urls:` tried in turn,
                        for u in urls]                                          # on every (re)connect
        self.params = self.brokers[0]
        self.queue_type = conn.queue_type
        self.prefetch = conn.prefetch or DEFAULT_PREFETCH     # the most a worker's basic.qos asks
        self.buffer_wait = conn.consumer_timeout / 2
        self.slots = 1                   # jobs the worker runs at once (--concurrency)
        self.longest_job = 60.0          # the longest a job may run; the worker sets it (timeout, stop window)
        self.every_queue: tuple[str, ...] = ()   # the worker's queues, paused ones included (it sets them)
        self.window = 0      # a weighted worker's whole batch (it sets it): each claim asks a share of it
        self._publisher: pika.BlockingConnection | None = None
        self._channels: dict[str, Any] = {}
        self._declared: set[str] = set()
        self._lock = threading.RLock()
        self._consumer: Consumer | None = None
        self._queue_prefix = f"amqp-queue:{conn.name}:"
        self._deaths_prefix = f"amqp-deaths:{conn.name}:"
        self._publish_channel()          # a wrong url or a broker that is down shows at once

    # -- publishing -----------------------------------------------------------------------
    def _publish_channel(self, kind: str = "confirm") -> Any:
        """The publishing connection's confirming channel ("confirm") or a plain one ("plain")."""
        ch = self._channels.get(kind)
        if ch is not None and ch.is_open and self._publisher is not None and self._publisher.is_open:
            return ch
        if self._publisher is None or not self._publisher.is_open:
            try:
                self._publisher = pika.BlockingConnection(self.brokers)
            except PIKA_ERRORS as e:
                raise DriverUnavailable(f"connection {self.name!r}: cannot connect to RabbitMQ: {describe_error(e)}") from e
            self._channels, self._declared = {}, set()
        ch = self._channels[kind] = Confirms(self._publisher) if kind == "confirm" else self._publisher.channel()
        return ch

    def _declare(self, queue: str, delay_ms: int = 0) -> str:
        """The durable queue (or its delay queue) a message goes to; declared once per connection."""
        name = f"{queue}.delay.{delay_ms}" if delay_ms else queue
        if name not in self._declared:
            declare(self._publisher, name, self.queue_type, queue, delay_ms, self.name)
            if self.store is not None:
                # remembered so `status` can count them (AMQP cannot list queues); only
                # bookkeeping, so a store that is down must not stop a dispatch
                try:
                    self.store.set_stamp(f"{self._queue_prefix}{queue}\t{delay_ms}", time.time())
                except FarmError:
                    pass
            self._declared.add(name)
        return name

    def push(self, items: Sequence[Outgoing]) -> None:
        """Return only once the broker has confirmed every message."""
        self._on_publisher("publish failed", lambda: self._publish(items))

    def _on_publisher(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the publishing connection, reconnecting once: an idle producer's
        connection may have been dropped by the broker since its last use. pika's errors end
        here: DriverUnavailable when RabbitMQ cannot be reached, FarmError when it refuses."""
        with self._lock:
            for attempt in range(2):
                try:
                    return fn()
                except pika.exceptions.ChannelClosedByBroker as e:
                    self._channels = {}
                    raise FarmError(f"connection {self.name!r}: {what}: RabbitMQ refused: {e.reply_text}") from e
                except PIKA_ERRORS as e:
                    self._reset_publisher()
                    if attempt == 1:
                        raise DriverUnavailable(f"connection {self.name!r}: {what}: {describe_error(e)}") from e

    def _publish(self, items: Sequence[Outgoing]) -> None:
        now = time.time()
        confirms = self._publish_channel()
        messages = []
        for o in items:        # declares (round trips, once per queue) come before the batch
            delay = o.available_at - now
            target = self._declare(o.queue, delay_bucket(delay) if delay > 0.001 else 0)
            body = o.body if o.attempts == 0 else _with_attempts(o.body, o.attempts)
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=o.id)
            messages.append((target, body.encode() if isinstance(body, str) else body, props))
        confirms.publish(messages)
        confirms.wait()

    def _reset_publisher(self) -> None:
        conn, self._publisher, self._channels, self._declared = self._publisher, None, {}, set()
        if conn is not None:
            close_quietly(conn)

    # -- consuming ------------------------------------------------------------------------
    def _consumer_for(self, queues: Sequence[str], qos: int) -> Consumer:
        # a worker asking for some of its queues only (others paused: farmctl pause) keeps one
        # consumer for them all and stops consuming the paused ones, handing back what they had
        # buffered; restarting the consumer would void the deliveries of the jobs running now.
        # Keyed on the set of queues: a weighted worker passes them in a new order each claim
        every = list(self.every_queue) if set(queues) <= set(self.every_queue) else list(queues)
        c = self._consumer
        if c is None or set(c.queues) != set(every):
            if c is not None:
                c.stop()
            c = self._consumer = Consumer(self.brokers, every, qos, self.prefetch, self.buffer_wait,
                                          self._hand_back, self.queue_type, self.name)
        if set(c.active) != set(queues):
            with c.lock:
                try:
                    buffered = c.only(queues)
                except PIKA_ERRORS as e:
                    c.lost(e)            # the broker requeues what it had sent us
                    buffered = []
                self._hand_back(c, buffered)
        return c

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        """Up to `limit` jobs. The consumer's basic.qos follows `limit` (the worker's batch: 1
        for slow jobs, up to 100 for no-op ones), at most the connection's `prefetch`."""
        # running jobs are unacked; a weighted worker's claims ask 100, 50, 17... in turn: basic.qos
        # follows its whole batch, or every turn would hand back the buffers (farm/worker/weights.py)
        wanted = max(1, min(max(limit, self.window), self.prefetch), min(self.slots, self.prefetch))
        c = self._consumer_for(queues, wanted)
        with c.lock:
            if c.error:                  # say so once (the worker logs it), then reconnect
                error, c.error = c.error, None
                raise DriverUnavailable(f"connection {self.name!r}: {error}")
            try:
                c.connected()
                self._hand_back(c, c.follow(wanted))     # before consuming: the count applies at once
                c.consuming()
                got = c.wait_for(limit, self._deadline(c, queues, wait), queues, one_queue=self.window > 0)
            except PIKA_ERRORS as e:
                c.lost()
                raise DriverUnavailable(f"connection {self.name!r}: {describe_error(e)}") from e
            return [self._handed_out(q, d) for q, d in got]

    def _deadline(self, c: Consumer, queues: Sequence[str], wait: float) -> float:
        """When to stop waiting. A `wait` of 0 asks "is it empty?": ask the broker for ready
        messages, then make sure none it sent us is still on the wire."""
        now = time.monotonic()
        if wait > 0 or c.buffered():
            return now + wait
        c.pump(0)
        if not c.buffered():
            if any(self._message_count(q) for q in queues):
                return now + 2.0
            c.sync()
        return now

    def _handed_out(self, queue: str, d: Delivery) -> Reserved:
        return self._reserved(queue, d)

    def _reserved(self, queue: str, d: Delivery) -> Reserved:
        """The delivery as a job; attempts are the starts its document says ended, plus this
        one. A body that is not UTF-8 is handed out as bytes: the worker fails it, saying so."""
        try:
            body: Any = d.body.decode("utf-8")
        except UnicodeDecodeError:
            body = d.body
        doc = _document(body)
        # the id: the document's, else the message's, else a fresh one (a broken body is failed)
        jid = doc.get("id")
        if not isinstance(jid, str) or not jid:
            jid = d.message_id or str(uuid.uuid4())
        return Reserved(id=jid, queue=queue, body=body, attempts=_ended(doc) + 1, handle=d)

    def _count_death(self, job_id: str, delivery_count: int | None = None) -> int:
        """How many starts of this message ended unacked, this redelivery's included.

        The count is kept in the store (it survives a broker restart): the runner fails a job
        whose worker keeps dying (CRASHES_ALLOWED). A message has one consumer at a time, so
        reading then writing does not race. A delivery requeued before it started (its channel
        went while it was buffered or held) counts once, when it starts; the allowance covers it.

        On a quorum queue the broker counts too (`x-delivery-count`: every return of the
        message, including those of deliveries that never started, so it is an upper bound):
        the smaller of the two counts, and the broker's alone when the store is down, so a job
        that keeps killing its worker is bounded even then.
        """
        broker = delivery_count if delivery_count is not None and delivery_count > 0 else None
        if self.store is None:
            return broker or 1
        name = self._deaths_prefix + job_id
        try:
            deaths = int(self.store.stamp(name) or 0) + 1
            self.store.set_stamp(name, deaths)
        except FarmError:
            return broker or 1           # the store is down: the broker's count, or this redelivery
        return min(deaths, broker) if broker is not None else deaths

    def _forget_deaths(self, job: Reserved) -> None:
        """The message is settled: its count goes (a count left behind is only ever read if
        the same id is redelivered again)."""
        if self.store is None:
            return
        name = self._deaths_prefix + job.id
        try:
            if hasattr(self.store, "delete_stamp"):
                self.store.delete_stamp(name)
            else:
                self.store.set_stamp(name, 0)     # as good as none: the next count starts at 1
        except FarmError:
            pass

    def starting(self, job: Reserved) -> bool:
        """Called by the worker just before it starts a held job; False: do not start it.

        A stale delivery is dropped (the broker has requeued it). One held so long that it
        might not finish before RabbitMQ's consumer_timeout is handed back (the broker's clock
        starts again). A redelivered one that does start counts a death in the store, so a job
        that kills its worker every time is failed after a few (deaths of messages that were
        requeued before they started are not counted).

        First it reads whatever the broker has sent, without waiting (one poll when nothing
        came): a connection cut since the last read shows here, so the deliveries held from it
        are not started after their connection is gone (each would run twice: its ack is lost)."""
        c = self._consumer
        if c is not None:
            with c.lock:
                c.listen()
        if self.is_stale(job):
            return False
        d: Delivery = job.handle
        if time.monotonic() - d.arrived > self._start_by():
            self.give_back([job])
            return False
        if d.redelivered and not d.deaths:
            d.deaths = self._count_death(job.id, d.delivery_count)
            job.attempts += d.deaths
        return True

    def _start_by(self) -> float:
        """Seconds a delivery may wait before it starts: its job must end before consumer_timeout."""
        room = self.config.consumer_timeout - self.longest_job - 60
        return max(5.0, min(self.buffer_wait, room))

    def is_stale(self, job: Reserved) -> bool:
        """The job's delivery came on a consuming channel that is gone: the broker has requeued
        it and hands it out again, so the worker must not start it."""
        c = self._consumer
        return c is None or c.is_stale(job.handle)

    def renew(self, jobs: Sequence[Reserved]) -> None:
        """Nothing to do: a delivery stays ours while the consumer's channel lives."""

    def _ack(self, job: Reserved) -> bool:
        c = self._consumer
        if c is None:
            return False
        with c.lock:
            return c.ack(job.handle)

    def ack(self, job: Reserved) -> None:
        """Done. A stale delivery's ack is lost: the job runs again (at-least-once)."""
        acked = self._ack(job)
        if acked and job.handle.deaths:
            self._forget_deaths(job)
        if acked and job.retain and self.store is not None:     # `retention`: kept in the store
            now = time.time()
            try:
                self.store.record_done(job.id, done_info(job, self.name, now), now + job.retain)
            except FarmError:
                pass                     # bookkeeping only: the job is done whatever the store says

    def release(self, job: Reserved, delay: float, body: str) -> None:
        """Again after `delay`; a stale delivery is left to the broker's requeued copy."""
        if self.is_stale(job):
            return
        self.push([Outgoing(id=job.id, queue=job.queue, body=body, available_at=time.time() + delay)])
        self.ack(job)

    def give_back(self, jobs: Sequence[Reserved], delay: float = 0.0) -> None:
        """Republish unstarted jobs as they came (so no attempt is counted; after `delay` when
        middleware held them back), then ack the originals: a fresh message, never a redelivery,
        so no death is counted; stale ones the broker has requeued already. A death count
        stays: the next redelivery goes on from it."""
        live = [j for j in jobs if not self.is_stale(j)]
        if not live:
            return
        now = time.time() + delay
        self.push([Outgoing(id=j.id, queue=j.queue, body=j.body, available_at=now) for j in live])
        for j in live:
            self._ack(j)

    def _hand_back(self, c: Consumer, buffered: Buffered) -> None:
        """Give back deliveries the consumer buffered and nobody took; when that fails, drop
        the consuming connection instead (the broker requeues them, marked redelivered)."""
        if not buffered:
            return
        try:
            self.give_back([self._reserved(q, d) for q, d in buffered])
        except FarmError as e:
            c.lost(e)
            raise DriverUnavailable(f"connection {self.name!r}: cannot hand back prefetched jobs: {e}") from e

    def suspend(self) -> None:
        """Stop consuming (a paused worker): cancel the consumers and give back what they had
        buffered, unstarted. The next `reserve` consumes again."""
        c = self._consumer
        if c is None:
            return
        with c.lock:
            try:
                buffered = c.stop_consuming()
            except PIKA_ERRORS as e:
                c.lost(e)                # the broker requeues what it had sent us
                return
            self._hand_back(c, buffered)

    def fail(self, job: Reserved, body: str, error: str) -> bool:
        """To the store's failed table; False, with nothing written, for a stale delivery: the
        broker's requeued copy is the job now (it runs, and may fail, again), so an entry would
        duplicate it and the job's failed() hook must not run for it."""
        if self.store is None:
            raise FarmError(f"connection {self.name!r} has no store: add `store: <a database connection>`")
        if self.is_stale(job):
            return False
        body = _escaped(job.body) if isinstance(job.body, bytes) else body   # exactly as it came
        self.store.add_failed(FailedJob(job.id, self.name, job.queue, body, error, time.time()))
        self._ack(job)
        self._forget_deaths(job)
        return True

    def counts(self) -> dict[str, dict[str, int | None]]:
        """Ready messages of the pipelines' queues, delayed ones in their delay queues, and the
        store's failed jobs. AMQP does not tell how many are unacked: reserved is None."""
        from .. import app

        names = set(self._consumer.queues if self._consumer else [])
        names |= {q for p in app.manifest().pipelines.values() if p.connection == self.name for q in p.queues}
        failed: dict[str, int] = {}
        delays: dict[str, list[int]] = collections.defaultdict(list)
        if self.store is not None:
            failed = self.store.failed_by_queue(self.name)
            for key in self.store.stamps(self._queue_prefix):
                queue, _, ms = key[len(self._queue_prefix):].rpartition("\t")
                names.add(queue)
                if int(ms):
                    delays[queue].append(int(ms))
        out: dict[str, dict[str, int | None]] = {}
        for q in sorted(names | set(failed) | set(delays)):
            delayed = sum(self._message_count(f"{q}.delay.{ms}") for ms in delays.get(q, []))
            out[q] = {"ready": self._message_count(q), "delayed": delayed, "reserved": None,
                      "failed": failed.get(q, 0)}
        return out

    def _message_count(self, queue: str) -> int:
        """A passive declare on a channel of its own (a missing queue closes the channel)."""
        def count() -> int:
            self._publish_channel()
            ch = self._publisher.channel()
            try:
                return _zero_if_missing(
                    lambda: ch.queue_declare(queue, durable=True, passive=True).method.message_count)
            finally:
                if ch.is_open:
                    ch.close()
        return int(self._on_publisher("cannot count", count))

    def clear(self, queue: str) -> int:
        return int(self._on_publisher("cannot purge", lambda: _zero_if_missing(
            lambda: self._publish_channel("plain").queue_purge(queue).method.message_count)))

    def close(self) -> None:
        """Prefetched deliveries nobody took go back to their queue now, as fresh messages
        (a plain close would requeue them marked redelivered, which counts as a death)."""
        c = self._consumer
        if c is not None:
            try:
                self.suspend()
            except FarmError:
                pass     # the broker requeues whatever is unacked when the connection goes
            c.stop()
            self._consumer = None
        with self._lock:
            self._reset_publisher()


FAILOVER_SOCKET_TIMEOUT = 2.0    # seconds for a TCP connect, with `urls:` (pika: 10)
FAILOVER_STACK_TIMEOUT = 3.0     # seconds for TCP + TLS + AMQP handshake, with `urls:` (pika: 15)


def _parameters(url: str, heartbeat: int, several: bool = False) -> pika.URLParameters:
    """The broker's pika parameters. With several `urls:`, short connect timeouts: a broker
    that drops packets (or accepts and stays silent) would otherwise cost pika's 10-15 s on
    every connect and reconnect before the next url is tried. A timeout the url's own query
    string sets (`?socket_timeout=`, `?stack_timeout=`) is left as it is."""
    params = pika.URLParameters(url)
    params.heartbeat = heartbeat
    params.blocked_connection_timeout = 60
    if several:
        query = parse_qs(urlsplit(url).query)
        if "socket_timeout" not in query:
            params.socket_timeout = FAILOVER_SOCKET_TIMEOUT
        if "stack_timeout" not in query:
            params.stack_timeout = FAILOVER_STACK_TIMEOUT
    return params


def _zero_if_missing(fn: Callable[[], int]) -> int:
    """`fn()`, or 0 when the broker says its queue does not exist."""
    try:
        return int(fn())
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code == 404:
            return 0
        raise


def _document(body: str | bytes) -> dict[str, Any]:
    """The body's JSON object, or {} (the worker fails a body that is not one)."""
    if isinstance(body, bytes):
        return {}
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _ended(doc: dict[str, Any]) -> int:
    """The starts the document says ended (a release or retry counts them)."""
    try:
        return max(0, int(doc.get("attempts") or 0))
    except (TypeError, ValueError, OverflowError):
        return 0


def _escaped(body: bytes) -> str:
    """Bytes that are not UTF-8, as text: the bytes that are not as \\x escapes."""
    return body.decode("utf-8", "backslashreplace")


def _with_attempts(body: str, attempts: int) -> str:
    doc = json.loads(body)
    doc["attempts"] = attempts
    return json.dumps(doc, separators=(",", ":"))
