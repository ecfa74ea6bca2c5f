"""Writing to RabbitMQ with fewer system calls and round trips than pika's blocking API makes:
one write for a batch of methods (`one_write`), an ack straight to the socket (`send_now`), and
a confirming channel that waits once per batch (`Confirms`)."""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

import pika
import pika.exceptions


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


class Confirms:
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
