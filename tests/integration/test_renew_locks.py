"""The heart's renew must never wait on a row lock (PostgreSQL).

Seen in `scripts/bench --workflows` (one worker, no kill): the worker's pipelined acks (one
transaction deleting several rows) and the heart's renew of the rows it still held locked the
same rows in different orders; PostgreSQL broke the deadlock by aborting the acks, and a job
that had run was run again after retry_after. A renew that skips locked rows cannot be part of
such a cycle: a row someone has locked is being acked, or is renewed on the next beat.
"""
from __future__ import annotations

import threading
import time

import psycopg

import farm
from conftest import pg_conninfo
from testjobs import Record


def test_renew_skips_a_row_another_transaction_has_locked_instead_of_waiting_for_it(make_farm):
    # Given two jobs a worker holds, one of them locked by another transaction (as the
    # worker's own pipelined acks lock the rows they delete)
    f = make_farm("postgresql", retry_after=30)
    farm.dispatch_many([Record(str(f.out), "a"), Record(str(f.out), "b")])
    q = f.queue()
    held = q.reserve(["default"], 2, 0)
    assert len(held) == 2
    table = farm.app.manifest().connections["main"].table
    locker = psycopg.connect(pg_conninfo())
    try:
        locker.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (held[0].handle,))
        before = dict(locker.execute(f"SELECT id, available_at FROM {table}").fetchall())
        # When the heart renews both
        done = threading.Event()
        threading.Thread(target=lambda: (q.renew(held), done.set()), daemon=True).start()
        # Then the renew returns at once (it did not wait for the lock) and renewed the other
        assert done.wait(5), "renew waited on a row lock held by another transaction"
        locker.rollback()
        after = dict(locker.execute(f"SELECT id, available_at FROM {table}").fetchall())
        assert after[held[1].handle] > before[held[1].handle]
        assert after[held[0].handle] == before[held[0].handle]     # skipped: renewed next beat
    finally:
        locker.close()


def _available_at(table: str, row: int) -> float:
    with psycopg.connect(pg_conninfo(), autocommit=True) as db:
        return db.execute(f"SELECT available_at FROM {table} WHERE id = %s", (row,)).fetchone()[0]


def test_renew_leaves_a_fresh_unanswered_ack_alone_and_takes_it_once_it_stalls(make_farm, monkeypatch):
    from farm.drivers import pgacks

    # Given a worker that acked two jobs on its pipeline, the first ack stuck behind another
    # session's row lock, so the second's DELETE is queued behind it, unanswered
    monkeypatch.setattr(pgacks, "STALLED_AFTER", 1.0)
    f = make_farm("postgresql", retry_after=30)
    farm.dispatch_many([Record(str(f.out), "a"), Record(str(f.out), "b")])
    q = f.queue()
    (first,), (second,) = q.reserve(["default"], 1, 0), q.reserve(["default"], 1, 0)   # no start rides on an ack
    table = farm.app.manifest().connections["main"].table
    locker = psycopg.connect(pg_conninfo())
    try:
        locker.execute(f"SELECT id FROM {table} WHERE id = %s FOR UPDATE", (first.handle,))
        q.ack(first)
        q.ack(second)
        was = _available_at(table, second.handle)
        assert q.has_unsettled()
        # When the heart renews at once
        q.renew([])
        # Then it left the second's row alone: renewing it would lock the row its own DELETE
        # is about to take, and every ack would wait for the renew
        assert _available_at(table, second.handle) == was
        # and says when it will need renewing: once it is STALLED_AFTER old
        assert 0 < q.renew_due_in() <= 1.0
        # and once the ack has gone unanswered for STALLED_AFTER, a renew covers it (the
        # connection may be stalled: its reservation must not lapse meanwhile)
        time.sleep(1.2)
        q.renew([])
        assert _available_at(table, second.handle) > was
    finally:
        locker.rollback()
        locker.close()
    # and when the lock goes, both acks land
    deadline = time.monotonic() + 10
    while q.has_unsettled() and time.monotonic() < deadline:
        q._pipelined(lambda acks: acks.poll())
        time.sleep(0.05)
    with psycopg.connect(pg_conninfo(), autocommit=True) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0
    assert q.renew_due_in() is None

