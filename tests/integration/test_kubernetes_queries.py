"""The KEDA ready-count queries (#23) run on the real servers against the database driver's table."""
from __future__ import annotations

import time
import uuid

import pytest

from conftest import mysql_params, pg_conninfo
from farm import manifest
from farm.drivers.base import Outgoing
from farm.render import keda


def _run(backend: str, sql: str) -> int | None:
    """One statement on the test server; the first column of its first row, if it returns rows."""
    if backend == "postgresql":
        import psycopg

        with psycopg.connect(pg_conninfo(), autocommit=True) as c:
            cur = c.execute(sql)
            return int(cur.fetchone()[0]) if cur.description else None
    import pymysql

    c = pymysql.connect(autocommit=True, **mysql_params())
    try:
        with c.cursor() as cur:
            cur.execute(sql)
            return int(cur.fetchone()[0]) if cur.description else None
    finally:
        c.close()


@pytest.mark.parametrize("backend", ["postgresql", "mysql"])
def test_the_keda_query_counts_the_jobs_a_worker_could_claim_now(make_farm, backend):
    # Given ready jobs on the pipeline's queues (one named with a quote), delayed ones, jobs on
    # another queue, and one job a worker holds
    f = make_farm(backend)
    table = manifest.load(f.manifest).connections["main"].table
    q = f.queue()
    past, later = time.time() - 5, time.time() + 600

    def job(queue: str, at: float) -> Outgoing:
        return Outgoing(id=str(uuid.uuid4()), queue=queue, body="{}", available_at=at)

    q.push([job("emails", past) for _ in range(3)] + [job("o'hare", past)]
           + [job("emails", later) for _ in range(2)] + [job("other", past) for _ in range(2)])
    (held,) = q.reserve(["emails"], 1, 0)
    query = keda.ready_query(table, ["emails", "o'hare"], backend)
    # When KEDA's query runs
    # Then it counts the ready jobs of those queues only: not the held, delayed or other ones
    assert _run(backend, query) == 3
    # And a reservation that lapsed (its worker died) counts again, as a worker could claim it
    _run(backend, f"UPDATE {table} SET available_at = {past} WHERE uuid = '{held.id}'")
    assert _run(backend, query) == 4

