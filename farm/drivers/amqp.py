"""The `amqp` driver: RabbitMQ through pika.

A farm queue `Q` is the durable RabbitMQ queue `Q`; a delay is a durable TTL queue
`Q.delay.<ms>` dead-lettering back to `Q` (stock RabbitMQ, no plugin). Failed jobs, stamps
and heartbeats live in the connection's `store:` (a database connection).

pika's BlockingConnection is single-threaded and answers heartbeats only while called: the
consuming connection (`_Consumer`) is used by the worker's thread inside the driver and by a
keeper thread while a job runs. Publishing uses a second connection with publisher confirms,
waited for once per chunk (`_Confirms`).
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


@dataclass
class _Delivery:
    tag: int
    generation: int
    redelivered: bool
    body: bytes
    message_id: str | None = None


class _Consumer:
    """The consuming connection. pika is single-threaded: whoever holds `lock` may call it.

    The worker's thread holds it inside the driver (waiting for deliveries, acking), so a
    delivery reaches a waiting worker and an ack reaches the socket with no thread hand-off:
    the ack is written before the next job starts. While a job runs, the keeper thread takes
    the lock every 50 ms to answer heartbeats and buffer deliveries, so a job may run far
    longer than the heartbeat interval.
    """

    KEEP_EVERY = 0.05

    def __init__(self, params: pika.URLParameters, queues: Sequence[str], prefetch: int) -> None:
        self.params, self.queues, self.prefetch = params, list(queues), prefetch
        self.buffers: dict[str, collections.deque[_Delivery]] = {q: collections.deque() for q in queues}
        self.lock = threading.RLock()
        self.generation = 0
        self.connection: pika.BlockingConnection | None = None
        self.channel: Any = None
        self.tags: list[str] = []
        self.error: str | None = None      # why the last connection went, until reported
        self.halt = threading.Event()
        self.keeper = threading.Thread(target=self._keep_alive, name="farm-amqp", daemon=True)

    # everything below runs with `lock` held
    def connected(self) -> None:
        """Connect and consume if not connected; pika's errors propagate."""
        if self.connection is not None and self.connection.is_open:
            return
        self.lost()
        connection = pika.BlockingConnection(self.params)
        try:
            channel = connection.channel()
            channel.basic_qos(prefetch_count=self.prefetch)
            self.generation += 1
            tags = []
            for q in self.queues:
                declare(connection, channel, q)     # a queue must exist before basic_consume
                tags.append(channel.basic_consume(q, self._on_message(q, self.generation)))
        except BaseException:
            _close_quietly(connection)
            raise
        self.connection, self.channel, self.tags = connection, channel, tags
        if not self.keeper.is_alive():
            self.keeper.start()

    def _on_message(self, queue: str, gen: int) -> Callable[..., None]:
        buf = self.buffers[queue]

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            buf.append(_Delivery(method.delivery_tag, gen, method.redelivered, body, props.message_id))
        return on_message

    def lost(self, error: BaseException | None = None) -> None:
        """The broker requeues everything unacked when a connection goes: our copies are void."""
        if error is not None and self.connection is not None:
            self.error = f"connection lost: {_reason(error)}"
        conn, self.connection, self.channel = self.connection, None, None
        self.generation += 1
        for buf in self.buffers.values():
            buf.clear()
        if conn is not None:
            _close_quietly(conn)

    def buffered(self) -> bool:
        return any(self.buffers[q] for q in self.queues)

    def pump(self, seconds: float) -> None:
        """Read from the broker for up to `seconds`, returning early once deliveries arrived."""
        self.connection.process_data_events(time_limit=seconds)

    def take(self, limit: int) -> list[tuple[str, _Delivery]]:
        """Up to `limit` buffered deliveries, the first-listed queue first."""
        out: list[tuple[str, _Delivery]] = []
        for q in self.queues:
            buf = self.buffers[q]
            while buf and len(out) < limit:
                out.append((q, buf.popleft()))
        return out

    def ack(self, d: _Delivery) -> None:
        """Written at once (no reply to wait for); a delivery of a lost connection was requeued."""
        if self.connection is None or d.generation != self.generation:
            return
        try:
            send_now(self.connection, self.channel.channel_number, pika.spec.Basic.Ack(delivery_tag=d.tag))
        except PIKA_ERRORS as e:
            self.lost(e)

    def cancel(self) -> None:
        """Stop deliveries, after reading the ones already sent (pika would nack those)."""
        if self.connection is None:
            return
        self.connection.process_data_events(time_limit=0)
        for tag in self.tags:
            self.channel.basic_cancel(tag)

    def sync(self) -> None:
        """One round trip on the consuming channel: every delivery the broker sent before it
        is in our buffers afterwards (a channel is ordered)."""
        self.channel.basic_qos(prefetch_count=self.prefetch)
        self.connection.process_data_events(time_limit=0)

    def _keep_alive(self) -> None:
        while not self.halt.wait(self.KEEP_EVERY):
            if not self.lock.acquire(blocking=False):
                continue                 # the worker's thread is using the connection
            try:
                if self.connection is not None:
                    self.connection.process_data_events(time_limit=0)
            except PIKA_ERRORS as e:
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
            _close_quietly(conn)

    # -- consuming ------------------------------------------------------------------------
    def _consumer_for(self, queues: Sequence[str], limit: int) -> _Consumer:
        c = self._consumer
        if c is None or c.queues != list(queues):
            if c is not None:
                c.stop()
            c = self._consumer = _Consumer(self.params, queues, max(limit, self.prefetch))
        return c

    def reserve(self, queues: Sequence[str], limit: int, wait: float) -> list[Reserved]:
        c = self._consumer_for(queues, limit)
        deadline = time.monotonic() + wait
        with c.lock:
            if c.error:                  # say so once (the worker logs it), then reconnect
                error, c.error = c.error, None
                raise DriverUnavailable(f"connection {self.name!r}: {error}")
            try:
                c.connected()
                if wait <= 0 and not c.buffered():
                    # "is it empty?": ask the broker for ready messages, then make sure none
                    # it sent us is still on the wire
                    c.pump(0)
                    if not c.buffered():
                        if any(self._message_count(q) for q in queues):
                            deadline = time.monotonic() + 2.0
                        else:
                            c.sync()
                while True:
                    got = c.take(limit)
                    if got:
                        return [self._reserved(q, d) for q, d in got]
                    left = deadline - time.monotonic()
                    if left <= 0 or waker.signalled():
                        return []
                    c.pump(min(left, 0.1))
            except PIKA_ERRORS as e:
                c.lost()
                raise DriverUnavailable(f"connection {self.name!r}: {_reason(e)}") from e

    def _reserved(self, queue: str, d: _Delivery) -> Reserved:
        body = d.body.decode("utf-8", "replace")
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        doc = doc if isinstance(doc, dict) else {}
        try:
            ended = int(doc.get("attempts") or 0)
        except (TypeError, ValueError):
            ended = 0
        # a redelivery is a start that never ended (the worker died), unless we handed it back
        attempts = ended + 1 + (1 if d.redelivered else 0)
        # the id: the document's, else the message's, else a fresh one (a broken body is failed)
        jid = doc.get("id")
        if not isinstance(jid, str) or not jid:
            jid = d.message_id or str(uuid.uuid4())
        return Reserved(id=jid, queue=queue, body=body, attempts=attempts, handle=d)

    def renew(self, jobs: Sequence[Reserved]) -> None:
        """Nothing to do: a delivery stays ours while the consumer's connection lives."""

    def ack(self, job: Reserved) -> None:
        c = self._consumer
        if c is not None:
            with c.lock:
                c.ack(job.handle)

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
            with c.lock:
                try:
                    c.cancel()
                    leftover = [self._reserved(q, d) for q, d in c.take(1_000_000)]
                    if leftover:
                        self.give_back(leftover)
                except (FarmError, *PIKA_ERRORS):
                    pass   # the broker requeues whatever is unacked when the connection goes
            c.stop()
            self._consumer = None
        with self._lock:
            self._reset_publisher()


def _with_attempts(body: str, attempts: int) -> str:
    doc = json.loads(body)
    doc["attempts"] = attempts
    return json.dumps(doc, separators=(",", ":"))


def _reason(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}".splitlines()[0]
