"""The PgQueuer worker app: `pgq run pgqueuer_app:main`, entrypoints `tick` and `stamp`.

The queue's tables are those of the run's PGQUEUER_PREFIX (set in the worker env by
pgqueuer_sys.py); the DSN comes from BENCH_PG_DSN. Both jobs only call `record.write(n)`.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import asyncpg
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver
from pgqueuer.models import Job

import record


@contextlib.asynccontextmanager
async def main() -> AsyncIterator[PgQueuer]:
    # PgQueuer 1.6's `pgq run` wants a factory returning an async context manager
    # (a plain `async def main() -> PgQueuer`, as in its README, is refused with a TypeError).
    connection = await asyncpg.connect(os.environ["BENCH_PG_DSN"])
    try:
        pgq = PgQueuer(AsyncpgDriver(connection))

        @pgq.entrypoint("tick")
        async def tick(job: Job) -> None:
            record.write(int(job.payload))

        @pgq.entrypoint("stamp")
        async def stamp(job: Job) -> None:
            record.write(int(job.payload))

        yield pgq
    finally:
        await connection.close()
