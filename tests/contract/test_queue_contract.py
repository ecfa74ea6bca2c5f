"""One driver contract, run against every backend on this machine (the real servers).

`farm_` runs a test on every queue backend; `db_farm` on the database dialects and redis, for
what depends on retry_after (AMQP redelivers when a connection dies, never by time: tested with
SIGKILL in the integration suite); `any_farm` adds the `sync` driver, whose push runs the job
at once, so it only meets the parts of the contract about an empty queue.
"""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from conftest import BACKENDS, LEASE_BACKENDS
from farm.drivers.base import FailedJob, Outgoing

EPS = 0.02          # clock granularity: a wait or a delay may end this much early, never more
SLACK = 1.5         # how much later than asked a wait may end on a loaded 2-core machine


@pytest.fixture(params=BACKENDS)
def farm_(request, make_farm):
    return make_farm(request.param, retry_after=2)


@pytest.fixture(params=LEASE_BACKENDS)
def db_farm(request, make_farm):
    return make_farm(request.param, retry_after=2)


@pytest.fixture(params=BACKENDS + ["sync"])
def any_farm(request, make_farm):
    return make_farm(request.param, retry_after=2)


def doc(queue: str = "default", tag: str = "x", attempts: int = 0) -> Outgoing:
    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": "testjobs:Noop", "data": {"tag": tag}, "queue": queue,
                       "attempts": attempts})
    return Outgoing(id=jid, queue=queue, body=body, available_at=time.time(), attempts=attempts)


def later(o: Outgoing, seconds: float) -> Outgoing:
    return Outgoing(id=o.id, queue=o.queue, body=o.body, available_at=time.time() + seconds)


def job_doc(job: str, data: dict, queue: str = "default") -> Outgoing:
    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": job, "data": data, "queue": queue, "attempts": 0})
    return Outgoing(id=jid, queue=queue, body=body, available_at=time.time())


def row(f, jid: str):
    """The job's row as stored (every column), or None: read beside the queue under test. On
    redis: every key of the queue that mentions the job."""
    from farm import app

    q = f.queue()
    if f.backend == "redis":
        k, c = q._keys("default"), q.client
        keys = (c.zscore(k[2], jid), c.hget(k[3], jid), c.hget(k[4], jid), c.hget(k[5], jid),
                c.zscore(k[1], jid), c.hget(k[6], jid), tuple(b for b in c.lrange(k[0], 0, -1) if jid in b))
        return None if keys == (None,) * 6 + ((),) else keys
    table = app.manifest().connections["main"].table
    sql = f"SELECT id, uuid, queue, payload, attempts, available_at, reserved_by FROM {table} WHERE uuid = %s"
    with q._cursor() as cur:
        cur.execute(sql.replace("%s", "?") if q.dialect == "sqlite" else sql, (jid,))
        rows = cur.fetchall()
    assert len(rows) <= 1, rows
    return tuple(rows[0]) if rows else None


def drain(q, queues=("default",), limit=100, wait=0.5):
    got = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        batch = q.reserve(list(queues), limit, wait)
        if not batch:
            break
        got.extend(batch)
    return got


def test_a_pushed_job_is_reserved_once_with_its_body_and_first_attempt(farm_):
    q = farm_.queue()
    o = doc()
    q.push([o])
    got = drain(q)
    assert [(r.id, r.queue, r.attempts) for r in got] == [(o.id, "default", 1)]
    assert json.loads(got[0].body)["data"] == {"tag": "x"}
    q.ack(got[0])
    assert q.reserve(["default"], 10, 0.2) == []


def test_an_empty_queue_returns_nothing_after_waiting_out_the_wait(any_farm):
    # Given an empty queue
    q = any_farm.queue()
    # When a consumer reserves with a wait
    t = time.monotonic()
    got = q.reserve(["default"], 10, 0.5)
    elapsed = time.monotonic() - t
    # Then it gets nothing, having waited the whole wait but not much longer
    assert got == []
    assert 0.5 - EPS <= elapsed < 0.5 + SLACK


def test_jobs_come_out_in_the_order_they_went_in(farm_):
    q = farm_.queue()
    items = [doc(tag=str(i)) for i in range(20)]
    q.push(items)
    got = drain(q)
    assert [r.id for r in got] == [o.id for o in items]
    for r in got:
        q.ack(r)


def test_a_queue_listed_first_is_always_served_first(farm_):
    q = farm_.queue()
    low = [doc("low") for _ in range(3)]
    high = [doc("high") for _ in range(3)]
    q.push(low)
    q.push(high)
    got = []
    for _ in range(6):
        batch = q.reserve(["high", "low"], 1, 1.0)
        got.extend(batch)
        for r in batch:
            q.ack(r)
    assert [r.queue for r in got] == ["high"] * 3 + ["low"] * 3


