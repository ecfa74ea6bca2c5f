"""Issue 18: what the redis driver promises beyond the shared contract (which runs on it too).

Reservations lapse after retry_after unless renewed, and a worker whose reservation lapsed
settles nothing; a batch claim fills up from the queues in priority order; every key of a
queue shares its hash tag (Redis Cluster); a bad manifest entry is one line.
"""
from __future__ import annotations

import json
import textwrap
import time
import uuid

import pytest

from farm import manifest
from farm.drivers.base import Outgoing
from farm.errors import ManifestError

EPS = 0.02


@pytest.fixture
def rfarm(make_farm):
    return make_farm("redis", retry_after=2)


def doc(queue: str = "default", tag: str = "x") -> Outgoing:
    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": "testjobs:Noop", "data": {"tag": tag}, "queue": queue,
                       "attempts": 0})
    return Outgoing(id=jid, queue=queue, body=body, available_at=time.time())


def state(q, jid: str, queue: str = "default") -> tuple:
    """Every key of the queue that mentions the job, as stored."""
    k, c = q._keys(queue), q.client
    return (c.zscore(k[2], jid), c.hget(k[3], jid), c.hget(k[4], jid), c.hget(k[5], jid), c.zscore(k[1], jid),
            c.hget(k[6], jid), [b for b in c.lrange(k[0], 0, -1) if jid in b])


def other(rfarm):
    from farm import app

    return app.open_queue(app.manifest(), "main")


def test_a_started_reservation_not_renewed_is_handed_out_again_after_retry_after(rfarm):
    # Given a job reserved and started by one worker, which never renews it (retry_after is 2 s)
    q, b = rfarm.queue(), other(rfarm)
    q.push([doc()])
    (r,) = q.reserve(["default"], 1, 1.0)
    assert q.starting(r)
    reserved = time.time()
    # When another worker waits for it
    assert b.reserve(["default"], 1, 0) == []
    again = b.reserve(["default"], 1, 2.0 + 3.0)
    # Then it gets the job, as a second attempt, once retry_after has passed and not before
    assert time.time() - reserved >= 2.0 - EPS
    assert [(x.id, x.attempts) for x in again] == [(r.id, 2)]
    b.ack(again[0])
    b.close()


def test_a_renewed_reservation_is_kept_past_retry_after(rfarm):
    q, b = rfarm.queue(), other(rfarm)
    q.push([doc()])
    (r,) = q.reserve(["default"], 1, 1.0)
    until = time.monotonic() + 2 * 2.0
    while time.monotonic() < until:
        q.renew([r])
        assert b.reserve(["default"], 1, 0.5) == []
    q.ack(r)
    b.close()


def test_a_worker_whose_reservation_lapsed_cannot_settle_the_job_another_worker_holds(make_farm):
    # Given worker A reserved and started a job, its reservation lapsed (retry_after 1 s), B holds it now
    f = make_farm("redis", retry_after=1)
    a, b = f.queue(), other(f)
    o = doc()
    a.push([o])
    (ra,) = a.reserve(["default"], 1, 1.0)
    assert a.starting(ra)
    (rb,) = b.reserve(["default"], 1, 1.0 + 3.0)
    assert (rb.id, rb.attempts) == (o.id, 2)
    held = state(a, o.id)
    # When A, unaware, settles its attempt in each way a worker can
    a.release(ra, 0, ra.body)
    assert state(a, o.id) == held, "A's release changed what B holds"
    assert a.fail(ra, ra.body, "ValueError: A's stale verdict") is False
    assert state(a, o.id) == held and f.store().failed(ids=[o.id]) == []
    a.give_back([ra])
    assert state(a, o.id) == held, "A's give_back changed what B holds"
    a.ack(ra)
    assert state(a, o.id) == held, "A's ack removed what B holds"
    a.renew([ra])
    assert state(a, o.id) == held, "A's renew moved B's deadline"
    # Then B's ack removes every trace of it
    b.ack(rb)
    assert state(a, o.id) == (None,) * 6 + ([],)
    b.close()


def test_a_dead_workers_batch_counts_a_start_only_for_the_job_it_was_running(rfarm):
    # Given a worker that claimed four jobs, ran the first to its ack (which writes the second's
    # start), started the second, and died running it
    q, b = rfarm.queue(), other(rfarm)
    q.push([doc(tag=str(i)) for i in range(4)])
    first, second, *rest = q.reserve(["default"], 4, 1.0)
    assert q.starting(first)
    q.ack(first)
    assert q.starting(second)
    q.close()
    # When another worker gets them after retry_after
    again = {r.id: r.attempts for r in b.reserve(["default"], 10, 2.0 + 3.0)}
    # Then only the one that was running comes back as a second attempt
    assert again == {second.id: 2, rest[0].id: 1, rest[1].id: 1}
    b.close()


def test_a_batch_claim_takes_the_high_queue_first_then_fills_up_from_the_next(rfarm):
    q = rfarm.queue()
    q.push([doc("low", f"l{i}") for i in range(3)])
    q.push([doc("high", f"h{i}") for i in range(2)])
    got = q.reserve(["high", "low"], 4, 1.0)
    assert [(r.queue, json.loads(r.body)["data"]["tag"]) for r in got] == [
        ("high", "h0"), ("high", "h1"), ("low", "l0"), ("low", "l1")]
    assert q.counts()["low"] == {"ready": 1, "delayed": 0, "reserved": 2, "failed": 0}


def test_every_key_of_a_queue_shares_one_cluster_slot():
    from redis.crc import key_slot

    from farm.drivers import redis_lua

    for queue in ("default", "emails", "a:b", "{x}"):
        names = redis_lua.keys("farm", queue) + [redis_lua.wake_channel("farm", queue)]
        assert len({key_slot(k.encode()) for k in names}) == 1, names
    assert redis_lua.keys("farm", "mail")[0] == "farm:{mail}:ready"     # the KEDA trigger's listName


@pytest.mark.parametrize("entry, problem", [
    ("{driver: redis}", "a redis connection needs a url"),
    ("{driver: redis, url: 'http://x'}", "a redis connection needs a url"),
    ("{driver: redis, url: 'redis://h:port/0'}", "a redis connection needs a url"),
    ("{driver: redis, url: 'redis://h:6379/zero'}", "a redis connection needs a url"),
    ("{driver: redis, url: 'redis+sentinel://h:26379'}", "a redis connection needs a url"),
    ("{driver: redis, url: 'redis://h/0', prefix: 'a b'}", "expected a key prefix"),
    ("{driver: redis, url: 'redis://h/0', store: nowhere}", "'nowhere' is not a database connection"),
])
def test_a_wrong_redis_connection_is_one_line_naming_the_key(tmp_path, entry, problem):
    path = tmp_path / "farm.yaml"
    path.write_text(textwrap.dedent(f"""\
        imports: [testjobs]
        connections:
          cache: {entry}
        """))
    with pytest.raises(ManifestError) as e:
        manifest.load(path)
    assert any(p.startswith(f"{path}:3: connections.cache.") and problem in p for p in e.value.problems), \
        e.value.problems


def test_sentinel_and_tls_urls_are_accepted(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text(textwrap.dedent("""\
        imports: [testjobs]
        connections:
          a: {driver: redis, url: "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster/2"}
          b: {driver: redis, url: "rediss://:pw@cache.internal:6380/1", prefix: "app1"}
          c: {driver: redis, url: "unix:///run/redis/redis.sock?db=2"}
          d: {driver: redis, url: "redis://[::1]:6379"}
        """))
    m = manifest.load(path)
    assert m.connections["b"].prefix == "app1" and m.connections["a"].prefix == "farm"
