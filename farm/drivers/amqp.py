"""The `amqp` driver: RabbitMQ through pika.

A farm queue `Q` is the durable RabbitMQ queue `Q`; a delay is a durable TTL queue
`Q.delay.<ms>` dead-lettering back to `Q` (stock RabbitMQ, no plugin). Failed jobs, stamps
and heartbeats live in the connection's `store:` (a database connection).

pika's BlockingConnection is single-threaded and answers heartbeats only while called: the
consuming connection (`_Consumer`) is used by the worker's thread inside the driver and by a
keeper thread while a job runs. Publishing uses a second connection with publisher confirms,
waited for once per chunk (`_Confirms`).

The channel's prefetch count follows the batch the worker asks for (one job at a time while
jobs are slow), so a handful of long jobs spreads over the workers. Every failure of the
consuming channel makes the broker requeue what it had sent; the copies this process still
holds are stale and never run (`AmqpQueue.is_stale`).
"""
from __future__ import annotations

import collections
import contextlib
import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import pika
import pika.exceptions

from .. import waker
from ..errors import DriverUnavailable, FarmError
from ..manifest import Connection
from .base import FailedJob, Outgoing, Reserved

DEFAULT_PREFETCH = 100
QUEUE_ARGS = {"x-queue-version": 2}
PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)


def declare(connection: Any, channel: Any, name: str, arguments: dict[str, Any] | None = None) -> None:
    """Make sure the durable queue `name` exists. New queues are classic v2 queues (about 1.7x
    the confirmed-publish rate of v1 here); a queue that already exists is used as it is, since
    redeclaring it with other arguments would be refused by the broker."""
    probe = connection.channel()
    try:
        probe.queue_declare(name, durable=True, passive=True)
        return
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != 404:
            raise
    finally:
        if probe.is_open:
            probe.close()
    channel.queue_declare(name, durable=True, arguments={**QUEUE_ARGS, **(arguments or {})})


