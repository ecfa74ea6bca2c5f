"""RabbitMQ plumbing for the amqp driver: the consuming connection (`Consumer`) with its keeper
thread (declaring queues: `amqp_declare`; writing frames and confirms: `amqp_frames`).

pika's BlockingConnection is single-threaded and answers heartbeats only while called: the
consuming connection is used by the worker's thread inside the driver and by a keeper thread
while a job runs. Publishing uses a second connection with publisher confirms, waited for
once per chunk (`Confirms`).
"""
from __future__ import annotations

import collections
import itertools
import select
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pika
import pika.exceptions

from .. import waker
from ..errors import FarmError
from .amqp_declare import declare
from .amqp_frames import send_now

PIKA_ERRORS = (pika.exceptions.AMQPError, OSError)
_HUNG_UP = getattr(select, "POLLRDHUP", 0x2000) | select.POLLHUP | select.POLLERR   # Linux: RDHUP even with data unread


_GENERATIONS = itertools.count(1)       # one number per consuming connection of this process


@dataclass
class Delivery:
    tag: int
    channel: int             # the number of the channel it came on, where its ack goes
    generation: int          # the consuming connection it came on: stale once it is gone
    redelivered: bool
    body: bytes
    message_id: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    deaths: int = 0          # starts of this message that ended unacked, as counted in the store
    delivery_count: int | None = None   # a quorum queue's x-delivery-count: returns of this message


Buffered = list[tuple[str, Delivery]]