def test_a_delayed_job_is_not_reservable_before_its_time_and_is_after(farm_):
    # Given a job pushed with a delay of 1.5 s
    q = farm_.queue()
    pushed = time.time()
    o = later(doc(), 1.5)
    q.push([o])
    # When a consumer waits for less than the delay
    t = time.monotonic()
    early = q.reserve(["default"], 10, 0.7)
    # Then it gets nothing, after its whole wait
    assert early == [] and time.monotonic() - t >= 0.7 - EPS
    # and a longer wait gets the job, not before its time
    got = q.reserve(["default"], 10, 1.5 + 3.0)
    got_at = time.time()
    assert [r.id for r in got] == [o.id]
    assert got_at - pushed >= 1.5 - EPS
    q.ack(got[0])


def test_counts_show_ready_delayed_reserved_and_failed(farm_):
    q = farm_.queue()
    q.push([doc(), doc(), later(doc(), 60)])
    if farm_.backend == "amqp":
        q.prefetch = 1          # else the broker counts the prefetched one as unacked, not ready
    (r,) = q.reserve(["default"], 1, 1.0)
    c = q.counts()["default"]
    # AMQP cannot count unacked messages: reserved is unknown there, not 0
    assert (c["ready"], c["delayed"], c["reserved"]) == (1, 1, None if farm_.backend == "amqp" else 1)
    q.fail(r, r.body, "ValueError: no")
    assert q.counts()["default"]["failed"] == 1


def test_release_puts_the_job_back_after_its_delay_keeping_its_attempts(farm_):
    # Given a reserved job
    q = farm_.queue()
    q.push([doc()])
    (r,) = drain(q)
    assert q.starting(r)
    body = json.loads(r.body)
    body["attempts"] = 1
    # When it is released with a delay of 1 s
    released = time.time()
    q.release(r, 1.0, json.dumps(body))
    # Then it cannot be reserved before the delay is over
    assert q.reserve(["default"], 10, 0.4) == []
    # and afterwards it comes back with the new body, its attempts counted on
    (again,) = q.reserve(["default"], 10, 1.0 + 3.0)
    assert time.time() - released >= 1.0 - EPS
    assert again.id == r.id and again.attempts == 2 and json.loads(again.body)["attempts"] == 1
    q.ack(again)


def test_a_job_given_back_unstarted_uses_no_attempt(farm_):
    q = farm_.queue()
    q.push([doc(), doc()])
    got = q.reserve(["default"], 10, 1.0)
    assert len(got) == 2
    q.give_back(got)
    again = drain(q)
    assert sorted(r.id for r in again) == sorted(r.id for r in got)
    assert [r.attempts for r in again] == [1, 1]
    for r in again:
        q.ack(r)


def test_a_started_job_given_back_takes_its_start_back(farm_):
    # Given a job whose start was written (the worker was stopped while running it, and
    # abandons it), and one more claimed behind it
    q = farm_.queue()
    q.push([doc(), doc()])
    got = q.reserve(["default"], 10, 1.0)
    assert len(got) == 2 and q.starting(got[0])
    # When both are handed back
    q.give_back(got)
    # Then neither has used an attempt
    again = drain(q)
    assert sorted((r.id, r.attempts) for r in again) == sorted((r.id, 1) for r in got)
    for r in again:
        q.ack(r)


def test_a_dead_workers_batch_counts_a_start_only_for_the_job_it_was_running(db_farm):
    from farm import app

    # Given a worker (retry_after 2 s) that claimed four jobs, ran the first to its ack (which
    # writes the second's start), started the second, and died running it
    q = db_farm.queue()
    other = app.open_queue(app.manifest(), "main")
    q.push([doc(tag=str(i)) for i in range(4)])
    first, second, *rest = q.reserve(["default"], 4, 1.0)
    assert len(rest) == 2
    assert q.starting(first)
    q.ack(first)
    assert q.starting(second)
    q.close()
    # When another worker gets them after retry_after
    again = {r.id: r.attempts for r in other.reserve(["default"], 10, 2.0 + 3.0)}
    # Then only the one that was running comes back as a second attempt (one death); the two
    # never started come back as first attempts, as though never claimed
    assert again == {second.id: 2, rest[0].id: 1, rest[1].id: 1}
    other.close()


def test_a_failed_job_leaves_the_queue_for_the_failed_table(farm_):
    q = farm_.queue()
    store = farm_.store()
    o = doc()
    q.push([o])
    (r,) = drain(q)
    q.fail(r, r.body, "ValueError: no\n\ntraceback here")
    assert q.reserve(["default"], 10, 0.2) == []
    (f,) = store.failed(ids=[o.id])
    assert (f.id, f.queue, f.connection) == (o.id, "default", "main")
    assert f.exception.startswith("ValueError: no")


