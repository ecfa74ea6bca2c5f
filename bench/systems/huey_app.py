"""The Huey app its consumer imports (`huey_consumer huey_app.huey`): SqliteHuey, two no-op tasks.

The database file and the queue name come from the environment (HUEY_DB, BENCH_QUEUE), set by
huey_sys.py for both the dispatching process and the consumer.
"""
from __future__ import annotations

import os

from huey import SqliteHuey

import record

# Defaults otherwise: results=True (a task returning None stores nothing, store_none=False),
# WAL journal, busy timeout 5 s, fsync left to SQLite's default.
huey = SqliteHuey(name=os.environ["BENCH_QUEUE"], filename=os.environ["HUEY_DB"])


@huey.task()
def tick(n: int) -> None:
    record.write(n)


@huey.task()
def stamp(n: int) -> None:
    record.write(n)