class Consumer:
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
    OWED = 0.25          # ... one of a queue we just handed deliveries back to (a loaded broker)

    def __init__(self, params: Sequence[pika.URLParameters], queues: Sequence[str], qos: int, ceiling: int,
                 buffer_wait: float, hand_back: Callable[[Consumer, Buffered], None],
                 queue_type: str = "classic", name: str = "?") -> None:
        self.params, self.queues = list(params), list(queues)   # brokers, tried in turn on each connect
        self.queue_type, self.name = queue_type, name
        self.qos = qos                       # each channel's prefetch count (basic.qos global)
        self.ceiling = ceiling               # each consumer's own: the connection's `prefetch`
        self.buffer_wait = buffer_wait       # how long a delivery may wait in a buffer, seconds
        self.hand_back = hand_back           # republishes deliveries nobody started
        self.buffers: dict[str, collections.deque[Delivery]] = {q: collections.deque() for q in queues}
        self.lock = threading.RLock()
        self.generation = next(_GENERATIONS)
        self.connection: pika.BlockingConnection | None = None
        self.channels: dict[str, Any] = {}   # queue -> the channel it is consumed on
        self.by_number: dict[int, Any] = {}  # channel number -> channel, for is_stale
        self.tags: dict[str, str] = {}       # queue -> our consumer; none while suspended
        self.active = list(queues)           # the queues consumed: all but the paused ones
        self.freed_at: dict[int, float] = {}  # channel number -> when an ack last freed a slot
        self.owed: dict[str, float] = {}     # queue -> until when: we handed its deliveries back
        self.cancelled_by_broker = False
        self.error: str | None = None        # why the last channel went, until reported
        self._polled: tuple[Any, Any] | None = None   # the socket `listen` polls, and its poll object
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
            close_quietly(connection)
            raise
        self.connection, self.channels = connection, channels
        self.by_number = {ch.channel_number: ch for ch in channels.values()}
        if not self.keeper.is_alive():
            self.keeper.start()

    def _channel_for(self, connection: pika.BlockingConnection, queue: str) -> Any:
        channel = connection.channel()
        if self.queue_type == "quorum":      # no global qos: each consumer's own count
            channel.basic_qos(prefetch_count=self.qos)
        else:
            channel.basic_qos(prefetch_count=self.ceiling)
            channel.basic_qos(prefetch_count=self.qos, global_qos=True)
        channel.add_on_cancel_callback(self._on_cancelled)
        declare(connection, queue, self.queue_type, connection_name=self.name)   # before basic_consume
        return channel

    def consuming(self) -> None:
        """Connected, and consuming every queue (again, after a suspend)."""
        self.connected()
        if len(self.tags) < len(self.active):
            for q in self.active:
                if q not in self.tags:
                    self.tags[q] = self.channels[q].basic_consume(q, self._on_message(q, self.generation))

    def only(self, queues: Sequence[str]) -> Buffered:
        """Consume these of our queues only (the others are paused): cancel the consumers of the
        others (prefetch 1 first, as in stop_consuming) and return what they had buffered; a
        queue consumed again gets the channel's prefetch back."""
        self.active = [q for q in self.queues if q in queues]
        out: Buffered = []
        for q in self.queues:
            ch = self.channels.get(q)
            if q in self.active:
                if ch is not None and q not in self.tags and ch.is_open:
                    self._qos(ch, self.qos)
                continue
            if q in self.tags and ch is not None and self.open():
                self._qos(ch, 1)
                self.connection.process_data_events(time_limit=0)
                ch.basic_cancel(self.tags.pop(q))
            self.tags.pop(q, None)
            buf = self.buffers[q]
            out.extend((q, buf.popleft()) for _ in range(len(buf)))
        return out

    def _on_message(self, queue: str, gen: int) -> Callable[..., None]:
        buf = self.buffers[queue]

        def on_message(ch: Any, method: Any, props: Any, body: bytes) -> None:
            self.owed.pop(queue, None)
            count = (props.headers or {}).get("x-delivery-count")
            buf.append(Delivery(method.delivery_tag, ch.channel_number, gen, method.redelivered, body,
                                props.message_id, delivery_count=count if isinstance(count, int) else None))
        return on_message

    def _on_cancelled(self, frame: Any) -> None:
        self.cancelled_by_broker = True      # its queue was deleted: `check` raises, we reconnect

    def open(self) -> bool:
        connection, channels = self.connection, self.channels     # the keeper may reset them meanwhile
        return bool(connection is not None and connection.is_open and channels
                    and all(ch.is_open for ch in list(channels.values())))

    def is_stale(self, d: Delivery) -> bool:
        """The delivery came on a channel that is gone; the broker has requeued its message.
        Its own channel only, asked twice per job: checking all of a 50-queue worker's channels
        each time took a quarter of its time (50 queues drained at 0.46 of one queue's rate)."""
        if d.generation != self.generation:
            return True
        connection, channel = self.connection, self.by_number.get(d.channel)
        return connection is None or not connection.is_open or channel is None or not channel.is_open

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
            self.error = f"consumer lost: {describe_error(error)}"
        conn, self.connection, self.channels, self.tags = self.connection, None, {}, {}
        self.by_number = {}
        self.freed_at.clear()
        self.cancelled_by_broker = False
        self.generation = next(_GENERATIONS)
        for buf in self.buffers.values():
            buf.clear()
        if conn is not None:
            close_quietly(conn)

    def buffered(self) -> bool:
        return any(self.buffers[q] for q in self.queues)

    def listen(self) -> None:
        """Notice, without reading or waiting, a connection whose peer has closed it (a cut: its
        FIN or RST is in), and drop it: what it delivered becomes stale. One poll(2) call, so
        it can run before every job (a read would cost a pika round of its own)."""
        try:
            sock = self.connection._impl._transport._sock if self.connection is not None else None
        except AttributeError:
            sock = None
        if sock is None:
            return
        if self._polled is None or self._polled[0] is not sock:
            poller = select.poll()
            poller.register(sock, _HUNG_UP)
            self._polled = (sock, poller)
        try:
            hung_up = self._polled[1].poll(0)
        except OSError:
            hung_up = True
        if hung_up:
            self.lost(pika.exceptions.StreamLostError("the connection was closed by its peer"))

    def pump(self, seconds: float) -> None:
        """Read from the broker for up to `seconds`, returning early once deliveries arrived."""
        self.connection.process_data_events(time_limit=seconds)
        self.check()

    def wait_for(self, limit: int, deadline: float, order: Sequence[str] | None = None,
                 one_queue: bool = False) -> Buffered:
        """Up to `limit` deliveries as soon as there are some, from the queues in `order` (the
        one the caller passed: a weighted worker's changes every claim; default: as consumed);
        none at `deadline` or a signal."""
        order = [q for q in order if q in self.buffers] if order is not None else self.queues
        if order and not self.buffers[order[0]]:
            self.pump(0)        # what the broker sent while jobs ran waits in the socket until read
        while True:
            if self.buffered():
                refill = self._refilling(order)
                if refill <= 0:
                    return self.take(limit, order, one_queue)
                self.pump(refill)
                continue
            left = deadline - time.monotonic()
            if left <= 0 or waker.signalled():
                return []
            self.pump(min(left, 0.1))

    def _refilling(self, order: Sequence[str]) -> float:
        """How long to wait before handing out only deliveries of later-listed queues: an
        earlier queue whose slot an ack just freed may have its next message on the wire
        (with a prefetch of one, a priority list relies on it)."""
        first = next((i for i, q in enumerate(order) if self.buffers[q]), 0)
        now = time.monotonic()
        waits = []
        for q in order[:first]:
            number = self.channels[q].channel_number
            until = self.freed_at.get(number, 0.0) + self.REFILL
            owed = self.owed.get(q, 0.0)
            if owed > now:      # it has ready messages (ours, handed back): wait for one longer
                until = max(until, owed)
            else:
                self.owed.pop(q, None)
                if until > now and not self._refills(q):
                    self.freed_at.pop(number, None)     # drained: no wait, and no asking again
                    continue
            waits.append(until - now)
        return max(waits, default=0.0)

    def _refills(self, q: str) -> bool:
        """Whether a delivery of `q` is still to come: the broker holds ready messages of it
        (a passive declare on its channel; what the broker sent on that channel before the
        reply is in our buffer after it). One round trip instead of waiting REFILL blind: a
        strict worker on 50 queues waited that at each drained queue, 0.46 of one queue's rate."""
        ready = self.channels[q].queue_declare(q, passive=True).method.message_count
        self.connection.process_data_events(time_limit=0)
        return not self.buffers[q] and ready > 0

    def take(self, limit: int, order: Sequence[str] | None = None, one_queue: bool = False) -> Buffered:
        """Up to `limit` buffered deliveries, the first of `order` (default: as consumed) first.
        A weighted worker's claim (`one_queue`) takes from one queue only, its share being per
        claim; a strict one tops up from the later queues (one claim of 50 spread queues'
        deliveries, not fifty claims: 50 queues drained at 0.46 of one queue's rate without)."""
        out: Buffered = []
        for q in (self.queues if order is None else order):
            buf = self.buffers[q]
            while buf and len(out) < limit:
                out.append((q, buf.popleft()))
            if out and one_queue:
                break
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
            if surplus and keep:
                self.owed[q] = time.monotonic() + self.OWED
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
        fixed when it starts consuming; a channel's applies at once. Quorum queues have no
        channel count: a changed count cancels the consumers, and `consuming` starts them again
        with it (what they had delivered stays ours; what was on the wire pika requeues)."""
        for ch in self.channels.values():
            self._qos(ch, count)
        if self.queue_type == "quorum" and count != self.qos:
            for q, tag in list(self.tags.items()):
                self.channels[q].basic_cancel(tag)
            self.tags = {}
        self.qos = count

    def _qos(self, channel: Any, count: int) -> None:
        channel.basic_qos(prefetch_count=count, global_qos=self.queue_type != "quorum")

    def ack(self, d: Delivery) -> bool:
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
        for ch in self.channels.values():
            self._qos(ch, self.qos)
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


def close_quietly(conn: Any) -> None:
    try:
        conn.close()
    except Exception:
        pass


def describe_error(e: BaseException) -> str:
    text = str(e) or repr(e)
    return f"{type(e).__name__}: {text}".splitlines()[0]