def test_two_consumers_never_get_the_same_job(farm_):
    from farm import app

    q1 = farm_.queue()
    q2 = app.open_queue(app.manifest(), "main")
    q1.push([doc() for _ in range(200)])
    seen: list[list[str]] = [[], []]

    def consume(q, out):
        while True:
            batch = q.reserve(["default"], 7, 0.5)
            if not batch:
                return
            for r in batch:
                out.append(r.id)
                q.ack(r)

    threads = [threading.Thread(target=consume, args=(q, out)) for q, out in ((q1, seen[0]), (q2, seen[1]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    q2.close()
    assert len(seen[0]) + len(seen[1]) == 200
    assert len(set(seen[0]) | set(seen[1])) == 200


def test_a_reservation_not_renewed_is_handed_out_again_after_retry_after(db_farm):
    from farm import app

    # Given a job reserved and started by one worker, which never renews it (retry_after is 2 s)
    q = db_farm.queue()
    other = app.open_queue(app.manifest(), "main")
    q.push([doc()])
    reserved = time.time()              # the claim's clock starts at or after this
    (r,) = q.reserve(["default"], 1, 1.0)
    assert q.starting(r)
    # When another worker waits for it
    assert other.reserve(["default"], 1, 0) == []
    again = other.reserve(["default"], 1, 2.0 + 3.0)
    # Then it gets the job, as a second attempt, once retry_after has passed and not before
    assert time.time() - reserved >= 2.0 - EPS
    assert [(x.id, x.attempts) for x in again] == [(r.id, 2)]
    other.ack(again[0])
    other.close()


def test_a_lapsed_reservation_and_a_delayed_job_that_fell_due_count_as_ready(db_farm):
    # Given a reserved job never renewed (retry_after 2 s) and a job delayed by 1 s
    q = db_farm.queue()
    q.push([doc()])
    assert len(q.reserve(["default"], 1, 1.0)) == 1
    late = doc()
    q.push([Outgoing(id=late.id, queue="default", body=late.body, available_at=time.time() + 1.0)])
    c = q.counts()["default"]
    assert (c["ready"], c["delayed"], c["reserved"]) == (0, 1, 1)
    # When both times have passed, with no worker claiming meanwhile
    time.sleep(2.0 + 0.2)
    # Then both count as ready (what `listen` and the autoscalers start workers for)
    c = q.counts()["default"]
    assert (c["ready"], c["delayed"], c["reserved"]) == (2, 0, 0)


def test_a_renewed_reservation_is_kept_past_retry_after(db_farm):
    from farm import app

    # Given a job reserved by one worker (retry_after is 2 s)
    q = db_farm.queue()
    other = app.open_queue(app.manifest(), "main")
    q.push([doc()])
    (r,) = q.reserve(["default"], 1, 1.0)
    # When the worker renews it every half second for twice retry_after
    until = time.monotonic() + 2 * 2.0
    while time.monotonic() < until:
        q.renew([r])
        # Then another worker never gets it meanwhile
        assert other.reserve(["default"], 1, 0.5) == []
    q.ack(r)
    other.close()


@pytest.mark.parametrize("backend", [b for b in LEASE_BACKENDS if b != "postgresql"])
def test_a_worker_whose_hold_lapsed_does_not_start_a_job_another_worker_holds(make_farm, backend):
    from farm import app

    # Given worker A that claimed two jobs and ran the first while its hold lapsed (retry_after
    # 1 s), and worker B that claimed the second meanwhile
    make_farm(backend, retry_after=1)
    a = app.open_queue(app.manifest(), "main")
    b = app.open_queue(app.manifest(), "main")
    a.push([doc(tag="1"), doc(tag="2")])
    first, second = a.reserve(["default"], 2, 1.0)
    assert a.starting(first)
    taken = b.reserve(["default"], 2, 1.0 + 3.0)
    assert second.id in {r.id for r in taken}
    # When A acks the first (which would write the second's start) and goes to start the second
    a.ack(first)
    # Then the driver says no: A must not run it (PostgreSQL's pipelined start cannot tell)
    assert a.starting(second) is False
    for r in taken:
        b.ack(r)
    a.close()
    b.close()


@pytest.mark.parametrize("backend", LEASE_BACKENDS)
def test_a_worker_whose_reservation_lapsed_cannot_ack_release_or_fail_the_job_another_worker_holds(
        make_farm, backend):
    from farm import app

    # Given worker A reserved a job, its reservation lapsed (retry_after 1 s), and B reserved it since
    f = make_farm(backend, retry_after=1)
    a = app.open_queue(app.manifest(), "main")
    b = app.open_queue(app.manifest(), "main")
    o = doc()
    a.push([o])
    (ra,) = a.reserve(["default"], 1, 1.0)
    assert a.starting(ra)
    (rb,) = b.reserve(["default"], 1, 1.0 + 3.0)
    assert (rb.id, rb.attempts) == (o.id, 2)
    held = row(f, o.id)
    # When A, unaware, settles its attempt in each way a worker can
    a.release(ra, 0, ra.body)
    # Then none of them removes or changes B's row, and A's failure is not recorded
    assert row(f, o.id) == held, "A's release changed the row B holds"
    a.fail(ra, ra.body, "ValueError: A's stale verdict")
    assert row(f, o.id) == held, "A's fail removed or changed the row B holds"
    assert f.store().failed(ids=[o.id]) == [], "A's fail recorded a failure for a job B is running"
    a.give_back([ra])
    assert row(f, o.id) == held, "A's give_back changed the row B holds"
    a.ack(ra)
    a.close()                               # PostgreSQL: the pipelined ack is settled by now
    assert row(f, o.id) == held, "A's ack removed the row B holds"
    # and B's ack removes it
    b.ack(rb)
    b.close()
    assert row(f, o.id) is None
    assert f.store().failed(ids=[o.id]) == []


def test_clear_removes_ready_jobs_and_keeps_a_delayed_one_for_its_time(farm_):
    # Given two ready jobs and one delayed by 1.5 s
    q = farm_.queue()
    delayed = later(doc(), 1.5)
    q.push([doc(), doc(), delayed])
    # When the queue is cleared
    assert q.clear("default") == 2
    # Then the ready ones are gone
    assert q.reserve(["default"], 10, 0.3) == []
    # and the delayed one is still handed out once its time has come
    got = q.reserve(["default"], 10, 1.5 + 3.0)
    assert [r.id for r in got] == [delayed.id]
    q.ack(got[0])
    assert q.reserve(["default"], 10, 0.3) == []


def test_a_sync_push_runs_each_job_at_once_in_order_and_leaves_nothing_queued(make_farm):
    # Given the sync driver
    f = make_farm("sync")
    q = f.queue()
    # When three jobs are pushed at once
    q.push([job_doc("testjobs:Record", {"path": str(f.out), "tag": f"s{i}", "seconds": 0}) for i in range(3)])
    # Then each has run, in order, in this process, before push returned
    import os

    assert [line.split() for line in f.lines()] == [[f"s{i}", "1", str(os.getpid())] for i in range(3)]
    # and there is nothing to reserve, count or clear
    assert q.reserve(["default"], 10, 0) == []
    assert q.counts() == {} and q.clear("default") == 0


def test_a_sync_push_of_a_failing_job_raises_to_the_pusher_after_its_failed_hook(make_farm):
    # Given the sync driver
    f = make_farm("sync")
    q = f.queue()
    # When a job that raises is pushed
    with pytest.raises(ValueError, match="boom on attempt 1"):
        q.push([job_doc("testjobs:Flaky", {"path": str(f.out), "succeed_on": 99})])
    # Then it ran once and its failed() hook ran before the exception reached the pusher
    assert f.lines() == ["attempt 1", "failed ValueError"]


def test_a_failed_job_retried_comes_back_under_its_id_with_attempts_reset(farm_):
    q = farm_.queue()
    store = farm_.store()
    o = doc()
    q.push([o])
    (r,) = drain(q)
    q.fail(r, r.body, "ValueError: no")
    farm_.farmctl("retry", o.id, check=True)
    assert store.failed(ids=[o.id]) == []
    (again,) = drain(q)
    assert again.id == o.id and again.attempts == 1 and json.loads(again.body)["attempts"] == 0
    q.ack(again)


def test_the_store_keeps_stamps_and_worker_heartbeats(farm_):
    store = farm_.store()
    assert store.stamp("restart") is None
    store.set_stamp("restart", 123.5)
    store.set_stamp("restart", 124.5)
    assert store.stamp("restart") == 124.5
    store.beat({"id": "h:1:a", "pid": 1})
    store.beat({"id": "h:1:a", "pid": 1, "done": 3})
    (w,) = store.workers()
    assert w["done"] == 3 and w["heartbeat"] > 0
    store.forget_worker("h:1:a")
    assert store.workers() == []
    store.add_failed(FailedJob("fid", "main", "q", "{}", "E: x", time.time() - 7200))
    assert store.prune_failed(time.time() - 3600) == 1


def test_a_claim_is_won_by_its_first_caller_only_and_is_no_stamp(farm_):
    # Given a store (amqp: its database store), as schedulers on any host share it
    store = farm_.store()
    # When a name is claimed twice, and another name once
    first = store.claim("schedule:beat:100", time.time() + 60)
    second = store.claim("schedule:beat:100", time.time() + 60)
    other = store.claim("schedule:beat:101", time.time() + 60)
    # Then only the first claim of each name wins, and claims stay out of the stamps workers read
    assert (first, second, other) == (True, False, True)
    assert store.stamp("schedule:beat:100") is None and store.stamps("schedule:") == {}
