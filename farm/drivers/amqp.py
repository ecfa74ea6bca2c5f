"""The `amqp` driver: RabbitMQ through pika.

A farm queue `Q` is the durable RabbitMQ queue `Q`; a delay is a durable TTL queue
`Q.delay.<ms>` dead-lettering back to `Q` (stock RabbitMQ, no plugin). Failed jobs, stamps
and heartbeats live in the connection's `store:` (a database connection).

pika's BlockingConnection is single-threaded and sends heartbeats only while called, so the
consuming connection belongs to one I/O thread (`_Consumer`) that keeps calling it even
while a job runs for hours; the worker's thread takes deliveries from its buffers and hands
acks back with `add_callback_threadsafe`. Publishing uses a second connection: a confirm
channel for single pushes, and one transaction (one round trip) per chunk for bulk pushes.
"""
from __future__ import annotations

import collections
import contextlib
import json
import threading
import time
import uuid
from dataclasses import dataclass
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


@dataclass
class _Delivery:
    tag: int
    generation: int
    redelivered: bool
    body: bytes
    message_id: str | None = None


class _Consumer(threading.Thread):
    """Owns the consuming connection: consumes, buffers, acks, heartbeats, reconnects."""

    def __init__(self, params: pika.URLParameters, queues: Sequence[str], prefetch: int) -> None:
        super().__init__(name="farm-amqp", daemon=True)
        self.params, self.queues, self.prefetch = params, list(queues), prefetch
        self.buffers: dict[str, collections.deque[_Delivery]] = {q: collections.deque() for q in queues}
        self.ready = threading.Condition()
        self.generation = 0
        self.error: str | None = None
        self.halt = threading.Event()
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None
        self.tags: list[str] = []
        self.acks: list[int] = []           # delivery tags done, not yet written
        self.ack_scheduled = False
        self.attempted = threading.Event()   # the first connection attempt is over, either way

    def run(self) -> None:
        backoff = 0.2
        while not self.halt.is_set():
            try:
                try:
                    self._connect()
                finally:
                    self.attempted.set()
                backoff = 0.2
                while not self.halt.is_set():
                    self.connection.process_data_events(time_limit=0.2)   # heartbeats, deliveries, acks
            except PIKA_ERRORS as e:
                self._lost(f"{type(e).__name__}: {e}")
                self.halt.wait(backoff)
                backoff = min(backoff * 2, 8.0)
        self._close()

    def _connect(self) -> None:
        connection = pika.BlockingConnection(self.params)
        channel = connection.channel()
        channel.basic_qos(prefetch_count=self.prefetch)
        with self.ready:
            self.generation += 1
            gen = self.generation
        tags = []
        for q in self.queues:
            declare(connection, channel, q)     # a queue must exist before basic_consume
            tags.append(channel.basic_consume(q, self._on_message(q, gen)))
        self.connection, self.channel, self.tags = connection, channel, tags
        with self.ready:
            self.error = None

    def _on_message(self, queue: str, gen: int) -> Callable[..., None]:
        buf = self.buffers[queue]

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            with self.ready:
                buf.append(_Delivery(method.delivery_tag, gen, method.redelivered, body, props.message_id))
                self.ready.notify()
        return on_message

    def _lost(self, error: str) -> None:
        """The broker requeues everything unacked; our buffered copies are void."""
        with self.ready:
            self.error = error
            self.acks, self.ack_scheduled = [], False
            for buf in self.buffers.values():
                buf.clear()
            self.generation += 1
            self.ready.notify_all()
        self._close()

    def _close(self) -> None:
        conn, self.connection, self.channel = self.connection, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass

    def _on_io_thread(self, fn: Callable[[Any], None], timeout: float = 5.0) -> None:
        """Run fn(channel) on the I/O thread and wait for it to finish (or `timeout`)."""
        conn, channel, done = self.connection, self.channel, threading.Event()
        if conn is None:
            return

        def run() -> None:
            try:
                if channel.is_open:
                    fn(channel)
            finally:
                done.set()
        try:
            conn.add_callback_threadsafe(run)
        except PIKA_ERRORS:
            return
        done.wait(timeout)

    def cancel(self) -> None:
        """Stop deliveries (and wait until the broker confirms it) so the buffers stop growing."""
        self._on_io_thread(lambda channel: [channel.basic_cancel(tag) for tag in self.tags])

    def sync(self) -> None:
        """One round trip on the consuming channel: every delivery the broker sent before it
        is in our buffers afterwards (a channel is ordered)."""
        self._on_io_thread(lambda channel: channel.basic_qos(prefetch_count=self.prefetch))

    def flush(self) -> None:
        """Wait until the acks handed to the I/O thread so far have been written."""
        self._on_io_thread(lambda channel: None)

    def take(self, limit: int) -> list[tuple[str, _Delivery]]:
        """Up to `limit` buffered deliveries, the first-listed queue first."""
        out: list[tuple[str, _Delivery]] = []
        with self.ready:
            for q in self.queues:
                buf = self.buffers[q]
                while buf and len(out) < limit:
                    out.append((q, buf.popleft()))
        return out

    def ack(self, d: _Delivery) -> None:
        """Queue the ack for the I/O thread, waking it once per batch rather than once per ack.
        A delivery of a lost channel was requeued by the broker: its ack is dropped."""
        with self.ready:
            conn = self.connection
            if conn is None or d.generation != self.generation:
                return
            self.acks.append(d.tag)
            if self.ack_scheduled:
                return
            self.ack_scheduled = True
        try:
            conn.add_callback_threadsafe(self._send_acks)
        except PIKA_ERRORS:
            pass

    def _send_acks(self) -> None:
        with self.ready:
            tags, self.acks, self.ack_scheduled = self.acks, [], False
            channel = self.channel
        if channel is not None and channel.is_open and tags:
            with one_write(self.connection):
                for tag in tags:
                    channel.basic_ack(tag)


