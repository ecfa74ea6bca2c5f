"""Issue 18: what the redis driver promises beyond the shared contract (which runs on it too,
leases included: `db_farm`).

A batch claim fills up from the queues in priority order; every key of a queue shares its
hash tag (Redis Cluster); a bad manifest entry is one line.
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


@pytest.fixture
def rfarm(make_farm):
    return make_farm("redis", retry_after=2)


def doc(queue: str = "default", tag: str = "x") -> Outgoing:
    jid = str(uuid.uuid4())
    body = json.dumps({"v": 1, "id": jid, "job": "testjobs:Noop", "data": {"tag": tag}, "queue": queue,
                       "attempts": 0})
    return Outgoing(id=jid, queue=queue, body=body, available_at=time.time())


def test_a_batch_claim_takes_the_high_queue_first_then_fills_up_from_the_next(rfarm):
    q = rfarm.queue()
    q.push([doc("low", f"l{i}") for i in range(3)])
    q.push([doc("high", f"h{i}") for i in range(2)])
    got = q.reserve(["high", "low"], 4, 1.0)
    assert [(r.queue, json.loads(r.body)["data"]["tag"]) for r in got] == [
        ("high", "h0"), ("high", "h1"), ("low", "l0"), ("low", "l1")]
    assert q.counts()["low"] == {"ready": 1, "delayed": 0, "reserved": 2, "failed": 0}


def test_a_push_of_an_id_already_delayed_is_refused_and_the_delayed_job_kept(rfarm):
    from farm.errors import FarmError

    # Given a job delayed by a minute
    q = rfarm.queue()
    first = doc(tag="first")
    q.push([Outgoing(id=first.id, queue="default", body=first.body, available_at=time.time() + 60)])
    # When a second document with its id is pushed (a producer that sent it twice)
    again = doc(tag="again")
    with pytest.raises(FarmError, match="already delayed or reserved"):
        q.push([again, Outgoing(id=first.id, queue="default", body=first.body, available_at=0)])
    # Then nothing of that push is written, and the delayed one is still there
    assert q.counts()["default"] == {"ready": 0, "delayed": 1, "reserved": 0, "failed": 0}


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
