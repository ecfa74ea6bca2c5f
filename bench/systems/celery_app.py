"""The Celery app the celery peer's workers load (`celery -A celery_app worker`).

Broker: RabbitMQ or Redis ($BENCH_AMQP_URL, whichever URL it names). No result backend is configured, so results are not stored
(Celery's DisabledBackend). The queue is $BENCH_QUEUE, made the default queue so that
`tick.delay(n)` is routed to it; everything else is Celery's default configuration.
"""
from __future__ import annotations

import os

from celery import Celery

import record

AMQP_URL = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
QUEUE = os.environ["BENCH_QUEUE"]

app = Celery("celery_app", broker=AMQP_URL)
app.conf.task_default_queue = QUEUE           # = the worker's -Q; exchange and routing key take its name
app.conf.broker_connection_retry_on_startup = True   # the default behaviour; set only to silence 5.x's warning


@app.task(name="tick")
def tick(n: int) -> None:
    record.write(n)


@app.task(name="stamp")
def stamp(n: int) -> None:
    record.write(n)