class AmqpQueue:
    supports_notify = True

    def __init__(self, conn: Connection, store: Any = None) -> None:
        self.name = conn.name
        self.config = conn
        self.store = store
        self.params = pika.URLParameters(conn.url or "amqp://guest:guest@127.0.0.1:5672/%2F")
        self.params.heartbeat = conn.heartbeat
        self.params.blocked_connection_timeout = 60
        self.prefetch = conn.prefetch or DEFAULT_PREFETCH
        self._publisher: pika.BlockingConnection | None = None
        self._channels: dict[str, Any] = {}
        self._declared: set[str] = set()
        self._lock = threading.RLock()
        self._consumer: _Consumer | None = None
        self._queue_prefix = f"amqp-queue:{conn.name}:"
        self._check()

    # -- publishing -----------------------------------------------------------------------
    def _check(self) -> None:
        self._publish_channel()

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
                # remembered so `status` can count them: AMQP cannot list queues
                self.store.set_stamp(f"{self._queue_prefix}{queue}\t{delay_ms}", time.time())
            self._declared.add(name)
        return name

    def push(self, items: Sequence[Outgoing]) -> None:
        """Return only once the broker has the messages (a confirm or a committed transaction)."""
        self._on_publisher("publish failed", lambda: self._publish(items))

    def _on_publisher(self, what: str, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the publishing connection, reconnecting once: an idle producer's
        connection may have been dropped by the broker since its last use."""
        with self._lock:
            for attempt in range(2):
                try:
                    return fn()
                except pika.exceptions.ChannelClosedByBroker:
                    self._channels = {}
                    raise
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
            try:
                conn.close()
            except Exception:
                pass

    # -- consuming ------------------------------------------------------------------------
    def _consumer_for(self, queues: Sequence[str], limit: int) -> _Consumer:
        c = self._consumer
        if c is None or c.queues != list(queues):
            if c is not None:
                c.halt.set()
            c = self._consumer = _Consumer(self.params, queues, max(limit, self.prefetch))
            c.start()
        return c

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        c = self._consumer_for(queues, limit)
        c.attempted.wait(10)
        if wait <= 0 and not any(c.buffers[q] for q in c.queues) and not c.error:
            # "is it empty?": ask the broker for ready messages, then make sure none sent to
            # us is still on the wire
            if any(self._message_count(q) for q in queues):
                wait = 2.0
            else:
                c.sync()
        deadline = time.monotonic() + wait
        while True:
            got = c.take(limit)
            if got:
                return [self._reserved(q, d) for q, d in got]
            if c.error and wait <= 0:
                raise DriverUnavailable(f"connection {self.name!r}: {c.error}")
            left = deadline - time.monotonic()
            if left <= 0 or waker.signalled():
                if c.error:
                    raise DriverUnavailable(f"connection {self.name!r}: {c.error}")
                return []
            with c.ready:
                if not any(c.buffers[q] for q in c.queues):
                    c.ready.wait(min(left, 0.1))

    def _reserved(self, queue: str, d: _Delivery) -> Reserved:
        try:
            ended = int(json.loads(d.body).get("attempts") or 0)
        except (ValueError, AttributeError, TypeError):
            ended = 0
        # a redelivery is a start that never ended (the worker died), unless we handed it back
        attempts = ended + 1 + (1 if d.redelivered else 0)
        body = d.body.decode("utf-8", "replace")
        return Reserved(id=_id_of(body, d.message_id), queue=queue, body=body, attempts=attempts, handle=d)

    def renew(self, jobs: Sequence[Reserved]) -> None:
        """Nothing to do: a delivery stays ours while the consumer's connection lives."""

    def ack(self, job: Reserved) -> None:
        if self._consumer is not None:
            self._consumer.ack(job.handle)

    def release(self, job: Reserved, delay: float, body: str) -> None:
        self.push([Outgoing(id=job.id, queue=job.queue, body=body, available_at=time.time() + delay)])
        self.ack(job)

    def give_back(self, jobs: Sequence[Reserved]) -> None:
        """Republish unstarted jobs as they came (so no attempt is counted), then ack the originals."""
        if not jobs:
            return
        now = time.time()
        self.push([Outgoing(id=j.id, queue=j.queue, body=j.body, available_at=now) for j in jobs])
        for j in jobs:
            self.ack(j)

    def fail(self, job: Reserved, body: str, error: str) -> None:
        if self.store is None:
            raise FarmError(f"connection {self.name!r} has no store: add `store: <a database connection>`")
        self.store.add_failed(FailedJob(job.id, self.name, job.queue, body, error, time.time()))
        self.ack(job)

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
                return int(ch.queue_declare(queue, durable=True, passive=True).method.message_count)
            finally:
                if ch.is_open:
                    ch.close()
        try:
            return int(self._on_publisher("cannot count", count))
        except pika.exceptions.ChannelClosedByBroker:
            return 0                     # no such queue

    def clear(self, queue: str) -> int:
        try:
            return int(self._on_publisher(
                "cannot purge", lambda: self._publish_channel("plain").queue_purge(queue).method.message_count))
        except pika.exceptions.ChannelClosedByBroker:
            return 0

    def close(self) -> None:
        """Prefetched deliveries nobody took go back to their queue now, as fresh messages
        (a plain close would requeue them marked redelivered, which counts as an attempt)."""
        c = self._consumer
        if c is not None:
            try:
                c.cancel()
                leftover = [self._reserved(q, d) for q, d in c.take(1_000_000)]
                if leftover:
                    self.give_back(leftover)
                c.flush()
            except (FarmError, *PIKA_ERRORS):
                pass   # the broker requeues whatever is unacked when the connection goes
            c.halt.set()
            c.join(5)
            self._consumer = None
        with self._lock:
            self._reset_publisher()


def _id_of(body: str, message_id: str | None) -> str:
    """The job's id: the document's, else the message's, else a fresh one (it will be failed)."""
    try:
        doc = json.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("id"), str) and doc["id"]:
            return doc["id"]
    except ValueError:
        pass
    return message_id or str(uuid.uuid4())


def _with_attempts(body: str, attempts: int) -> str:
    doc = json.loads(body)
    doc["attempts"] = attempts
    return json.dumps(doc, separators=(",", ":"))


def _reason(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}".splitlines()[0]
