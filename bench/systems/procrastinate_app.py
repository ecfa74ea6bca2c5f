"""The Procrastinate app its workers load: `procrastinate --app=procrastinate_app.app worker`.

The DSN (BENCH_PG_DSN, which puts the run's tables on the search_path) and the queue
(BENCH_QUEUE) come from the environment that procrastinate_sys.py sets. Both tasks only call
`record.write(n)`.
"""
from __future__ import annotations

import os

import procrastinate

import record

QUEUE = os.environ["BENCH_QUEUE"]

# PsycopgConnector is the async connector the worker needs; deferring from sync code
# (App.open(), Task.defer) makes it use a SyncPsycopgConnector under the hood.
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ["BENCH_PG_DSN"]))


@app.task(name="tick", queue=QUEUE)
async def tick(n: int) -> None:
    record.write(n)


@app.task(name="stamp", queue=QUEUE)
async def stamp(n: int) -> None:
    record.write(n)