def delay_bucket(seconds: float) -> int:
    """Milliseconds of the TTL queue for a delay, rounded so queues stay few (about 5% at most)."""
    ms = max(1, int(seconds * 1000))
    step = 100 if ms < 10_000 else 1000 if ms < 120_000 else 10_000 if ms < 3_600_000 else 60_000
    return -(-ms // step) * step


@contextlib.contextmanager
def one_write(connection: pika.BlockingConnection) -> Iterator[None]:
    """Hand the frames of every method sent inside to the socket as one write (pika makes one
    write per frame: three per message). Only for methods that need no reply."""
    impl = connection._impl
    frames: list[bytes] = []
    impl._output_marshaled_frames = frames.extend      # shadows pika's method meanwhile
    try:
        yield
    finally:
        del impl._output_marshaled_frames
        if frames:
            data = b"".join(frames)
            impl.bytes_sent += len(data)
            impl.frames_sent += len(frames)
            impl._adapter_emit_data(data)


def send_now(connection: pika.BlockingConnection, channel_number: int, method: Any) -> None:
    """Write a method that needs no reply (an ack) straight to the socket when nothing else is
    waiting to be written; pika would instead arm its I/O loop for one write (several system
    calls per ack). Whatever the socket does not take is left to pika to write."""
    impl = connection._impl
    data = pika.frame.Method(channel_number, method).marshal()
    transport = impl._transport
    if transport is None:
        raise pika.exceptions.StreamLostError("not connected")
    if transport.get_write_buffer_size() == 0:
        try:
            sent = transport._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        impl.bytes_sent += sent
        data = data[sent:]
    impl.frames_sent += 1
    if data:
        impl._adapter_emit_data(data)


class _Confirms:
    """A publishing channel in confirm mode that waits once per batch, not once per message
    (pika's blocking confirm mode waits after each publish). Uses pika's own `_flush_output`,
    the loop its blocking channel waits in."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.outstanding: set[int] = set()
        self.next_tag = 1
        self.nacked = 0
        ready: list[bool] = []
        self.channel._impl.confirm_delivery(ack_nack_callback=self._on_confirm,
                                            callback=lambda _frame: ready.append(True))
        connection._flush_output(lambda: bool(ready))

    @property
    def is_open(self) -> bool:
        return bool(self.channel.is_open)

    def _on_confirm(self, frame: Any) -> None:
        m = frame.method
        if isinstance(m, pika.spec.Basic.Nack):
            self.nacked += 1
        if m.multiple:
            self.outstanding = {t for t in self.outstanding if t > m.delivery_tag}
        else:
            self.outstanding.discard(m.delivery_tag)

    def publish(self, messages: Sequence[tuple[str, bytes, pika.BasicProperties]]) -> None:
        with one_write(self.connection):
            for routing_key, body, props in messages:
                self.channel._impl.basic_publish("", routing_key, body, props)
                self.outstanding.add(self.next_tag)
                self.next_tag += 1

    def wait(self) -> None:
        """Until the broker has confirmed every message published so far."""
        self.connection._flush_output(lambda: not self.outstanding)
        if self.nacked:
            self.nacked = 0
            raise pika.exceptions.AMQPError("the broker refused (nacked) a message")


_GENERATIONS = itertools.count(1)       # one number per consuming connection of this process


@dataclass
class _Delivery:
    tag: int
    channel: int             # the number of the channel it came on, where its ack goes
    generation: int          # the consuming connection it came on: stale once it is gone
    redelivered: bool
    body: bytes
    message_id: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    deaths: int = 0          # starts of this message that ended unacked, as counted in the store


Buffered = list[tuple[str, _Delivery]]


class _Consumer:
    """The consuming connection. pika is single-threaded: whoever holds `lock` may call it.

    Each queue is consumed on a channel of its own, whose prefetch count (basic.qos global,
    which unlike a consumer's own applies at once when changed) follows the worker's batch:
    each queue gets its own slots, so a message of the first-listed queue is never kept out
    by ones of a later queue.

    The worker's thread holds it inside the driver (waiting for deliveries, acking), so a
    delivery reaches a waiting worker and an ack reaches the socket with no thread hand-off:
    the ack is written before the next job starts. While a job runs, the keeper thread takes
    the lock every 50 ms to answer heartbeats, buffer deliveries, notice a channel the broker
    closed, and hand back deliveries buffered too long, so a job may run far longer than the
    heartbeat interval.
    """

    KEEP_EVERY = 0.05
    REFILL = 0.02        # seconds the broker may take to send a message into a slot an ack freed

    def __init__(self, params: pika.URLParameters, queues: Sequence[str], qos: int, ceiling: int,
                 buffer_wait: float, hand_back: Callable[[_Consumer, Buffered], None]) -> None:
        self.params, self.queues = params, list(queues)
        self.qos = qos                       # each channel's prefetch count (basic.qos global)
        self.ceiling = ceiling               # each consumer's own: the connection's `prefetch`
        self.buffer_wait = buffer_wait       # how long a delivery may wait in a buffer, seconds
        self.hand_back = hand_back           # republishes deliveries nobody started
        self.buffers: dict[str, collections.deque[_Delivery]] = {q: collections.deque() for q in queues}
        self.lock = threading.RLock()
        self.generation = next(_GENERATIONS)
        self.connection: pika.BlockingConnection | None = None
        self.channels: dict[str, Any] = {}   # queue -> the channel it is consumed on
        self.tags: dict[str, str] = {}       # queue -> our consumer; none while suspended
        self.freed_at: dict[int, float] = {}  # channel number -> when an ack last freed a slot
        self.cancelled_by_broker = False
        self.error: str | None = None        # why the last channel went, until reported
        self.halt = threading.Event()
        self.keeper = threading.Thread(target=self._keep_alive, name="farm-amqp", daemon=True)

    # everything below runs with `lock` held
    def connected(self) -> None:
        """Connect and open the consuming channels unless all are open; pika's errors propagate."""
        if self.open() and not self.cancelled_by_broker:
            return
        self.lost()
        connection = pika.BlockingConnection(self.params)
        try:
            channels = {q: self._channel_for(connection, q) for q in self.queues}
        except BaseException:
            _close_quietly(connection)
            raise
        self.connection, self.channels = connection, channels
        if not self.keeper.is_alive():
            self.keeper.start()

    def _channel_for(self, connection: pika.BlockingConnection, queue: str) -> Any:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.ceiling)
        channel.basic_qos(prefetch_count=self.qos, global_qos=True)
        channel.add_on_cancel_callback(self._on_cancelled)
        declare(connection, channel, queue)      # a queue must exist before basic_consume
        return channel

    def consuming(self) -> None:
        """Connected, and consuming every queue (again, after a suspend)."""
        self.connected()
        if not self.tags:
            self.tags = {q: ch.basic_consume(q, self._on_message(q, self.generation))
                         for q, ch in self.channels.items()}

    def _on_message(self, queue: str, gen: int) -> Callable[..., None]:
        buf = self.buffers[queue]

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            buf.append(_Delivery(method.delivery_tag, ch.channel_number, gen, method.redelivered, body,
                                 props.message_id))
        return on_message

    def _on_cancelled(self, frame: Any) -> None:
        self.cancelled_by_broker = True      # its queue was deleted: `check` raises, we reconnect

    def open(self) -> bool:
        return bool(self.connection is not None and self.connection.is_open and self.channels
                    and all(ch.is_open for ch in self.channels.values()))

    def is_stale(self, d: _Delivery) -> bool:
        """The delivery came on a channel that is gone; the broker has requeued its message."""
        return d.generation != self.generation or not self.open()

    def check(self) -> None:
        """Raise what closed a channel, or cancelled a consumer, while the connection stayed
        open (consumer_timeout, an ack the broker refused, a deleted queue): pika only notes it."""
        for ch in self.channels.values():
            if not ch.is_open:
                raise getattr(ch, "_closing_reason", None) or pika.exceptions.ChannelClosed(0, "closed")
        if self.cancelled_by_broker:
            raise pika.exceptions.ConsumerCancelled("the broker cancelled the consumer: was its queue deleted?")

    def lost(self, error: BaseException | None = None) -> None:
        """The broker requeues everything unacked when a channel goes: our copies are void.
        Any channel going takes the whole connection, which is simpler to start again."""
        if error is not None and self.connection is not None:
            self.error = f"consumer lost: {_reason(error)}"
        conn, self.connection, self.channels, self.tags = self.connection, None, {}, {}
        self.freed_at.clear()
        self.cancelled_by_broker = False
        self.generation = next(_GENERATIONS)
        for buf in self.buffers.values():
            buf.clear()
        if conn is not None:
            _close_quietly(conn)

    def buffered(self) -> bool:
        return any(self.buffers[q] for q in self.queues)

    def pump(self, seconds: float) -> None:
        """Read from the broker for up to `seconds`, returning early once deliveries arrived."""
        self.connection.process_data_events(time_limit=seconds)
        self.check()

    def wait_for(self, limit: int, deadline: float) -> Buffered:
        """Up to `limit` deliveries as soon as there are some; none at `deadline` or a signal."""
        while True:
            if self.buffered():
                refill = self._refilling()
                if refill <= 0:
                    return self.take(limit)
                self.pump(refill)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or waker.signalled():
                return []
            self.pump(min(left, 0.1))

    def _refilling(self) -> float:
        """How long to wait before handing out only deliveries of later-listed queues: an
        earlier queue whose slot an ack just freed may have its next message on the wire
        (with a prefetch of one, a priority list relies on it)."""
        first = next(i for i, q in enumerate(self.queues) if self.buffers[q])
        now = time.monotonic()
        return max((self.freed_at.get(self.channels[q].channel_number, 0.0) + self.REFILL - now
                    for q in self.queues[:first]), default=0.0)

    def take(self, limit: int) -> Buffered:
        """Up to `limit` buffered deliveries, the first-listed queue first."""
        out: Buffered = []
        for q in self.queues:
            buf = self.buffers[q]
            while buf and len(out) < limit:
                out.append((q, buf.popleft()))
        return out

    def follow(self, wanted: int) -> Buffered:
        """Make basic.qos follow the batch the worker asks for (1 while jobs are slow, so other
        workers get the rest); a change within a factor of two is not worth a round trip.
        Returns, for handing back, what is buffered beyond it (basic.qos does not take back
        what the broker has sent) and what has waited too long."""
        if wanted > self.qos or wanted * 2 < self.qos:
            self.limit_to(wanted)
        return self._beyond(self.qos) + self.overdue()

    def _beyond(self, keep: int) -> Buffered:
        """Each queue's buffered deliveries past its first `keep`."""
        out: Buffered = []
        for q in self.queues:
            buf = self.buffers[q]
            surplus = [buf.pop() for _ in range(len(buf) - keep)]
            out.extend((q, d) for d in reversed(surplus))
        return out

    def overdue(self) -> Buffered:
        """Buffered deliveries that have waited `buffer_wait`: the broker's consumer_timeout
        would close the channel over one left unacked much longer."""
        since = time.monotonic() - self.buffer_wait
        out: Buffered = []
        for q in self.queues:
            buf = self.buffers[q]
            while buf and buf[0].arrived < since:
                out.append((q, buf.popleft()))
        return out

    def shed_overdue(self) -> Buffered:
        """`overdue()`, with basic.qos lowered to 1 first so they do not come straight back: a
        worker that left them waiting this long while busy had prefetched too many."""
        overdue = self.overdue()
        if overdue and self.qos > 1:
            self.limit_to(1)
        return overdue

    def limit_to(self, count: int) -> None:
        """Set each channel's prefetch count. A consumer's own count (basic.qos, not global) is
        fixed when it starts consuming; a channel's applies at once."""
        for ch in self.channels.values():
            ch.basic_qos(prefetch_count=count, global_qos=True)
        self.qos = count

    def ack(self, d: _Delivery) -> bool:
        """Written at once (no reply to wait for). False, and nothing written, for a stale
        delivery: an ack on a channel the broker closed would close the connection too."""
        if self.is_stale(d):
            return False
        try:
            send_now(self.connection, d.channel, pika.spec.Basic.Ack(delivery_tag=d.tag))
        except PIKA_ERRORS as e:
            self.lost(e)
            return False
        self.freed_at[d.channel] = time.monotonic()
        return True

    def stop_consuming(self) -> Buffered:
        """Cancel our consumers; return what they had buffered. A basic.qos of 1 first: past it
        the broker sends nothing more while we hold a delivery, so little is on the wire during
        the cancel (pika rejects what arrives then, which marks it redelivered)."""
        if not self.tags or not self.open():
            return []
        self.limit_to(1)
        self.connection.process_data_events(time_limit=0)
        for q, tag in self.tags.items():
            self.channels[q].basic_cancel(tag)
        self.tags = {}
        return self._beyond(0)

    def sync(self) -> None:
        """One round trip on each consuming channel: every delivery the broker sent before it
        is in our buffers afterwards (a channel is ordered)."""
        self.limit_to(self.qos)
        self.connection.process_data_events(time_limit=0)
        self.check()

    def _keep_alive(self) -> None:
        while not self.halt.wait(self.KEEP_EVERY):
            if not self.lock.acquire(blocking=False):
                continue                 # the worker's thread is using the connection
            try:
                if self.connection is not None:
                    self.pump(0)
                    self.hand_back(self, self.shed_overdue())
            except (*PIKA_ERRORS, FarmError) as e:
                self.lost(e)             # the worker reconnects on its next reserve
            finally:
                self.lock.release()

    def stop(self) -> None:
        self.halt.set()
        with self.lock:
            self.lost()


def _close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


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

    def __init__(self, conn: Connection, store: Any = None) -> None:
        self.name = conn.name
        self.config = conn
        self.store = store
        self.params = pika.URLParameters(conn.url or "amqp://guest:guest@127.0.0.1:5672/%2F")
        self.params.heartbeat = conn.heartbeat
        self.params.blocked_connection_timeout = 60
        self.prefetch = conn.prefetch or DEFAULT_PREFETCH     # the most a worker's basic.qos asks
        self.buffer_wait = conn.consumer_timeout / 2
        self._publisher: pika.BlockingConnection | None = None
        self._channels: dict[str, Any] = {}
        self._declared: set[str] = set()
        self._lock = threading.RLock()
        self._consumer: _Consumer | None = None
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
                self._publisher = pika.BlockingConnection(self.params)
            except PIKA_ERRORS as e:
                raise DriverUnavailable(f"connection {self.name!r}: cannot connect to RabbitMQ: {_reason(e)}") from e
            self._channels, self._declared = {}, set()
        ch = self._channels[kind] = _Confirms(self._publisher) if kind == "confirm" else self._publisher.channel()
        return ch

    def _declare(self, channel: Any, queue: str, delay_ms: int = 0) -> str:
        """The durable queue (or its delay queue) a message goes to; declared once per connection."""
        name = f"{queue}.delay.{delay_ms}" if delay_ms else queue
        if name not in self._declared:
            args = {"x-message-ttl": delay_ms, "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": queue} if delay_ms else None
            declare(self._publisher, channel, name, args)
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
                        raise DriverUnavailable(f"connection {self.name!r}: {what}: {_reason(e)}") from e

    def _publish(self, items: Sequence[Outgoing]) -> None:
        now = time.time()
        confirms = self._publish_channel()
        messages = []
        for o in items:        # declares (round trips, once per queue) come before the batch
            delay = o.available_at - now
            target = self._declare(confirms.channel, o.queue, delay_bucket(delay) if delay > 0.001 else 0)
            body = o.body if o.attempts == 0 else _with_attempts(o.body, o.attempts)
            props = pika.BasicProperties(delivery_mode=2, content_type="application/json", message_id=o.id)
            messages.append((target, body.encode() if isinstance(body, str) else body, props))
        confirms.publish(messages)
        confirms.wait()

    def _reset_publisher(self) -> None:
        conn, self._publisher, self._channels, self._declared = self._publisher, None, {}, set()
        if conn is not None:
            _close_quietly(conn)

    # -- consuming ------------------------------------------------------------------------
    def _consumer_for(self, queues: Sequence[str], qos: int) -> _Consumer:
        c = self._consumer
        if c is None or c.queues != list(queues):
            if c is not None:
                c.stop()
            c = self._consumer = _Consumer(self.params, queues, qos, self.prefetch, self.buffer_wait,
                                                self._hand_back)
        return c

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        """Up to `limit` jobs. The consumer's basic.qos follows `limit` (the worker's batch: 1
        for slow jobs, up to 100 for no-op ones), at most the connection's `prefetch`."""
        wanted = max(1, min(limit, self.prefetch))
        c = self._consumer_for(queues, wanted)
        with c.lock:
            if c.error:                  # say so once (the worker logs it), then reconnect
                error, c.error = c.error, None
                raise DriverUnavailable(f"connection {self.name!r}: {error}")
            try:
                c.connected()
                self._hand_back(c, c.follow(wanted))     # before consuming: the count applies at once
                c.consuming()
                got = c.wait_for(limit, self._deadline(c, queues, wait))
            except PIKA_ERRORS as e:
                c.lost()
                raise DriverUnavailable(f"connection {self.name!r}: {_reason(e)}") from e
            return [self._handed_out(q, d) for q, d in got]

    def _deadline(self, c: _Consumer, queues: Sequence[str], wait: float) -> float:
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

    def _handed_out(self, queue: str, d: _Delivery) -> Reserved:
        job = self._reserved(queue, d)
        if d.redelivered:
            d.deaths = self._count_death(job.id)
            job.attempts += d.deaths
        return job

    def _reserved(self, queue: str, d: _Delivery) -> Reserved:
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

    def _count_death(self, job_id: str) -> int:
        """How many starts of this message ended unacked, this redelivery's included.

        The broker only says "redelivered", so the count is kept in the store: the runner
        fails a job whose worker keeps dying (CRASHES_ALLOWED). A message has one consumer at
        a time, so reading then writing does not race. A delivery requeued before it started
        (its channel went while it was buffered or held) counts too; the allowance covers it.
        """
        if self.store is None:
            return 1
        name = self._deaths_prefix + job_id
        try:
            deaths = int(self.store.stamp(name) or 0) + 1
            self.store.set_stamp(name, deaths)
        except FarmError:
            return 1                     # the store is down: this redelivery, as the flag says
        return deaths

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
        if self._ack(job) and job.handle.deaths:
            self._forget_deaths(job)

    def release(self, job: Reserved, delay: float, body: str) -> None:
        """Again after `delay`; a stale delivery is left to the broker's requeued copy."""
        if self.is_stale(job):
            return
        self.push([Outgoing(id=job.id, queue=job.queue, body=body, available_at=time.time() + delay)])
        self.ack(job)

    def give_back(self, jobs: Sequence[Reserved]) -> None:
        """Republish unstarted jobs as they came (so no attempt is counted), then ack the
        originals; stale ones the broker has requeued already. A death count stays: the next
        redelivery goes on from it."""
        live = [j for j in jobs if not self.is_stale(j)]
        if not live:
            return
        now = time.time()
        self.push([Outgoing(id=j.id, queue=j.queue, body=j.body, available_at=now) for j in live])
        for j in live:
            self._ack(j)

    def _hand_back(self, c: _Consumer, buffered: Buffered) -> None:
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


def _reason(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}".splitlines()[0]
