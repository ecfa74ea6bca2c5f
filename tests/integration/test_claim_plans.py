"""The claim stays an index walk however large the backlog (issue 19): no sort of the queue.

A backlog dispatched with `dispatch_many` shares one `available_at`, so only an index that
ends in the primary key gives `ORDER BY available_at, id` without sorting every ready row.
"""
from __future__ import annotations

import time
import uuid

import pytest

from conftest import DB_BACKENDS
from farm.drivers import sql
from farm.drivers.base import Outgoing


def _backlog(q, n: int) -> None:
    at = time.time() - 1
    body = '{"v": 1, "job": "testjobs:Record", "data": {}}'
    for start in range(0, n, 5000):
        q.push([Outgoing(id=str(uuid.uuid4()), queue="default", body=body, available_at=at)
                for _ in range(min(5000, n - start))])


def _plan(q, backend: str) -> str:
    now = time.time()
    with q._cursor("durable") as cur:
        if backend == "postgresql":
            cur.execute(f"ANALYZE {q.sql.jobs}")
            cur.execute("EXPLAIN " + q.sql.claim_returning, (now + 60, "tok", "default", now, 100))
        elif backend == "mysql":
            cur.execute(f"ANALYZE TABLE {q.sql.jobs}")
            cur.fetchall()
            cur.execute("EXPLAIN " + q.sql.claim_select, ("default", now, 100))
        else:
            cur.execute(f"ANALYZE {q.sql.jobs}")
            cur.execute("EXPLAIN QUERY PLAN " + q.sql.claim_returning, (now + 60, "tok", "default", now, 100))
        return "\n".join(" ".join(str(c) for c in row) for row in cur.fetchall())


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_a_claim_behind_a_backlog_with_one_available_at_sorts_nothing(make_farm, backend):
    # Given 20,000 queued jobs that became available at the same instant (one dispatch_many)
    f = make_farm(backend)
    q = f.queue()
    _backlog(q, 20000)
    # When the database plans the claim of the next 100
    plan = _plan(q, backend)
    # Then it walks the index in order: no sort (PostgreSQL "Sort"/"Incremental Sort", SQLite's
    # temp B-tree, MariaDB's filesort) and no scan of the whole table
    assert "Sort" not in plan and "TEMP B-TREE" not in plan and "filesort" not in plan, plan
    assert "Seq Scan" not in plan and "SCAN " not in plan.replace("COVERING INDEX", ""), plan
    # and a claim takes them in order of id
    got = q.reserve(["default"], 100, 0)
    assert [j.handle for j in got] == sorted(j.handle for j in got)
    assert len(got) == 100


def test_a_postgresql_table_made_before_the_claim_index_gets_it_when_opened(make_farm):
    # Given a jobs table with the index of earlier versions, (queue, available_at) only
    f = make_farm("postgresql")
    q = f.queue()
    t = q.sql.jobs
    with q._cursor("durable") as cur:
        cur.execute(f"DROP INDEX {sql.pg_claim_index(t)}")
        cur.execute(f"CREATE INDEX {t}_queue_available ON {t} (queue, available_at)")
    from farm import app

    app._close_all()
    # When the queue is opened again (any worker or producer)
    q = f.queue()
    _backlog(q, 10)
    # Then the claim index is there and the old one is gone
    with q._cursor("durable") as cur:
        cur.execute("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s", (t,))
        indexes = dict(cur.fetchall())
    assert f"{t}_queue_available" not in indexes
    assert "(queue, available_at, id)" in indexes[sql.pg_claim_index(t)]
    assert len(q.reserve(["default"], 100, 0)) == 10


def _push(q, queue: str, n: int, delay: float = 0.0) -> None:
    at = time.time() + delay
    q.push([Outgoing(id=str(uuid.uuid4()), queue=queue, body="{}", available_at=at) for _ in range(n)])


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_many_queues_are_claimed_in_priority_order_past_the_empty_ones(make_farm, backend):
    # Given twelve queues in priority order, jobs on three of them and a delayed one on a fourth
    f = make_farm(backend)
    q = f.queue()
    queues = [f"q{i}" for i in range(12)]
    _push(q, "q11", 3)
    _push(q, "q5", 2)
    _push(q, "q0", 1)
    _push(q, "q3", 1, delay=3600)
    # When a worker claims from all twelve at once
    got = q.reserve(queues, 100, 0)
    # Then it has every ready job, the earlier queues' first, and not the delayed one
    assert [j.queue for j in got] == ["q0", "q5", "q5", "q11", "q11", "q11"]
    # and with q0 empty, a batch that q5 does not fill goes on to q11
    for j in got:
        q.ack(j)
    _push(q, "q5", 1)
    _push(q, "q11", 2)
    assert [j.queue for j in q.reserve(queues, 2, 0)] == ["q5", "q11"]


@pytest.mark.parametrize("backend", DB_BACKENDS)
def test_an_idle_claim_on_many_queues_wakes_for_the_soonest_delayed_job(make_farm, backend):
    # Given twelve queues, empty but for a job on the eleventh falling due in 0.6 s
    f = make_farm(backend)
    q = f.queue()
    queues = [f"q{i}" for i in range(12)]
    _push(q, "q10", 1, delay=0.6)
    _push(q, "q2", 1, delay=3600)
    # When a worker waits up to 5 s for work
    started = time.monotonic()
    got = q.reserve(queues, 10, 5)
    # Then it has the job soon after it fell due, not at the end of the wait
    assert [j.queue for j in got] == ["q10"]
    assert time.monotonic() - started < 2.5


def test_an_idle_postgresql_worker_holds_two_connections_and_wakes_on_notify(make_farm):
    import psycopg

    import farm
    from conftest import pg_conninfo
    from testjobs import Stamp

    # Given one idle PostgreSQL worker that has run no job (LISTEN rides on its claims'
    # connection; the one for releases and failures is not opened until needed)
    f = make_farm("postgresql")
    p = f.worker("--sleep", "3")
    f.wait_for(lambda: f.store().workers(), timeout=20, what="a heartbeat")

    def held() -> list[str]:
        with psycopg.connect(pg_conninfo(), autocommit=True) as admin:
            rows = admin.execute("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s",
                                 (f"farm {p.pid} %",)).fetchall()
        return sorted(r[0].split()[2] for r in rows)

    # Then it holds two: claims (and LISTEN) and the heart's
    assert held() == ["fast", "renew"]
    # and a job dispatched to it starts within milliseconds, not at its next poll (up to 1 s)
    lags = []
    for i in range(8):
        time.sleep(0.25)
        sent = time.time()
        farm.dispatch(Stamp(str(f.out), str(i)))
        f.wait_for(lambda: len(f.lines()) == i + 1, timeout=10, what=f"job {i}")
        lags.append(float(f.lines()[-1].split()[1]) - sent)
    assert sorted(lags)[4] < 0.15, lags
    assert len(held()) <= 4
