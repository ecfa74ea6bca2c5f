"""The Dramatiq broker and actors the dramatiq peer's workers load (`dramatiq dramatiq_app`).

RabbitmqBroker (or RedisBroker, for a redis:// URL) on $BENCH_AMQP_URL with its defaults (confirm_delivery=False unless
$BENCH_CONFIRM=1, the default middleware); the actors are on queue $BENCH_QUEUE.
"""
from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

import record

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ["BENCH_QUEUE"]

# BENCH_CONFIRM=1 (the dramatiq_confirm system) turns on publisher confirms, jobfarm's guarantee;
# a redis:// URL gets Dramatiq's RedisBroker with its defaults
if AMQP_URL.startswith("redis"):
    from dramatiq.brokers.redis import RedisBroker

    broker = RedisBroker(url=AMQP_URL)
else:
    broker = RabbitmqBroker(url=AMQP_URL, confirm_delivery=os.environ.get("BENCH_CONFIRM") == "1")
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def tick(n: int) -> None:
    record.write(n)


@dramatiq.actor(queue_name=QUEUE)
def stamp(n: int) -> None:
    record.write(n)
