"""PostgreSQL: the workers vacuum the jobs table once its dead rows pile up (drivers/pgtidy.py).

The test server runs with autovacuum off, as some do: without this the table and its claim
index grow with every job ever run and claims slow down with them.
"""
from __future__ import annotations

import time
import uuid

import psycopg

from conftest import pg_conninfo
from farm.drivers import pgtidy
from farm.drivers.base import Outgoing


def _stats(table: str) -> tuple[int, int]:
    with psycopg.connect(pg_conninfo(), autocommit=True) as db:
        row = db.execute("SELECT n_dead_tup, vacuum_count FROM pg_stat_user_tables WHERE relname = %s",
                         (table,)).fetchone()
    return row or (0, 0)


def _churn(q, n: int) -> None:
    """n jobs dispatched, claimed, started and acked: three dead row versions each."""
    at = time.time() - 1
    for start in range(0, n, 5000):
        q.push([Outgoing(id=str(uuid.uuid4()), queue="default", body="{}", available_at=at)
                for _ in range(min(5000, n - start))])
    while jobs := q.reserve(["default"], 500, 0):
        for j in jobs:
            q.starting(j)
            q.ack(j)
    q.close()


def test_a_worker_vacuums_a_jobs_table_full_of_dead_rows(make_farm):
    # Given a jobs table through which 12,000 jobs went (36,000 dead rows, none live)
    f = make_farm("postgresql")
    q = f.queue()
    table = q.sql.jobs
    _churn(q, 12000)
    f.wait_for(lambda: _stats(table)[0] >= pgtidy.DEAD_ROWS, timeout=20, what="the dead rows in the statistics")
    assert _stats(table)[1] == 0
    # When an idle worker starts on it
    f.worker("--sleep", "1")
    # Then within a few seconds one VACUUM has run and the dead rows are gone
    f.wait_for(lambda: _stats(table)[1] >= 1, timeout=20, what="a VACUUM of the jobs table")
    assert _stats(table)[0] < pgtidy.DEAD_ROWS


def test_a_table_with_few_dead_rows_is_left_to_autovacuum(make_farm):
    # Given a jobs table with a few hundred dead rows
    f = make_farm("postgresql")
    q = f.queue()
    _churn(q, 300)
    f.wait_for(lambda: _stats(q.sql.jobs)[0] > 0, timeout=20, what="the dead rows in the statistics")
    # When the heart's check runs
    q = f.queue()
    assert q.tidy() is None
    # Then no VACUUM is started
    assert q._vacuum.thread is None
    assert _stats(q.sql.jobs)[1] == 0


def test_worker_statements_walk_indexes_even_when_the_statistics_say_the_table_is_empty(make_farm):
    # Given a jobs table vacuumed while drained (reltuples 0) and 20,000 jobs queued since,
    # with no ANALYZE after them (autovacuum off or behind)
    f = make_farm("postgresql")
    q = f.queue()
    table = q.sql.jobs
    _churn(q, 2000)
    with psycopg.connect(pg_conninfo(), autocommit=True) as db:
        db.execute(f"VACUUM (ANALYZE) {table}")
        assert db.execute("SELECT reltuples FROM pg_class WHERE relname = %s", (table,)).fetchone()[0] == 0
    q = f.queue()
    at = time.time() - 1
    for _ in range(4):
        q.push([Outgoing(id=str(uuid.uuid4()), queue="default", body="{}", available_at=at) for _ in range(5000)])
    held = q.reserve(["default"], 100, 0)
    now = time.time()
    # When a worker's connections plan its claim and its renew
    with q._cursor("fast") as cur:
        cur.execute("EXPLAIN " + q.sql.claim_returning, (now + 60, "tok", "default", now, 100))
        claim = "\n".join(r[0] for r in cur.fetchall())
    with q._cursor("renew") as cur:
        cur.execute("EXPLAIN " + q.sql.renew_ids([j.handle for j in held]), (now + 60, q.token))
        renew = "\n".join(r[0] for r in cur.fetchall())
    # Then both pick their rows once and walk an index: no scan of the table, no bitmap of the
    # whole queue, no sort, and no semi join re-running the locking sub-select for every row
    for plan in (claim, renew):
        assert "Seq Scan" not in plan and "Bitmap" not in plan and "Sort" not in plan, plan
        assert "Semi Join" not in plan and "InitPlan" in plan, plan
    assert "queue_available_id" in claim, claim
    # and a claim of the next 100 takes milliseconds
    started = time.monotonic()
    assert len(q.reserve(["default"], 100, 0)) == 100
    assert time.monotonic() - started < 0.5


def test_a_vacuum_held_back_by_an_open_snapshot_is_not_repeated_every_half_minute(make_farm):
    # Given a jobs table full of dead rows that an open REPEATABLE READ snapshot still sees
    f = make_farm("postgresql")
    q = f.queue()
    table = q.sql.jobs
    holder = psycopg.connect(pg_conninfo())
    holder.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    holder.execute("SELECT 1").fetchall()
    try:
        _churn(q, 12000)
        f.wait_for(lambda: _stats(table)[0] >= pgtidy.DEAD_ROWS, timeout=20, what="the dead rows in the statistics")
        q = f.queue()
        # When the heart's check runs, and again
        assert q.tidy() is None
        q._vacuum.thread.join(30)
        said = q.tidy()
        # Then one VACUUM ran, found it could remove nothing, said why, and waits before the next
        assert said is not None and "open transaction" in said, said
        assert q._vacuum.thread is not None and not q._vacuum.thread.is_alive()
        assert _stats(table)[1] == 1
        assert q.tidy() is None and _stats(table)[1] == 1
    finally:
        holder.rollback()
        holder.close()
