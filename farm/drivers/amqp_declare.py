"""Declaring the amqp driver's queues: classic or quorum (`queue_type:`), and their delay queues.

A farm queue `Q` is the durable queue `Q`; a delay is the durable queue `Q.delay.<ms>` whose
messages expire after `<ms>` and are dead-lettered back to `Q`. On a quorum connection both are
quorum queues (replicated on a cluster); the delay queues dead-letter *at-least-once*
(`x-dead-letter-strategy`, which needs `x-overflow: reject-publish`): RabbitMQ's default for a
quorum queue is at-most-once, which loses a delayed job whose dead-lettering a node failure
interrupts.
"""
from __future__ import annotations

from typing import Any

import pika.exceptions

from ..errors import UsageError

CLASSIC_ARGS = {"x-queue-version": 2}
QUORUM_ARGS = {"x-queue-type": "quorum"}
QUORUM_DELAY_ARGS = {"x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish"}


class QueueTypeMismatch(UsageError):
    """A queue exists on RabbitMQ with the other queue type than the connection's `queue_type`."""


def queue_arguments(queue_type: str, target: str | None = None, delay_ms: int = 0) -> dict[str, Any]:
    """The arguments jobfarm declares a queue with: `target`'s delay queue when `delay_ms`."""
    args: dict[str, Any] = dict(QUORUM_ARGS if queue_type == "quorum" else CLASSIC_ARGS)
    if delay_ms:
        args.update({"x-message-ttl": delay_ms, "x-dead-letter-exchange": "",
                     "x-dead-letter-routing-key": target})
        if queue_type == "quorum":
            args.update(QUORUM_DELAY_ARGS)
    return args


def delay_bucket(seconds: float) -> int:
    """Milliseconds of the TTL queue for a delay, rounded so queues stay few (about 5% at most)."""
    ms = max(1, int(seconds * 1000))
    step = 100 if ms < 10_000 else 1000 if ms < 120_000 else 10_000 if ms < 3_600_000 else 60_000
    return -(-ms // step) * step


def declare(connection: Any, name: str, queue_type: str = "classic", target: str | None = None,
            delay_ms: int = 0, connection_name: str = "?") -> None:
    """Make sure the durable queue `name` exists, of the connection's queue type.

    A queue that exists with other arguments (made by another program) is used as it is, since
    the broker refuses a redeclare that differs. One of the other queue type is refused here
    (QueueTypeMismatch), naming the queue and the key: a classic consumer of a quorum queue
    works, but the queue would not be what the manifest says (not replicated, or no delivery
    count). The broker names only the first argument that differs, so a refusal that does not
    name `x-queue-type` is told apart by declaring it as jobfarm would with the other type."""
    wanted = queue_arguments(queue_type, target, delay_ms)
    refused = _refusal(connection, name, wanted)
    if refused is None:
        return
    other = "classic" if queue_type == "quorum" else "quorum"
    if "'x-queue-type'" in refused or _refusal(connection, name, queue_arguments(other, target, delay_ms)) is None:
        raise QueueTypeMismatch(
            f"queue {name!r} exists on RabbitMQ as a {other} queue but connections.{connection_name}.queue_type "
            f"is {queue_type}: set queue_type: {other}, or move its jobs and delete the queue")


def _refusal(connection: Any, name: str, arguments: dict[str, Any]) -> str | None:
    """None once the queue exists with these arguments; else the broker's PRECONDITION_FAILED
    text (the queue exists with other arguments). Other refusals propagate."""
    probe = connection.channel()
    try:
        probe.queue_declare(name, durable=True, arguments=arguments)
        return None
    except pika.exceptions.ChannelClosedByBroker as e:
        if e.reply_code != 406:
            raise
        return str(e.reply_text)
    finally:
        if probe.is_open:
            probe.close()
