"""Issue 14: `farm.reserve()` for consumer loops written by hand, on every driver.

Reserve the next job, delete it when done, release it for later, bury it aside (the failed
jobs), kick buried jobs back with `farmctl retry`; a held reservation is kept.
"""
from __future__ import annotations

import gc
import time

import pytest

import farm
from conftest import BACKENDS, DB_BACKENDS
from testjobs import Record

EPS = 0.02


@pytest.fixture(params=BACKENDS)
def farm_(request, make_farm):
    return make_farm(request.param, retry_after=2)


@pytest.fixture(params=DB_BACKENDS)
def db_farm(request, make_farm):
    return make_farm(request.param, retry_after=2)


def ready(f, queue="default"):
    return f.queue().counts().get(queue, {}).get("ready", 0)


def test_issue_14_reserve_hands_out_the_next_job_with_its_document_and_delete_removes_it(farm_):
    # Given two jobs on a queue
    first = farm.dispatch(Record(str(farm_.out), "a"), queue="mail")
    second = farm.dispatch(Record(str(farm_.out), "b"), queue="mail")
    # When a hand-written consumer reserves one
    job = farm.reserve("mail", timeout=5)
    # Then it is the first, with its document, decoded data and first attempt
    assert (job.id, job.queue, job.attempts, job.connection) == (first, "mail", 1, "main")
    assert job.job == "testjobs:Record" and job.document["id"] == first
    assert job.data == {"path": str(farm_.out), "tag": "a", "seconds": 0.0}
    # and once deleted it is gone, while the second is still there
    job.delete()
    nxt = farm.reserve(["other", "mail"], timeout=5)
    assert nxt.id == second
    nxt.delete()
    assert farm.reserve("mail", timeout=0.2) is None
    assert ready(farm_, "mail") == 0
    # and a job settled once cannot be settled again
    with pytest.raises(farm.FarmError, match="already deleted"):
        job.delete()


def test_issue_14_release_puts_the_job_back_after_its_delay_counting_the_attempt(farm_):
    jid = farm.dispatch(Record(str(farm_.out), "a"))
    job = farm.reserve(timeout=5)
    # When it is released for a second
    released = time.monotonic()
    job.release(1)
    # Then it comes back no sooner, as its second attempt
    again = farm.reserve(timeout=10)
    assert time.monotonic() - released >= 1 - EPS
    assert (again.id, again.attempts, again.document["attempts"]) == (jid, 2, 1)
    again.delete()


def test_issue_14_a_buried_job_is_a_failed_job_and_farmctl_retry_kicks_it_back(farm_):
    jid = farm.dispatch(Record(str(farm_.out), "a"))
    # When the consumer buries it with a reason
    farm.reserve(timeout=5).bury("no such customer")
    # Then it is among the failed jobs, with that reason, and off the queue
    (entry,) = farm_.store().failed()
    assert (entry.id, entry.exception, entry.queue) == (jid, "no such customer", "default")
    assert farm.reserve(timeout=0.2) is None
    # and `farmctl retry` kicks it back, attempts reset
    farm_.farmctl("retry", jid, check=True)
    kicked = farm.reserve(timeout=5)
    assert (kicked.id, kicked.attempts) == (jid, 1)
    kicked.delete()
    assert farm_.store().failed() == []


def test_issue_14_a_consumer_may_hold_several_reservations_at_once(farm_):
    ids = [farm.dispatch(Record(str(farm_.out), str(n))) for n in range(3)]
    # When one process reserves three jobs without settling any
    held = [farm.reserve(timeout=5) for _ in range(3)]
    # Then it holds all three, each once
    assert [j.id for j in held] == ids
    assert farm.reserve(timeout=0.2) is None
    for j in held:
        j.delete()
    assert ready(farm_) == 0


@pytest.mark.parametrize("backend", BACKENDS + ["sync"])
def test_issue_14_reserve_on_an_empty_queue_waits_out_its_timeout_and_returns_none(make_farm, backend):
    make_farm(backend)
    started = time.monotonic()
    assert farm.reserve("nothing-here", timeout=0.5) is None
    assert 0.5 - EPS <= time.monotonic() - started < 5


def test_issue_14_a_held_reservation_is_renewed_past_retry_after(db_farm):
    from farm.drivers.database import DatabaseQueue

    # Given a job reserved by hand, with retry_after 2 s
    jid = farm.dispatch(Record(str(db_farm.out), "a"))
    job = farm.reserve(timeout=5)
    other = DatabaseQueue(farm.app.manifest().connection("main"))    # another consumer's token
    try:
        # When it is held for twice retry_after
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            # Then no other consumer is handed it meanwhile
            assert other.reserve(["default"], 1, 0.2) == []
        # and it is still this consumer's to delete: its row goes (PostgreSQL's delete is
        # pipelined, so it may show a moment later), and a row gone cannot come back when the
        # reservation would have lapsed (a row is always ready, delayed or reserved)
        job.delete()
        db_farm.wait_for(lambda: not any(db_farm.queue().counts().get("default", {}).get(k)
                                         for k in ("ready", "delayed", "reserved")), timeout=5, what="the row to go")
        assert other.reserve(["default"], 1, 0.2) == []
    finally:
        other.close()
    assert jid == job.id


def test_issue_14_a_reservation_dropped_unsettled_lapses_after_retry_after(db_farm):
    jid = farm.dispatch(Record(str(db_farm.out), "a"))
    job = farm.reserve(timeout=5)
    assert job.id == jid
    # When the caller drops it without deleting, releasing or burying it
    del job
    gc.collect()
    # Then it is no longer renewed, and handed out again once retry_after has passed, to a
    # consumer already waiting for it (not at the end of that consumer's timeout)
    waiting = time.monotonic()
    again = farm.reserve(timeout=10)
    assert again.id == jid and again.attempts == 2
    assert time.monotonic() - waiting < 2 + 3
    again.delete()


def test_issue_14_on_rabbitmq_a_held_delivery_outlives_the_broker_heartbeat(make_farm):
    from farm.drivers.amqp import AmqpQueue

    # Given a consumer holding a job on a connection with a 2 s heartbeat
    f = make_farm("amqp", heartbeat=2)
    jid = farm.dispatch(Record(str(f.out), "a"))
    job = farm.reserve(timeout=5)
    m = farm.app.manifest()
    other = AmqpQueue(m.connection("main"), store=farm.app.store("main"))
    try:
        # When it holds it for three heartbeats
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            # Then no other consumer gets it (the connection was kept alive)
            assert other.reserve(["default"], 1, 0.3) == []
        job.delete()
        assert other.reserve(["default"], 1, 1.0) == []
    finally:
        other.close()
    assert job.id == jid and job.settled == "deleted"
