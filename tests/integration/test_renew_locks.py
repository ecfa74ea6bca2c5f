"""The heart's renew must never wait on a row lock (PostgreSQL).

Seen in `scripts/bench --workflows` (one worker, no kill): the worker's pipelined acks (one
transaction deleting several rows) and the heart's renew of the rows it still held locked the
same rows in different orders; PostgreSQL broke the deadlock by aborting the acks, and a job
that had run was run again after retry_after. A renew that skips locked rows cannot be part of
such a cycle: a row someone has locked is being acked, or is renewed on the next beat.
"""
from __future__ import annotations

import threading

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
