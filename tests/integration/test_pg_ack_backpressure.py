"""PostgreSQL's pipelined acks are bounded: a server slower than the worker makes it wait.

Unbounded, a stalled ack let tens of thousands pile up unread; the heart renews every
unanswered ack's row, and one such renew held the acks' row locks for minutes.
"""
from __future__ import annotations

import time
import uuid

import psycopg
import pytest

from conftest import pg_conninfo
from farm.drivers import pgacks
from farm.drivers.base import Outgoing


def _claimed(f, n: int) -> tuple:
    """The farm's queue and n jobs claimed from it."""
    q = f.queue()
    q.push([Outgoing(id=str(uuid.uuid4()), queue="default", body="{}", available_at=time.time() - 1)
            for _ in range(n)])
    held = []
    while len(held) < n:
        held += q.reserve(["default"], 100, 0)
    return q, held


def test_acks_stop_piling_up_behind_a_blocked_one_and_give_up_on_a_silent_server(make_farm, monkeypatch):
    # Given a PostgreSQL queue with 800 claimed jobs, the first of them row-locked by another session
    q, held = _claimed(make_farm("postgresql"), 800)
    monkeypatch.setattr(pgacks, "CATCH_UP_SECONDS", 1.5)
    blocker = psycopg.connect(pg_conninfo())
    blocker.execute(f"SELECT 1 FROM {q.sql.jobs} WHERE id = %s FOR UPDATE", (held[0].handle,))
    acks = pgacks.PipelinedAcks(lambda: psycopg.connect(pg_conninfo(), autocommit=True), q.sql.jobs)
    try:
        # When the worker acks them one after the other
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="acks unanswered"):
            for job in held:
                acks.send(job.handle, q.token)
        # Then it stopped sending once MAX_UNANSWERED were unread, waited for replies, and gave
        # up when none came (the driver then acks them again on a new connection)
        assert len(acks.unconfirmed()) == pgacks.MAX_UNANSWERED + 1
        assert time.monotonic() - started >= 1.5
    finally:
        blocker.rollback()
        blocker.close()
        acks.reset()


def test_acks_wait_out_a_slow_server_and_go_on(make_farm):
    # Given 800 claimed jobs, the first row-locked by another session for one second
    q, held = _claimed(make_farm("postgresql"), 800)
    blocker = psycopg.connect(pg_conninfo())
    blocker.execute(f"SELECT 1 FROM {q.sql.jobs} WHERE id = %s FOR UPDATE", (held[0].handle,))
    import threading

    threading.Timer(1.0, blocker.rollback).start()
    acks = pgacks.PipelinedAcks(lambda: psycopg.connect(pg_conninfo(), autocommit=True), q.sql.jobs)
    # When the worker acks all of them
    for job in held:
        acks.send(job.handle, q.token)
        assert acks.pending <= pgacks.MAX_UNANSWERED + 1
    acks.settle()
    # Then every ack landed, none given up
    assert acks.pending == 0
    with psycopg.connect(pg_conninfo()) as db:
        assert db.execute(f"SELECT COUNT(*) FROM {q.sql.jobs}").fetchone()[0] == 0
    blocker.close()
    acks.reset()
